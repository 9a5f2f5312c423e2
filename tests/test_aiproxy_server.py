"""
The AI proxy's answers to the letter, in memory: the exact bytes of its
refusals and of /ca.pem, what each refusal says and in which provider's
shape, the log lines of its failures, and the clean ends of a CONNECT that
its client leaves, that times out or that an identity backend breaks.
"""

import json

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.logger import formatEvent
from twisted.python.failure import Failure

from bridgeproxy.aiproxy import server
from bridgeproxy.errors import BridgeError, NotConfigured, openai_error
from tests import memory
from tests.aiproxies import ANTHROPIC_HOST, OPENAI_HOST, TableResolver, basic, memory_proxy
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
    assert "aiproxy: checking a bridge key failed" in captured_log.text()
    assert "the backend fell over" in captured_log.text()


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
