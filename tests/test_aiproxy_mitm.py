"""
Decrypted tunnels in memory: a client's TLS inside a CONNECT to an
allow-listed host, the requests inside it served by the bridge for the
host's provider as the CONNECT's user, their log lines, the TLS failure a
client that does not trust the CA causes, and the tunnel's idle timeout.
"""

import json

import pytest

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import formatEvent
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET

from bridgeproxy.types import mask_secret
from tests import memory
from tests.aiproxies import ANTHROPIC_HOST, OPENAI_HOST, memory_proxy, memory_tls_client
from tests.certs import make_ca

ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
OTHER_KEY = "bp_other-bridge-key-0123456789abcdefXYZ"


def chat_request(path: str = "/v1/chat/completions", host: str = OPENAI_HOST, headers: dict = None,
                 body: dict = CHAT) -> bytes:
    data = json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
             f"Content-Length: {len(data)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def test_a_request_in_a_decrypted_tunnel_reaches_the_hosts_provider_as_the_connects_user(tmp_path):
    """
    Inside the TLS (the host's leaf, trusted through the proxy's CA), a
    request is the bridge's: it reaches the provider the host maps to with
    the central key, as the CONNECT's user, whatever key the client put in
    X-Coder-Token itself; neither bridge key reaches the provider.
    """
    proxied = memory_proxy(tmp_path, identities=memory.Identities({
        memory.TOKEN: memory.Identity(memory.USER_ID, "alice"),
        OTHER_KEY: memory.Identity("6e1f0b5c-0000-4000-8000-000000000002", "bob")}))
    client = memory_tls_client(proxied, OPENAI_HOST)
    assert client.head == ESTABLISHED
    client.send(chat_request(headers={"X-Coder-Token": OTHER_KEY}))
    [answer] = client.answers()
    assert answer.status == 200 and answer.json() == {"ok": True}
    [seen] = proxied.gateway.upstream.seen
    assert (seen.method, seen.uri) == (b"POST", b"/v1/chat/completions")
    assert seen.header("authorization") == f"Bearer {memory.OPENAI_KEY}".encode()
    assert memory.TOKEN not in repr(seen.headers) and OTHER_KEY not in repr(seen.headers)
    [record] = proxied.gateway.records
    assert (record.provider, record.initiator_username) == ("openai", "alice")


def test_a_tunnel_to_the_anthropic_host_is_served_by_the_anthropic_provider(tmp_path):
    """The host decides the provider: api.anthropic.com's requests get Anthropic's central key."""
    proxied = memory_proxy(tmp_path)
    client = memory_tls_client(proxied, ANTHROPIC_HOST)
    client.send(chat_request("/v1/messages", ANTHROPIC_HOST, body={
        "model": "claude-sonnet-4", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}))
    assert [a.status for a in client.answers()] == [200]
    [seen] = proxied.gateway.upstream.seen
    assert seen.uri == b"/v1/messages"
    assert seen.header("x-api-key") == memory.ANTHROPIC_KEY.encode()
    assert [r.provider for r in proxied.gateway.records] == ["anthropic"]


def test_requests_in_a_tunnel_log_the_proxys_line_with_the_key_masked(tmp_path, captured_log):
    """
    Each decrypted request logs one line saying it came through the proxy:
    method, the https URL the client asked for (the CONNECT's key masked if
    it is in the path, no query string), who opened the tunnel and the
    bridge's usual facts; the bridge's own line is not logged too.
    """
    proxied = memory_proxy(tmp_path)
    proxied.gateway.upstream.handler = memory.json_answer(200, {
        "id": "c1", "object": "chat.completion", "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})
    client = memory_tls_client(proxied, OPENAI_HOST)
    client.send(chat_request())
    client.send(chat_request(f"/v1/nothing/{memory.TOKEN}?secret=q"))
    assert [a.status for a in client.answers()] == [200, 404]
    ok, refused = proxied.gateway.records
    lines = [e for e in captured_log.events if "interception" in e.get("log_format", "")]
    assert [e["log_namespace"] for e in lines] == ["bridgeproxy.aiproxy"] * 2
    assert [formatEvent(e) for e in lines] == [
        f"interception {ok.id} via aiproxy POST https://api.openai.com/v1/chat/completions tunnel_user=alice "
        f"initiator=alice client=Unknown provider=openai route=chat.completions model=gpt-4o status=ok "
        f"http_status=200 upstream_status=200 tokens_in=3 tokens_out=5 duration_ms=0",
        f"interception {refused.id} via aiproxy POST https://api.openai.com/v1/nothing/{mask_secret(memory.TOKEN)} "
        f"tunnel_user=alice initiator=alice client=Unknown provider=openai route={refused.route} model=None "
        f"status=refused http_status=404 upstream_status=None tokens_in=0 tokens_out=0 duration_ms=0"]
    assert memory.TOKEN not in captured_log.text() and "secret=q" not in captured_log.text()


@pytest.mark.parametrize("secret", [
    memory.ANTHROPIC_KEY,                      # another provider's key, configured on the gateway
    "sk-proj-ClientOwnKey0123456789abcdef",    # a key shaped like a provider's, the client's own
])
def test_any_key_in_a_tunnelled_path_is_masked_in_the_proxys_line(tmp_path, captured_log, secret):
    """The proxy's line masks every key the bridge would: not only the CONNECT's own."""
    proxied = memory_proxy(tmp_path)
    client = memory_tls_client(proxied, OPENAI_HOST)
    client.send(chat_request(f"/v1/nothing/{secret}"))
    assert [a.status for a in client.answers()] == [404]
    assert secret not in captured_log.text()
    lines = [formatEvent(e) for e in captured_log.events if "via aiproxy" in e.get("log_format", "")]
    assert len(lines) == 1 and f"/v1/nothing/{mask_secret(secret)} " in lines[0]


TLS_FAILED = "aiproxy: TLS with the client for api.openai.com failed, before any request (does the client trust " \
             "the proxy's CA?): "


def tls_failures(captured_log):
    return [formatEvent(e) for e in captured_log.events if "TLS with the client" in e.get("log_format", "")]


def test_a_client_that_does_not_trust_the_ca_fails_its_handshake_and_the_log_says_why(tmp_path, captured_log):
    """A client trusting another CA refuses the leaf: one log line names the host and the likely cause."""
    proxied = memory_proxy(tmp_path)
    other_ca, _ = make_ca(tmp_path)
    client = memory_tls_client(proxied, OPENAI_HOST, trust=(tmp_path / "ca.pem").read_bytes())
    assert other_ca == tmp_path / "ca.pem"
    [line] = tls_failures(captured_log)
    assert line.startswith(TLS_FAILED) and "unknown ca" in line[len(TLS_FAILED):]
    assert client.lost
    assert proxied.gateway.upstream.seen == []


def test_tls_garbage_is_blamed_on_the_ca_only_before_the_first_request(tmp_path, captured_log):
    """
    Bytes that are not TLS, once the handshake is done: before any request
    the log suspects the CA; after a request was read the client did trust
    it, and nothing is said.  A client that simply leaves is not a failure.
    """
    proxied = memory_proxy(tmp_path)
    client = memory_tls_client(proxied, OPENAI_HOST)
    client.protocol.dataReceived(b"\x17\x03\x03\x00\x05junk!")
    client.pump()
    assert client.lost
    assert len(tls_failures(captured_log)) == 1

    client = memory_tls_client(proxied, OPENAI_HOST)
    client.send(chat_request())
    assert [a.status for a in client.answers()] == [200]
    client.protocol.dataReceived(b"\x17\x03\x03\x00\x05junk!")
    client.pump()
    assert client.lost
    assert len(tls_failures(captured_log)) == 1

    client = memory_tls_client(proxied, OPENAI_HOST)
    client.protocol.connectionLost(Failure(ConnectionDone()))
    client = memory_tls_client(proxied, OPENAI_HOST)
    client.protocol.connectionLost(None)
    assert len(tls_failures(captured_log)) == 1
    assert proxied.sample("bridgeproxy_aiproxy_tunnels_open", kind="mitm") == 0


def test_an_idle_decrypted_tunnel_is_closed_after_the_bridges_idle_timeout(tmp_path):
    """A tunnel left idle after its request ends as the bridge's own connections do, on the proxy's clock."""
    proxied = memory_proxy(tmp_path)
    client = memory_tls_client(proxied, OPENAI_HOST)
    client.send(chat_request())
    timeout = proxied.gateway.site.timeOut
    assert timeout
    proxied.reactor.advance(timeout - 1)
    assert not client.transport.disconnecting
    proxied.reactor.advance(1)
    client.pump()
    assert client.transport.disconnecting


def test_decrypted_requests_are_in_the_bridges_access_log(tmp_path):
    """With the bridge's access log, a request inside a tunnel gets its line there too."""
    proxied = memory_proxy(tmp_path)
    logged = []
    proxied.gateway.site.log = logged.append
    client = memory_tls_client(proxied, OPENAI_HOST)
    client.send(chat_request())
    client.send(chat_request())
    assert [(r.method, r.path, r.code) for r in logged] == [(b"POST", b"/v1/chat/completions", 200)] * 2


def test_a_client_offering_http2_and_http11_gets_http11(tmp_path):
    """ALPN: the decrypted tunnel speaks HTTP/1.1 only, and says so to a client that offers both."""
    proxied = memory_proxy(tmp_path)
    client = memory_tls_client(proxied, OPENAI_HOST, alpn=[b"h2", b"http/1.1"])
    assert client.tls.negotiatedProtocol == b"http/1.1"
    client.send(chat_request())
    assert [a.status for a in client.answers()] == [200]


def test_a_client_leaving_mid_request_lets_the_upstream_request_go(tmp_path):
    """The tunnel's client goes while the provider has not answered: the upstream request is cancelled too."""
    proxied = memory_proxy(tmp_path)
    proxied.gateway.upstream.handler = lambda request: NOT_DONE_YET
    client = memory_tls_client(proxied, OPENAI_HOST)
    client.send(chat_request())
    assert len(proxied.gateway.upstream.requests) == 1 and proxied.gateway.records == []
    client.protocol.connectionLost(Failure(ConnectionLost("the client hung up")))
    proxied.gateway.pump()
    assert proxied.gateway.upstream.lost == proxied.gateway.upstream.requests
    [record] = proxied.gateway.records
    assert record.initiator_username == "alice" and record.status != "ok"


def test_a_tls_hello_sent_with_the_connect_is_not_lost(tmp_path):
    """A client that does not wait for the 200 before its TLS hello: the handshake still completes."""
    proxied = memory_proxy(tmp_path)
    client = memory_tls_client(proxied, OPENAI_HOST, together=True)
    assert client.head == ESTABLISHED
    client.send(chat_request())
    assert [a.status for a in client.answers()] == [200]
    assert proxied.sample("bridgeproxy_aiproxy_leaf_certificates_total") == 1


def test_the_bridges_body_limit_applies_inside_a_tunnel(tmp_path):
    proxied = memory_proxy(tmp_path, extra={"max_body_bytes": 1024})
    client = memory_tls_client(proxied, OPENAI_HOST)
    client.send(chat_request(body={**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]}))
    assert [a.status for a in client.answers()] == [413]
    assert proxied.gateway.upstream.seen == []
