"""
The HTTP server side in memory (L{bridgeproxy.proxy.site}): the request body
limit as the body arrives, the access log line (no query string, no
Referer, nothing a terminal would interpret), the idle timeout, and answers
to what Twisted would otherwise choke on.
"""

import json

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource

from bridgeproxy.proxy.resource import BridgeResource
from bridgeproxy.proxy.site import BoundedRequest, make_site
from tests import memory
from tests.memory import TOKEN

BEARER = {"Authorization": f"Bearer {TOKEN}"}


def chat_body(size: int) -> bytes:
    """A chat completions body of exactly C{size} bytes."""
    head = b'{"model":"gpt-4o","messages":[],"pad":"'
    return head + b"x" * (size - len(head) - 2) + b'"}'


# -- the body limit -----------------------------------------------------------------------


def test_a_body_of_exactly_the_limit_is_taken():
    """max_body_bytes is the largest body accepted: at it, the request is forwarded; one byte more is 413, with
    the length announced or with the body chunked."""
    g = memory.gateway({"max_body_bytes": 100})
    assert g.send("POST", "/openai/v1/chat/completions", chat_body(100), BEARER).status == 200
    assert g.send("POST", "/openai/v1/chat/completions", chat_body(101), BEARER).status == 413
    head = (b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: b\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")
    for size, status in ((100, 200), (101, 413)):
        body = chat_body(size)
        chunks = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (50, body[:50], size - 50, body[50:])
        assert g.send_raw(head + chunks).status == status
    assert [len(s.body) for s in g.upstream.seen] == [100, 100]


def test_nothing_of_a_body_announced_too_large_is_kept():
    """A body whose announced length is over the limit is discarded as it arrives, from its first byte."""
    from twisted.web.test.requesthelper import DummyChannel
    request = BoundedRequest(DummyChannel())
    request.max_body = 10
    request.gotLength(11)
    request.handleContentChunk(b"12345")
    assert request.too_large and request.content.getvalue() == b""
    request = BoundedRequest(DummyChannel())
    request.max_body = 10
    request.gotLength(None)
    request.handleContentChunk(b"1234567890")
    assert not request.too_large and request.content.getvalue() == b"1234567890"
    request.handleContentChunk(b"1")
    assert request.too_large and request.content.getvalue() == b""


# -- the access log ---------------------------------------------------------------------


def logged(g, raw: bytes, peer=None, **site_options) -> list[str]:
    """The access log lines written while the bridge answers C{raw} (make_site's own site, on g's clock)."""
    import os
    import tempfile
    site = make_site(BridgeResource(g.bridge), g.bridge.config.max_body_bytes, g.clock, **site_options)
    with tempfile.TemporaryDirectory() as directory:
        site.logPath = os.path.join(directory, "access.log")
        site.doStart()
        peer = peer or IPv4Address("TCP", "10.1.2.3", 40000)
        protocol = site.buildProtocol(peer)
        protocol.makeConnection(StringTransport(peerAddress=peer))
        protocol.dataReceived(raw)
        g.pump()
        protocol.connectionLost(None)
        site.doStop()
        with open(site.logPath, encoding="utf-8") as f:
            return f.read().splitlines()


def test_the_access_log_line_has_no_query_and_no_referer():
    """One combined-format line per request: peer, time, request line without the query string, status, bytes
    sent, no Referer, the User-Agent."""
    g = memory.gateway()
    g.clock.advance(86400 + 3661)
    lines = logged(g, memory.request_bytes("GET", "/openai/v1/models?key=sk-secret", None, {
        **BEARER, "Referer": "https://x.example/?token=secret", "User-Agent": "curl/8.5"}), access_log=True)
    answer = json.dumps({"ok": True}).encode()
    assert lines == [f'10.1.2.3 - - [02/Jan/1970:01:01:01 +0000] "GET /openai/v1/models HTTP/1.1" 200 {len(answer)} '
                     '"-" "curl/8.5"']


def test_the_access_log_line_without_a_user_agent_a_body_or_an_address():
    """No User-Agent, no body sent and a peer with no IP address (a UNIX socket) each show as `-`."""
    g = memory.gateway()
    lines = logged(g, b"HEAD /anthropic HTTP/1.0\r\n\r\n", peer=UNIXAddress(b"/run/bridge.sock"), access_log=True)
    assert lines == ['- - - [01/Jan/1970:00:00:00 +0000] "HEAD /anthropic HTTP/1.0" 200 - "-" "-"']


def test_the_access_log_line_shows_nothing_a_terminal_would_interpret():
    """Quotes, backslashes and control characters in the path or the User-Agent become `?`; other printable
    characters, ASCII or not, stay; the path is cut at 512 characters and the User-Agent at 256."""
    g = memory.gateway()

    def line(path: bytes, agent: bytes) -> str:
        (only,) = logged(g, b"GET %s HTTP/1.1\r\nHost: b\r\nConnection: close\r\nUser-Agent: %s\r\n\r\n" % (
            path, agent), access_log=True)
        return only
    assert line(b'/openai/v1/a"b\\c\x7fd', b"curl/8.5").split('"')[1] == "GET /openai/v1/a?b?c?d HTTP/1.1"
    for agent, shown in ((b"a\x1bb", "a?b"), (b'say "hi"', "say ?hi?"), (b"a\\b", "a?b"),
                         (b'X11 "b" \\ c', "X11 ?b? ? c"), (b"\xe9t\xe9\t!", "\xe9t\xe9?!")):
        assert line(b"/x", agent).endswith(f' "-" "{shown}"'), agent
    long_path, long_agent = b"/" + b"p" * 600, b"a" * 300
    logged_line = line(long_path, long_agent)
    assert f'"GET {long_path[:512].decode()} HTTP/1.1"' in logged_line
    assert logged_line.endswith(f' "{long_agent[:256].decode()}"')


def test_no_access_log_unless_asked():
    g = memory.gateway()
    assert logged(g, memory.request_bytes("GET", "/openai/v1/models", None, BEARER)) == []
    assert logged(g, memory.request_bytes("GET", "/openai/v1/models", None, BEARER), access_log=False) == []


# -- what make_site sets up -------------------------------------------------------------


def connect(site, clock=None):
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_an_idle_client_connection_is_closed_after_a_minute():
    """A client connection that sends nothing is closed after 60 seconds on the site's clock (or the timeout
    given)."""
    clock = Clock()
    _, transport = connect(make_site(Resource(), 100, clock))
    clock.advance(59.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting
    _, transport = connect(make_site(Resource(), 100, clock, timeout=5))
    clock.advance(5)
    assert transport.disconnecting


def test_an_unexpected_error_shows_no_traceback():
    """A resource that raises answers 500 without the traceback or the exception's text."""

    class Broken(Resource):
        isLeaf = True

        def render(self, request):
            raise ValueError("secret detail")
    protocol, transport = connect(make_site(Broken(), 100, Clock()))
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")
    answer = memory.parse_answer(transport.value())
    assert answer.status == 500
    assert b"secret detail" not in answer.raw and b"Traceback" not in answer.raw and b"ValueError" not in answer.raw


def test_a_hostile_content_type_is_answered():
    """A POST whose Content-Type the email package cannot parse (a NEL byte) is still answered: the site never
    looks for form arguments in a body."""
    g = memory.gateway()
    body = json.dumps({"model": "gpt-4o", "messages": []}).encode()
    raw = (b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: b\r\nConnection: close\r\n"
           b"Content-Type: multipart/form-data; boundary=\x85x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    answer = g.send_raw(raw)
    assert answer.status == 401 and answer.json()["error"]["code"] == "invalid_api_key"
