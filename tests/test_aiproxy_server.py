"""
The AI proxy's answers to the letter, in memory: the exact bytes of its
refusals and of /ca.pem, what each refusal says and in which provider's
shape, the log lines of its failures, and the clean ends of a CONNECT that
its client leaves, that times out or that an identity backend breaks.
"""

import json
import socket
from dataclasses import replace

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.logger import formatEvent
from twisted.python.failure import Failure

from bridgeproxy.aiproxy import server
from bridgeproxy.errors import BridgeError, NotConfigured, openai_error
from tests import memory
from bridgeproxy.types import Identity
from tests.aiproxies import ANTHROPIC_HOST, OPENAI_HOST, HalfClosingTransport, TableResolver, basic, memory_proxy
from tests.memory import parse_answer

PUBLIC = "93.184.216.34"
ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


def openai_answer(status: int, phrase: bytes, kind: str, message: str, extra: bytes = b"") -> bytes:
    """A refusal as the proxy writes it, in OpenAI's shape."""
    body = json.dumps(openai_error(kind, message)).encode()
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\nConnection: close\r\n\r\n"
            % (status, phrase, extra, len(body)) + body)


@pytest.mark.parametrize("raw,status,phrase,kind,message", [
    (b"GET / HTTP/1.1\r\n\r\n", 404, b"Not Found", "not_found",
     "Not found: this is an HTTPS proxy; its CA certificate is at /ca.pem."),
    (b"GET /ca.pem.bak HTTP/1.1\r\n\r\n", 404, b"Not Found", "not_found",
     "Not found: this is an HTTPS proxy; its CA certificate is at /ca.pem."),
    (b"POST /ca.pem HTTP/1.1\r\n\r\n", 405, b"Method Not Allowed", "invalid_request",
     "Only GET and HEAD read /ca.pem."),
    (b"GET http://example.com/ HTTP/1.1\r\n\r\n", 501, b"Not Implemented", "invalid_request",
     "This proxy forwards HTTPS only (CONNECT); plain HTTP requests are not forwarded."),
    (b"GET example.com:80 HTTP/1.1\r\n\r\n", 400, b"Bad Request", "invalid_request", "Malformed request target."),
    (b"GET /ca.pem HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431, b"Request Header Fields Too Large",
     "invalid_request", "More than 100 header lines."),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 16400, 431, b"Request Header Fields Too Large", "invalid_request",
     "The request head is larger than 16384 bytes."),
])
def test_requests_that_are_not_served_get_exactly_this_answer(tmp_path, raw, status, phrase, kind, message):
    """Each refusal: its status and phrase, a JSON error in OpenAI's shape with its kind and message, then close."""
    proxied = memory_proxy(tmp_path)
    _, transport = proxied.send(raw)
    assert transport.value() == openai_answer(status, phrase, kind, message)
    assert transport.disconnecting


def test_a_plain_http_request_to_a_decrypted_host_is_refused_in_its_providers_shape(tmp_path):
    proxied = memory_proxy(tmp_path)
    _, transport = proxied.send(f"GET http://{OPENAI_HOST}/v1/models HTTP/1.1\r\n\r\n".encode())
    answer = parse_answer(transport.value())
    assert (answer.status, answer.phrase) == (403, b"Forbidden")
    assert answer.json()["error"]["message"] == (
        "api.openai.com is served over HTTPS only: use https:// (the proxy decrypts it with CONNECT).")
    assert answer.json()["error"]["type"] == "permission_error"
    _, transport = proxied.send(f"GET http://{ANTHROPIC_HOST}/v1/messages HTTP/1.1\r\n\r\n".encode())
    answer = parse_answer(transport.value())
    assert answer.status == 403
    assert answer.json() == {"type": "error", "error": {"type": "permission_error", "message": (
        "api.anthropic.com is served over HTTPS only: use https:// (the proxy decrypts it with CONNECT).")}}


@pytest.mark.parametrize("target", [b"/ca.pem", b"/ca.pem?download=1", b"/ca.pem?a=1?b=2"])
def test_the_ca_certificate_is_served_exactly_so(tmp_path, target):
    """/ca.pem (whatever its query): the PEM, as a file to save, then close."""
    proxied = memory_proxy(tmp_path)
    _, transport = proxied.send(b"GET " + target + b" HTTP/1.1\r\n\r\n")
    pem = proxied.proxy.ca.pem
    assert transport.value() == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-pem-file\r\n"
        b'Content-Disposition: attachment; filename="bridgeproxy-ca.pem"\r\n'
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(pem) + pem)
    assert transport.disconnecting


def connect(proxied, target="example.test:443", key=memory.TOKEN):
    """A CONNECT to C{target} (by default a host with no provider: errors in the proxy's own shape)."""
    return proxied.send(f"CONNECT {target} HTTP/1.1\r\nProxy-Authorization: {basic(key)}\r\n\r\n".encode())


def refusal_lines(captured_log):
    return [formatEvent(e) for e in captured_log.events if "refused" in e.get("log_format", "")]


def test_a_refused_connect_is_logged_with_its_target_user_status_and_message(tmp_path, captured_log):
    proxied = memory_proxy(tmp_path, aiproxy={"allowed_ports": [443]})
    connect(proxied, "example.test:8443")
    connect(proxied, "example.test:443", key="bp_wrong-key-0123456789")
    proxied.send(b"CONNECT bad_host!:443 HTTP/1.1\r\n\r\n")
    assert refusal_lines(captured_log) == [
        "aiproxy CONNECT example.test:8443 user=alice: refused 403 (Port 8443 is not allowed (allowed: 443).)",
        "aiproxy CONNECT example.test:443 user=None: refused 407 "
        "(Invalid, expired or revoked bridge key in Proxy-Authorization.)",
        "aiproxy CONNECT ? user=None: refused 400 (The request target is not a host name or an IP address.)"]
    assert "bp_wrong-key" not in "\n".join(refusal_lines(captured_log))


def test_a_connect_with_no_port_allowed_says_none(tmp_path):
    proxied = memory_proxy(tmp_path, aiproxy={"allowed_ports": []})
    _, transport = connect(proxied)
    assert parse_answer(transport.value()).json()["error"]["message"] == "Port 443 is not allowed (allowed: none)."


def test_an_ipv6_target_is_named_in_brackets(tmp_path, captured_log):
    proxied = memory_proxy(tmp_path)
    connect(proxied, "[::1]:443")
    assert refusal_lines(captured_log)[0].startswith("aiproxy CONNECT [::1]:443 user=alice: refused 403 (")


class _Refusing(BridgeError):
    status = 429
    kind = "rate_limit"


class _Odd(BridgeError):
    status = 599


@pytest.mark.parametrize("error,phrase,kind", [
    (_Refusing("Too many keys checked; slow down."), b"Too Many Requests", "rate_limit"),
    (_Odd("Something odd."), b"Error", "api_error"),
])
def test_an_identity_backends_own_error_keeps_its_status_kind_and_phrase(tmp_path, error, phrase, kind):
    class Backend:
        def identify(self, token):
            return fail(error)
    proxied = memory_proxy(tmp_path, identities=Backend())
    _, transport = connect(proxied)
    assert transport.value() == openai_answer(error.status, phrase, kind, error.message)


def test_header_values_from_an_identity_backend_cannot_split_the_answer(tmp_path):
    """A backend's header with line breaks or non-Latin-1 text: one header line, still."""
    error = NotConfigured("Down.", headers={"Retry-After": "7\r\nSet-Cookie: evil=1\nX: \u2603"})

    class Backend:
        def identify(self, token):
            return fail(error)
    proxied = memory_proxy(tmp_path, identities=Backend())
    _, transport = connect(proxied)
    assert transport.value() == openai_answer(
        503, b"Service Unavailable", "api_error", "Down.", extra=b"Retry-After: 7  Set-Cookie: evil=1 X: ?\r\n")


def test_a_key_check_that_fails_unexpectedly_is_503_and_logged(tmp_path, captured_log):
    class Broken:
        def identify(self, token):
            raise RuntimeError("the backend fell over")
    proxied = memory_proxy(tmp_path, identities=Broken())
    _, transport = connect(proxied)
    assert transport.value() == openai_answer(503, b"Service Unavailable", "overloaded",
                                              "The bridge key could not be checked; try again shortly.")
    [event] = [e for e in captured_log.events if e.get("log_failure") is not None]
    assert formatEvent(event) == "aiproxy: checking a bridge key failed"
    assert str(event["log_failure"].value) == "the backend fell over"


def test_an_error_while_serving_a_connect_cuts_the_connection_and_is_logged(tmp_path, captured_log):
    """An identity backend answering nonsense: the connection is aborted, the log names the CONNECT."""
    class Nonsense:
        def identify(self, token):
            return object()
    proxied = memory_proxy(tmp_path, identities=Nonsense())
    _, transport = connect(proxied)
    assert transport.value() == b"" and transport.disconnected
    [event] = [e for e in captured_log.events if e.get("log_failure") is not None]
    assert formatEvent(event) == "aiproxy: unexpected error serving CONNECT example.test:443"
    assert event["log_failure"].check(AttributeError)


def test_a_key_check_that_answers_after_the_decision_timeout_adds_nothing(tmp_path, captured_log):
    """The key check outlives the decision timeout: 504 once; its cancellation is neither logged nor answered."""
    class Hanging:
        def identify(self, token):
            return Deferred()
    proxied = memory_proxy(tmp_path, identities=Hanging())
    _, transport = connect(proxied)
    proxied.reactor.advance(server.DECIDE_TIMEOUT)
    assert transport.value() == openai_answer(504, b"Gateway Timeout", "timeout",
                                              "The proxy could not open the tunnel in time.")
    assert "checking a bridge key failed" not in captured_log.text()


def test_a_key_check_failing_after_the_client_left_is_not_answered(tmp_path, captured_log):
    """A backend that fails (rather than stops) when its check is let go: nothing is written or logged."""
    class Failing:
        def identify(self, token):
            return Deferred(lambda d: d.errback(NotConfigured("The key store is unavailable.")))
    proxied = memory_proxy(tmp_path, identities=Failing())
    protocol, transport = connect(proxied)
    protocol.connectionLost(None)
    assert transport.value() == b""
    assert refusal_lines(captured_log) == []


def test_a_name_that_fails_to_resolve_is_502(tmp_path):
    class Failing:
        def resolve(self, host, port):
            return fail(DNSLookupError(host))
    proxied = memory_proxy(tmp_path, resolver=Failing())
    _, transport = connect(proxied, "nowhere.test:443")
    assert transport.value() == openai_answer(502, b"Bad Gateway", "api_error", "nowhere.test could not be resolved.")


def test_a_target_that_does_not_accept_in_time_is_504_and_no_other_address_is_tried(tmp_path, captured_log):
    """
    The decision timeout while connecting: 504, and that is all: the next
    address is not dialled, and no 502 comes before or after it.
    """
    proxied = memory_proxy(tmp_path, resolver=TableResolver({"example.test": [PUBLIC, "93.184.216.35"]}))
    _, transport = connect(proxied, "example.test:443")
    proxied.reactor.advance(server.DECIDE_TIMEOUT)
    assert transport.value() == openai_answer(504, b"Gateway Timeout", "timeout",
                                              "The proxy could not open the tunnel in time.")
    assert [c[0] for c in proxied.reactor.tcpClients] == [PUBLIC]
    assert "failed" not in captured_log.text()

    proxied = memory_proxy(tmp_path / "one", resolver=TableResolver({"example.test": [PUBLIC]}))
    _, transport = connect(proxied, "example.test:443")
    proxied.reactor.advance(server.DECIDE_TIMEOUT)
    assert parse_answer(transport.value()).status == 504
    assert transport.value().count(b"HTTP/1.1") == 1


def test_a_client_leaving_while_the_target_is_dialled_stops_there(tmp_path, captured_log):
    """The client goes while the first address is dialled: no other address is tried, nothing is logged as failed."""
    proxied = memory_proxy(tmp_path, resolver=TableResolver({"example.test": [PUBLIC, "93.184.216.35"]}))
    protocol, transport = connect(proxied, "example.test:443")
    protocol.connectionLost(None)
    proxied.reactor.tcpClients[-1][2].clientConnectionFailed(proxied.reactor.connectors[-1],
                                                             Failure(ConnectionRefusedError()))
    assert [c[0] for c in proxied.reactor.tcpClients] == [PUBLIC]
    assert transport.value() == b""
    assert "failed" not in captured_log.text()


def test_an_unreachable_target_is_logged_with_the_reason(tmp_path, captured_log):
    proxied = memory_proxy(tmp_path, resolver=TableResolver({"down.test": [PUBLIC, "93.184.216.35"]}))
    _, transport = connect(proxied, "down.test:443")
    for _ in range(2):
        proxied.reactor.tcpClients[-1][2].clientConnectionFailed(
            proxied.reactor.connectors[-1], Failure(ConnectionRefusedError("nobody home " + "x" * 300)))
    assert [c[:2] for c in proxied.reactor.tcpClients] == [(PUBLIC, 443), ("93.184.216.35", 443)]
    [event] = [e for e in captured_log.events if "failed" in e.get("log_format", "")]
    assert event["target"] == "down.test:443"
    assert event["reason"] == ("Connection was refused by other side: nobody home " + "x" * 300)[:200]
    assert formatEvent(event) == f"aiproxy: CONNECT down.test:443 failed: {event['reason']}"


def test_bytes_sent_early_and_by_the_target_first_reach_the_other_side_once(tmp_path):
    """Bytes the client sent with its CONNECT, and the target's first bytes: each delivered once, unchanged."""
    proxied = memory_proxy(tmp_path, aiproxy={"upstream_proxy": "http://proxy.corp.test:3128"},
                           resolver=TableResolver({"example.test": [PUBLIC]}))
    client, client_transport = proxied.send(
        f"CONNECT example.test:443 HTTP/1.1\r\nProxy-Authorization: {basic(memory.TOKEN)}\r\n\r\nhello".encode())
    target, target_transport = proxied.accept_outbound()
    target_transport.clear()
    target.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nwelcome")
    client.dataReceived(b" again")
    target.dataReceived(b" back")
    assert target_transport.value() == b"hello again"
    assert client_transport.value() == ESTABLISHED + b"welcome back"


def test_a_decrypted_tunnel_offers_http11_to_a_tls_listeners_clients():
    """The proxy's factory offers HTTP/1.1 (ALPN) for clients of a TLS listener."""
    assert server.AIProxy.acceptableProtocols(None) == [b"http/1.1"]


def test_a_connect_without_a_key_gets_exactly_this_407(tmp_path):
    proxied = memory_proxy(tmp_path)
    _, transport = proxied.send(b"CONNECT example.test:443 HTTP/1.1\r\n\r\n")
    assert transport.value() == openai_answer(
        407, b"Proxy Authentication Required", "authentication",
        "Proxy authentication required: send your bridge key as the password of Proxy-Authorization: Basic "
        "(or as a Bearer token).", extra=b'Proxy-Authenticate: Basic realm="bridgeproxy"\r\n')


def test_a_head_that_does_not_arrive_gets_exactly_this_408(tmp_path):
    proxied = memory_proxy(tmp_path)
    _, transport = proxied.send(b"CONNECT example.test:443 HTTP/1.1\r\n")
    proxied.reactor.advance(server.HEAD_TIMEOUT)
    assert transport.value() == openai_answer(408, b"Request Timeout", "timeout",
                                              "The request head did not arrive in time.")


@pytest.mark.parametrize("identity,message", [
    (None, "Invalid, expired or revoked bridge key in Proxy-Authorization."),
    (Identity(memory.USER_ID, "alice", disabled=True), "This user is disabled."),
])
def test_a_refused_key_gets_exactly_this_answer(tmp_path, identity, message):
    proxied = memory_proxy(tmp_path, identities=memory.Identities({memory.TOKEN: identity}))
    _, transport = connect(proxied)
    if identity is None:
        assert transport.value() == openai_answer(
            407, b"Proxy Authentication Required", "authentication", message,
            extra=b'Proxy-Authenticate: Basic realm="bridgeproxy"\r\n')
    else:
        assert transport.value() == openai_answer(403, b"Forbidden", "permission", message)


def test_the_allowed_ports_are_listed_in_the_refusal(tmp_path):
    proxied = memory_proxy(tmp_path, aiproxy={"allowed_ports": [443, 8443]})
    _, transport = connect(proxied, "example.test:22")
    assert parse_answer(transport.value()).json()["error"]["message"] == (
        "Port 22 is not allowed (allowed: 443, 8443).")


def opened_lines(captured_log):
    return [formatEvent(e) for e in captured_log.events if e.get("log_format", "").endswith(": {kind}")]


def test_an_opened_tunnel_is_logged_with_its_target_user_and_kind(tmp_path, captured_log):
    """One line per tunnel: where to, whose key (its user id when it has no name), decrypted or not."""
    proxied = memory_proxy(tmp_path, identities=memory.Identities({memory.TOKEN: Identity(memory.USER_ID, None)}),
                           resolver=TableResolver({"example.test": [PUBLIC]}))
    connect(proxied, f"{OPENAI_HOST}:443")
    connect(proxied, "example.test:443")
    proxied.accept_outbound()
    assert opened_lines(captured_log) == [f"aiproxy CONNECT api.openai.com:443 user={memory.USER_ID}: mitm",
                                          f"aiproxy CONNECT example.test:443 user={memory.USER_ID}: tunnelled"]


def test_only_connects_are_counted_and_a_refused_connection_leaves_no_tunnel_counted(tmp_path):
    proxied = memory_proxy(tmp_path)
    protocol, _ = proxied.send(b"GET / HTTP/1.1\r\n\r\n")
    protocol.connectionLost(None)
    assert proxied.sample("bridgeproxy_aiproxy_connects_total", outcome="refused") is None
    protocol, _ = proxied.send(b"CONNECT example.test:443 HTTP/1.1\r\n\r\n")
    protocol.connectionLost(None)
    assert proxied.sample("bridgeproxy_aiproxy_connects_total", outcome="407") == 1
    assert proxied.sample("bridgeproxy_aiproxy_tunnels_open", kind="") is None


def test_a_decision_timeout_is_counted_as_unreachable(tmp_path):
    proxied = memory_proxy(tmp_path, resolver=TableResolver({"example.test": [PUBLIC]}))
    connect(proxied)
    proxied.reactor.advance(server.DECIDE_TIMEOUT)
    assert proxied.sample("bridgeproxy_aiproxy_connects_total", outcome="unreachable") == 1


class _Socket:
    def __init__(self, error=None):
        self.options, self.error = [], error

    def setsockopt(self, level, name, value):
        if self.error is not None:
            raise self.error
        self.options.append((level, name, value))


class _SocketTransport(HalfClosingTransport):
    def __init__(self, handle):
        super().__init__()
        self.handle = handle

    def getHandle(self):
        return self.handle


def test_a_tcp_connection_sends_without_delay(tmp_path):
    """Small writes (a tunnel's TLS records) go out at once: TCP_NODELAY on the client's socket."""
    proxied = memory_proxy(tmp_path)
    handle = _Socket()
    proxied.proxy.buildProtocol(None).makeConnection(_SocketTransport(handle))
    assert handle.options == [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    protocol = proxied.proxy.buildProtocol(None)
    transport = _SocketTransport(_Socket(OSError("not a TCP socket")))
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET /ca.pem HTTP/1.1\r\n\r\n")
    assert parse_answer(transport.value()).status == 200


def test_a_head_of_the_largest_size_is_read(tmp_path):
    """A head of exactly 16 KiB (its end arriving later) is served; one byte more is 431."""
    proxied = memory_proxy(tmp_path)
    start = b"GET /ca.pem HTTP/1.1\r\nX-Filler: "
    head = start + b"a" * (server.MAX_HEAD - len(start))
    protocol, transport = proxied.send(head)
    assert transport.value() == b""
    protocol.dataReceived(b"\r\n\r\n")
    assert parse_answer(transport.value()).status == 200
    _, transport = proxied.send(head + b"a\r\n\r\n")
    assert parse_answer(transport.value()).status == 431


def test_an_empty_head_is_a_malformed_request(tmp_path):
    proxied = memory_proxy(tmp_path)
    _, transport = proxied.send(b"\r\n\r\nGET /ca.pem HTTP/1.1\r\n\r\n")
    assert parse_answer(transport.value()).status == 400


class _Held:
    """A resolver whose lookups wait until the test answers them."""

    def __init__(self):
        self.pending = []

    def resolve(self, host, port):
        self.pending.append(Deferred())
        return self.pending[-1]


def test_early_bytes_up_to_a_heads_size_are_kept_for_the_tunnel(tmp_path):
    """
    Bytes sent after the CONNECT (blank lines in them too) are kept while
    the name is resolved, up to 16 KiB, and reach the target; more cut the
    connection, and what comes after is not kept.
    """
    resolver = _Held()
    proxied = memory_proxy(tmp_path, resolver=resolver)
    early = b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"
    early += b"a" * (server.MAX_HEAD - len(early))
    protocol, transport = connect(proxied)
    protocol.dataReceived(early)
    assert not transport.disconnected
    resolver.pending[0].callback([PUBLIC])
    target, target_transport = proxied.accept_outbound()
    assert target_transport.value() == early

    # The same bytes in the CONNECT's own read: the head ends at its first blank line.
    proxied.send(f"CONNECT example.test:443 HTTP/1.1\r\nProxy-Authorization: {basic(memory.TOKEN)}\r\n\r\n".encode()
                 + early)
    resolver.pending[1].callback([PUBLIC])
    target, target_transport = proxied.accept_outbound()
    assert target_transport.value() == early

    protocol, transport = connect(proxied)
    protocol.dataReceived(early + b"a")
    assert transport.disconnected
    for _ in range(10):
        protocol.dataReceived(b"a" * 65536)
    assert len(protocol._buffer) <= server.MAX_HEAD + 1


def test_a_tunnel_takes_half_closes_only_once_it_is_open(tmp_path):
    """Before the tunnel opens, the client's end of sending ends its connection; after, it is passed on."""
    proxied = memory_proxy(tmp_path, resolver=TableResolver({"example.test": [PUBLIC]}))
    protocol, _ = connect(proxied)
    assert not IHalfCloseableProtocol.providedBy(protocol)
    proxied.accept_outbound()
    assert IHalfCloseableProtocol.providedBy(protocol)


def test_a_client_that_goes_closes_the_targets_connection(tmp_path):
    proxied = memory_proxy(tmp_path, resolver=TableResolver({"example.test": [PUBLIC]}))
    protocol, transport = connect(proxied)
    target, target_transport = proxied.accept_outbound()
    protocol.connectionLost(None)
    assert target_transport.disconnecting and not transport.disconnecting


def test_a_name_is_resolved_for_the_connects_port(tmp_path):
    proxied = memory_proxy(tmp_path, aiproxy={"allowed_ports": [8443]},
                           resolver=TableResolver({"example.test": [PUBLIC]}))
    connect(proxied, "example.test:8443")
    assert proxied.resolver.ports == [8443]


def test_a_resolver_answering_nonsense_cuts_the_connection(tmp_path, captured_log):
    proxied = memory_proxy(tmp_path, resolver=TableResolver({"example.test": ["not an address"]}))
    _, transport = connect(proxied)
    assert transport.value() == b"" and transport.disconnected
    assert "aiproxy: unexpected error serving CONNECT example.test:443" in captured_log.text()


def test_without_a_resolver_the_reactors_own_is_used(tmp_path):
    """make_aiproxy without a resolver: names go to the reactor's (which says 127.0.0.1 here: refused)."""
    proxied = memory_proxy(tmp_path)
    proxy = server.make_aiproxy(proxied.proxy.app, proxied.reactor)
    protocol = proxy.buildProtocol(None)
    transport = HalfClosingTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(f"CONNECT example.test:443 HTTP/1.1\r\nProxy-Authorization: {basic(memory.TOKEN)}"
                          f"\r\n\r\n".encode())
    assert parse_answer(transport.value()).status == 403
    assert proxied.resolver.asked == []


def test_the_guard_follows_the_allowed_ranges_in_force(tmp_path):
    """The guard is made once per set of allowed ranges, and again when a reload changes them."""
    proxied = memory_proxy(tmp_path, aiproxy={"allowed_private_cidrs": ["10.1.0.0/16"]})
    proxy = proxied.proxy
    first = proxy.guard()
    assert proxy.guard() is first and first.allows("10.1.0.1")
    app = proxy.app
    app.config = replace(app.config, aiproxy=replace(app.config.aiproxy, allowed_private_cidrs=("10.2.0.0/16",)))
    assert proxy.guard().allows("10.2.0.1") and not proxy.guard().allows("10.1.0.1")


class _FailingResolver:
    def resolve(self, host, port):
        return fail(DNSLookupError(host))


class _DownIdentities:
    def identify(self, token):
        return fail(RuntimeError("down"))


@pytest.mark.parametrize("setup,target", [
    (lambda tmp_path: memory_proxy(tmp_path, identities=_DownIdentities()), "example.test:443"),  # 503
    (lambda tmp_path: memory_proxy(tmp_path, resolver=_FailingResolver()), "example.test:443"),  # 502
    (lambda tmp_path: memory_proxy(tmp_path, resolver=TableResolver({"example.test": []})), "example.test:443"),
    (lambda tmp_path: memory_proxy(tmp_path, resolver=TableResolver({"example.test": ["10.0.0.1"]})),
     "example.test:443"),  # 403
    (lambda tmp_path: memory_proxy(tmp_path), "api.openai.com:22"),  # 403, the port
])
def test_a_refused_client_that_closes_is_let_go_cleanly(tmp_path, setup, target):
    """Whatever the refusal, the client's close ends everything: no error, no timer left."""
    proxied = setup(tmp_path)
    protocol, transport = connect(proxied, target)
    assert parse_answer(transport.value()).status in (403, 502, 503)
    protocol.connectionLost(None)
    assert proxied.reactor.getDelayedCalls() == []


def test_an_unreachable_targets_client_that_closes_is_let_go_cleanly(tmp_path):
    proxied = memory_proxy(tmp_path, resolver=TableResolver({"example.test": [PUBLIC]}))
    protocol, transport = connect(proxied)
    proxied.reactor.tcpClients[-1][2].clientConnectionFailed(proxied.reactor.connectors[-1],
                                                             Failure(ConnectionRefusedError()))
    assert parse_answer(transport.value()).status == 502
    protocol.connectionLost(None)
    assert proxied.reactor.getDelayedCalls() == []
