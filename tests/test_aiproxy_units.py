"""
The AI proxy's parts on their own: reading a request head and
Proxy-Authorization, the SSRF guard, the CA and its leaf cache,
the [aiproxy] configuration, `bridgeproxy ca create`, and the wiring of
the listener by `twistd bridgeproxy`.
"""

import datetime
import gc
import io
import ipaddress
import os
import stat
from dataclasses import replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, MemoryReactorClock

from bridgeproxy import cli
from bridgeproxy.aiproxy import CertificateAuthority, Guard, Resolver, create_ca
from bridgeproxy.aiproxy.ca import LEAF_LIFETIME, LEAF_RENEW_BEFORE
from bridgeproxy.aiproxy.head import BadHead, absolute_host, parse_authority, parse_head, proxy_token
from bridgeproxy.aiproxy.tunnel import proxy_connect_request
from bridgeproxy.config import ConfigError, parse
from bridgeproxy.metrics import Metrics
from bridgeproxy.tap import make_service, split_reload
from bridgeproxy.workers import listen_backlog
from tests.aiproxies import basic

NOW = datetime.datetime(2026, 11, 24, 12, 0, tzinfo=datetime.timezone.utc).timestamp()


# -- the request head -------------------------------------------------------------------


def test_a_connect_head_is_read_with_its_headers():
    """Request line and headers, names lower-cased, repeated headers kept in order, values trimmed."""
    request = parse_head(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n"
                         b"Proxy-Authorization:  Basic abc \r\nX-A: 1\r\nx-a: 2")
    assert (request.method, request.target, request.version) == (b"CONNECT", b"api.openai.com:443", b"HTTP/1.1")
    assert request.values(b"proxy-authorization") == [b"Basic abc"]
    assert request.values(b"x-a") == [b"1", b"2"]
    assert request.values(b"absent") == []


@pytest.mark.parametrize("head,status", [
    (b"CONNECT api.openai.com:443", 400),
    (b"CONNECT  api.openai.com:443 HTTP/1.1", 400),
    (b"connect api.openai.com:443 HTTP/1.1", 400),
    (b"CONNECT api.openai.com:443 HTTP/1.1 extra", 400),
    (b"CONNECT api.openai.com:443\x00 HTTP/1.1", 400),
    (b"CONNECT a:443 HTTP/1.1\r\nNo colon here", 400),
    (b"CONNECT a:443 HTTP/1.1\r\nName : value", 400),
    (b"CONNECT a:443 HTTP/1.1\r\nX: a\x00b", 400),
    (b"CONNECT a:443 HTTP/1.1" + b"\r\nX: y" * 101, 431),
])
def test_malformed_heads_are_refused(head, status):
    """A malformed request line or header line, or too many headers: BadHead with the status to answer."""
    with pytest.raises(BadHead) as caught:
        parse_head(head)
    assert caught.value.status == status


@pytest.mark.parametrize("target,expected", [
    (b"api.openai.com:443", ("api.openai.com", 443)),
    (b"API.OpenAI.com.:443", ("api.openai.com", 443)),
    (b"10.0.0.1:8443", ("10.0.0.1", 8443)),
    (b"[::1]:443", ("::1", 443)),
    (b"[0:0:0:0:0:ffff:7f00:1]:443", ("::ffff:7f00:1", 443)),
])
def test_connect_targets_are_read_as_host_and_port(target, expected):
    """A CONNECT target's host is lower-cased, without its final dot; IPv6 in canonical form."""
    assert parse_authority(target) == expected


@pytest.mark.parametrize("target", [b"api.openai.com", b"api.openai.com:", b"api.openai.com:0",
                                    b"api.openai.com:65536", b"api.openai.com:-1", b":443", b"::1:443",
                                    b"[::g]:443", b"a..b:443", b"a b:443", b"-a.com:443", b"api.openai.com:+443"])
def test_bad_connect_targets_are_refused(target):
    """A target that is not host:port, a port out of range, a bad host name: 400."""
    with pytest.raises(BadHead):
        parse_authority(target)


def test_absolute_targets_name_their_host():
    """A plain-HTTP proxy request's host is read (user info and port ignored); other forms are not absolute."""
    assert absolute_host(b"http://API.openai.com/v1/models") == "api.openai.com"
    assert absolute_host(b"http://user:pw@example.com:8080/x?y") == "example.com"
    assert absolute_host(b"http://[::1]:80/") == "::1"
    assert absolute_host(b"/ca.pem") is None
    with pytest.raises(BadHead):
        absolute_host(b"http:///nohost")


@pytest.mark.parametrize("values,token", [
    ([basic("bp_key-123")], "bp_key-123"),
    ([basic("bp_key-123", user="")], "bp_key-123"),
    ([basic("bp:key:with:colons")], "bp:key:with:colons"),
    ([b"Bearer bp_key-123"], "bp_key-123"),
    ([b"BEARER bp_key-123"], "bp_key-123"),
    ([basic("bp_key-123"), basic("bp_key-123")], "bp_key-123"),  # the same twice is not ambiguous
    ([], None),
    ([b""], None),
    ([b"Basic"], None),
    ([b"Basic bm8tY29sb24="], None),  # "no-colon"
    ([basic("")], None),
    ([basic("has space")], None),
    ([basic("tab\there")], None),
    ([basic("x" * 1025)], None),
    ([b"Basic bp_key-123"], None),  # not base64 of anything with a colon
    ([b"Negotiate abc"], None),
    ([basic("bp_a-123"), basic("bp_b-123")], None),
])
def test_the_bridge_key_is_read_from_proxy_authorization(values, token):
    """The Basic password or the Bearer token; anything malformed or ambiguous gives no key at all."""
    values = [v.encode() if isinstance(v, str) else v for v in values]
    assert proxy_token(values) == token


# -- the SSRF guard -----------------------------------------------------------------------


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.1.2.3", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "255.255.255.255", "224.0.0.1", "240.0.0.1", "192.0.2.1", "198.18.0.1",
    "::1", "::", "fe80::1", "fc00::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:a00:1::1",
    "64:ff9b:1::1", "64:ff9b::a00:1", "64:ff9b::7f00:1", "2001:db8::1",
])
def test_internal_addresses_are_not_reachable(address):
    """Private, loopback, link-local, shared, multicast, reserved and documentation addresses: refused."""
    assert not Guard().allows(address)


@pytest.mark.parametrize("address", [
    "192.0.0.8", "192.0.0.255",  # IETF protocol assignments, beyond the ranges Python knows
    "::7f00:1", "::a00:1", "::5db8:d822",  # IPv4-compatible (::127.0.0.1, ::10.0.0.1, even a public one)
    "fec0::1", "feff::1",  # site-local
    "::ffff:0:7f00:1", "::ffff:0:5db8:d822",  # IPv4-translated (SIIT)
    "100::1", "4000::1", "fe00::1",  # reserved IPv6 (discard-only, unassigned)
])
def test_deprecated_and_reserved_ranges_are_not_reachable(address):
    """Ranges some of Python's tables call global: refused all the same, allowed ranges or not."""
    assert not Guard().allows(address)
    assert not Guard(["127.0.0.0/8", "10.0.0.0/8"]).allows(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:1.1.1.1",
                                     "64:ff9b::101:101"])
def test_public_addresses_are_reachable(address):
    assert Guard().allows(address)


def test_allowed_ranges_open_internal_addresses_and_nothing_else():
    """allowed_private_cidrs: addresses inside (IPv4, and IPv4-mapped IPv6) pass; the rest stays refused."""
    guard = Guard(["10.1.0.0/16", "fd00:1::/32"])
    assert guard.allows("10.1.255.1") and guard.allows("::ffff:10.1.0.1") and guard.allows("fd00:1::5")
    assert not guard.allows("10.2.0.1") and not guard.allows("127.0.0.1")
    assert guard.allows(ipaddress.ip_address("10.1.0.9"))


def test_a_name_with_one_internal_address_is_refused_whole():
    """A DNS answer mixing public and internal addresses is refused; an empty one gives nothing to dial."""
    guard = Guard()
    assert guard.check(["93.184.216.34", "1.1.1.1"]) == ["93.184.216.34", "1.1.1.1"]
    assert guard.check(["93.184.216.34", "10.0.0.1"]) == []
    assert guard.check([]) == []


def test_the_resolver_asks_the_reactors_name_resolver():
    """The default resolver answers with the addresses the reactor's resolver found."""
    answer = []
    Resolver(MemoryReactor()).resolve("example.test", 443).addCallback(answer.append)
    assert answer == [["127.0.0.1"]]  # MemoryReactor's resolver says 127.0.0.1 to everything


def test_an_upstream_proxy_gets_the_checked_address_and_its_credentials():
    """The CONNECT to an upstream proxy names the address (bracketed IPv6), with the URL's credentials decoded."""
    assert proxy_connect_request("http://proxy:3128", "2001:db8::1", 443) == (
        b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n")
    assert b"Proxy-Authorization: Basic dTpwQHNz\r\n" in proxy_connect_request(
        "http://u:p%40ss@proxy:3128", "1.1.1.1", 443)  # base64("u:p@ss")


# -- the CA ---------------------------------------------------------------------------------


def test_ca_create_writes_a_ca_and_a_private_key_only_its_owner_reads(tmp_path):
    """The key file is mode 0600 from the start; the certificate is a CA's, for server certificates only."""
    cert_path, key_path = create_ca(str(tmp_path / "new" / "dir"), days=10, now=NOW)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "new" / "dir").st_mode) == 0o700
    cert = x509.load_pem_x509_certificate(open(cert_path, "rb").read())
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == datetime.timedelta(days=10, hours=1)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value.startswith("bridgeproxy AI proxy CA ")
    key = serialization.load_pem_private_key(open(key_path, "rb").read(), None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()


def test_loading_a_ca_key_others_can_read_warns(tmp_path, captured_log):
    """A CA key readable by its group or the world: the CA loads, with a warning naming the file and its mode."""
    cert_path, key_path = create_ca(str(tmp_path / "ca"))
    CertificateAuthority.load(cert_path, key_path, Clock())
    assert "can be read by others" not in captured_log.text()
    os.chmod(key_path, 0o640)
    CertificateAuthority.load(cert_path, key_path, Clock())
    text = captured_log.text()
    assert f"aiproxy.ca_key: {key_path} can be read by others than its owner (mode 0640)" in text
    assert "PRIVATE KEY" not in text


def test_ca_create_never_overwrites(tmp_path):
    """An existing certificate or key file is left alone, and nothing else is written."""
    (tmp_path / "ca-key.pem").write_text("precious")
    with pytest.raises(FileExistsError):
        create_ca(str(tmp_path))
    assert (tmp_path / "ca-key.pem").read_text() == "precious"
    assert not (tmp_path / "ca.pem").exists()


def ca_at(tmp_path, now=NOW):
    clock = Clock()
    clock.advance(now)
    metrics = Metrics()
    cert_path, key_path = create_ca(str(tmp_path), now=now - 3600)
    return CertificateAuthority.load(cert_path, key_path, clock, metrics), clock, metrics


def verify(ca, leaf, host, now):
    """Verify C{leaf} for C{host} as a TLS client would (cryptography's verifier, web PKI rules)."""
    store = verification.Store([ca.cert])
    verifier = verification.PolicyBuilder().store(store).time(
        datetime.datetime.fromtimestamp(now, datetime.timezone.utc)).build_server_verifier(
        verification.DNSName(host))
    return verifier.verify(leaf, [])


def test_a_leaf_is_a_server_certificate_for_its_host_signed_by_the_ca(tmp_path):
    """The leaf names the host, is for server authentication, and verifies against the CA alone."""
    ca, clock, metrics = ca_at(tmp_path)
    leaf = ca.leaf("api.openai.com")
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["api.openai.com"]
    assert leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH])
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    verify(ca, leaf, "api.openai.com", NOW)
    with pytest.raises(verification.VerificationError):
        verify(ca, leaf, "api.anthropic.com", NOW)


def test_leaves_are_minted_once_per_host_and_renewed_before_their_end(tmp_path):
    """One leaf per host while it is fresh (and one TLS context); a new one as the old nears its end."""
    ca, clock, metrics = ca_at(tmp_path)
    first = ca.leaf("api.openai.com")
    assert ca.tls_for("api.openai.com") is ca.tls_for("api.openai.com")
    assert ca.leaf("api.openai.com") is first
    other = ca.leaf("api.anthropic.com")
    assert other is not first
    assert metrics.registry.get_sample_value("bridgeproxy_aiproxy_leaf_certificates_total") == 2
    clock.advance((LEAF_LIFETIME - LEAF_RENEW_BEFORE).total_seconds() - 60)
    assert ca.leaf("api.openai.com") is first
    clock.advance(120)
    renewed = ca.leaf("api.openai.com")
    assert renewed is not first and renewed.not_valid_after_utc > first.not_valid_after_utc
    verify(ca, renewed, "api.openai.com", clock.seconds())
    assert metrics.registry.get_sample_value("bridgeproxy_aiproxy_leaf_certificates_total") == 3


def test_a_leaf_never_outlives_its_ca(tmp_path):
    """A CA ending before a leaf's usual lifetime: the leaf ends with it (a client would refuse it after)."""
    clock = Clock()
    clock.advance(NOW)
    cert_path, key_path = create_ca(str(tmp_path), days=5, now=NOW)
    ca = CertificateAuthority.load(cert_path, key_path, clock)
    assert ca.leaf("api.openai.com").not_valid_after_utc == ca.cert.not_valid_after_utc


def _write_cert(path, cert):
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_a_ca_that_cannot_be_used_stops_the_start_with_its_reason(tmp_path):
    """Unreadable files, a key of another certificate, a certificate that is not a CA's, an expired CA."""
    clock = Clock()
    clock.advance(NOW)
    cert_path, key_path = create_ca(str(tmp_path / "a"), now=NOW)
    other_cert, other_key = create_ca(str(tmp_path / "b"), now=NOW)

    def reason(cert, key, at=clock):
        with pytest.raises(ConfigError) as caught:
            CertificateAuthority.load(cert, key, at)
        return str(caught.value)
    assert "cannot read" in reason(str(tmp_path / "none.pem"), key_path)
    assert "is not a PEM certificate" in reason(key_path, key_path)
    assert "is not an unencrypted PEM private key" in reason(cert_path, cert_path)
    assert "is not the key of the certificate" in reason(cert_path, other_key)
    late = Clock()
    late.advance(NOW + 3651 * 86400)
    assert "expired on" in reason(cert_path, key_path, late)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not a CA")])
    start = datetime.datetime.fromtimestamp(NOW, datetime.timezone.utc)
    plain = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
             .serial_number(1).not_valid_before(start).not_valid_after(start + datetime.timedelta(days=1))
             .sign(key, hashes.SHA256()))
    _write_cert(tmp_path / "plain.pem", plain)
    (tmp_path / "plain-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    assert "is not a CA certificate" in reason(str(tmp_path / "plain.pem"), str(tmp_path / "plain-key.pem"))


# -- [aiproxy] ---------------------------------------------------------------------------------


def aiproxy_config(tmp_path, **aiproxy):
    cert_path, key_path = create_ca(str(tmp_path / "ca"))
    return parse({"database": f"sqlite:{tmp_path / 'bridge.db'}",
                  "aiproxy": {"listen": "tcp:8888:interface=127.0.0.1", "ca_cert": cert_path, "ca_key": key_path,
                              **aiproxy}}, environ={})


def test_the_aiproxy_is_off_by_default_with_the_documented_defaults():
    """No [aiproxy]: no listener; the default allow-list maps the two providers' API hosts."""
    settings = parse({}, environ={}).aiproxy
    assert settings.listen is None
    assert settings.domains == {"api.openai.com": "openai", "api.anthropic.com": "anthropic"}
    assert settings.allowed_ports == (443,)
    assert settings.allowed_private_cidrs == () and settings.upstream_proxy is None


def test_aiproxy_settings_are_read_and_normalised(tmp_path):
    """Hosts lower-cased without their final dot; ranges in canonical form; the proxy URL kept out of repr."""
    config = aiproxy_config(tmp_path, domains={"LLM.Example.com.": "openai"}, allowed_ports=[443, 8443],
                            allowed_private_cidrs=["10.1.2.3/16", "fd00::/8"],
                            upstream_proxy="http://user:secret-pw@proxy:3128")
    settings = config.aiproxy
    assert settings.domains == {"llm.example.com": "openai"}
    assert settings.allowed_ports == (443, 8443)
    assert settings.allowed_private_cidrs == ("10.1.0.0/16", "fd00::/8")
    assert "secret-pw" not in repr(config)


@pytest.mark.parametrize("aiproxy,message", [
    ({"listen": "tcp:8888"}, "aiproxy.ca_cert is required with aiproxy.listen"),
    ({"allowed_ports": [0]}, "aiproxy.allowed_ports: 0 is not a TCP port"),
    ({"allowed_ports": ["443"]}, "aiproxy.allowed_ports must be a list of integers"),
    ({"allowed_ports": [True]}, "aiproxy.allowed_ports must be a list of integers"),
    ({"allowed_private_cidrs": ["10.0.0.0/33"]}, "aiproxy.allowed_private_cidrs: '10.0.0.0/33' is not an address"),
    ({"domains": ["api.openai.com"]}, "aiproxy.domains must be a table of non-empty strings"),
    ({"domains": {"api.openai.com": 1}}, "aiproxy.domains must be a table of non-empty strings"),
    ({"domains": {"bad host": "openai"}}, "aiproxy.domains: 'bad host' is not a host name"),
    ({"domains": {"api.openai.com": "Open AI"}}, "aiproxy.domains.api.openai.com: 'Open AI' is not a provider"),
    ({"upstream_proxy": "https://proxy:3128"}, "aiproxy.upstream_proxy must be 'http://"),
    ({"upstream_proxy": "http://proxy"}, "aiproxy.upstream_proxy must be 'http://"),
    ({"upstream_proxy": "http://proxy:99999"}, "aiproxy.upstream_proxy must be 'http://"),
    ({"ca_cert": "/nonexistent/ca.pem"}, "aiproxy.ca_cert: no such file"),
    ({"listen": 8888}, "aiproxy.listen must be str"),
])
def test_bad_aiproxy_settings_name_the_key(aiproxy, message):
    with pytest.raises(ConfigError) as caught:
        parse({"aiproxy": aiproxy}, environ={})
    assert message in str(caught.value)


def test_a_listening_aiproxy_needs_its_providers_and_the_coder_token_extractor(tmp_path):
    """Every host's provider must be configured, and X-Coder-Token read, once the proxy listens."""
    with pytest.raises(ConfigError, match="aiproxy.domains.llm.test: no provider 'local' is configured"):
        aiproxy_config(tmp_path / "a", domains={"llm.test": "local"})
    cert_path, key_path = create_ca(str(tmp_path / "b"))
    with pytest.raises(ConfigError, match="needs the 'coder-token' extractor"):
        parse({"auth": {"extractors": ["authorization-bearer"]},
               "aiproxy": {"listen": "tcp:8888", "ca_cert": cert_path, "ca_key": key_path}}, environ={})
    # Off, the same settings are not checked: a configuration without the proxy is not bothered.
    parse({"auth": {"extractors": ["authorization-bearer"]}, "aiproxy": {"domains": {"llm.test": "local"}}},
          environ={})


def test_a_reload_keeps_the_aiproxy_listener_and_ca_and_applies_the_rest(tmp_path):
    """listen, ca_cert and ca_key are read at start only; the allow-list, ports and ranges follow a reload."""
    running = aiproxy_config(tmp_path)
    other_ca, other_key = create_ca(str(tmp_path / "other"))
    new = replace(running, aiproxy=replace(running.aiproxy, listen="tcp:9999", ca_cert=other_ca, ca_key=other_key,
                                           allowed_ports=(443, 8443)))
    effective, ignored = split_reload(running, new)
    assert ignored == ["aiproxy.listen", "aiproxy.ca_cert", "aiproxy.ca_key"]
    assert effective.aiproxy.listen == running.aiproxy.listen
    assert effective.aiproxy.ca_key == running.aiproxy.ca_key
    assert effective.aiproxy.allowed_ports == (443, 8443)


# -- twistd and the command -------------------------------------------------------------------


@pytest.fixture
def unfrozen():
    """make_service freezes the start-up heap and raises the collector's threshold: undone after the test."""
    yield
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)


def test_twistd_listens_for_the_aiproxy_beside_the_bridge(tmp_path, unfrozen):
    """With [aiproxy] listen, the service binds the proxy's port too, with the large backlog."""
    reactor = MemoryReactorClock()
    service = make_service(aiproxy_config(tmp_path), reactor)
    assert [(port, backlog, interface) for port, _, backlog, interface in reactor.tcpServers] == [
        (8080, listen_backlog(), "127.0.0.1"), (8888, listen_backlog(), "127.0.0.1")]
    assert type(reactor.tcpServers[1][1]).__name__ == "AIProxy"
    # Both ports are the service's listener: a shutdown stops accepting on both before draining.
    assert [child.port.getHost().port for child in service.listener] == [8080, 8888]


def test_twistd_refuses_an_aiproxy_it_cannot_run(tmp_path, unfrozen):
    """An unusable CA, or workers > 1: one line, and the process does not start."""
    config = aiproxy_config(tmp_path)
    os.truncate(config.aiproxy.ca_key, 0)
    with pytest.raises(SystemExit, match="^bridgeproxy: aiproxy.ca_key: .* is not an unencrypted PEM private key"):
        make_service(config, MemoryReactorClock())
    config = aiproxy_config(tmp_path / "w")
    with pytest.raises(SystemExit, match="aiproxy.listen needs workers = 1"):
        make_service(replace(config, workers=2), MemoryReactorClock())


def test_ca_create_command(tmp_path, capsys):
    """`bridgeproxy ca create --out DIR` writes both files and says which is which; never overwrites (exit 1)."""
    out = io.StringIO()
    assert cli.main(["ca", "create", "--out", str(tmp_path / "ca")], out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"{tmp_path / 'ca' / 'ca.pem'}\tthe CA certificate")
    assert lines[1].startswith(f"{tmp_path / 'ca' / 'ca-key.pem'}\tits private key, mode 0600")
    assert stat.S_IMODE(os.stat(tmp_path / "ca" / "ca-key.pem").st_mode) == 0o600
    assert cli.main(["ca", "create", "--out", str(tmp_path / "ca")], io.StringIO()) == 1
    err = capsys.readouterr().err
    assert err.startswith("bridgeproxy: ca create: ") and "exists" in err and len(err.splitlines()) == 1


def test_ca_create_command_line_errors(tmp_path, capsys):
    """A missing --out or a bad --days is a command-line error (exit 2); an unwritable place is exit 1."""
    for argv in (["ca", "create"], ["ca", "create", "--out", str(tmp_path), "--days", "0"]):
        with pytest.raises(SystemExit) as caught:
            cli.main(argv, io.StringIO())
        assert caught.value.code == 2
    (tmp_path / "file").write_text("")
    assert cli.main(["ca", "create", "--out", str(tmp_path / "file" / "ca")], io.StringIO()) == 1
    assert "cannot write into" in capsys.readouterr().err
