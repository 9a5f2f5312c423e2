"""
Streaming over real loopback sockets (SPEC section 6): events relayed as
they arrive, back-pressure, cancellation on disconnect, the stall timeout,
and the upstream connection pool.
"""

import json

import pytest
import pytest_twisted
from twisted.internet import defer

from tests import fakes
from tests.streams import ANTHROPIC_EVENTS, STREAM_CHAT, STREAM_MESSAGES, Collector, open_stream, sleep
from tests.http import call

#: The loopback tests of the upstream client run with both clients (`[upstream] client`).
BOTH_CLIENTS = pytest.mark.parametrize("bridge", ["httptools", "twisted"], indirect=True)

@BOTH_CLIENTS
@pytest_twisted.inlineCallbacks
def test_events_reach_client_before_upstream_sends_the_last(bridge, agent):
    """The first event reaches the client while the upstream is still holding back the rest."""
    token = bridge.create_key("alice")
    gate = defer.Deferred()
    bridge.upstream.handler = fakes.sse_answer(ANTHROPIC_EVENTS, gate=gate, gate_after=1)
    collector = Collector()
    response = yield open_stream(agent, bridge.url + "/anthropic/v1/messages", STREAM_MESSAGES,
                                 {"X-Api-Key": token}, collector)
    first = yield collector.first
    assert first.startswith(b"event: message_start")
    assert not gate.called
    assert response.headers.getRawHeaders(b"cache-control") == [b"no-cache"]
    assert response.headers.getRawHeaders(b"x-accel-buffering") == [b"no"]
    assert response.headers.getRawHeaders(b"content-type") == [b"text/event-stream"]
    gate.callback(None)
    body = yield collector.done
    assert body == b"".join(ANTHROPIC_EVENTS)
    yield bridge.flush()
    row = bridge.rows()[0]
    assert row["streamed"] is True
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]) == (
        25, 12, 100, 7)
    assert row["status"] == "ok"
    assert row["stop_reason"] == "end_turn"


@BOTH_CLIENTS
@pytest_twisted.inlineCallbacks
def test_client_disconnect_cancels_upstream(bridge, agent):
    """A client that goes away mid-stream cancels the upstream request at once; the row says so, with tokens so far."""
    token = bridge.create_key("alice")
    gate = defer.Deferred()
    bridge.upstream.handler = fakes.sse_answer(ANTHROPIC_EVENTS, gate=gate, gate_after=1)
    collector = Collector()
    yield open_stream(agent, bridge.url + "/anthropic/v1/messages", STREAM_MESSAGES, {"X-Api-Key": token}, collector)
    yield collector.first
    collector.transport.stopProducing()  # the client hangs up
    for _ in range(50):
        if bridge.upstream.lost:
            break
        yield sleep(0.02)
    assert len(bridge.upstream.lost) == 1
    yield bridge.flush()
    row = bridge.rows()[0]
    assert row["status"] == "client_disconnected"
    assert row["input_tokens"] == 25


@BOTH_CLIENTS
@pytest_twisted.inlineCallbacks
def test_client_disconnect_before_headers_cancels_upstream(bridge, agent):
    """A client that goes away while the upstream is still thinking cancels the upstream request."""
    token = bridge.create_key("alice")
    bridge.upstream.handler = fakes.never_answer
    d = call(agent, "POST", bridge.url + "/anthropic/v1/messages", STREAM_MESSAGES, {"X-Api-Key": token})
    for _ in range(50):
        if bridge.upstream.requests:
            break
        yield sleep(0.02)
    d.cancel()
    d.addErrback(lambda f: None)
    for _ in range(50):
        if bridge.upstream.lost:
            break
        yield sleep(0.02)
    assert len(bridge.upstream.lost) == 1


@pytest_twisted.inlineCallbacks
def test_mid_stream_stall_ends_with_anthropic_error_event(tmp_path, agent, captured_log):
    """An upstream that stalls mid-stream: the client gets what came, then an Anthropic `event: error`."""
    running = yield fakes.start_bridge(tmp_path, {"upstream": {"timeout": 0.3}})
    running.upstream.handler = fakes.sse_answer(ANTHROPIC_EVENTS, hang_after=2)
    try:
        token = running.create_key("alice")
        collector = Collector()
        yield open_stream(agent, running.url + "/anthropic/v1/messages", STREAM_MESSAGES,
                          {"X-Api-Key": token}, collector)
        body = yield collector.done
        assert body.startswith(ANTHROPIC_EVENTS[0] + ANTHROPIC_EVENTS[1])
        tail = body[len(ANTHROPIC_EVENTS[0] + ANTHROPIC_EVENTS[1]):]
        assert tail.startswith(b"event: error\ndata: ")
        event = json.loads(tail.split(b"data: ", 1)[1])
        assert event["type"] == "error" and event["error"]["type"] == "timeout_error"
        yield running.flush()
        assert running.rows()[0]["status"] == "timeout"
        yield sleep(0.05)
        assert len(running.upstream.lost) == 1
    finally:
        yield running.stop()


@pytest_twisted.inlineCallbacks
def test_mid_stream_stall_ends_openai_chat_with_error_and_done(tmp_path, agent, captured_log):
    """An OpenAI chat stream that stalls ends with `data: {"error":...}` then `data: [DONE]`."""
    chunk = b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    running = yield fakes.start_bridge(tmp_path, {"upstream": {"timeout": 0.3}})
    running.upstream.handler = fakes.sse_answer([chunk, chunk], hang_after=1)
    try:
        token = running.create_key("alice")
        collector = Collector()
        yield open_stream(agent, running.url + "/openai/v1/chat/completions", STREAM_CHAT,
                          {"Authorization": f"Bearer {token}"}, collector)
        body = yield collector.done
        assert body.startswith(chunk)
        events = [e for e in body[len(chunk):].split(b"\n\n") if e]
        assert json.loads(events[0][len(b"data: "):])["error"]["code"] == "upstream_timeout"
        assert events[1] == b"data: [DONE]"
    finally:
        yield running.stop()


@BOTH_CLIENTS
@pytest_twisted.inlineCallbacks
def test_slow_client_pauses_upstream_read(bridge, agent):
    """A client that does not read stops the upstream read (back-pressure): the upstream is paused, memory bounded."""
    token = bridge.create_key("alice")
    hoses = []

    def firehose(request, received):
        request.setHeader(b"content-type", b"text/event-stream")
        hose = fakes.Firehose(request)
        hoses.append(hose)
        hose.start()
        from twisted.web.server import NOT_DONE_YET
        return NOT_DONE_YET
    bridge.upstream.handler = firehose
    collector = Collector(pause=True)
    yield open_stream(agent, bridge.url + "/anthropic/v1/messages", STREAM_MESSAGES, {"X-Api-Key": token}, collector)
    yield sleep(1.0)
    hose = hoses[0]
    written_at_1s = hose.written
    yield sleep(0.5)
    assert hose.paused and hose.pauses >= 1
    # Kernel socket buffers hold a few MB; without back-pressure this would be GBs.
    assert hose.written < 64 * 1024 * 1024
    assert hose.written - written_at_1s < 4 * 1024 * 1024
    # Reading again resumes the flow.
    collector.transport.resumeProducing()
    yield sleep(0.3)
    assert hose.written > written_at_1s
    collector.transport.stopProducing()
    for _ in range(50):
        if hose.stopped or bridge.upstream.lost:
            break
        yield sleep(0.02)
    assert bridge.upstream.lost


@pytest.mark.parametrize("client", ["httptools", "twisted"])
@pytest_twisted.inlineCallbacks
def test_upstream_connections_are_kept_alive(tmp_path, agent, captured_log, client):
    """Sequential requests reuse one pooled upstream connection; the pool size comes from the configuration."""
    running = yield fakes.start_bridge(
        tmp_path, {"upstream": {"max_connections_per_host": 17, "idle_connection_seconds": 33, "client": client}})
    try:
        upstream = running.app.bridge.agent
        if client == "httptools":
            assert (upstream.max_idle, upstream.idle_timeout) == (17, 33)
        else:
            assert (upstream._pool.maxPersistentPerHost, upstream._pool.cachedConnectionTimeout) == (17, 33)
        token = running.create_key("alice")
        for _ in range(3):
            response, _ = yield call(agent, "POST", running.url + "/openai/v1/chat/completions",
                                     {"model": "gpt-4o", "messages": []}, {"Authorization": f"Bearer {token}"})
            assert response.code == 200
        ports = {r.peer_port for r in running.upstream.requests}
        assert len(ports) == 1
    finally:
        yield running.stop()


CHAT_USAGE_STREAM = [
    b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2}}\n\n',
    b"data: [DONE]\n\n",
]


@pytest_twisted.inlineCallbacks
def test_ask_stream_usage(tmp_path, agent, captured_log):
    """With ask_stream_usage, a chat stream without include_usage is asked for usage, and its tokens are recorded."""
    running = yield fakes.start_bridge(tmp_path, {"recording": {"ask_stream_usage": True}})
    running.upstream.handler = fakes.sse_answer(CHAT_USAGE_STREAM)
    try:
        token = running.create_key("alice")
        collector = Collector()
        yield open_stream(agent, running.url + "/openai/v1/chat/completions", STREAM_CHAT,
                          {"Authorization": f"Bearer {token}"}, collector)
        yield collector.done
        sent = running.upstream.requests[0].json()
        assert sent == {**STREAM_CHAT, "stream_options": {"include_usage": True}}
        yield running.flush()
        row = running.rows()[0]
        assert (row["input_tokens"], row["output_tokens"]) == (9, 2)
    finally:
        yield running.stop()


@pytest_twisted.inlineCallbacks
def test_stream_body_untouched_by_default(bridge, agent):
    """By default a streamed chat request reaches the provider byte for byte."""
    token = bridge.create_key("alice")
    bridge.upstream.handler = fakes.sse_answer(CHAT_USAGE_STREAM)
    collector = Collector()
    yield open_stream(agent, bridge.url + "/openai/v1/chat/completions", STREAM_CHAT,
                      {"Authorization": f"Bearer {token}"}, collector)
    yield collector.done
    assert bridge.upstream.requests[0].body == json.dumps(STREAM_CHAT).encode()


@pytest_twisted.inlineCallbacks
def test_a_stream_cut_at_shutdown_is_recorded(tmp_path, agent, captured_log):
    """A stream still open when the shutdown grace period ends is cut and recorded as shutdown, on a real
    reactor where the relay notices a turn later (the record must not miss the last flush)."""
    running = yield fakes.start_bridge(tmp_path, {"shutdown_grace_seconds": 0.2})
    running.upstream.handler = fakes.sse_answer(ANTHROPIC_EVENTS, hang_after=1)
    token = running.create_key("alice")
    collector = Collector()
    yield open_stream(agent, running.url + "/anthropic/v1/messages", STREAM_MESSAGES, {"X-Api-Key": token}, collector)
    yield collector.first
    yield running.stop()
    yield collector.done
    rows = running.rows()
    assert [(r["status"], r["input_tokens"]) for r in rows] == [("shutdown", 25)]
