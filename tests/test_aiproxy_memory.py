"""
The AI proxy's decisions in memory: what a client gets for each kind of
request (407, 403, 400, 431, /ca.pem, plain HTTP), where a tunnel connects
(the checked address, an upstream proxy), and how bytes, back-pressure,
half-closes and timeouts go, on L{StringTransport}s and a
L{MemoryReactorClock}.
"""

import base64

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure

from bridgeproxy.aiproxy import server
from bridgeproxy.errors import AuthenticationFailed, IdentityUnavailable, NotConfigured, PermissionDenied
from bridgeproxy.types import Identity
from tests import memory
from tests.aiproxies import ANTHROPIC_HOST, OPENAI_HOST, TableResolver, basic, memory_proxy
from tests.memory import parse_answer

PUBLIC = "93.184.216.34"
ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


def refused(transport):
    """The answer of a refused request, its connection closed."""
    answer = parse_answer(transport.value())
    assert answer is not None
    assert transport.disconnecting, "the connection is closed after a refusal"
    return answer


def test_connect_without_a_key_is_407_in_the_hosts_provider_shape(tmp_path):
    """No Proxy-Authorization: 407 with Proxy-Authenticate, in the shape of the provider behind the host."""
    proxied = memory_proxy(tmp_path)
    _, transport = proxied.connect_request(f"{ANTHROPIC_HOST}:443", key=None)
    answer = refused(transport)
    assert (answer.status, answer.phrase) == (407, b"Proxy Authentication Required")
    assert answer.headers["proxy-authenticate"] == [b'Basic realm="bridgeproxy"']
    assert answer.json()["type"] == "error" and answer.json()["error"]["type"] == "authentication_error"
    assert proxied.sample("bridgeproxy_aiproxy_connects_total", outcome="407") == 1
    assert proxied.gateway.upstream.seen == [] and proxied.reactor.tcpClients == []


@pytest.mark.parametrize("authorization", [
    basic("bp_wrong-key-0123456789"),
    "Bearer bp_wrong-key-0123456789",
    "Basic " + base64.b64encode(memory.TOKEN.encode()).decode(),  # no colon: the key is the password
    "Basic !!!not-base64",
    "Digest " + memory.TOKEN,
    [basic(memory.TOKEN), basic("bp_other-key-0123456789")],  # two different values: ambiguous
])
def test_a_key_that_is_wrong_or_malformed_is_407(tmp_path, authorization):
    """A wrong key, a malformed header or an ambiguous pair of headers: 407, like no key at all."""
    proxied = memory_proxy(tmp_path)
    values = authorization if isinstance(authorization, list) else [authorization]
    head = f"CONNECT {OPENAI_HOST}:443 HTTP/1.1\r\n" + "".join(f"Proxy-Authorization: {v}\r\n" for v in values)
    _, transport = proxied.send(head.encode() + b"\r\n")
    answer = refused(transport)
    assert answer.status == 407
    assert answer.json()["error"]["code"] == "invalid_api_key"
    assert memory.TOKEN not in transport.value().decode()


@pytest.mark.parametrize("authorization", [basic(memory.TOKEN), basic(memory.TOKEN, user=""),
                                           "Bearer " + memory.TOKEN, "bearer   " + memory.TOKEN])
def test_the_key_as_basic_password_or_bearer_opens_a_decrypted_tunnel(tmp_path, authorization):
    """The bridge key as the Basic password (any user) or as a Bearer token: 200, and TLS begins."""
    proxied = memory_proxy(tmp_path)
    protocol, transport = proxied.send(
        f"CONNECT {OPENAI_HOST}:443 HTTP/1.1\r\nProxy-Authorization: {authorization}\r\n\r\n".encode())
    assert transport.value() == ESTABLISHED
    assert not transport.disconnecting
    assert transport.producerState == "producing"
    assert proxied.sample("bridgeproxy_aiproxy_connects_total", outcome="mitm") == 1
    assert proxied.sample("bridgeproxy_aiproxy_tunnels_open", kind="mitm") == 1
    protocol.connectionLost(None)
    assert proxied.sample("bridgeproxy_aiproxy_tunnels_open", kind="mitm") == 0


def test_a_disabled_user_is_403_and_a_store_that_is_down_503(tmp_path):
    """A disabled user's key: 403; an identity backend that cannot answer: 503; no tunnel either way."""
    proxied = memory_proxy(tmp_path, identities=memory.Identities(
        {memory.TOKEN: Identity(memory.USER_ID, "alice", disabled=True)}))
    _, transport = proxied.connect_request(f"{OPENAI_HOST}:443")
    assert refused(transport).status == 403

    class Down:
        def identify(self, token):
            return fail(NotConfigured("The key store is unavailable; try again shortly."))
    proxied = memory_proxy(tmp_path / "down", identities=Down())
    _, transport = proxied.connect_request(f"{OPENAI_HOST}:443")
    answer = refused(transport)
    assert answer.status == 503
    assert answer.json()["error"]["message"] == "The key store is unavailable; try again shortly."


@pytest.mark.parametrize("error,status,headers", [
    (PermissionDenied("This user is not active in the Coder deployment."), 403, {}),
    (IdentityUnavailable("The Coder deployment cannot be reached.", headers={"Retry-After": "7"}), 503,
     {"retry-after": [b"7"]}),
    (AuthenticationFailed("This key has expired."), 407, {"proxy-authenticate": [b'Basic realm="bridgeproxy"']}),
])
def test_the_identity_backends_refusal_is_answered_as_it_says(tmp_path, error, status, headers):
    """A backend that refuses with its own error: its status (a 401 as the proxy's 407), message and headers."""
    class Refusing:
        def identify(self, token):
            return fail(error)
    proxied = memory_proxy(tmp_path, identities=Refusing())
    _, transport = proxied.connect_request(f"{ANTHROPIC_HOST}:443")
    answer = refused(transport)
    assert answer.status == status
    assert answer.json()["error"]["message"] == error.message
    for name, values in headers.items():
        assert answer.headers[name] == values


def test_a_port_not_allowed_is_403_after_the_key(tmp_path):
    """A port off allowed_ports: 403 for a valid key (and still 407 without one: nothing is told for free)."""
    proxied = memory_proxy(tmp_path, aiproxy={"allowed_ports": [443]})
    _, transport = proxied.connect_request(f"{OPENAI_HOST}:8443")
    answer = refused(transport)
    assert answer.status == 403
    assert answer.json()["error"]["message"] == "Port 8443 is not allowed (allowed: 443)."
    _, transport = proxied.connect_request("example.test:22", key=None)
    assert refused(transport).status == 407
    assert proxied.resolver.asked == []


@pytest.mark.parametrize("target,addresses", [
    ("127.0.0.1:443", None), ("[::1]:443", None), ("10.1.2.3:443", None), ("0.0.0.0:443", None),
    ("[::ffff:127.0.0.1]:443", None), ("[fe80::1]:443", None), ("224.0.0.1:443", None),
    ("internal.test:443", ["10.0.0.5"]),
    ("metadata.test:443", ["169.254.169.254"]),
    ("cgnat.test:443", ["100.64.0.1"]),
    ("rebind.test:443", [PUBLIC, "192.168.1.1"]),  # one internal address among public ones
    ("sixtofour.test:443", ["2002:7f00:1::1"]),  # 6to4 of 127.0.0.1
])
def test_tunnels_to_internal_addresses_are_403(tmp_path, target, addresses):
    """The SSRF guard: a target that is, or resolves to, a non-public address is refused; nothing is dialled."""
    host = target.rsplit(":", 1)[0]
    proxied = memory_proxy(tmp_path, resolver=TableResolver({host: addresses} if addresses else {}))
    _, transport = proxied.connect_request(target)
    answer = refused(transport)
    assert answer.status == 403
    assert "private, loopback, link-local or reserved" in answer.json()["error"]["message"]
    assert proxied.reactor.tcpClients == []
    assert proxied.sample("bridgeproxy_aiproxy_connects_total", outcome="refused") == 1


def test_a_tunnel_connects_to_the_checked_address_and_passes_bytes_both_ways(tmp_path):
    """
    A host off the allow-list: resolved once, and the connection goes to the
    address that was checked, not to the name; bytes sent early and later go
    through unchanged, each way; each side's transport produces for the other.
    """
    proxied = memory_proxy(tmp_path, resolver=TableResolver({"example.test": [PUBLIC]}))
    client, client_transport = proxied.connect_request("example.test:443", extra=b"\x16\x03\x01early")
    assert client_transport.value() == b""  # no answer before the target is reached
    assert client_transport.producerState == "paused"
    assert [c[:2] for c in proxied.reactor.tcpClients] == [(PUBLIC, 443)]
    assert proxied.reactor.tcpClients[0][3] == proxied.gateway.bridge.config.upstream.connect_timeout
    target, target_transport = proxied.accept_outbound()
    assert client_transport.value() == ESTABLISHED
    assert target_transport.value() == b"\x16\x03\x01early"
    assert client_transport.producerState == "producing"
    client.dataReceived(b"\x00client bytes\xff")
    target.dataReceived(b"\xfftarget bytes\x00")
    assert target_transport.value() == b"\x16\x03\x01early\x00client bytes\xff"
    assert client_transport.value() == ESTABLISHED + b"\xfftarget bytes\x00"
    assert client_transport.producer is target_transport and target_transport.producer is client_transport
    assert proxied.resolver.asked == ["example.test"]
    assert proxied.sample("bridgeproxy_aiproxy_tunnels_open", kind="tunnelled") == 1
    assert proxied.sample("bridgeproxy_aiproxy_leaf_certificates_total") == 0


def test_a_half_close_is_passed_on_and_the_tunnel_closes_when_both_are_done(tmp_path):
    """The client's end of sending half-closes the target's side; the target's end then closes both."""
    proxied = memory_proxy(tmp_path, resolver=TableResolver({"example.test": [PUBLIC]}))
    client, client_transport = proxied.connect_request("example.test:443")
    target, target_transport = proxied.accept_outbound()
    client.readConnectionLost()
    assert target_transport.write_closed and not target_transport.disconnecting
    assert target_transport.producer is None  # the client produces no more
    target.writeConnectionLost()
    target.dataReceived(b"answer after the half-close")
    assert client_transport.value().endswith(b"answer after the half-close")
    target.readConnectionLost()
    assert client_transport.write_closed
    client.writeConnectionLost()
    assert client_transport.disconnecting and target_transport.disconnecting


def test_a_lost_side_closes_the_other(tmp_path):
    """When the target's connection is lost, the client's closes (after what it holds is written)."""
    proxied = memory_proxy(tmp_path, resolver=TableResolver({"example.test": [PUBLIC]}))
    client, client_transport = proxied.connect_request("example.test:443")
    target, target_transport = proxied.accept_outbound()
    target.dataReceived(b"last words")
    target.connectionLost(Failure(ConnectionRefusedError()))
    assert client_transport.disconnecting
    assert client_transport.value().endswith(b"last words")
    client.connectionLost(None)
    assert proxied.sample("bridgeproxy_aiproxy_tunnels_open", kind="tunnelled") == 0


def test_allowed_private_cidrs_let_a_tunnel_reach_an_internal_address(tmp_path):
    """An address in allowed_private_cidrs is reachable; one next to it is not."""
    proxied = memory_proxy(tmp_path, aiproxy={"allowed_private_cidrs": ["10.1.0.0/16"]},
                           resolver=TableResolver({"git.internal": ["10.1.2.3"], "db.internal": ["10.2.0.1"]}))
    _, transport = proxied.connect_request("git.internal:443")
    assert [c[:2] for c in proxied.reactor.tcpClients] == [("10.1.2.3", 443)]
    _, transport = proxied.connect_request("db.internal:443")
    assert refused(transport).status == 403


def test_an_unreachable_or_unknown_target_is_502(tmp_path):
    """A name that does not resolve, or a target whose every address refuses: 502, counted as unreachable."""
    proxied = memory_proxy(tmp_path, resolver=TableResolver({"down.test": [PUBLIC, "93.184.216.35"]}))
    _, transport = proxied.connect_request("nowhere.test:443")
    assert refused(transport).json()["error"]["message"] == "nowhere.test could not be resolved."
    _, transport = proxied.connect_request("down.test:443")
    for _ in range(2):
        connector = proxied.reactor.connectors[-1]
        proxied.reactor.tcpClients[-1][2].clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
    assert [c[0] for c in proxied.reactor.tcpClients] == [PUBLIC, "93.184.216.35"]
    answer = refused(transport)
    assert answer.status == 502 and answer.json()["error"]["message"] == "down.test:443 could not be reached."
    assert proxied.sample("bridgeproxy_aiproxy_connects_total", outcome="unreachable") == 2


def test_tunnels_go_through_the_upstream_proxy_to_the_checked_address(tmp_path):
    """
    With upstream_proxy, a tunnel is a CONNECT to the upstream proxy naming
    the checked address, with the proxy URL's credentials; what the target
    sends right after the proxy's 200 reaches the client.
    """
    proxied = memory_proxy(tmp_path, aiproxy={"upstream_proxy": "http://corp%20user:s3cret@proxy.corp.test:3128"},
                           resolver=TableResolver({"example.test": [PUBLIC]}))
    client, client_transport = proxied.connect_request("example.test:443")
    assert [c[1] for c in proxied.reactor.tcpClients] == [3128]
    target, target_transport = proxied.accept_outbound()
    assert target_transport.value() == (
        f"CONNECT {PUBLIC}:443 HTTP/1.1\r\nHost: {PUBLIC}:443\r\n"
        f"Proxy-Authorization: Basic {base64.b64encode(b'corp user:s3cret').decode()}\r\n\r\n").encode()
    assert client_transport.value() == b""
    target.dataReceived(b"HTTP/1.1 200 OK\r\nVia: corp\r\n\r\nserver hello")
    assert client_transport.value() == ESTABLISHED + b"server hello"

    client, client_transport = proxied.connect_request("example.test:443")
    target, target_transport = proxied.accept_outbound()
    target.dataReceived(b"HTTP/1.1 403 Forbidden\r\n\r\n")
    assert refused(client_transport).status == 502


@pytest.mark.parametrize("raw,status", [
    (b"CONNECT api.openai.com HTTP/1.1\r\n\r\n", 400),  # no port
    (b"CONNECT api.openai.com:0 HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT ::1:443 HTTP/1.1\r\n\r\n", 400),  # IPv6 without brackets
    (b"CONNECT bad_host!:443 HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT api.openai.com:443 HTTP/2\r\n\r\n", 400),
    (b"CONNECT api.openai.com:443 HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
    (b"CONNECT api.openai.com:443 HTTP/1.1\r\n folded: x\r\n\r\n", 400),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /ca.pem HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\n\r\n", 404),
    (b"POST /ca.pem HTTP/1.1\r\n\r\n", 405),
    (b"GET http://api.openai.com/v1/models HTTP/1.1\r\n\r\n", 403),
    (b"GET http://example.com/ HTTP/1.1\r\n\r\n", 501),
])
def test_requests_the_proxy_cannot_serve_get_a_clear_error(tmp_path, raw, status):
    """Malformed heads, wrong paths and plain-HTTP proxying: a JSON error with the right status, then close."""
    proxied = memory_proxy(tmp_path)
    _, transport = proxied.send(raw)
    answer = refused(transport)
    assert answer.status == status
    assert answer.json()["error"]["message"]
    assert proxied.reactor.tcpClients == [] and proxied.resolver.asked == []


def test_an_over_long_head_is_431_without_waiting_for_its_end(tmp_path):
    """A head past 16 KiB is refused as soon as it is too long."""
    proxied = memory_proxy(tmp_path)
    _, transport = proxied.send(b"CONNECT api.openai.com:443 HTTP/1.1\r\nX-Filler: " + b"a" * 17000)
    assert refused(transport).status == 431


def test_the_ca_certificate_is_served_without_a_key(tmp_path):
    """GET /ca.pem: the CA certificate (PEM), no key needed; HEAD gives its length only."""
    proxied = memory_proxy(tmp_path)
    _, transport = proxied.send(b"GET /ca.pem HTTP/1.1\r\nHost: proxy\r\n\r\n")
    answer = parse_answer(transport.value())
    assert answer.status == 200
    assert answer.body == (tmp_path / "ca" / "ca.pem").read_bytes()
    assert answer.headers["content-type"] == [b"application/x-pem-file"]
    _, transport = proxied.send(b"HEAD /ca.pem HTTP/1.1\r\n\r\n")
    answer = parse_answer(transport.value())
    assert answer.body == b"" and int(answer.headers["content-length"][0]) == len(proxied.proxy.ca.pem)


def test_a_client_that_sends_no_head_in_time_gets_408(tmp_path):
    """Half a request head and silence: 408 after the head timeout."""
    proxied = memory_proxy(tmp_path)
    _, transport = proxied.send(b"CONNECT api.openai.com:443 HTTP/1.1\r\n")
    proxied.reactor.advance(server.HEAD_TIMEOUT - 1)
    assert transport.value() == b""
    proxied.reactor.advance(1)
    assert refused(transport).status == 408


def test_a_target_that_never_answers_is_504(tmp_path):
    """A name whose resolution hangs: 504 after the decision timeout, and nothing is dialled, even later."""
    class Hanging:
        def __init__(self):
            self.pending = Deferred()

        def resolve(self, host, port):
            return self.pending
    resolver = Hanging()
    proxied = memory_proxy(tmp_path, resolver=resolver)
    _, transport = proxied.connect_request("slow.test:443")
    proxied.reactor.advance(server.DECIDE_TIMEOUT)
    assert refused(transport).status == 504
    # The lookup runs on (a thread cannot be stopped) and keeps its turn; its late answer is not used.
    assert not resolver.pending.called
    resolver.pending.callback([PUBLIC])
    assert proxied.reactor.tcpClients == []


def test_a_client_leaving_while_its_key_is_checked_gets_nothing_started(tmp_path):
    """The client goes away before the key check answers: the check is let go, and no tunnel is made."""
    class Slow:
        def __init__(self):
            self.pending = []

        def identify(self, token):
            d = Deferred()
            self.pending.append(d)
            return d
    identities = Slow()
    proxied = memory_proxy(tmp_path, identities=identities, resolver=TableResolver({"example.test": [PUBLIC]}))
    protocol, transport = proxied.connect_request("example.test:443")
    protocol.connectionLost(None)
    assert identities.pending[0].called  # cancelled
    assert transport.value() == b"" and proxied.reactor.tcpClients == []


def test_a_client_leaving_during_the_upstream_proxys_answer_closes_that_connection(tmp_path):
    """The client goes while the upstream proxy has not answered its CONNECT: that connection is dropped too."""
    proxied = memory_proxy(tmp_path, aiproxy={"upstream_proxy": "http://proxy.corp.test:3128"},
                           resolver=TableResolver({"example.test": [PUBLIC]}))
    client, client_transport = proxied.connect_request("example.test:443")
    target, target_transport = proxied.accept_outbound()
    client.connectionLost(None)
    assert target_transport.disconnecting
    assert client_transport.value() == b""


def test_the_guard_applies_before_the_upstream_proxy_too(tmp_path):
    """With upstream_proxy, an internal target is still refused here: the upstream proxy never hears of it."""
    proxied = memory_proxy(tmp_path, aiproxy={"upstream_proxy": "http://proxy.corp.test:3128"},
                           resolver=TableResolver({"intranet.test": ["10.0.0.8"]}))
    _, transport = proxied.connect_request("intranet.test:443")
    assert refused(transport).status == 403
    assert proxied.reactor.tcpClients == []


def test_a_host_name_that_starts_with_a_digit_is_resolved_like_any_other(tmp_path):
    """1password.com is a name, not an address: it is resolved, checked, and dialled at its address."""
    proxied = memory_proxy(tmp_path, resolver=TableResolver({"1password.com": [PUBLIC]}))
    proxied.connect_request("1password.com:443")
    assert proxied.resolver.asked == ["1password.com"]
    assert [c[:2] for c in proxied.reactor.tcpClients] == [(PUBLIC, 443)]


class _Pending:
    """An identity backend whose checks never answer."""

    def identify(self, token):
        return Deferred()


@pytest.mark.parametrize("raw", [
    b"CONNECT api.openai.com:443 HTTP/1.1\r\n\r\n",  # 407
    b"GET /ca.pem HTTP/1.1\r\n\r\n",  # the CA certificate
])
def test_after_an_answer_the_client_is_read_and_cut_off_if_it_does_not_close(tmp_path, raw):
    """
    An answer the proxy closes on: the connection is read again (a TLS
    listener must read the client's close_notify to end), what the client
    sends is dropped, and a client that never closes is cut off after the
    close timeout.
    """
    proxied = memory_proxy(tmp_path)
    protocol, transport = proxied.send(raw)
    assert transport.disconnecting
    assert transport.producerState == "producing"
    answer = transport.value()
    protocol.dataReceived(b"x" * 100_000)
    assert transport.value() == answer
    proxied.reactor.advance(server.CLOSE_TIMEOUT - 0.5)
    assert not transport.disconnected
    proxied.reactor.advance(0.5)
    assert transport.disconnected  # aborted
    protocol.connectionLost(None)
    assert proxied.reactor.getDelayedCalls() == []


def test_a_client_that_closes_in_time_leaves_no_timer_behind(tmp_path):
    """A refused client that closes its side: the close timeout is let go."""
    proxied = memory_proxy(tmp_path)
    protocol, transport = proxied.send(b"CONNECT api.openai.com:443 HTTP/1.1\r\n\r\n")
    protocol.connectionLost(None)
    assert proxied.reactor.getDelayedCalls() == []
    proxied.reactor.advance(server.CLOSE_TIMEOUT)
    assert not transport.disconnected


def test_bytes_after_an_over_long_head_are_dropped_not_kept(tmp_path):
    """After a 431 the client's further bytes are not answered, and are not kept."""
    proxied = memory_proxy(tmp_path)
    protocol, transport = proxied.send(b"CONNECT api.openai.com:443 HTTP/1.1\r\nX-Filler: " + b"a" * 17000)
    answer = refused(transport)
    assert answer.status == 431
    for _ in range(100):
        protocol.dataReceived(b"a" * 65536)
    assert parse_answer(transport.value()).status == 431
    assert len(protocol._buffer) == 0


def test_a_client_sending_too_much_while_its_key_is_checked_is_cut_off(tmp_path):
    """Bytes kept for a tunnel that is not open yet: more than a head's worth ends the connection."""
    proxied = memory_proxy(tmp_path, identities=_Pending())
    protocol, transport = proxied.connect_request(f"{OPENAI_HOST}:443", extra=b"\x16\x03\x01")
    protocol.dataReceived(b"a" * 8000)
    assert not transport.disconnecting
    protocol.dataReceived(b"a" * 9000)
    assert transport.disconnected  # aborted
    assert transport.value() == b""


class _Held:
    """A resolver whose lookups wait until the test answers them, by name."""

    def __init__(self):
        self.pending = {}

    def resolve(self, host, port):
        self.pending[host] = Deferred()
        return self.pending[host]


def test_tunnel_lookups_run_a_few_at_a_time(tmp_path):
    """
    Tunnels' name lookups share the reactor's threads with the bridge: at
    most four run at once, the others wait their turn; a client that leaves
    while waiting gets its lookup dropped, and one that leaves mid-lookup
    keeps its turn taken until that lookup ends.
    """
    resolver = _Held()
    proxied = memory_proxy(tmp_path, resolver=resolver)
    clients = [proxied.connect_request(f"host{i}.test:443") for i in range(7)]
    assert sorted(resolver.pending) == [f"host{i}.test" for i in range(4)]
    clients[4][0].connectionLost(None)  # leaves while waiting
    clients[0][0].connectionLost(None)  # leaves mid-lookup: its turn is still taken
    assert len(resolver.pending) == 4
    resolver.pending["host0.test"].callback([PUBLIC])
    assert "host4.test" not in resolver.pending and "host5.test" in resolver.pending
    assert clients[0][1].value() == b""
    resolver.pending["host1.test"].callback([PUBLIC])
    assert "host6.test" in resolver.pending
    assert [c[:2] for c in proxied.reactor.tcpClients] == [(PUBLIC, 443)]  # host1's tunnel only
    resolver.pending["host2.test"].callback([])
    assert refused(clients[2][1]).status == 502


def test_a_lookup_waiting_its_turn_past_the_decision_timeout_is_504(tmp_path):
    """A CONNECT whose lookup never got a turn: 504 after the decision timeout, and it is never started."""
    resolver = _Held()
    proxied = memory_proxy(tmp_path, resolver=resolver)
    for i in range(4):
        proxied.connect_request(f"host{i}.test:443")
    proxied.reactor.advance(1)
    _, transport = proxied.connect_request("late.test:443")
    proxied.reactor.advance(server.DECIDE_TIMEOUT - 1)  # the first four time out; their lookups run on
    assert "late.test" not in resolver.pending
    proxied.reactor.advance(1)
    assert refused(transport).status == 504
    for i in range(4):
        resolver.pending[f"host{i}.test"].callback([PUBLIC])  # the turns free up: nobody waits for them
    assert "late.test" not in resolver.pending
    assert proxied.reactor.tcpClients == []


def test_an_expired_ca_refuses_decrypted_connects_with_503_and_says_so_once(tmp_path, captured_log):
    """
    A CA that expires while the proxy runs: CONNECTs to the decrypted hosts
    get a clear 503 (no leaf is minted, nothing crashes), and the log says
    why once, not once per CONNECT.
    """
    proxied = memory_proxy(tmp_path)
    proxied.reactor.advance(proxied.proxy.ca.cert.not_valid_after_utc.timestamp() + 1)
    for _ in range(3):
        _, transport = proxied.connect_request(f"{OPENAI_HOST}:443")
        answer = refused(transport)
        assert answer.status == 503
        assert answer.json()["error"]["message"] == (
            "The AI proxy's CA certificate has expired; an administrator must renew it.")
    assert proxied.sample("bridgeproxy_aiproxy_leaf_certificates_total") == 0
    text = captured_log.text()
    assert text.count("the CA certificate expired on") == 1
    assert "Traceback" not in text and "Unhandled" not in text
