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
import re
import stat
from dataclasses import replace
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import DNSLookupError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.logger import formatEvent

from bridgeproxy import cli
from bridgeproxy.aiproxy import CertificateAuthority, Guard, Resolver, create_ca
from bridgeproxy.aiproxy import ca as ca_module
from bridgeproxy.aiproxy.guard import Lookups
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


def test_an_upstream_proxy_user_without_a_password_is_sent_with_an_empty_one():
    assert proxy_connect_request("http://corp@proxy:3128", "1.1.1.1", 443) == (
        b"CONNECT 1.1.1.1:443 HTTP/1.1\r\nHost: 1.1.1.1:443\r\nProxy-Authorization: Basic Y29ycDo=\r\n\r\n")  # corp:


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


# -- more of the parts, one behaviour each ------------------------------------------------------


def test_a_bad_heads_message_is_its_text():
    """BadHead's text is the message for the client (what a traceback or a log line would show)."""
    with pytest.raises(BadHead) as caught:
        parse_head(b"GARBAGE")
    assert str(caught.value) == caught.value.message == "Malformed request line: expected 'METHOD TARGET HTTP/1.1'."


@pytest.mark.parametrize("target,host", [
    (b"HTTP://Example.COM/x", "example.com"),  # the scheme in any case
    (b"http://example.com/?next=http://other.test/", "example.com"),  # the first :// is the scheme's
    (b"abc", None),  # no scheme at all
    (b"example.com:80", None),
    (b"1http://example.com/", None),  # a scheme starts with a letter
    (b"http://[::1]]:80/", "::1"),  # the address ends at its first closing bracket
])
def test_absolute_targets_are_told_from_other_forms(target, host):
    assert absolute_host(target) == host


@pytest.mark.parametrize("target,message", [
    (b"http:///nohost", "The request target has no host."),
    (b"http://user@/x", "The request target has no host."),
    (b"http://ex\xffample.com/", "The request target is not a host name or an IP address."),
    (b"http://[::g]/", "Malformed IPv6 address in the request target."),
])
def test_absolute_targets_whose_host_cannot_be_read_are_refused(target, message):
    with pytest.raises(BadHead) as caught:
        absolute_host(target)
    assert caught.value.message == message and caught.value.status == 400


@pytest.mark.parametrize("address,allowed", [
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", False),  # Teredo, its client 10.0.0.1
    ("2001:0:4136:e378:8000:63bf:a247:27dd", True),  # Teredo, its client 93.184.216.34
])
def test_a_teredo_address_is_as_reachable_as_its_client(address, allowed):
    assert Guard().allows(address) is allowed
    assert Guard(["10.0.0.0/8"]).allows(address)


class _RecordingNames:
    """A reactor's name resolver that answers each name with fixed addresses (a repeat included)."""

    def __init__(self):
        self.asked = []

    def resolveHostName(self, receiver, host, port):
        self.asked.append((host, port))
        receiver.resolutionBegan(None)
        for address in ("93.184.216.34", "2606:2800:220:1::1", "93.184.216.34"):
            receiver.addressResolved(SimpleNamespace(host=address))
        receiver.resolutionComplete()


def test_the_resolver_asks_for_the_name_and_port_and_lists_each_address_once():
    names = _RecordingNames()
    answer = []
    Resolver(SimpleNamespace(nameResolver=names)).resolve("example.test", 8443).addCallback(answer.append)
    assert names.asked == [("example.test", 8443)]
    assert answer == [["93.184.216.34", "2606:2800:220:1::1"]]


class _AskedResolver:
    def __init__(self):
        self.asked = []
        self.pending = []

    def resolve(self, host, port):
        self.asked.append((host, port))
        self.pending.append(Deferred())
        return self.pending[-1]


def test_lookups_pass_the_port_and_the_resolvers_failure_on():
    resolver = _AskedResolver()
    lookups = Lookups(resolver, limit=1)
    first, second = lookups.resolve("a.test", 443), lookups.resolve("b.test", 8443)
    assert resolver.asked == [("a.test", 443)]
    resolver.pending[0].errback(DNSLookupError("a.test"))
    failures = []
    first.addErrback(failures.append)
    assert [f.type for f in failures] == [DNSLookupError]
    assert resolver.asked == [("a.test", 443), ("b.test", 8443)]
    resolver.pending[1].callback(["93.184.216.34"])
    assert second.result == ["93.184.216.34"]


def test_a_lookup_cancelled_while_waiting_leaves_no_unhandled_error(captured_log):
    """A lookup dropped from the queue is never started, and its cancellation is not reported as an error."""
    resolver = _AskedResolver()
    lookups = Lookups(resolver, limit=1)
    lookups.resolve("a.test", 443)
    waiting = lookups.resolve("b.test", 443)
    waiting.cancel()
    waiting.addErrback(lambda failure: failure.trap(CancelledError))
    del waiting
    gc.collect()
    resolver.pending[0].callback([])
    gc.collect()
    assert resolver.asked == [("a.test", 443)]
    assert "Unhandled" not in captured_log.text()


def _ca_with_key(tmp_path, key, name="edge CA"):
    """A CA certificate for C{key} (signed by itself), written with its key: C{(cert_path, key_path)}."""
    start = datetime.datetime.fromtimestamp(NOW - 3600, datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(start + datetime.timedelta(days=400))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, algorithm))
    _write_cert(tmp_path / "ca.pem", cert)
    (tmp_path / "ca-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(tmp_path / "ca-key.pem", 0o600)
    return str(tmp_path / "ca.pem"), str(tmp_path / "ca-key.pem")


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
def test_an_edwards_curve_or_rsa_ca_signs_leaves(tmp_path, kind):
    """A CA with an Ed25519 key (which hashes by itself) or an RSA key: its leaves verify against it."""
    key = ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else rsa.generate_private_key(65537, 2048)
    clock = Clock()
    clock.advance(NOW)
    ca = CertificateAuthority.load(*_ca_with_key(tmp_path, key), clock)
    ca.leaf("api.openai.com").verify_directly_issued_by(ca.cert)


def test_a_leafs_extensions_are_those_of_a_server_certificate(tmp_path):
    """Exactly: not a CA (critical), a signing key only (critical), server authentication, both key ids."""
    ca, clock, metrics = ca_at(tmp_path)
    leaf = ca.leaf("api.openai.com")
    found = {type(e.value): (e.critical, e.value) for e in leaf.extensions}
    assert found[x509.BasicConstraints] == (True, x509.BasicConstraints(ca=False, path_length=None))
    assert found[x509.KeyUsage] == (True, x509.KeyUsage(
        digital_signature=True, key_encipherment=False, key_cert_sign=False, crl_sign=False,
        content_commitment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
        decipher_only=False))
    assert found[x509.SubjectKeyIdentifier] == (False, x509.SubjectKeyIdentifier.from_public_key(leaf.public_key()))
    assert found[x509.AuthorityKeyIdentifier][0] is False
    assert found[x509.ExtendedKeyUsage][0] is False and found[x509.SubjectAlternativeName][0] is False
    assert len(found) == 6


def test_a_ca_is_expired_from_its_last_second_and_says_so_once(tmp_path, captured_log):
    ca, clock, metrics = ca_at(tmp_path)
    end = ca.cert.not_valid_after_utc
    clock.advance(end.timestamp() - 1 - clock.seconds())
    assert not ca.expired()
    clock.advance(1)
    assert ca.expired() and ca.expired()
    lines = [formatEvent(e) for e in captured_log.events if "expired" in e.get("log_format", "")]
    assert lines == [f"aiproxy: the CA certificate expired on {end:%Y-%m-%d %H:%M} UTC; CONNECTs to the decrypted "
                     f"hosts get 503 until a new CA is made (bridgeproxy ca create), trusted by the clients and "
                     f"configured"]


def test_a_leaf_is_renewed_from_the_second_its_renewal_is_due(tmp_path):
    ca, clock, metrics = ca_at(tmp_path)
    first = ca.leaf("api.openai.com")
    clock.advance((first.not_valid_after_utc - LEAF_RENEW_BEFORE).timestamp() - clock.seconds() - 1)
    assert ca.leaf("api.openai.com") is first
    clock.advance(1)
    assert ca.leaf("api.openai.com") is not first


@pytest.mark.parametrize("days", [1, 2])
def test_a_leaf_of_a_ca_ending_soon_is_kept_until_the_ca_ends(tmp_path, days):
    """A CA ending before a leaf would be renewed: the leaf (ending with the CA) is minted once, not per use."""
    clock = Clock()
    clock.advance(NOW)
    metrics = Metrics()
    ca = CertificateAuthority.load(*create_ca(str(tmp_path), days=days, now=NOW), clock, metrics)
    first = ca.leaf("api.openai.com")
    clock.advance(days * 86400 - 1)
    assert ca.leaf("api.openai.com") is first
    assert metrics.registry.get_sample_value("bridgeproxy_aiproxy_leaf_certificates_total") == 1


def test_the_leaf_cache_is_bounded(tmp_path, monkeypatch):
    """Past its bound the cache starts again: a host seen long ago gets a new leaf, not an ever-growing cache."""
    monkeypatch.setattr(ca_module, "_MAX_LEAVES", 3)
    ca, clock, metrics = ca_at(tmp_path)
    first = ca.leaf("a.test")
    ca.leaf("b.test")
    ca.leaf("c.test")
    assert ca.leaf("a.test") is first
    ca.leaf("d.test")  # the fourth: the cache is emptied first
    assert ca.leaf("d.test") is ca.leaf("d.test")
    assert ca.leaf("a.test") is not first


@pytest.mark.parametrize("target,expected", [
    (b"a.test:65535", ("a.test", 65535)),
    (b"a.test:1", ("a.test", 1)),
    (b"1.2.3.4:443", ("1.2.3.4", 443)),
    (b"[2001:DB8::1]:443", ("2001:db8::1", 443)),
])
def test_connect_targets_at_the_edges_are_read(target, expected):
    assert parse_authority(target) == expected


@pytest.mark.parametrize("target,message", [
    (b":443", "CONNECT needs a 'host:port' target."),
    (b"a.test:000443", "CONNECT needs a 'host:port' target."),
    (b"a.test:\xd9\xa4", "CONNECT needs a 'host:port' target."),  # a digit, but not an ASCII one
    (b"::1:443", "An IPv6 address in a CONNECT target goes in brackets: '[::1]:443'."),
    (b"[::g]:443", "Malformed IPv6 address in the request target."),
    (b"[::1:443", "The request target is not a host name or an IP address."),  # an opening bracket only
    (b"h\xffst:443", "The request target is not a host name or an IP address."),
    (b"a..b:443", "The request target is not a host name or an IP address."),
])
def test_bad_connect_targets_are_refused_with_a_reason(target, message):
    with pytest.raises(BadHead) as caught:
        parse_authority(target)
    assert (caught.value.message, caught.value.status) == (message, 400)


@pytest.mark.parametrize("values,token", [
    ([basic("x" * 1024)], "x" * 1024),  # the longest key taken
    ([b"Basic dT!pw"], None),  # base64 with a stray character: not read past it
])
def test_proxy_authorization_at_the_edges(values, token):
    values = [v.encode() if isinstance(v, str) else v for v in values]
    assert proxy_token(values) == token


@pytest.mark.parametrize("head,message,status", [
    (b"GET  HTTP/1.1", "Malformed request line: expected 'METHOD TARGET HTTP/1.1'.", 400),  # no target
    (b"GET /x\x7f HTTP/1.1", "Malformed request line: expected 'METHOD TARGET HTTP/1.1'.", 400),
    (b"GET /x\x80 HTTP/1.1", "Malformed request line: expected 'METHOD TARGET HTTP/1.1'.", 400),
    (b"GET / HTTP/1.1\r\nNo colon", "Malformed header line.", 400),
    (b"GET / HTTP/1.1\r\nX: a\nb", "Malformed header value.", 400),
    (b"GET / HTTP/1.1\r\nX: a\rb", "Malformed header value.", 400),
    (b"GET / HTTP/1.1\r\nX: a\x00b", "Malformed header value.", 400),
    (b"GET / HTTP/1.1" + b"\r\nX: y" * 101, "More than 100 header lines.", 431),
])
def test_malformed_heads_are_refused_with_a_reason(head, message, status):
    with pytest.raises(BadHead) as caught:
        parse_head(head)
    assert (caught.value.message, caught.value.status) == (message, status)


def test_a_head_at_the_edges_is_read():
    """The printable ASCII ends in a target, exactly 100 header lines, values trimmed of spaces and tabs only."""
    request = parse_head(b"GET /!~ HTTP/1.1" + b"\r\nX: y" * 99 + b"\r\nA: \t X\x0bvalueX\x0b \t")
    assert request.target == b"/!~"
    assert len(request.values(b"x")) == 99
    assert request.values(b"a") == [b"X\x0bvalueX\x0b"]


def test_a_new_ca_is_named_for_bridgeproxy_valid_ten_years_and_signs_certificates_only(tmp_path):
    cert_path, key_path = create_ca(str(tmp_path), now=NOW)
    cert = x509.load_pem_x509_certificate(open(cert_path, "rb").read())
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == datetime.timedelta(days=3650, hours=1)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "bridgeproxy"
    assert re.fullmatch(r"bridgeproxy AI proxy CA [0-9a-f]{8}",
                        cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value == x509.KeyUsage(
        digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False)


def test_the_ca_certificate_file_is_readable_by_all(tmp_path):
    """The certificate is public (mode 0644 under the usual umask); only the key is kept to its owner."""
    old = os.umask(0o022)
    try:
        cert_path, key_path = create_ca(str(tmp_path))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(cert_path).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600


def test_a_ca_that_cannot_be_used_is_refused_with_this_message(tmp_path):
    clock = Clock()
    clock.advance(NOW)
    cert_path, key_path = create_ca(str(tmp_path / "a"), now=NOW)
    missing = str(tmp_path / "none.pem")
    with pytest.raises(ConfigError) as caught:
        CertificateAuthority.load(cert_path, missing, clock)
    assert str(caught.value) == f"aiproxy.ca_key: cannot read {missing!r}: No such file or directory"
    dsa_key = tmp_path / "dsa.pem"
    dsa_key.write_bytes(dsa.generate_private_key(1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(ConfigError) as caught:
        CertificateAuthority.load(cert_path, str(dsa_key), clock)
    assert str(caught.value) == f"aiproxy.ca_key: {str(dsa_key)!r} is not an RSA, EC or Edwards-curve key"


def test_a_ca_is_refused_from_the_second_it_ends(tmp_path):
    cert_path, key_path = create_ca(str(tmp_path), days=1, now=NOW)
    cert = x509.load_pem_x509_certificate(open(cert_path, "rb").read())
    clock = Clock()
    clock.advance(cert.not_valid_after_utc.timestamp() - 1)
    CertificateAuthority.load(cert_path, key_path, clock)
    clock.advance(1)
    with pytest.raises(ConfigError, match="expired on"):
        CertificateAuthority.load(cert_path, key_path, clock)


def test_the_warning_about_a_readable_ca_key_says_what_to_do(tmp_path, captured_log):
    cert_path, key_path = create_ca(str(tmp_path / "ca"))
    os.chmod(key_path, 0o604)
    CertificateAuthority.load(cert_path, key_path, Clock())
    [line] = [formatEvent(e) for e in captured_log.events if "can be read" in e.get("log_format", "")]
    assert line == (f"aiproxy.ca_key: {key_path} can be read by others than its owner (mode 0604); whoever reads it "
                    f"can impersonate any site to the clients that trust the CA: chmod 600 it")


def test_a_ca_key_whose_mode_cannot_be_read_is_not_warned_about(tmp_path, captured_log, monkeypatch):
    """The key file read, then gone before its mode is checked: the CA loads, without a warning."""
    cert_path, key_path = create_ca(str(tmp_path / "ca"))

    def gone(path):
        raise FileNotFoundError(path)
    monkeypatch.setattr(ca_module, "os", SimpleNamespace(stat=gone))
    CertificateAuthority.load(cert_path, key_path, Clock())
    assert "can be read" not in captured_log.text()


def test_an_allowed_range_written_with_host_bits_is_the_range():
    """allowed_private_cidrs "10.1.2.3/16" means 10.1.0.0/16, not an error."""
    assert Guard(["10.1.2.3/16"]).allows("10.1.200.1")
    assert not Guard(["10.1.2.3/16"]).allows("10.2.0.1")
