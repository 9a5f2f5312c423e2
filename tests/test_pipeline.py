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


def test_time_to_first_byte_is_recorded_in_milliseconds():
    """The record says how long the upstream took to send its first byte, from the request's start."""
    g = memory.gateway({"upstream": {"timeout": 30}})
    from twisted.web.server import NOT_DONE_YET
    g.upstream.handler = lambda request: NOT_DONE_YET
    g.clock.advance(1000)
    g.open("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    g.clock.advance(0.75)
    request = g.upstream.requests[0]
    request.write(b'{"ok": 1}')
    g.pump()
    g.clock.advance(1)
    request.finish()
    g.pump()
    assert g.records[0].ttfb_ms == 750


@pytest.mark.parametrize("anthropic_key", [ANTHROPIC_KEY, "central-anthropic-key-of-no-known-shape-0123"])
def test_a_key_across_the_cut_of_an_unknown_path_is_masked_whole(events, tmp_path, anthropic_key):
    """Another provider's key where the 200-character cut of a 404's path falls is masked, not left half shown
    (whether or not it is shaped like a provider's key)."""
    key_file = tmp_path / "anthropic.key"
    key_file.write_text(anthropic_key + "\n")
    g = memory.gateway({"providers": {"anthropic": {"base_url": memory.UPSTREAM, "key_file": str(key_file)}}})
    path = "/openai/v1/files/" + "x" * (179 - len("/openai/v1/files/")) + "/" + anthropic_key
    assert path.index(anthropic_key) == 180  # the cut at 200 would leave 20 of its characters
    answer = g.send("GET", path, None, BEARER)
    assert answer.status == 404
    part = anthropic_key[:12]
    assert part.encode() not in answer.raw
    assert part not in (g.records[0].error or "") and part not in g.records[0].route
    assert part not in log_text(events)


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
    assert [(r.status, r.initiator_id, r.error) for r in g.records] == [
        ("client_disconnected", USER_ID, "client disconnected before the request was sent")]


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


# -- measured by mutation testing (docs/development.md) ---------------------------------------
#
# What follows pins behaviour the tests above reach without checking: exact messages and
# log lines, metrics, the plugin-facing paths (synchronous resolvers, crashes), reloads.

def hanging(g):
    """Make the upstream hold every request open (the test answers C{g.upstream.requests[i]})."""
    from twisted.web.server import NOT_DONE_YET
    g.upstream.handler = lambda request: NOT_DONE_YET


def lines(events, start: str) -> list:
    return [formatEvent(e) for e in events if (formatEvent(e) or "").startswith(start)]


class SyncResolver:
    """A resolver plugin that answers at once (no Deferred): the token's user, alice."""

    def resolve(self, request, credential, client, initiator):
        from bridgeproxy.types import Initiator
        return Initiator(user_id=USER_ID, username="alice", credential_user_id=USER_ID)


def boom(*args):
    raise ZeroDivisionError("not a refusal")


# construction and reloads


def test_the_given_metrics_are_counted_and_a_bridge_without_makes_its_own():
    """The bridge counts into the Metrics it is given (those /metrics serves); without any, into its own. It
    shows the agent it was given (whose pool a test or an operator inspects)."""
    from bridgeproxy.proxy.pipeline import Bridge
    from bridgeproxy.proxy.resource import BridgeResource
    from bridgeproxy.proxy.site import make_site
    g = memory.gateway()
    g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    assert b'bridgeproxy_requests_total{client="Unknown",provider="openai",route="chat.completions",status="ok"} 1.0' in (
        g.metrics.exposition())
    assert g.bridge.agent is g.upstream_agent
    settings = memory.config()
    own = Bridge(settings, providers=memory.providers(settings), extractors=g.bridge.extractors,
                 resolvers=g.bridge.resolvers, detectors=g.bridge.detectors, agent=g.upstream_agent,
                 clock=g.clock, recorder=g.bridge.recorder)
    g.bridge = own
    g.site = make_site(BridgeResource(own), settings.max_body_bytes, g.clock)
    g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    assert own.metrics is not g.metrics and own.metrics.get("bridge_token_dropped") == 0
    assert b'route="chat.completions",status="ok"} 1.0' in own.metrics.exposition()


def reload(g, extra=None):
    settings = memory.config(extra)
    g.bridge.reconfigure(settings, providers=memory.providers(settings), extractors=g.bridge.extractors,
                         resolvers=g.bridge.resolvers, detectors=g.bridge.detectors)


def test_a_reload_keeps_the_rate_buckets_unless_the_limits_change():
    """A reload with the same limits keeps each initiator's bucket (a reload is no way round the rate); one with
    new limits applies them, on the bridge's clock."""
    limits = {"limits": {"per_initiator_rps": 1, "per_initiator_burst": 1}}
    g = memory.gateway(limits)
    assert g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER).status == 200
    reload(g, limits)
    assert g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER).status == 429
    reload(g, {"limits": {"per_initiator_rps": 1, "per_initiator_burst": 2}})
    assert [g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER).status for _ in range(3)] == [200, 200, 429]
    g.clock.advance(1)
    assert g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER).status == 200


def test_a_reload_with_a_bad_allow_list_fails_and_changes_nothing():
    """A provider plugin whose own allow-list does not parse fails the reload itself; the bridge keeps serving
    with what it had."""
    from bridgeproxy.config import ConfigError
    from bridgeproxy.providers.openai import OpenAIProvider
    from bridgeproxy.proxy.pipeline import ProviderEntry

    class Broken(OpenAIProvider):
        passthrough = ("GET v1/models",)
    g = memory.gateway()
    settings = memory.config({"max_body_bytes": 10})
    entries = {**memory.providers(settings)}
    entries["openai"] = ProviderEntry(Broken(), settings.providers["openai"])
    with pytest.raises(ConfigError):
        g.bridge.reconfigure(settings, providers=entries, extractors=g.bridge.extractors,
                             resolvers=g.bridge.resolvers, detectors=g.bridge.detectors)
    assert g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER).status == 200
    assert g.send("GET", "/openai/v1/models", None, BEARER).status == 200


# the way in


def test_a_probe_is_answered_and_leaves_nothing_behind(events):
    """A HEAD probe of a base path is 200 without a credential, and is no refusal: nothing counted, logged,
    recorded or left in flight. Any other method on a base path is routed as usual."""
    g = memory.gateway()
    for path in ("/anthropic", "/anthropic/", "/openai/v1", "/openai/v1/"):
        assert g.send("HEAD", path).status == 200
    assert g.bridge.in_flight == set() and g.records == [] and g.upstream.seen == []
    assert not [n for n in g.metrics.counters if n.startswith("refused")] and lines(events, "Refused") == []
    answer = g.send("GET", "/anthropic/v1", None, BEARER)
    assert answer.status == 404 and g.upstream.seen == []
    drained = []
    g.bridge.drain(10).addCallback(drained.append)
    assert drained == [None]


def test_concurrency_counts_the_requests_in_flight():
    """With max_concurrency 1, a request while another is in flight is refused 503 with Retry-After; once the
    first is answered, the next one passes."""
    g = memory.gateway({"limits": {"max_concurrency": 1}})
    hanging(g)
    g.open("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    refused = g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    assert refused.status == 503 and refused.headers["retry-after"] == [b"1"]
    assert refused.json()["error"]["code"] == "overloaded"
    g.upstream.requests[0].write(b"{}")
    g.upstream.requests[0].finish()
    g.pump()
    g.upstream.handler = memory.json_answer(200, {})
    assert g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER).status == 200


def test_a_request_without_a_credential_is_told_where_to_send_it():
    g = memory.gateway()
    answer = g.send("POST", "/openai/v1/chat/completions", CHAT)
    assert answer.status == 401 and answer.json()["error"]["message"] == (
        "No API key provided. Send your bridge key as a Bearer token, in X-Api-Key, or in X-Coder-Token.")
    assert g.metrics.get("refused:401:missing") == 1


def test_a_client_is_detected_from_the_body_too():
    """Claude Code's session id in the body's metadata is recorded when no header carries one."""
    g = memory.gateway()
    body = {**MESSAGES, "metadata": {"user_id": json.dumps({"session_id": "sess-body"})}}
    g.send("POST", "/anthropic/v1/messages", body, {**BEARER, "User-Agent": "claude-cli/2.1"})
    assert (g.records[0].client, g.records[0].client_session_id) == ("Claude Code", "sess-body")


@pytest.mark.parametrize("path,body,message", [
    ("/openai/v1/models?q=\x80", None, "Refused query string: it contains a byte that is not ASCII."),
    ("/openai/v1/models?q=\x7f", None, "Refused path: it would not reach the provider as it was checked."),
    ("/anthropic/v1/messages", b"{not json", "The request body is not valid JSON."),
    ("/anthropic/v1/messages", [1, 2], "The request body must be a JSON object."),
    ("/openai/v1/responses", "upgrade", "WebSocket is not supported by this gateway; use HTTPS (server-sent events)."),
])
def test_refusals_say_why(path, body, message):
    """Each refusal of the route or the body says what is wrong, and is recorded with that message."""
    g = memory.gateway()
    headers = dict(BEARER)
    if body == "upgrade":
        headers.update({"Upgrade": "websocket", "Connection": "Upgrade"})
        body = None
    answer = g.send("GET" if body is None else "POST", path, body, headers)
    error = answer.json()["error"]
    assert error["message"] == message
    assert (g.records[0].error, g.records[0].http_status) == (message, answer.status)


def test_whether_a_request_is_a_stream_is_what_its_body_says():
    """`"stream": true` makes a request a stream, even when the upstream answers with a JSON error; anything
    else does not."""
    g = memory.gateway()
    g.upstream.handler = memory.json_answer(400, {"error": {"message": "bad", "type": "invalid_request_error"}})
    g.send("POST", "/openai/v1/chat/completions", {**CHAT, "stream": True}, BEARER)
    g.send("POST", "/openai/v1/chat/completions", {**CHAT, "stream": False}, BEARER)
    g.send("POST", "/openai/v1/chat/completions", {**CHAT, "stream": "yes"}, BEARER)
    assert [r.streamed for r in g.records] == [True, False, False]


def test_ask_stream_usage_rewrites_only_streamed_chat_requests():
    """With [recording] ask_stream_usage a streamed chat request reaches the upstream asking for its usage
    (compact JSON); a request that is not streamed, or the same with the option off, reaches it byte for byte."""
    streamed = json.dumps({**CHAT, "stream": True}).encode()
    blocking = json.dumps(CHAT).encode()
    g = memory.gateway({"recording": {"ask_stream_usage": True}})
    g.send("POST", "/openai/v1/chat/completions", streamed, BEARER)
    g.send("POST", "/openai/v1/chat/completions", blocking, BEARER)
    assert g.upstream.seen[0].body == json.dumps(
        {**CHAT, "stream": True, "stream_options": {"include_usage": True}}, separators=(",", ":")).encode()
    assert g.upstream.seen[1].body == blocking
    g = memory.gateway()
    g.send("POST", "/openai/v1/chat/completions", streamed, BEARER)
    assert g.upstream.seen[0].body == streamed


def test_a_non_ascii_prompt_is_rewritten_as_utf_8():
    g = memory.gateway({"recording": {"ask_stream_usage": True}})
    body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "caf\xe9 \u2603"}]}
    g.send("POST", "/openai/v1/chat/completions", body, BEARER)
    assert json.loads(g.upstream.seen[0].body)["messages"][0]["content"] == "caf\xe9 \u2603"


# who asked


def test_a_delegated_request_is_recorded_for_the_owner():
    """The resolvers run in turn, each seeing the request: a delegator's token used by Coder Agents with
    X-Coder-Owner-Id is recorded for the owner."""
    from bridgeproxy.types import Identity
    owner = "0b8c9d1e-2f3a-4b5c-8d6e-7f8091a2b3c4"
    identities = memory.Identities({TOKEN: Identity(USER_ID, "agents"), "bp_owner-token-0123456789": Identity(
        owner, "bob")})
    g = memory.gateway({"initiator": {"delegators": [USER_ID]}}, identities=identities)
    g.send("POST", "/openai/v1/chat/completions", CHAT,
           {**BEARER, "User-Agent": "coder-agents/1.0", "X-Coder-Owner-Id": owner})
    record = g.records[0]
    assert (record.initiator_id, record.initiator_username, record.credential_user_id) == (owner, "bob", USER_ID)


def test_no_resolved_user_is_401():
    g = memory.gateway()
    g.bridge.resolvers = ()
    answer = g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    assert answer.status == 401
    assert answer.json()["error"]["message"] == "No user could be resolved for this API key."
    assert g.metrics.get("refused:401:no_initiator") == 1 and g.upstream.seen == []


def test_a_synchronous_resolver_plugin_is_served_the_same():
    """A resolver that answers without a Deferred: the request is forwarded, refused (429) or, when something
    unexpected breaks, answered 500, exactly as with the built-in resolvers."""
    g = memory.gateway({"limits": {"per_initiator_rps": 1, "per_initiator_burst": 1}})
    g.bridge.resolvers = (SyncResolver(),)
    assert g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER).status == 200
    limited = g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    assert limited.status == 429 and limited.headers["retry-after"] == [b"1"]
    g.bridge.limits.check_rate = boom
    crashed = g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    assert crashed.status == 500 and crashed.json()["error"]["message"] == "Internal error in the gateway."
    assert [(r.status, r.http_status) for r in g.records] == [("ok", 200), ("refused", 429), ("error", 500)]
    assert g.bridge.in_flight == set() and len(g.upstream.seen) == 1


def test_an_unexpected_error_is_500_and_logged_with_its_traceback(events):
    """Something unexpected breaking, before or after the key check, answers 500 in the provider's shape,
    logs the failure for the request's id, records it when the caller is known, and leaves nothing in flight."""
    g = memory.gateway()
    g.bridge.limits.check_concurrency = boom
    answer = g.send("POST", "/anthropic/v1/messages", MESSAGES, BEARER)
    assert answer.status == 500 and answer.json() == {"type": "error", "error": {
        "type": "api_error", "message": "Internal error in the gateway."}}
    assert g.records == []
    del g.bridge.limits.check_concurrency
    g.bridge.limits.check_rate = boom
    assert g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER).status == 500
    (record,) = g.records
    assert (record.status, record.error, record.http_status) == ("error", "Internal error in the gateway.", 500)
    failures = [e for e in events if e.get("log_failure") is not None]
    assert len(failures) == 2 and all(f["log_failure"].check(ZeroDivisionError) for f in failures)
    assert formatEvent(failures[1]) == f"Unexpected error serving {record.id}"
    assert formatEvent(failures[0]).startswith("Unexpected error serving ")
    assert g.bridge.in_flight == set() and g.upstream.seen == []


def test_a_resolver_that_breaks_is_500():
    from twisted.internet.defer import fail

    class Breaks:
        def resolve(self, request, credential, client, initiator):
            return fail(ZeroDivisionError("broken backend"))
    g = memory.gateway()
    g.bridge.resolvers = (Breaks(),)
    answer = g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    assert answer.status == 500 and answer.json()["error"]["message"] == "Internal error in the gateway."
    assert b"broken backend" not in answer.raw and g.bridge.in_flight == set()


# what is forwarded


def test_the_rate_is_per_initiator():
    from bridgeproxy.types import Identity
    bob = "bp_bob-token-0123456789abcdef"
    identities = memory.Identities({TOKEN: Identity(USER_ID, "alice"),
                                    bob: Identity("0b8c9d1e-2f3a-4b5c-8d6e-7f8091a2b3c4", "bob")})
    g = memory.gateway({"limits": {"per_initiator_rps": 1, "per_initiator_burst": 1}}, identities=identities)
    assert g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER).status == 200
    assert g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER).status == 429
    assert g.send("POST", "/openai/v1/chat/completions", CHAT, {"Authorization": f"Bearer {bob}"}).status == 200


def test_the_bridge_key_in_the_path_is_refused_with_why():
    g = memory.gateway()
    answer = g.send("GET", f"/openai/v1/models/{TOKEN}", None, BEARER)
    assert answer.json()["error"]["message"] == (
        "Refused path: it contains the bridge key; send the key in a header only.")


def test_a_plugin_key_outside_latin_1_is_served():
    """A key an extractor plugin decoded to characters outside Latin-1 is looked up and the request served."""
    from bridgeproxy.types import Credential, Identity

    class Cookie:
        def extract(self, request):
            return Credential("bp_\u043a\u043b\u044e\u0447-0123456789", "cookie:session")
    g = memory.gateway(identities=memory.Identities({"bp_\u043a\u043b\u044e\u0447-0123456789": Identity(USER_ID)}))
    g.bridge.extractors = (Cookie(),)
    assert g.send("GET", "/openai/v1/models").status == 200


def test_configured_key_headers_never_reach_the_upstream():
    """Every header named in [auth] coder_token_headers is removed, whatever it holds; a header repeating the
    bridge key is removed and counted."""
    g = memory.gateway({"auth": {"coder_token_headers": ["X-Coder-Token", "X-Bridge-Key"]}})
    g.send("POST", "/openai/v1/chat/completions", CHAT, {
        "X-Coder-Token": TOKEN, "X-Bridge-Key": "bp_an-older-key-0123456789", "Cookie": f"k={TOKEN}",
        "X-Kept": "yes"})
    seen = g.upstream.seen[0]
    assert (seen.header("x-bridge-key"), seen.header("cookie"), seen.header("x-kept")) == (None, None, b"yes")
    assert g.metrics.get("bridge_token_dropped") == 1
    assert b'bridgeproxy_events_total{name="bridge_token_dropped"} 1.0' in g.metrics.exposition()


def test_actor_headers_name_the_initiator_when_asked():
    g = memory.gateway({"upstream": {"send_actor_headers": True}})
    g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    seen = g.upstream.seen[0]
    assert (seen.header("x-ai-bridge-actor-id"), seen.header("x-ai-bridge-actor-metadata-username")) == (
        USER_ID.encode(), b"alice")
    g = memory.gateway()
    g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    assert g.upstream.seen[0].header("x-ai-bridge-actor-id") is None


def test_forwarded_headers_are_added_for_passthrough_only():
    g = memory.gateway()
    g.send("GET", "/openai/v1/models", None, BEARER)
    g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    assert [s.header("x-forwarded-for") for s in g.upstream.seen] == [b"127.0.0.1", None]


def test_a_body_is_sent_for_methods_that_carry_one():
    """A GET without a body is sent without one (no Content-Length); a POST with an empty body says
    Content-Length: 0."""
    g = memory.gateway()
    g.send("GET", "/openai/v1/models", None, BEARER)
    g.send("POST", "/openai/v1/responses/resp_1/cancel", b"", BEARER)
    g.send("DELETE", "/openai/v1/responses/resp_1", b"", BEARER)
    g.send("DELETE", "/openai/v1/conversations/conv_1/items/item_2", b'{"x": 1}', BEARER)
    assert [s.header("content-length") for s in g.upstream.seen] == [None, b"0", None, b"8"]
    assert [s.body for s in g.upstream.seen] == [b"", b"", b"", b'{"x": 1}']


# the answer


def test_latency_and_time_to_first_byte_are_measured_on_the_clock():
    g = memory.gateway()
    hanging(g)
    g.clock.advance(1000)
    protocol, transport = g.open("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    g.clock.advance(2)
    request = g.upstream.requests[0]
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", b"2")
    request.write(b"")
    g.pump()
    g.clock.advance(3)
    request.write(b"{}")
    request.finish()
    g.pump()
    text = g.metrics.exposition().decode()
    assert 'bridgeproxy_upstream_latency_seconds_sum{provider="openai"} 2.0' in text
    assert 'bridgeproxy_upstream_ttfb_seconds_sum{provider="openai"} 5.0' in text


def test_the_upstreams_status_line_and_length_reach_the_client():
    """The upstream's own reason phrase and Content-Length reach the client; a stream is relayed chunked, with
    Cache-Control: no-cache and X-Accel-Buffering: no."""
    g = memory.gateway()

    def slow_down(request):
        request.setResponseCode(429, b"Slow Down Please")
        request.setHeader(b"content-type", b"application/json")
        return b'{"error": {"message": "later"}}'
    g.upstream.handler = slow_down
    answer = g.send("GET", "/openai/v1/models", None, BEARER)
    assert answer.raw.startswith(b"HTTP/1.1 429 Slow Down Please\r\n")
    g.upstream.handler = memory.json_answer(200, {"object": "list", "data": []})
    answer = g.send("GET", "/openai/v1/models", None, BEARER)
    assert answer.headers["content-length"] == [b"30"] and "transfer-encoding" not in answer.headers
    g.upstream.handler = memory.sse_answer(CHAT_EVENTS + CHAT_END)
    answer = g.send("POST", "/openai/v1/chat/completions", {**CHAT, "stream": True}, BEARER)
    assert answer.headers["transfer-encoding"] == [b"chunked"] and "content-length" not in answer.headers
    assert (answer.headers["cache-control"], answer.headers["x-accel-buffering"]) == ([b"no-cache"], [b"no"])
    g.upstream.handler = memory.json_answer(200, {"ok": True})
    answer = g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    assert "cache-control" not in answer.headers and "x-accel-buffering" not in answer.headers


def test_an_answer_that_arrives_after_the_client_left_is_dropped():
    """If the client leaves and its request could not be stopped in time, the answer that then arrives is
    stopped, nothing is written, and the request is recorded as the client's leaving, with no status sent."""
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure
    g = memory.gateway()
    hanging(g)
    protocol, transport = g.open("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    (ex,) = g.bridge.in_flight
    ex.stop = lambda: None  # the stop comes too late
    protocol.connectionLost(Failure(ConnectionDone()))
    request = g.upstream.requests[0]
    request.setHeader(b"content-type", b"application/json")
    request.write(b'{"partial": ')
    g.pump()
    assert g.upstream.lost == [request]
    (record,) = g.records
    assert (record.status, record.error, record.http_status, record.upstream_status) == (
        "client_disconnected", "client disconnected before the answer", None, 200)
    assert transport.value() == b"" and g.bridge.in_flight == set()


def test_a_blocking_answer_cut_short_looks_cut_short():
    """A JSON answer whose upstream connection breaks mid-body: the client's connection is closed without the
    last chunk (never a complete-looking body, never a stream's error event), and the record says how it broke."""
    g = memory.gateway()

    def cut(request):
        request.setHeader(b"content-type", b"application/json")
        request.write(b'{"id": "chatcmpl-1", ')
        request.channel.transport.abortConnection()
        from twisted.web.server import NOT_DONE_YET
        return NOT_DONE_YET
    g.upstream.handler = cut
    protocol, transport = g.open("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    assert transport.disconnecting
    assert not transport.value().endswith(b"0\r\n\r\n") and b"error" not in transport.value()
    (record,) = g.records
    assert record.status == "upstream_broken"
    assert record.error.startswith("upstream connection broke: ") and len(record.error) > len(
        "upstream connection broke: ")


def test_an_upstream_error_without_a_message_is_recorded_by_its_status():
    g = memory.gateway()

    def html(request):
        request.setResponseCode(502)
        request.setHeader(b"content-type", b"text/html")
        return b"<html>Bad gateway</html>"
    g.upstream.handler = html
    g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    g.send("GET", "/openai/v1/models", None, BEARER)
    assert [r.error for r in g.records] == ["upstream status 502"] * 2


def test_an_error_body_that_is_not_utf_8_is_relayed_as_it_is():
    g = memory.gateway()

    def latin(request):
        request.setResponseCode(500)
        request.setHeader(b"content-type", b"text/plain")
        return b"caf\xe9 \xff broke"
    g.upstream.handler = latin
    answer = g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    assert answer.body == b"caf\xe9 \xff broke" and answer.headers["content-length"] == [b"12"]
    assert g.records[0].error == "upstream status 500"


def test_a_passthrough_error_echoing_the_gateway_key_is_masked():
    """An error answer to a passthrough request that repeats the gateway's key reaches the client and the record
    with the key masked, and with a Content-Length for what is sent."""
    g = memory.gateway()
    g.upstream.handler = memory.json_answer(401, {"error": {"message": f"Incorrect API key {OPENAI_KEY}"}})
    answer = g.send("GET", "/openai/v1/models", None, BEARER)
    assert answer.status == 401 and OPENAI_KEY.encode() not in answer.raw
    assert answer.json()["error"]["message"] == "Incorrect API key sk-c...def"
    assert answer.headers["content-length"] == [str(len(answer.body)).encode()]
    assert (g.records[0].error, g.records[0].upstream_status) == ("upstream status 401", 401)


def test_the_streams_gauge_counts_streams_only():
    g = memory.gateway()
    gauge = 'bridgeproxy_streams_in_flight 0.0'
    g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    assert gauge in g.metrics.exposition().decode()
    g.upstream.handler = memory.sse_answer(CHAT_EVENTS[:1], "hang")
    g.open("POST", "/openai/v1/chat/completions", {**CHAT, "stream": True}, BEARER)
    assert 'bridgeproxy_streams_in_flight 1.0' in g.metrics.exposition().decode()
    g.upstream.requests[-1].finish()
    g.pump()
    assert gauge in g.metrics.exposition().decode()


def test_each_way_a_stream_ends_early_is_recorded_and_logged(events):
    """Stalled, truncated, cut by the client, cut by the shutdown, broken: each is recorded with its own status
    and error, and logged with the request's id."""
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure
    body = {**CHAT, "stream": True}
    got = []
    # stalled
    g = memory.gateway({"upstream": {"timeout": 5}})
    g.upstream.handler = memory.sse_answer(CHAT_EVENTS[:1], "hang")
    g.open("POST", "/openai/v1/chat/completions", body, BEARER)
    g.clock.advance(5)
    g.pump()
    got.append(g.records[0])
    # truncated
    g = memory.gateway()
    g.upstream.handler = memory.sse_answer(CHAT_EVENTS[:1])
    g.send("POST", "/openai/v1/chat/completions", body, BEARER)
    got.append(g.records[0])
    # the client leaves
    g = memory.gateway()
    g.upstream.handler = memory.sse_answer(CHAT_EVENTS[:1], "hang")
    protocol, _ = g.open("POST", "/openai/v1/chat/completions", body, BEARER)
    protocol.connectionLost(Failure(ConnectionDone()))
    g.pump()
    got.append(g.records[0])
    # the shutdown
    g = memory.gateway()
    g.upstream.handler = memory.sse_answer(CHAT_EVENTS[:1], "hang")
    g.open("POST", "/openai/v1/chat/completions", body, BEARER)
    g.bridge.drain(1)
    g.clock.advance(1)
    g.pump()
    got.append(g.records[0])
    assert [(r.status, r.error) for r in got] == [
        ("timeout", "upstream stalled past the timeout"),
        ("incomplete", "upstream ended the stream before its terminal event"),
        ("client_disconnected", "client disconnected"),
        ("shutdown", "cut short by shutdown after the grace period")]
    assert lines(events, "Relay of ") == [
        f"Relay of {got[0].id} ended: timeout", f"Relay of {got[1].id} ended: incomplete",
        f"Relay of {got[2].id} ended: client_disconnected", f"Relay of {got[3].id} ended: shutdown"]


def test_a_broken_stream_says_how_it_broke():
    g = memory.gateway()
    g.upstream.handler = memory.sse_answer(CHAT_EVENTS[:1], "abort")
    g.send("POST", "/openai/v1/chat/completions", {**CHAT, "stream": True}, BEARER)
    (record,) = g.records
    assert record.status == "incomplete"
    assert record.error.startswith("upstream connection broke: ") and "Connection" in record.error


# the ways out


def test_a_client_that_leaves_before_the_answer_is_recorded_so():
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure
    g = memory.gateway()
    hanging(g)
    protocol, transport = g.open("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    protocol.connectionLost(Failure(ConnectionDone()))
    g.pump()
    (record,) = g.records
    assert (record.status, record.error, record.http_status, record.upstream_status) == (
        "client_disconnected", "client disconnected before the answer", None, None)
    assert g.upstream.lost == g.upstream.requests and g.bridge.in_flight == set()


def test_timeout_and_shutdown_refusals_say_why():
    g = memory.gateway({"upstream": {"timeout": 3}})
    hanging(g)
    protocol, transport = g.open("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    g.clock.advance(3)
    g.pump()
    assert memory.parse_answer(transport.value()).json()["error"]["message"] == "The upstream did not answer in time."
    protocol, transport = g.open("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    g.bridge.drain(1)
    g.clock.advance(1)
    g.pump()
    assert memory.parse_answer(transport.value()).json()["error"]["message"] == "The gateway is shutting down; retry."


class Unreachable:
    """An agent whose every request fails as a connection would."""

    def __init__(self, failure):
        self.failure = failure

    def request(self, method, uri, headers=None, bodyProducer=None):
        from twisted.internet.defer import fail
        return fail(self.failure)


def test_an_unreachable_upstream_is_502_and_logged_without_the_key(events):
    from twisted.internet.error import ConnectionRefusedError

    from bridgeproxy.proxy.upstream import Upstream
    g = memory.gateway()
    g.bridge.upstream = Upstream(Unreachable(ConnectionRefusedError(f"no route to {OPENAI_KEY}")), g.clock)
    answer = g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    assert answer.status == 502
    assert answer.json()["error"]["message"] == "The upstream provider could not be reached."
    (record,) = g.records
    assert (record.status, record.http_status) == ("upstream_unreachable", 502)
    (line,) = lines(events, "Upstream ")
    assert line.startswith(f"Upstream openai unreachable for {record.id}: ")
    assert "sk-c...def" in line and OPENAI_KEY not in line


def test_a_refusal_from_below_the_http_client_is_answered_as_it_is():
    from bridgeproxy.errors import BadRequest
    from bridgeproxy.proxy.upstream import Upstream
    g = memory.gateway()
    g.bridge.upstream = Upstream(Unreachable(BadRequest("Refused by the agent.")), g.clock)
    answer = g.send("GET", "/openai/v1/models", None, BEARER)
    assert (answer.status, answer.json()["error"]["message"]) == (400, "Refused by the agent.")


def test_refusals_are_counted_by_status_and_reason():
    g = memory.gateway()
    g.send("GET", "/openai/v1/files", None, BEARER)
    g.send("GET", "/openai/v1/models", None, {"Authorization": "Bearer bp_unknown-0123456789"})
    assert (g.metrics.get("refused:404:not_found"), g.metrics.get("refused:401:unknown_key")) == (1, 1)


def test_the_gateway_key_in_a_refused_path_is_masked_everywhere(events):
    """The provider key in the path of a refused request is masked in the answer, the record and the log line."""
    g = memory.gateway()
    answer = g.send("GET", f"/openai/v1/files/{OPENAI_KEY}", None, BEARER)
    assert answer.status == 404
    assert answer.json()["error"]["message"] == "Unknown route: GET /openai/v1/files/sk-c...def"
    assert answer.json()["error"]["code"] == "unknown_url"
    assert g.records[0].error == "Unknown route: GET /openai/v1/files/sk-c...def"
    assert g.records[0].route == "/v1/files/sk-c...def"
    assert OPENAI_KEY not in log_text(events)


@pytest.mark.parametrize("path,masked", [
    # Another provider's key: the gateway knows every provider's key.
    (f"/openai/v1/files/{ANTHROPIC_KEY}", "/v1/files/sk-a...def"),
    # A key the gateway does not know, shaped like a provider's: the client's own.
    ("/anthropic/v1/files/sk-proj-ClientOwnKey0123456789", "/v1/files/sk-...89"),
    # Another bridge key than the caller's.
    ("/openai/v1/files/bp_SomeoneElsesKey0123456789", "/v1/files/bp_...89"),
])
def test_any_key_in_a_refused_path_is_masked_everywhere(events, path, masked):
    """A key of any kind in the path of a refused request is masked in the answer, the record and the log line."""
    g = memory.gateway()
    answer = g.send("GET", path, None, BEARER)
    secret = path.rpartition("/")[2]
    assert answer.status == 404
    assert answer.json()["error"]["message"].endswith(masked)
    assert secret.encode() not in answer.raw
    assert g.records[0].route == masked
    assert secret not in (g.records[0].error or "") and g.records[0].error.endswith(masked)
    assert secret not in log_text(events)
    assert masked in log_text(events)


def test_the_refusal_log_line(events):
    """A refusal is logged with the method, the path (no query string), the status, the reason, the client,
    where the key was found and a hint of it."""
    g = memory.gateway()
    g.send("GET", "/openai/v1/files?purpose=x", None, {**BEARER, "User-Agent": "codex_cli_rs/0.1"})
    g.send("GET", "/openai/v1/files")
    assert lines(events, "Refused ") == [
        "Refused GET /openai/v1/files: 404 (not_found) client=Codex credential=authorization hint=bp_m...XYZ",
        "Refused GET /openai/v1/files: 404 (not_found) client=Unknown credential=none hint=none"]


def test_a_refused_key_of_a_client_that_left_is_not_answered():
    """A client gone while its key was being checked, the key then refused: nothing is written or recorded,
    nothing breaks, the request leaves in_flight."""
    from twisted.internet.defer import Deferred
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    class Slow(memory.Identities):
        def __init__(self):
            super().__init__()
            self.pending = []

        def identify(self, token):
            d = Deferred()
            self.pending.append(d)
            return d
    identities = Slow()
    g = memory.gateway(identities=identities)
    protocol, transport = g.open("POST", "/openai/v1/chat/completions", CHAT, {"X-Api-Key": "bp_unknown-0123456789"})
    protocol.connectionLost(Failure(ConnectionDone()))
    identities.pending[0].callback(None)
    assert transport.value() == b"" and g.records == [] and g.bridge.in_flight == set()


def test_nothing_stays_in_flight_after_a_refusal():
    g = memory.gateway()
    g.send("GET", "/openai/v1/files", None, BEARER)
    g.send("GET", "/openai/v1/files")
    assert g.bridge.in_flight == set()


# records, log lines, the drain


def test_a_request_is_recorded_once_however_it_ends():
    """A request the drain let go at its hard cap, whose stream then ends after all, stays one record."""
    from bridgeproxy.proxy.pipeline import DRAIN_HARD_CAP
    g = memory.gateway()
    g.upstream.handler = memory.sse_answer(CHAT_EVENTS[:1], "hang")
    g.open("POST", "/openai/v1/chat/completions", {**CHAT, "stream": True}, BEARER)
    (ex,) = g.bridge.in_flight
    stop = ex.stop
    ex.stop = lambda: None
    g.bridge.drain(1)
    g.clock.advance(1)
    g.clock.advance(DRAIN_HARD_CAP)
    assert len(g.records) == 1
    stop()
    g.upstream.requests[0].finish()
    g.pump()
    assert [(r.status, r.error) for r in g.records] == [("shutdown", "cut short by shutdown after the grace period")]


def test_the_interception_log_line(events):
    """One line per finished request: id, initiator (name, else id), client, provider, route, model, status,
    upstream status, tokens and duration."""
    from bridgeproxy.types import Identity
    g = memory.gateway()
    g.upstream.handler = memory.json_answer(200, {"model": "gpt-4o-2024", "choices": [], "usage": {
        "prompt_tokens": 12, "completion_tokens": 3}})
    g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    g = memory.gateway({"log_interceptions": True}, identities=memory.Identities({TOKEN: Identity(USER_ID)}))
    g.send("GET", "/openai/v1/files", None, {**BEARER, "User-Agent": "zed/1"})
    first, second = lines(events, "interception ")
    assert first.endswith(" initiator=alice client=Unknown provider=openai route=chat.completions model=gpt-4o-2024 "
                          "status=ok "
                          "upstream_status=200 tokens_in=12 tokens_out=3 duration_ms=0")
    assert second.endswith(f" initiator={USER_ID} client=Zed provider=openai route=/v1/files model=None "
                           "status=refused upstream_status=None tokens_in=0 tokens_out=0 duration_ms=0")
    assert first.split(" ")[1] != second.split(" ")[1]
    g = memory.gateway({"log_interceptions": False})
    g.send("GET", "/openai/v1/models", None, BEARER)
    assert len(lines(events, "interception ")) == 2


def test_the_drain_waits_for_every_request():
    g = memory.gateway()
    hanging(g)
    for _ in range(2):
        g.open("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    drained = []
    g.bridge.drain(60).addCallback(drained.append)
    for index, expected in ((0, []), (1, [None])):
        request = g.upstream.requests[index]
        request.write(b"{}")
        request.finish()
        g.pump()
        assert drained == expected


def test_a_request_still_at_its_key_check_when_the_drain_lets_go_is_recorded_without_a_user():
    from twisted.internet.defer import Deferred

    from bridgeproxy.proxy.pipeline import DRAIN_HARD_CAP

    class Never(memory.Identities):
        def identify(self, token):
            return Deferred()
    g = memory.gateway(identities=Never())
    g.open("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    g.bridge.drain(1)
    g.clock.advance(1)
    g.clock.advance(DRAIN_HARD_CAP)
    (record,) = g.records
    assert (record.status, record.initiator_id, record.initiator_username, record.credential_user_id) == (
        "shutdown", None, None, None)


def test_a_stream_with_a_length_is_relayed_without_it():
    """An upstream stream that declares its length is relayed chunked, without that length: the bridge may
    end it with an error event of its own."""
    g = memory.gateway()
    events = b"".join(CHAT_EVENTS[:1])

    def sized(request):
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"content-length", b"%d" % len(events))
        return events
    g.upstream.handler = sized
    answer = g.send("POST", "/openai/v1/chat/completions", {**CHAT, "stream": True}, BEARER)
    assert "content-length" not in answer.headers and answer.headers["transfer-encoding"] == [b"chunked"]
    assert answer.body.startswith(events) and error_tail("chat", answer.body[len(events):])


def test_what_the_parser_reads_in_an_error_answer_is_recorded():
    """An error answer that reports a model and tokens (an OpenAI-compatible server's) is recorded with them."""
    g = memory.gateway()
    g.upstream.handler = memory.json_answer(400, {
        "error": {"message": "too long", "type": "invalid_request_error"}, "model": "served-model",
        "usage": {"prompt_tokens": 7, "completion_tokens": 0}})
    g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    (record,) = g.records
    assert (record.error, record.model, record.input_tokens) == ("too long", "served-model", 7)
