"""
The Anthropic provider (L{bridgeproxy.providers.anthropic}): what its
parser reads from real Messages API payloads, the URLs and keys it sends
upstream, and the error shapes clients get.
"""

from __future__ import annotations

import json

import pytest
from twisted.web.http_headers import Headers

from bridgeproxy.providers.anthropic import AnthropicProvider, anthropic_error
from bridgeproxy.types import ToolCall

P = AnthropicProvider()


def blocking(obj):
    parser = P.usage_parser("messages", False)
    parser.feed(json.dumps(obj).encode())
    return parser.finish()


def streamed(*events):
    parser = P.usage_parser("messages", True)
    data = b""
    for event in events:
        if isinstance(event, tuple):
            name, obj = event
        else:
            name, obj = event["type"], event
        data += b"event: " + name.encode() + b"\ndata: " + json.dumps(obj).encode() + b"\n\n"
    parser.feed(data)
    return parser.finish()


MESSAGE = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
    "content": [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"command": "ls", "n": [1, 2]}},
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}},
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
        {"type": "mcp_tool_use", "id": "mcptoolu_1", "name": "issues", "server_name": "gh"},
        {"type": 5}, "junk",
    ],
    "stop_reason": "tool_use",
    "usage": {"input_tokens": 12, "output_tokens": 34, "cache_read_input_tokens": 56,
              "cache_creation_input_tokens": 78},
}


def test_blocking_message_reads_everything():
    """A blocking message: model, all four token counts, stop reason, and every kind of tool use, in order."""
    usage = blocking(MESSAGE)
    assert usage.model == "claude-sonnet-4-5"
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == (
        12, 34, 56, 78)
    assert usage.stop_reason == "tool_use"
    assert usage.tool_calls == (ToolCall("bash", '{"command":"ls","n":[1,2]}', "toolu_1"),
                                ToolCall("web_search", '{"query":"q"}', "srvtoolu_1"),
                                ToolCall("issues", "{}", "mcptoolu_1"))
    assert usage.complete is True and usage.error is None


def test_blocking_message_with_odd_fields():
    """A non-string model, a usage that is not an object, an empty stop reason: nothing recorded from them."""
    usage = blocking({"model": 3, "usage": [1], "stop_reason": "", "content": "text"})
    assert (usage.model, usage.input_tokens, usage.stop_reason, usage.tool_calls) == (None, 0, None, ())


def test_blocking_error_body():
    """An Anthropic error body records its message."""
    usage = blocking({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert usage.error == "Overloaded"


STREAM = [
    {"type": "message_start", "message": {"id": "msg_1", "type": "message", "model": "claude-opus-4-1",
                                          "content": [], "usage": {"input_tokens": 25, "output_tokens": 1,
                                                                   "cache_read_input_tokens": 3,
                                                                   "cache_creation_input_tokens": 4}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1,
     "content_block": {"type": "tool_use", "id": "toolu_9", "name": "edit", "input": {}}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"p\":"}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "1}"}},
    {"type": "content_block_stop", "index": 1},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 40}},
    {"type": "message_stop"},
]


def test_stream_reads_everything_and_completes():
    """A streamed message: counts from message_start then the latest from message_delta, tools, stop, end."""
    usage = streamed(*STREAM)
    assert usage.model == "claude-opus-4-1"
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == (
        25, 40, 3, 4)
    assert usage.stop_reason == "tool_use"
    assert usage.tool_calls == (ToolCall("edit", '{"p":1}', "toolu_9"),)
    assert usage.complete is True


def test_stream_without_message_stop_is_incomplete():
    """A stream cut before message_stop is incomplete, with what it said so far."""
    usage = streamed(*STREAM[:-1])
    assert usage.complete is False and usage.output_tokens == 40


def test_zero_counts_in_message_delta_do_not_erase_earlier_ones():
    """message_delta's counts are cumulative: a zero (or missing) count keeps the one already read."""
    usage = streamed(STREAM[0], {"type": "message_delta", "delta": {}, "usage": {"input_tokens": 0,
                                                                                   "output_tokens": 9}})
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens) == (25, 9, 3)
    assert usage.stop_reason is None


def test_message_start_with_odd_message():
    """A message_start without a message object, or with a non-string model, records nothing from it."""
    assert streamed({"type": "message_start", "message": "x"}).model is None
    usage = streamed({"type": "message_start", "message": {"model": 1, "usage": {"input_tokens": 2}}})
    assert (usage.model, usage.input_tokens) == (None, 2)


def test_json_deltas_for_unknown_blocks_are_ignored():
    """Input deltas for a block that did not start as a tool use, or of another delta type, add nothing."""
    usage = streamed(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "x"}},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "server_tool_use", "id": "s",
                                                                      "name": "web_search"}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "partial_json": "no"}},
        {"type": "content_block_delta", "index": 1, "delta": "junk"},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{}"}})
    assert usage.tool_calls == (ToolCall("web_search", "{}", "s"),)


def test_text_deltas_are_skipped_unread():
    """Text deltas are not parsed; input JSON deltas and other events are."""
    parser = P.usage_parser("messages", True)
    assert parser.uninteresting("content_block_delta", '{"delta":{"type":"text_delta"}}') is True
    assert parser.uninteresting("content_block_delta", '{"delta":{"type":"input_json_delta"}}') is False
    assert parser.uninteresting("message_delta", "{}") is False


def test_event_kind_from_the_event_line_when_the_json_has_no_type():
    """An event whose data has no C{type} is read by its C{event:} name."""
    assert streamed(("message_stop", {})).complete is True


def test_stream_errors():
    """An error event's message is recorded, or 'stream error' without one."""
    assert streamed({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}).error == \
        "Overloaded"
    assert streamed({"type": "error"}).error == "stream error"


def test_ping_and_unknown_events_change_nothing():
    """Events the parser does not know (ping, future ones) leave the usage as it was."""
    usage = streamed({"type": "ping"}, {"type": "something_new", "usage": {"input_tokens": 5}})
    assert usage.input_tokens == 0 and usage.complete is False and usage.error is None


# -- requests upstream -------------------------------------------------------------------


def test_routes():
    """Only /v1/messages is intercepted (trailing slash ignored); count_tokens is not."""
    assert P.route(b"/v1/messages") == "messages"
    assert P.route(b"/v1/messages/") == "messages"
    assert P.route(b"/v1/messages/count_tokens") is None
    assert P.name == "anthropic" and P.default_base_url == "https://api.anthropic.com"


def test_upstream_url_keeps_the_path():
    """The path goes after the base unchanged, with the query when there is one."""
    assert P.upstream_url("https://api.anthropic.com", b"/v1/messages", b"") == \
        b"https://api.anthropic.com/v1/messages"
    assert P.upstream_url("http://h", b"/v1/models", b"limit=2") == b"http://h/v1/models?limit=2"


def test_keys():
    """The gateway's key goes in X-Api-Key; a client's own key where the client put it."""
    headers = Headers()
    P.set_central_key(headers, "sk-ant-central")
    assert headers.getRawHeaders(b"x-api-key") == [b"sk-ant-central"]
    headers = Headers()
    assert P.set_client_key(headers, "bearer-key", "api-key") == "api-key"
    assert headers.getRawHeaders(b"x-api-key") == [b"api-key"]
    assert headers.getRawHeaders(b"authorization") is None
    headers = Headers()
    assert P.set_client_key(headers, "oauth-token", None) == "oauth-token"
    assert headers.getRawHeaders(b"authorization") == [b"Bearer oauth-token"]
    assert headers.getRawHeaders(b"x-api-key") is None


@pytest.mark.parametrize("kind, type_", [
    ("invalid_request", "invalid_request_error"), ("authentication", "authentication_error"),
    ("permission", "permission_error"), ("not_found", "not_found_error"),
    ("request_too_large", "request_too_large"), ("rate_limit", "rate_limit_error"),
    ("overloaded", "overloaded_error"), ("timeout", "timeout_error"), ("api_error", "api_error"),
    ("unheard-of", "api_error"),
])
def test_error_bodies_have_anthropics_shape(kind, type_):
    """Every refusal kind maps to Anthropic's error type; unknown kinds are api_error."""
    assert json.loads(P.error_body(kind, "msg")) == {"type": "error", "error": {"type": type_, "message": "msg"}}
    assert anthropic_error(kind, "m")["error"]["type"] == type_


def test_stream_error_event():
    """A broken stream ends with an Anthropic C{error} event."""
    assert P.stream_error_event("messages", "overloaded", "busy") == (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"busy"}}\n\n')


def test_prompt_is_the_last_user_text():
    """The prompt is the last user message with text (text blocks only), skipping tool results."""
    body = {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "do it"}, {"type": "input_text", "text": "no"}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "done"}]},
        "junk"]}
    assert P.prompt_of("messages", body) == "do it"
    assert P.prompt_of("messages", {"messages": [{"role": "assistant", "content": "a"}]}) is None
    assert P.prompt_of("messages", {}) is None


def test_a_key_is_required():
    """The Anthropic API is never called without a key."""
    assert P.key_required is True


def test_events_without_event_lines_are_read_by_their_type():
    """Events sent as data only (no C{event:} line) are read by their JSON type."""
    parser = P.usage_parser("messages", True)
    parser.feed(b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in STREAM))
    usage = parser.finish()
    assert (usage.model, usage.output_tokens, usage.complete) == ("claude-opus-4-1", 40, True)
    assert usage.tool_calls == (ToolCall("edit", '{"p":1}', "toolu_9"),)
