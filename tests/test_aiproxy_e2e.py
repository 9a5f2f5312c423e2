"""
The AI proxy over real loopback sockets and real TLS (SPEC section 8):
the official SDKs and curl, configured with only a proxy URL and the proxy's
CA, reach the fake provider through proxy -> bridge; tunnels elsewhere carry
bytes unchanged; refusals come before any TLS.
"""

import hashlib
import json
import shutil
import signal
import socket
import ssl
import subprocess
from dataclasses import replace

import anthropic
import openai
import pytest
import pytest_twisted
from cryptography import x509
from twisted.internet import defer, reactor, threads
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from bridgeproxy.aiproxy import create_ca
from bridgeproxy.store import Database
from tests import aiproxies, fakes, procs
from tests.aiproxies import ANTHROPIC_HOST, OPENAI_HOST, TableResolver, connect_tunnel, start_proxy, tls_client
from tests.certs import make_ca
from tests.coderfake import FakeCoder, coder_token, listen_tls
from tests.conftest import assert_no_secrets
from tests.payloads import CHAT_CHUNKS, CHAT_JSON, MESSAGE_EVENTS, MESSAGE_JSON
from tests.streams import ANTHROPIC_EVENTS, sleep

CLIENT_OWN_KEY = "sk-ant-client-own-KEY-9876543210fedcba"


def provider_like(request, received):
    """Answers the chat and messages routes as the providers would, streamed or not."""
    path = received.uri.split(b"?")[0]
    streamed = json.loads(received.body).get("stream") is True
    blocking, events = {b"/v1/chat/completions": (CHAT_JSON, CHAT_CHUNKS),
                        b"/v1/messages": (MESSAGE_JSON, MESSAGE_EVENTS)}[path]
    if streamed:
        return fakes.sse_answer(events)(request, received)
    return fakes.json_answer(200, blocking)(request, received)


def trusting(ca_path):
    return ssl.create_default_context(cafile=ca_path)


def _http_client(sdk):
    """The SDK's own default HTTP client class (httpx's next generation where the SDK has both)."""
    return getattr(sdk, "DefaultHttpx2Client", None) or sdk.DefaultHttpxClient


def openai_client(running, proxy_key, api_key):
    http = _http_client(openai)(proxy=running.url_with_key(proxy_key), verify=trusting(running.ca_path))
    return openai.OpenAI(base_url=f"https://{OPENAI_HOST}/v1", api_key=api_key, http_client=http,
                         max_retries=0, timeout=10)


def anthropic_client(running, proxy_key, api_key):
    http = _http_client(anthropic)(proxy=running.url_with_key(proxy_key), verify=trusting(running.ca_path))
    return anthropic.Anthropic(base_url=f"https://{ANTHROPIC_HOST}", api_key=api_key, http_client=http,
                               max_retries=0, timeout=10)


@pytest.fixture
def proxied(tmp_path, captured_log):
    """A bridge and its AI proxy on loopback; stopped after the test."""
    running = pytest_twisted.blockon(start_proxy(tmp_path))
    running.log = captured_log
    running.bridge.upstream.handler = provider_like
    yield running
    pytest_twisted.blockon(running.stop())


@pytest_twisted.inlineCallbacks
def until(condition, seconds=5.0):
    """Wait (polling the reactor) until C{condition()} holds; fail after C{seconds}."""
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        yield sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest_twisted.inlineCallbacks
def test_openai_sdk_through_the_proxy_blocking_and_streamed(proxied):
    """
    The OpenAI SDK, given only the proxy URL (the bridge key as its password)
    and the CA, reaches the provider: blocking and streamed; the provider gets
    the provider key, never the bridge key; both calls are recorded for the
    key's user, with the request ids of the proxy's log lines.
    """
    token = proxied.bridge.create_key("alice")
    client = openai_client(proxied, token, token)
    messages = [{"role": "user", "content": "weather in Paris?"}]
    result = yield threads.deferToThread(client.chat.completions.create, model="gpt-4o", messages=messages)
    assert result.choices[0].message.tool_calls[0].function.name == "get_weather"

    def stream():
        return "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            model="gpt-4o", messages=messages, stream=True, stream_options={"include_usage": True})
            if chunk.choices)
    text = yield threads.deferToThread(stream)
    assert text == "Hello"
    seen = proxied.bridge.upstream.requests
    assert [r.uri for r in seen] == [b"/v1/chat/completions"] * 2
    for request in seen:
        assert request.header("authorization") == f"Bearer {fakes.OPENAI_KEY}"
        assert token not in json.dumps(request.headers)
        assert not [name for name in request.headers if name.startswith(("x-coder", "proxy-"))]
    yield proxied.bridge.flush()
    rows = sorted(proxied.bridge.rows(), key=lambda r: r["streamed"])
    assert [(r["initiator_username"], r["credential_kind"], r["streamed"], r["status"]) for r in rows] == [
        ("alice", "centralized", False, "ok"), ("alice", "centralized", True, "ok")]
    assert (rows[1]["input_tokens"], rows[1]["output_tokens"]) == (11, 2)
    log = proxied.log.text()
    for row in rows:
        assert (f"interception {row['id']} via aiproxy POST https://{OPENAI_HOST}/v1/chat/completions "
                f"tunnel_user=alice initiator=alice client=Unknown provider=openai route=chat.completions") in log
        assert log.count(f"interception {row['id']}") == 1  # the proxy's line instead of the bridge's, not both
    assert_no_secrets(log, token, fakes.OPENAI_KEY)


@pytest_twisted.inlineCallbacks
def test_anthropic_sdk_brings_its_own_key_through_the_proxy(proxied):
    """
    The Anthropic SDK with its own API key: the proxy leaves it alone, so the
    provider gets the client's key (BYOK), blocking and streamed; recorded as
    byok for the bridge key's user.
    """
    token = proxied.bridge.create_key("bob")
    client = anthropic_client(proxied, token, CLIENT_OWN_KEY)
    kwargs = dict(model="claude-sonnet-4-6", max_tokens=100, messages=[{"role": "user", "content": "ls"}])
    result = yield threads.deferToThread(client.messages.create, **kwargs)
    assert result.content[1].name == "read_file"

    def stream():
        with client.messages.stream(**kwargs) as s:
            return s.get_final_message()
    final = yield threads.deferToThread(stream)
    assert final.content[0].input == {"cmd": "ls"}
    for request in proxied.bridge.upstream.requests:
        # Where the SDK puts its key (X-Api-Key, or a Bearer token in newer versions) is where it arrives.
        assert CLIENT_OWN_KEY in (request.header("x-api-key"), (request.header("authorization") or "")[7:])
        assert token not in json.dumps(request.headers)
        assert fakes.ANTHROPIC_KEY not in json.dumps(request.headers)
    yield proxied.bridge.flush()
    rows = proxied.bridge.rows()
    assert sorted((r["initiator_username"], r["credential_kind"], r["streamed"]) for r in rows) == [
        ("bob", "byok", False), ("bob", "byok", True)]
    assert_no_secrets(proxied.log.text(), token, CLIENT_OWN_KEY)


@pytest_twisted.inlineCallbacks
def test_many_requests_share_one_tunnel(proxied):
    """Keep-alive: several requests through one tunnel, each served and recorded; one CONNECT, one leaf."""
    token = proxied.bridge.create_key("alice")
    client = openai_client(proxied, token, token)

    def three():
        return [client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}]).id
                for _ in range(3)]
    ids = yield threads.deferToThread(three)
    assert len(ids) == 3
    metrics = proxied.bridge.app.metrics.registry
    assert metrics.get_sample_value("bridgeproxy_aiproxy_connects_total", {"outcome": "mitm"}) == 1
    assert metrics.get_sample_value("bridgeproxy_aiproxy_leaf_certificates_total") == 1
    assert metrics.get_sample_value("bridgeproxy_aiproxy_tunnels_open", {"kind": "mitm"}) == 1
    client.close()
    yield until(lambda: metrics.get_sample_value("bridgeproxy_aiproxy_tunnels_open", {"kind": "mitm"}) == 0)
    yield proxied.bridge.flush()
    assert len(proxied.bridge.rows()) == 3


@pytest_twisted.inlineCallbacks
def test_curl_through_the_proxy(proxied):
    """curl --proxy ... --cacert ... reaches the provider through the bridge; GET /ca.pem is the CA."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    token = proxied.bridge.create_key("alice")
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})

    def curl(*args):
        return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, timeout=20)
    done = yield threads.deferToThread(curl, "--proxy", proxied.url_with_key(token), "--cacert", proxied.ca_path,
                                       "-H", "Content-Type: application/json", "-d", body,
                                       f"https://{OPENAI_HOST}/v1/chat/completions")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model"] == CHAT_JSON["model"]
    assert proxied.bridge.upstream.requests[0].header("authorization") == f"Bearer {fakes.OPENAI_KEY}"
    pem = yield threads.deferToThread(curl, proxied.url + "/ca.pem")
    assert pem.stdout == open(proxied.ca_path, "rb").read()


@pytest_twisted.inlineCallbacks
def test_connect_without_or_with_a_wrong_key_is_407(proxied):
    """No key or a wrong key in Proxy-Authorization: 407 with Proxy-Authenticate, before any TLS."""
    for key in (None, "bp_not-a-key-0123456789abcdef"):
        sock, head = yield threads.deferToThread(connect_tunnel, proxied.port, f"{OPENAI_HOST}:443", key)
        rest = yield threads.deferToThread(sock.recv, 65536)
        sock.close()
        assert head.startswith(b"HTTP/1.1 407 Proxy Authentication Required\r\n")
        assert b'\r\nProxy-Authenticate: Basic realm="bridgeproxy"\r\n' in head
        assert json.loads(rest)["error"]["code"] == "invalid_api_key"  # OpenAI's shape: its host was asked for
    assert proxied.bridge.upstream.requests == []
    metrics = proxied.bridge.app.metrics.registry
    assert metrics.get_sample_value("bridgeproxy_aiproxy_connects_total", {"outcome": "407"}) == 2
    assert_no_secrets(proxied.log.text(), "bp_not-a-key-0123456789abcdef")


@pytest_twisted.inlineCallbacks
def test_sdk_sees_407_as_a_proxy_error(proxied):
    """The SDK with a wrong proxy password fails on the proxy, and nothing reaches the provider."""
    client = openai_client(proxied, "bp_wrong-0123456789abcdef", "sk-anything")

    def call():
        try:
            client.chat.completions.create(model="gpt-4o", messages=[])
        except openai.APIConnectionError as e:
            return repr(e.__cause__)
    error = yield threads.deferToThread(call)
    assert "407" in error
    assert proxied.bridge.upstream.requests == []


@pytest_twisted.inlineCallbacks
def test_private_target_is_403(proxied):
    """A tunnel to a loopback address is refused (403) when its range is not allowed; so is a port not allowed."""
    token = proxied.bridge.create_key("alice")
    for target, message in (("127.0.0.1:443", b"private, loopback"), ("[::1]:443", b"private, loopback"),
                            (f"{OPENAI_HOST}:8443", b"Port 8443 is not allowed")):
        sock, head = yield threads.deferToThread(connect_tunnel, proxied.port, target, token)
        rest = yield threads.deferToThread(sock.recv, 65536)
        sock.close()
        assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n"), target
        assert message in rest


@implementer(IHalfCloseableProtocol)
class _Shouter(Protocol):
    """Upper-cases what it reads; once the client stops sending, says how much it got and closes."""

    def connectionMade(self):
        self.count = 0

    def dataReceived(self, data):
        self.count += len(data)
        self.transport.write(data.upper())

    def readConnectionLost(self):
        self.transport.write(b"\nGOT %d" % self.count)
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


@pytest_twisted.inlineCallbacks
def test_tunnel_to_an_allowed_local_tls_server_is_not_decrypted(tmp_path, captured_log):
    """
    A CONNECT to a host off the allow-list, resolving to an allowed private
    range, is a tunnel: the client's TLS reaches the server (its certificate,
    not a leaf of the proxy's), and bytes go through unchanged both ways.
    """
    test_ca, issue = make_ca(tmp_path)
    cert, key = issue("echo.internal.test")
    port, echo = aiproxies.echo_tls_server(cert, key)
    resolver = TableResolver({"echo.internal.test": ["127.0.0.1"]})
    running = yield start_proxy(tmp_path, resolver=resolver, aiproxy={
        "allowed_private_cidrs": ["127.0.0.0/8"], "allowed_ports": [443, port.getHost().port]})
    try:
        token = running.bridge.create_key("alice")
        payload = bytes(range(256)) * 4096  # 1 MiB, every byte value

        def exchange():
            sock, head = connect_tunnel(running.port, f"echo.internal.test:{port.getHost().port}", token)
            assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
            tls = tls_client(sock, "echo.internal.test", str(test_ca))
            issuer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).issuer.rfc4514_string()
            # All of it first: the client does not read meanwhile, so the answer
            # waits on the proxy's back-pressure, not in the proxy's memory.
            tls.sendall(payload)
            echoed = _read_exactly(tls, len(payload))
            tls.close()
            return issuer, echoed
        issuer, echoed = yield threads.deferToThread(exchange)
        assert issuer == "CN=bridgeproxy test CA"
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
        assert echo.connections[0].received == payload
        assert resolver.asked == ["echo.internal.test"]
        metrics = running.bridge.app.metrics.registry
        assert metrics.get_sample_value("bridgeproxy_aiproxy_connects_total", {"outcome": "tunnelled"}) == 1
        assert metrics.get_sample_value("bridgeproxy_aiproxy_leaf_certificates_total") == 0
        assert "OneShot" not in captured_log.text()  # no "Starting factory" line per tunnel
    finally:
        yield running.stop()
        yield port.stopListening()


def _read_exactly(sock, size):
    chunks, got = [], 0
    while got < size:
        data = sock.recv(min(65536, size - got))
        if not data:
            break
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


@pytest_twisted.inlineCallbacks
def test_tunnel_passes_a_half_close_on(tmp_path, captured_log):
    """The client's end of sending reaches the server as such; the server's answer after it still arrives."""
    factory = Factory.forProtocol(_Shouter)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    running = yield start_proxy(tmp_path, aiproxy={"allowed_private_cidrs": ["127.0.0.1/32"],
                                                   "allowed_ports": [port.getHost().port]})
    try:
        token = running.bridge.create_key("alice")

        def exchange():
            sock, head = connect_tunnel(running.port, f"127.0.0.1:{port.getHost().port}", token)
            sock.sendall(b"hello tunnel")
            sock.shutdown(socket.SHUT_WR)
            return head, _read_exactly(sock, 1 << 20)
        head, answer = yield threads.deferToThread(exchange)
        assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
        assert answer == b"HELLO TUNNEL\nGOT 12"
        metrics = running.bridge.app.metrics.registry
        yield until(lambda: metrics.get_sample_value("bridgeproxy_aiproxy_tunnels_open", {"kind": "tunnelled"}) == 0)
    finally:
        yield running.stop()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_client_leaving_mid_stream_cancels_the_upstream(proxied):
    """A client that stops reading a stream and closes its tunnel cancels the upstream request, as directly."""
    token = proxied.bridge.create_key("alice")
    gate = defer.Deferred()
    proxied.bridge.upstream.handler = fakes.sse_answer(ANTHROPIC_EVENTS, gate=gate, gate_after=1)
    client = anthropic_client(proxied, token, token)

    def first_event_then_leave():
        with client.messages.stream(model="claude-sonnet-4-6", max_tokens=10,
                                    messages=[{"role": "user", "content": "hi"}]) as s:
            for event in s:
                return event.type
    first = yield threads.deferToThread(first_event_then_leave)
    client.close()
    assert first == "message_start"
    yield until(lambda: proxied.bridge.upstream.lost)
    assert not gate.called
    yield proxied.bridge.flush()
    row = proxied.bridge.rows()[0]
    assert row["status"] == "client_disconnected"
    assert row["input_tokens"] == 25
    assert f"interception {row['id']} via aiproxy POST https://{ANTHROPIC_HOST}/v1/messages" in proxied.log.text()


@pytest_twisted.inlineCallbacks
def test_plain_http_to_a_provider_is_refused_clearly(proxied):
    """GET http://api.openai.com/... through the proxy: 403 saying it is HTTPS only; nothing forwarded."""
    answer = yield threads.deferToThread(
        aiproxies.raw_exchange, proxied.port,
        b"GET http://api.openai.com/v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 Forbidden")
    assert "HTTPS only" in json.loads(body)["error"]["message"]
    assert proxied.bridge.upstream.requests == []


def _https_request(sock, raw):
    """Send one HTTP/1.1 request on C{sock}; read one answer with a Content-Length: C{(head, body)}."""
    sock.sendall(raw)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


@pytest_twisted.inlineCallbacks
def test_the_connects_key_decides_who_asked_whatever_the_client_sends_inside(proxied):
    """
    A client sending another key in X-Coder-Token inside the tunnel is still
    the CONNECT's user: the proxy's key is the one the bridge reads; neither
    key reaches the provider.
    """
    alice = proxied.bridge.create_key("alice")
    bob = proxied.bridge.create_key("bob")
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: application/json\r\n"
               b"X-Coder-Token: " + bob.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    def exchange():
        sock, head = connect_tunnel(proxied.port, f"{OPENAI_HOST}:443", alice)
        tls = tls_client(sock, OPENAI_HOST, proxied.ca_path)
        answers = [_https_request(tls, request) for _ in range(2)]  # keep-alive: two in one tunnel
        tls.close()
        return head, answers
    head, answers = yield threads.deferToThread(exchange)
    assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert [a[0].split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 2
    for seen in proxied.bridge.upstream.requests:
        assert alice not in json.dumps(seen.headers) and bob not in json.dumps(seen.headers)
    yield proxied.bridge.flush()
    assert [r["initiator_username"] for r in proxied.bridge.rows()] == ["alice", "alice"]


@pytest_twisted.inlineCallbacks
def test_a_tls_listener_for_the_proxy_itself(proxied, tmp_path):
    """The proxy on an ssl: endpoint: curl's TLS to the proxy, and the provider's TLS inside it."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    port, test_ca = yield aiproxies.tls_listener(proxied.proxy, tmp_path / "listener")
    try:
        token = proxied.bridge.create_key("alice")
        done = yield threads.deferToThread(subprocess.run, [
            "curl", "-sS", "--max-time", "10", "--proxy", f"https://bridge:{token}@localhost:{port.getHost().port}",
            "--proxy-cacert", test_ca, "--cacert", proxied.ca_path, "-H", "Content-Type: application/json",
            "-d", json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
            f"https://{OPENAI_HOST}/v1/chat/completions"], capture_output=True, timeout=20)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["model"] == CHAT_JSON["model"]
        assert proxied.bridge.upstream.requests[0].header("authorization") == f"Bearer {fakes.OPENAI_KEY}"
    finally:
        yield port.stopListening()


class _SaysThenStops(Protocol):
    """Sends a line, then half-closes: it will send no more."""

    def connectionMade(self):
        self.transport.write(b"all I have to say\n")
        self.transport.loseWriteConnection()


@pytest_twisted.inlineCallbacks
def test_a_tunnel_through_a_tls_listener_ends_cleanly(proxied, tmp_path):
    """
    A target's half-close, on a tunnel through the proxy's TLS listener: the
    client gets every byte, then a clean end of its TLS (TLS cannot half-close).
    """
    target = reactor.listenTCP(0, Factory.forProtocol(_SaysThenStops), interface="127.0.0.1")
    app = proxied.bridge.app  # as a reload would: the next CONNECT follows the new settings
    app.config = replace(app.config, aiproxy=replace(app.config.aiproxy, allowed_private_cidrs=("127.0.0.1/32",),
                                                     allowed_ports=(target.getHost().port,)))
    port, test_ca = yield aiproxies.tls_listener(proxied.proxy, tmp_path / "listener")
    try:
        token = proxied.bridge.create_key("alice")

        def exchange():
            raw = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
            sock = tls_client(raw, "localhost", test_ca)
            sock.sendall(f"CONNECT 127.0.0.1:{target.getHost().port} HTTP/1.1\r\n"
                         f"Proxy-Authorization: {aiproxies.basic(token)}\r\n\r\n".encode())
            return _read_exactly(sock, 1 << 20)  # until the end; an unclean end raises
        got = yield threads.deferToThread(exchange)
        assert got == b"HTTP/1.1 200 Connection established\r\n\r\nall I have to say\n"
    finally:
        yield port.stopListening()
        yield target.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_client_that_does_not_trust_the_ca_fails_its_handshake_and_the_log_says_why(proxied):
    """A client without the proxy's CA refuses the leaf; nothing reaches the provider; the log names the host."""
    token = proxied.bridge.create_key("alice")

    def handshake():
        sock, head = connect_tunnel(proxied.port, f"{OPENAI_HOST}:443", token)
        try:
            ssl.create_default_context().wrap_socket(sock, server_hostname=OPENAI_HOST)
        except ssl.SSLCertVerificationError as e:
            return e.verify_message
        finally:
            sock.close()
    message = yield threads.deferToThread(handshake)
    assert message == "unable to get local issuer certificate"
    yield until(lambda: "aiproxy: TLS with the client for api.openai.com failed" in proxied.log.text())
    assert "does the client trust the proxy's CA?" in proxied.log.text()
    assert proxied.bridge.upstream.requests == []


@pytest_twisted.inlineCallbacks
def test_twistd_serves_the_ai_proxy_beside_the_bridge(tmp_path):
    """
    `twistd -n bridgeproxy` with [aiproxy] listen: the OpenAI SDK gets through
    the proxy port to the provider, the request is recorded, and the start
    and the request are logged without the key.
    """
    ca_cert, ca_key = create_ca(str(tmp_path / "ca"))
    proxy_port = procs.free_port()
    port, up_port, upstream, config, token = procs.start_upstream_and_key(tmp_path, provider_like)
    with open(config, "a") as f:
        f.write(f'[aiproxy]\nlisten = "tcp:{proxy_port}:interface=127.0.0.1"\n'
                f'ca_cert = "{ca_cert}"\nca_key = "{ca_key}"\n')
    log_path = tmp_path / "twistd.log"
    proc = procs.spawn_twistd(config, ["--logfile", str(log_path), "bridgeproxy", "--config", config])
    try:
        yield threads.deferToThread(procs.wait_for_port, proxy_port, proc)
        running = aiproxies.ProxyRunning(bridge=None, proxy=None, port=proxy_port, ca_path=ca_cert)
        client = openai_client(running, token, token)
        result = yield threads.deferToThread(client.chat.completions.create, model="gpt-4o",
                                             messages=[{"role": "user", "content": "hi"}])
        assert result.model == CHAT_JSON["model"]
        assert upstream.requests[0].header("authorization") == f"Bearer {fakes.OPENAI_KEY}"
        log_text = yield threads.deferToThread(procs.wait_for_log, log_path, "via aiproxy POST", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = yield threads.deferToThread(proc.wait, 30)
        yield up_port.stopListening()
    assert code in (0, -signal.SIGTERM)
    assert f"AI proxy listening on tcp:{proxy_port}:interface=127.0.0.1; decrypting api.openai.com (openai)" in log_text
    assert "aiproxy CONNECT api.openai.com:443 user=alice: mitm" in log_text
    assert token not in log_text and fakes.OPENAI_KEY not in log_text
    rows = Database(f"sqlite:{tmp_path / 'bridge.db'}").interceptions()
    assert [(r["initiator_username"], r["route"]) for r in rows] == [("alice", "chat.completions")]


@pytest_twisted.inlineCallbacks
def test_a_tls_listener_ends_the_connection_after_a_refusal_or_the_ca(proxied, tmp_path):
    """
    On the proxy's TLS listener, a 407 and the CA certificate each end the
    connection: the client gets the answer and TLS's end, and once it ends
    its TLS too, the proxy closes the connection at once (it does not wait
    for its close timeout, nor leave the socket open).
    """
    port, listener_ca = yield aiproxies.tls_listener(proxied.proxy, tmp_path / "listener")
    try:
        def ask(request):
            raw = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=3)
            sock = tls_client(raw, "localhost", listener_ca)
            sock.sendall(request)
            answer = _read_exactly(sock, 1 << 20)  # until the proxy's close_notify
            plain = sock.unwrap()  # the client's own close_notify
            try:
                return answer, plain.recv(1)  # the end of the TCP connection
            finally:
                plain.close()
        answer, tail = yield threads.deferToThread(ask, f"CONNECT {OPENAI_HOST}:443 HTTP/1.1\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 407 Proxy Authentication Required\r\n") and tail == b""
        answer, tail = yield threads.deferToThread(ask, b"GET /ca.pem HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and tail == b""
        assert answer.endswith(open(proxied.ca_path, "rb").read())
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_coder_tokens_through_the_proxy_get_the_deployments_answer(tmp_path, captured_log):
    """
    With identity_backend = "coder", the Coder token is the proxy's password:
    an active user's token opens the tunnel and the request reaches the
    provider; a suspended user's CONNECT gets 403, as directly; while the
    deployment is down an unknown token gets 503 with Retry-After.
    """
    (tmp_path / "coder").mkdir()
    coder_ca, issue = make_ca(tmp_path / "coder")
    coder = FakeCoder()
    coder_port = listen_tls(coder, *issue("localhost"))
    settings = {"url": f"https://localhost:{coder_port.getHost().port}", "ca_file": str(coder_ca),
                "cache_seconds": 0, "stale_seconds": 0, "retry_seconds": 0}
    running = yield start_proxy(tmp_path, {"identity_backend": "coder", "plugins": {"coder": settings}})
    running.bridge.upstream.handler = provider_like
    try:
        alice = coder.add_user("alice")
        token = coder.add_token(alice["id"])
        result = yield threads.deferToThread(openai_client(running, token, token).chat.completions.create,
                                             model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert result.model == CHAT_JSON["model"]
        assert running.bridge.upstream.requests[0].header("authorization") == f"Bearer {fakes.OPENAI_KEY}"

        def refusal(key):
            sock, head = connect_tunnel(running.port, f"{OPENAI_HOST}:443", key)
            with sock:
                return head, _read_exactly(sock, 1 << 20)
        sam = coder.add_user("sam", status="suspended")
        suspended = coder.add_token(sam["id"])
        head, body = yield threads.deferToThread(refusal, suspended)
        assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
        assert json.loads(body)["error"]["message"] == "This user is disabled."
        coder.suspended_as_401 = True  # what coderd's own API-key check answers for a suspended user
        other = coder.add_token(sam["id"])
        head, body = yield threads.deferToThread(refusal, other)
        assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
        assert json.loads(body)["error"] == {"message": "This user is not active in the Coder deployment.",
                                             "type": "permission_error", "param": None, "code": "forbidden"}

        coder.fail_with = 502
        head, body = yield threads.deferToThread(refusal, coder_token())
        assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"\r\nRetry-After: 1\r\n" in head
        assert "Coder deployment" in json.loads(body)["error"]["message"]
        assert len(running.bridge.upstream.requests) == 1
        assert_no_secrets(captured_log.text(), token, suspended, other)
    finally:
        yield running.stop()
        yield coder_port.stopListening()
