"""
The request pipeline in memory (tests/memory.py): what reaches the upstream,
what the client gets and what is recorded, for the passthrough allow-list,
the path rules, truncated streams and refusals after authentication.
"""

import json

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from tests import memory
from tests.memory import ANTHROPIC_KEY, OPENAI_KEY, TOKEN, USER_ID

BEARER = {"Authorization": f"Bearer {TOKEN}"}
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def events():
    """Every log event emitted while the test runs."""
    seen: list = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def log_text(events) -> str:
    return "\n".join(formatEvent(e) for e in events)


# -- the passthrough allow-list ------------------------------------------------------

DENIED = [
    ("POST", "/openai/v1/fine_tuning/jobs"),
    ("GET", "/openai/v1/files"),
    ("POST", "/openai/v1/files"),
    ("GET", "/openai/v1/organization/admin_api_keys"),
    ("POST", "/openai/v1/batches"),
    ("POST", "/openai/v1/audio/speech"),
    ("DELETE", "/openai/v1/models/ft:gpt-4o:acme"),
    ("GET", "/openai/v1/chat/completions"),
    ("POST", "/openai/v1/responses/resp_1"),
    ("GET", "/anthropic/v1/organizations/me"),
    ("POST", "/anthropic/v1/messages/batches"),
    ("GET", "/anthropic/v1/files"),
    ("POST", "/anthropic/api/other"),
    ("GET", "/api/v2/aibridge/openai/v1/files"),
]


@pytest.mark.parametrize("method,path", DENIED)
def test_paths_off_the_allow_list_are_404_and_never_forwarded(method, path):
    """Anything not intercepted nor on the allow-list is 404 in the provider's shape; the upstream never sees it."""
    g = memory.gateway()
    answer = g.send(method, path, {} if method == "POST" else None, BEARER)
    assert answer.status == 404
    if "/anthropic/" in path:
        assert answer.json()["error"]["type"] == "not_found_error"
    else:
        assert answer.json()["error"]["code"] == "unknown_url"
    assert g.upstream.seen == []
    # An authenticated refusal is in the audit trail.
    (record,) = g.records
    assert (record.status, record.http_status, record.upstream_status, record.initiator_id) == (
        "refused", 404, None, USER_ID)


ALLOWED = [
    ("GET", "/openai/v1/models", "/v1/models"),
    ("GET", "/openai/v1/models/gpt-4o", "/v1/models/gpt-4o"),
    ("POST", "/openai/v1/conversations", "/v1/conversations"),
    ("GET", "/openai/v1/conversations/conv_1/items", "/v1/conversations/conv_1/items"),
    ("DELETE", "/openai/v1/conversations/conv_1/items/item_2", "/v1/conversations/conv_1/items/item_2"),
    ("GET", "/openai/v1/responses/resp_1", "/v1/responses/resp_1"),
    ("DELETE", "/openai/v1/responses/resp_1", "/v1/responses/resp_1"),
    ("GET", "/openai/v1/responses/resp_1/input_items?limit=2", "/v1/responses/resp_1/input_items?limit=2"),
    ("POST", "/openai/v1/responses/resp_1/cancel", "/v1/responses/resp_1/cancel"),
    ("GET", "/anthropic/v1/models", "/v1/models"),
    ("GET", "/anthropic/v1/models/claude-sonnet-4-5", "/v1/models/claude-sonnet-4-5"),
    ("POST", "/anthropic/v1/messages/count_tokens", "/v1/messages/count_tokens"),
    ("POST", "/anthropic/api/event_logging/batch", "/api/event_logging/batch"),
    ("GET", "/api/v2/aibridge/anthropic/v1/models", "/v1/models"),
]


@pytest.mark.parametrize("method,path,upstream_path", ALLOWED)
def test_default_allow_list_passes_through_with_the_provider_key(method, path, upstream_path):
    """The default allow-list reaches the upstream at the mapped path, with the provider key, recorded as passthrough."""
    g = memory.gateway()
    answer = g.send(method, path, {} if method == "POST" else None, BEARER)
    assert answer.status == 200
    (seen,) = g.upstream.seen
    assert (seen.method, seen.uri) == (method.encode(), upstream_path.encode())
    if path.startswith("/anthropic") or "/anthropic/" in path:
        assert seen.header("x-api-key") == ANTHROPIC_KEY.encode()
    else:
        assert seen.header("authorization") == b"Bearer " + OPENAI_KEY.encode()
    assert g.records[0].intercepted is False and g.records[0].status == "ok"


def test_allow_list_is_configurable_per_provider():
    """`passthrough` replaces a provider's list and `passthrough_extra` adds to it, method and pattern both checked."""
    g = memory.gateway({"providers": {
        "openai": {"base_url": memory.UPSTREAM + "/v1", "key_env": "K_OPENAI", "passthrough": []},
        "anthropic": {"base_url": memory.UPSTREAM, "key_env": "K_ANTHROPIC",
                      "passthrough_extra": ["GET /v1/files", "GET,DELETE /v1/files/*/content"]}}})
    assert g.send("GET", "/openai/v1/models", None, BEARER).status == 404
    assert g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER).status == 200  # intercepted stays
    assert g.send("GET", "/anthropic/v1/models", None, BEARER).status == 200  # the default list stays
    assert g.send("GET", "/anthropic/v1/files", None, BEARER).status == 200
    assert g.send("DELETE", "/anthropic/v1/files/f1/content", None, BEARER).status == 200
    assert g.send("POST", "/anthropic/v1/files", {}, BEARER).status == 404
    assert g.send("GET", "/anthropic/v1/files/f1/other", None, BEARER).status == 404
    assert [s.uri for s in g.upstream.seen] == [b"/v1/chat/completions", b"/v1/models", b"/v1/files",
                                                 b"/v1/files/f1/content"]


@pytest.mark.parametrize("rules,message", [
    (["/v1/models"], "must be 'METHODS /path/pattern'"),
    (["GET v1/models"], "must be 'METHODS /path/pattern'"),
    (["G3T /v1/models"], "methods must be"),
    (["GET /v1/**/x"], "'**' may only end"),
    (["GET /v1/../admin"], "'..'"),
    ("GET /v1/models", "must be a list"),
])
def test_bad_allow_list_rules_are_startup_errors(rules, message):
    """A malformed passthrough rule stops the start with a message naming the key."""
    from bridgeproxy.config import ConfigError, parse
    with pytest.raises(ConfigError) as caught:
        parse({"providers": {"openai": {"passthrough_extra": rules}}}, environ={})
    assert "providers.openai.passthrough_extra" in str(caught.value) and message in str(caught.value)


# -- path safety ------------------------------------------------------------------------

UNSAFE = [
    b"/openai/v1/../../admin/secret",
    b"/openai/v1/models/..",
    b"/openai/v1/./models",
    b"/openai/v1/%2e%2e/%2E%2e/admin",
    b"/openai/v1/models/%2e",
    b"/openai/v1/models%2f..%2fadmin",
    b"/openai/v1/models%2Fx",
    b"/openai/v1/models%5c..%5cadmin",
    b"/openai/v1/models\\..\\admin",
    b"/openai//v1/models",
    b"/openai/v1/models//x",
    b"/openai/v1/models%00",
    b"/anthropic/v1/../v1/organizations",
    b"/api/v2/aibridge/openai/v1/../files",
    b"/api/v1/../healthz",
    # What the forwarding client would cut or rewrite: a fragment, an empty
    # parameter, a parameter, a malformed escape, a raw space.
    b"/openai/v1/responses/#/input_items",
    b"/openai/v1/files/#/content",
    b"/openai/v1/models/..;",
    b"/openai/v1/models;x=1",
    b"/openai/v1/models/%zz",
]


@pytest.mark.parametrize("path", UNSAFE)
def test_unsafe_paths_are_400_before_routing(path):
    """`.`/`..` (raw or %2e), %2f, %5c, backslash, // and NUL are refused with 400 and never forwarded."""
    g = memory.gateway()
    answer = g.send_raw(b"GET " + path + b" HTTP/1.1\r\nHost: b\r\nConnection: close\r\n"
                        b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")
    assert answer.status == 400
    error = answer.json()
    if path.startswith(b"/anthropic"):
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    else:
        assert error["error"]["type"] == "invalid_request_error"
    assert "Refused path" in answer.body.decode()
    assert g.upstream.seen == []
    assert [(r.status, r.http_status) for r in g.records] == [("refused", 400)]


def test_a_trailing_slash_is_not_an_empty_segment():
    """A single trailing slash is allowed (the HEAD probe on `/anthropic/` and routes with a slash)."""
    g = memory.gateway()
    assert g.send("HEAD", "/anthropic/").status == 200
    assert g.send("GET", "/openai/v1/models/", None, BEARER).status == 200
    assert g.upstream.seen[0].uri == b"/v1/models/"


# -- truncated streams ------------------------------------------------------------------

CHAT_EVENTS = [
    b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,'
    b'"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"rm","arguments":"{\\"path\\":"}}]}}]}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o","choices":[],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":2}}\n\n',
]
CHAT_END = [b"data: [DONE]\n\n"]
RESPONSES_EVENTS = [
    b'event: response.created\ndata: {"type":"response.created","response":{"id":"r","model":"gpt-5",'
    b'"status":"in_progress","output":[],"usage":null}}\n\n',
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"Hi"}\n\n',
]
RESPONSES_END = [
    b'event: response.completed\ndata: {"type":"response.completed","response":{"id":"r","model":"gpt-5",'
    b'"status":"completed","output":[],"usage":{"input_tokens":7,"output_tokens":1}}}\n\n',
]
MESSAGES_EVENTS = [
    b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-sonnet-4-5",'
    b'"usage":{"input_tokens":25,"output_tokens":1}}}\n\n',
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":'
    b'{"type":"tool_use","id":"t1","name":"bash","input":{}}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":'
    b'{"type":"input_json_delta","partial_json":"{\\"cmd\\": \\"rm"}}\n\n',
]
MESSAGES_END = [
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":9}}\n\n',
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
]

ROUTES = {
    "chat": ("/openai/v1/chat/completions", {**CHAT, "stream": True}, CHAT_EVENTS, CHAT_END, 9),
    "responses": ("/openai/v1/responses", {"model": "gpt-5", "input": "hi", "stream": True},
                  RESPONSES_EVENTS, RESPONSES_END, 0),
    "messages": ("/anthropic/v1/messages", {**MESSAGES, "stream": True}, MESSAGES_EVENTS, MESSAGES_END, 25),
}


def error_tail(route: str, tail: bytes) -> dict:
    """The error event appended to a stream, as the provider's SDK would parse it."""
    if route == "chat":
        data, done = [e for e in tail.split(b"\n\n") if e]
        assert done == b"data: [DONE]"
        return json.loads(data[len(b"data: "):])["error"]
    event, data = tail.strip().split(b"\n")
    assert event == b"event: error"
    body = json.loads(data[len(b"data: "):])
    assert body["type"] == "error"
    return body["error"] if route == "messages" else body


@pytest.mark.parametrize("end", ["finish", "abort"])
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_truncated_stream_gets_an_error_event_and_is_incomplete(route, end):
    """A stream that ends before its terminal event, cleanly or by a dropped connection, ends with the
    provider's error event and is recorded as incomplete with the tokens seen so far."""
    path, body, events, _, input_tokens = ROUTES[route]
    g = memory.gateway()
    g.upstream.handler = memory.sse_answer(events, end)
    answer = g.send("POST", path, body, BEARER)
    assert answer.status == 200
    relayed = b"".join(events)
    assert answer.body.startswith(relayed)
    error = error_tail(route, answer.body[len(relayed):])
    assert "before the answer was complete" in error["message"]
    (record,) = g.records
    assert record.status == "incomplete"
    assert record.input_tokens == input_tokens
    assert record.error


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_complete_stream_gets_no_error_event(route):
    """A stream with its terminal event is relayed byte for byte and recorded ok, even if the connection then drops."""
    path, body, events, end_events, _ = ROUTES[route]
    for end in ("finish", "abort"):
        g = memory.gateway()
        g.upstream.handler = memory.sse_answer(events + end_events, end)
        answer = g.send("POST", path, body, BEARER)
        assert answer.body == b"".join(events + end_events)
        assert g.records[0].status == "ok"


def test_upstream_error_event_is_not_called_truncated():
    """A stream the upstream itself ended with an error event gets no second error event."""
    g = memory.gateway()
    error = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    g.upstream.handler = memory.sse_answer(MESSAGES_EVENTS[:1] + [error])
    answer = g.send("POST", "/anthropic/v1/messages", {**MESSAGES, "stream": True}, BEARER)
    assert answer.body == MESSAGES_EVENTS[0] + error
    assert g.records[0].error == "Overloaded"
    assert g.records[0].status == "incomplete"  # no terminal event: the answer is not whole


# -- every authenticated request is a row ---------------------------------------------


@pytest.mark.parametrize("case", ["invalid_json", "not_found", "too_large", "websocket", "unsafe_path"])
def test_refusals_after_authentication_are_recorded(case):
    """400, 404, 413 and 426 answers to an authenticated request each become one row (status refused,
    the status the client got, no upstream status); the same without a credential become none."""
    g = memory.gateway({"max_body_bytes": 64})
    path, body, headers, status = {
        "invalid_json": ("/anthropic/v1/messages", b"{not json", {}, 400),
        "not_found": ("/openai/v1/fine_tuning/jobs", {}, {}, 404),
        "too_large": ("/openai/v1/chat/completions", {"x": "y" * 100}, {}, 413),
        "websocket": ("/openai/v1/responses", None, {"Upgrade": "websocket", "Connection": "Upgrade"}, 426),
        "unsafe_path": ("/openai/v1/%2e%2e/files", None, {}, 400),
    }[case]
    method = "GET" if body is None else "POST"
    assert g.send(method, path, body, {**headers, "X-Api-Key": TOKEN}).status == status
    (record,) = g.records
    assert (record.status, record.http_status, record.upstream_status) == ("refused", status, None)
    assert (record.initiator_id, record.initiator_username, record.credential_user_id) == (USER_ID, "alice", USER_ID)
    # Without a credential, or with an unknown one: the same answer, no row.
    assert g.send(method, path, body, headers).status == status
    assert g.send(method, path, body, {**headers, "X-Api-Key": "bp_unknown-0123456789"}).status == status
    assert len(g.records) == 1
    assert g.upstream.seen == []


def test_header_timeout_is_recorded_as_timeout_without_upstream_status():
    """An upstream that never sends headers: 504 after the timeout on the clock, recorded as `timeout`, no upstream status."""
    from twisted.web.server import NOT_DONE_YET
    g = memory.gateway({"upstream": {"timeout": 3}})
    g.upstream.handler = lambda request: NOT_DONE_YET
    protocol, transport = g.connect()
    data = json.dumps(CHAT).encode()
    protocol.dataReceived(b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: b\r\nContent-Length: %d\r\n"
                          b"Authorization: Bearer %s\r\n\r\n%s" % (len(data), TOKEN.encode(), data))
    g.pump()
    g.clock.advance(2.9)
    g.pump()
    assert transport.value() == b"" and g.records == []
    g.clock.advance(0.2)
    g.pump()
    answer = memory.parse_answer(transport.value())
    assert answer.status == 504 and answer.json()["error"]["code"] == "upstream_timeout"
    (record,) = g.records
    assert (record.status, record.upstream_status, record.http_status) == ("timeout", None, 504)
    # The upstream request was cancelled, not left open.
    assert g.upstream.lost == g.upstream.requests


def test_upstream_status_is_the_providers():
    """A relayed upstream answer records the provider's status as both upstream and client status."""
    g = memory.gateway()
    g.upstream.handler = memory.json_answer(429, {"error": {"message": "slow down", "type": "rate_limit_error"}})
    assert g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER).status == 429
    (record,) = g.records
    assert (record.upstream_status, record.http_status, record.error) == (429, 429, "slow down")


# -- answers and log lines --------------------------------------------------------------


def test_426_carries_its_reason_phrase():
    """The WebSocket refusal's status line is `426 Upgrade Required`."""
    g = memory.gateway()
    answer = g.send("GET", "/openai/v1/responses", None, {**BEARER, "Upgrade": "websocket", "Connection": "Upgrade"})
    assert answer.raw.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")


@pytest.mark.parametrize("headers,kind", [
    ({"X-Api-Key": "bp_unknown-key-0123456789"}, "x-api-key"),
    ({"Authorization": "Bearer bp_unknown-key-0123456789"}, "authorization"),
    ({"X-Coder-Token": "bp_unknown-key-0123456789"}, "x-coder-token"),
    ({}, "none"),
])
def test_refusal_log_line_names_the_credential_kind(events, headers, kind):
    """A refused request's log line says which kind of credential was found, never the credential."""
    g = memory.gateway()
    assert g.send("POST", "/openai/v1/chat/completions", CHAT, headers).status == 401
    text = log_text(events)
    assert f"credential={kind} " in text
    assert "bp_unknown-key-0123456789" not in text


# -- timers, drains and caps on the fake clock ------------------------------------------


def test_mid_stream_stall_ends_with_the_error_event_and_cancels_the_upstream():
    """A stream that goes silent for the timeout gets the provider's error event; the upstream request is
    cancelled; the record says timeout with the tokens so far."""
    g = memory.gateway({"upstream": {"timeout": 5}})
    g.upstream.handler = memory.sse_answer(MESSAGES_EVENTS[:1], "hang")
    protocol, transport = g.open("POST", "/anthropic/v1/messages", {**MESSAGES, "stream": True}, BEARER)
    g.clock.advance(4.9)
    g.pump()
    assert g.records == [] and g.upstream.lost == []
    g.clock.advance(0.2)
    g.pump()
    answer = memory.parse_answer(transport.value())
    assert answer.body.startswith(MESSAGES_EVENTS[0])
    assert error_tail("messages", answer.body[len(MESSAGES_EVENTS[0]):])["type"] == "timeout_error"
    assert g.upstream.lost == g.upstream.requests
    (record,) = g.records
    assert (record.status, record.input_tokens) == ("timeout", 25)


def test_drain_waits_then_cuts_what_is_left():
    """drain(grace) fires at once with nothing in flight; with a stream open it waits, then cuts it at the
    grace period, records it as shutdown and closes the client's connection."""
    g = memory.gateway()
    fired = []
    g.bridge.drain(10).addCallback(fired.append)
    assert fired == [None]
    g.upstream.handler = memory.sse_answer(CHAT_EVENTS[:1], "hang")
    protocol, transport = g.open("POST", "/openai/v1/chat/completions", {**CHAT, "stream": True}, BEARER)
    drained = []
    g.bridge.drain(10).addCallback(drained.append)
    g.clock.advance(9.9)
    assert drained == [] and len(g.bridge.in_flight) == 1
    g.clock.advance(0.2)
    g.pump()
    assert drained == [None] and g.bridge.in_flight == set()
    assert transport.disconnecting
    assert g.records[0].status == "shutdown"
    assert g.upstream.lost == g.upstream.requests


def test_drain_fires_when_the_last_request_ends():
    """A drain fires as soon as the requests in flight end, before its grace period, and leaves no timer."""
    g = memory.gateway({"upstream": {"timeout": 30}})
    from twisted.web.server import NOT_DONE_YET
    g.upstream.handler = lambda request: NOT_DONE_YET
    g.open("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    drained = []
    g.bridge.drain(60).addCallback(drained.append)
    request = g.upstream.requests[0]
    request.write(b'{"ok": 1}')
    request.finish()
    g.pump()
    assert drained == [None] and g.records[0].status == "ok"
    assert all(not call.active() or call.getTime() > 60 for call in g.clock.getDelayedCalls())


def test_prompt_is_cut_to_max_prompt_chars():
    """The recorded prompt is the last user prompt, cut to [recording] max_prompt_chars."""
    g = memory.gateway({"recording": {"max_prompt_chars": 5}})
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "first"},
                                            {"role": "user", "content": "0123456789"}]}
    g.send("POST", "/openai/v1/chat/completions", body, BEARER)
    assert g.records[0].prompt == "01234"


def test_upstream_error_body_is_capped():
    """An upstream error answer is relayed up to its cap (1 MiB), with a Content-Length that says so."""
    from bridgeproxy.proxy.pipeline import MAX_ERROR_BODY
    g = memory.gateway()

    def huge_error(request):
        request.setResponseCode(500)
        request.setHeader(b"content-type", b"application/json")
        return b"x" * (MAX_ERROR_BODY + 4096)
    g.upstream.handler = huge_error
    answer = g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    assert answer.status == 500
    assert len(answer.body) == MAX_ERROR_BODY
    assert answer.headers["content-length"] == [str(MAX_ERROR_BODY).encode()]


def test_chunked_body_over_the_cap_is_413():
    """A chunked request body that grows past max_body_bytes is 413; the upstream is not contacted."""
    g = memory.gateway({"max_body_bytes": 100})
    head = (b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: b\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")
    chunk = b'{"model":"gpt-4o","messages":[],"pad":"' + b"x" * 60
    body = b"%x\r\n%s\r\n" % (len(chunk), chunk) + b"%x\r\n%s\r\n" % (len(chunk), chunk) + b"0\r\n\r\n"
    answer = g.send_raw(head + body)
    assert answer.status == 413
    assert answer.json()["error"]["code"] == "request_too_large"
    assert g.upstream.seen == []
    small = b'{"model":"gpt-4o","messages":[]}'
    answer = g.send_raw(head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(small), small))
    assert answer.status == 200 and g.upstream.seen[0].body == small


def test_ttfb_and_latency_metrics_are_observed():
    """A relayed answer observes the upstream latency and time-to-first-byte histograms for its provider."""
    g = memory.gateway()
    g.send("POST", "/anthropic/v1/messages", MESSAGES, BEARER)
    text = g.bridge.metrics.exposition().decode()
    assert 'bridgeproxy_upstream_ttfb_seconds_count{provider="anthropic"} 1.0' in text
    assert 'bridgeproxy_upstream_latency_seconds_count{provider="anthropic"} 1.0' in text
    assert 'bridgeproxy_requests_total{client="Unknown",provider="anthropic",route="messages",status="ok"} 1.0' in text


# -- found by review ---------------------------------------------------------------------


def test_a_client_that_leaves_during_the_key_check_is_never_forwarded():
    """A client gone while its key is being checked: the upstream is never asked, the request leaves
    in_flight, and the audit trail says the client left."""
    from twisted.internet.defer import Deferred
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    class Slow(memory.Identities):
        def __init__(self):
            super().__init__()
            self.pending = []

        def identify(self, token):
            d = Deferred()
            self.pending.append((d, self.tokens.get(token)))
            return d
    identities = Slow()
    g = memory.gateway(identities=identities)
    protocol, transport = g.open("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    protocol.connectionLost(Failure(ConnectionDone()))
    d, identity = identities.pending[0]
    d.callback(identity)
    g.pump()
    assert g.upstream.seen == []
    assert g.bridge.in_flight == set()
    assert [(r.status, r.initiator_id) for r in g.records] == [("client_disconnected", USER_ID)]


def test_shutdown_before_the_upstream_answers_is_503_and_recorded_as_shutdown():
    """A request the shutdown cuts while the upstream is still silent gets 503 (not 502 'unreachable')
    and is recorded as shutdown."""
    from twisted.web.server import NOT_DONE_YET
    g = memory.gateway()
    g.upstream.handler = lambda request: NOT_DONE_YET
    protocol, transport = g.open("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    drained = []
    g.bridge.drain(2).addCallback(drained.append)
    g.clock.advance(2)
    g.pump()
    answer = memory.parse_answer(transport.value())
    assert answer.status == 503 and "shutting down" in answer.json()["error"]["message"]
    assert [(r.status, r.upstream_status, r.http_status) for r in g.records] == [("shutdown", None, 503)]
    assert drained == [None]


def test_the_drain_lets_go_at_its_hard_cap():
    """A stopped request that never reports back is recorded and let go at the drain's hard cap."""
    from bridgeproxy.proxy.pipeline import DRAIN_HARD_CAP
    g = memory.gateway()
    g.upstream.handler = memory.sse_answer(CHAT_EVENTS[:1], "hang")
    protocol, transport = g.open("POST", "/openai/v1/chat/completions", {**CHAT, "stream": True}, BEARER)
    (ex,) = g.bridge.in_flight
    ex.stop = lambda: None  # a request that does not notice it was stopped
    drained = []
    g.bridge.drain(1).addCallback(drained.append)
    g.clock.advance(1)
    assert drained == []
    g.clock.advance(DRAIN_HARD_CAP)
    assert drained == [None] and g.bridge.in_flight == set()
    assert g.records[0].status == "shutdown"


@pytest.mark.parametrize("path,status", [
    (f"/openai/v1/models/{TOKEN}", 400),
    (f"/openai/{TOKEN}/v1/models", 404),
    (f"/openai/v1/responses/{TOKEN}/cancel", 400),
])
def test_a_bridge_key_in_the_path_goes_nowhere(events, path, status):
    """A bridge key put in the URL path is refused; it reaches no upstream, answer, log line or record."""
    g = memory.gateway()
    answer = g.send("POST" if path.endswith("cancel") else "GET", path, {} if path.endswith("cancel") else None,
                    BEARER)
    assert answer.status == status
    assert TOKEN.encode() not in answer.raw
    assert g.upstream.seen == []
    assert TOKEN not in log_text(events)
    assert all(TOKEN not in (r.route + (r.error or "")) for r in g.records)


def test_a_blocking_answer_that_is_not_json_is_not_incomplete():
    """An intercepted blocking answer the parser cannot read (an HTML error page) is recorded as it is, not incomplete."""
    g = memory.gateway()

    def html(request):
        request.setResponseCode(502)
        request.setHeader(b"content-type", b"text/html")
        return b"<html>Bad gateway</html>"
    g.upstream.handler = html
    answer = g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    assert answer.status == 502
    assert (g.records[0].status, g.records[0].upstream_status) == ("ok", 502)


def test_the_bridges_own_endpoints_are_exact_paths():
    """/healthz answers; /healthz/anything is 404 (the endpoints are leaves, not prefixes)."""
    from bridgeproxy.api import BridgeAPI
    g = memory.gateway()
    g.bridge.api = BridgeAPI(extractors=g.bridge.extractors, identity=memory.Identities(), store=None,
                             recorder=None, providers={}, metrics=None)
    assert g.send("GET", "/healthz").status == 200
    assert g.send("GET", "/healthz/x").status == 404
    assert g.send("GET", "/metrics").status == 404  # served on metrics_listen here


def test_a_stream_ending_in_a_lone_cr_is_whole():
    """SSE allows CR line ends: a stream whose terminal event ends with a lone CR is relayed as it is, with no
    error event appended, and recorded ok."""
    g = memory.gateway()
    events = [b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o","choices":[]}\r\r',
              b"data: [DONE]\r\r"]
    g.upstream.handler = memory.sse_answer(events)
    answer = g.send("POST", "/openai/v1/chat/completions", {**CHAT, "stream": True}, BEARER)
    assert answer.body == b"".join(events)
    assert g.records[0].status == "ok"
