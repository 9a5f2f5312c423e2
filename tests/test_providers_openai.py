"""
The OpenAI provider (L{bridgeproxy.providers.openai}): what its parsers
read from real chat-completions and responses payloads, the URLs and keys
it sends upstream, and the error shapes clients get.
"""

from __future__ import annotations

import json

import pytest
from twisted.web.http_headers import Headers

from bridgeproxy.providers.openai import OpenAIProvider, openai_error
from bridgeproxy.types import ToolCall

P = OpenAIProvider()


def blocking(route: str, obj) -> object:
    parser = P.usage_parser(route, False)
    parser.feed(json.dumps(obj).encode())
    return parser.finish()


def streamed(route: str, *events, raw: bytes = b"") -> object:
    parser = P.usage_parser(route, True)
    data = b""
    for event in events:
        if isinstance(event, tuple):
            name, obj = event
            data += b"event: " + name.encode() + b"\n"
        else:
            obj = event
        data += b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"
    parser.feed(data + raw)
    return parser.finish()


# -- chat completions ------------------------------------------------------------

CHAT_COMPLETION = {
    "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"c\":\"P\"}"}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}}],
    "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150,
              "prompt_tokens_details": {"cached_tokens": 100}},
}


def test_chat_blocking_reads_model_usage_stop_and_tools():
    """A blocking chat completion: model, input tokens less the cached ones, cache reads, output, finish, tools."""
    usage = blocking("chat.completions", CHAT_COMPLETION)
    assert usage.model == "gpt-4o-2024-08-06"
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens, usage.cache_write_tokens) == (
        20, 100, 30, 0)
    assert usage.stop_reason == "tool_calls"
    assert usage.tool_calls == (ToolCall("get_weather", "{\"c\":\"P\"}", "call_1"),
                                ToolCall("get_time", "{}", "call_2"))
    assert usage.complete is True and usage.error is None


def test_chat_cached_tokens_never_make_input_negative():
    """More cached tokens than prompt tokens (a provider bug) records zero input, not a negative count."""
    usage = blocking("chat.completions", {"usage": {"prompt_tokens": 5, "prompt_tokens_details": {
        "cached_tokens": 9}, "completion_tokens": 1}})
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (0, 9, 1)


def test_chat_without_usage_or_with_junk_keeps_zeros():
    """No usage, or a usage that is not an object, or a non-string model: nothing recorded from them."""
    usage = blocking("chat.completions", {"model": 4, "usage": "lots", "choices": ["junk", {"index": 0}]})
    assert (usage.model, usage.input_tokens, usage.output_tokens, usage.stop_reason) == (None, 0, 0, None)
    assert usage.tool_calls == ()


def test_chat_tools_of_several_choices_are_kept_apart():
    """Tool calls of different choices with the same position are two calls, not one."""
    obj = {"choices": [
        {"index": 0, "message": {"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "1"}}]}},
        {"index": 1, "message": {"tool_calls": [{"id": "b", "function": {"name": "g", "arguments": "2"}}]}},
        {"message": {"tool_calls": ["junk"]}}]}
    assert blocking("chat.completions", obj).tool_calls == (ToolCall("f", "1", "a"), ToolCall("g", "2", "b"))


def test_chat_custom_and_unknown_tool_calls():
    """A custom tool's free-text input is its arguments; a call of an unknown kind is named by its type."""
    obj = {"choices": [{"message": {"tool_calls": [
        {"id": "c1", "type": "custom", "custom": {"name": "sql", "input": "SELECT 1"}},
        {"id": "c2", "type": "mystery"}]}}]}
    assert blocking("chat.completions", obj).tool_calls == (ToolCall("sql", "SELECT 1", "c1"),
                                                           ToolCall("mystery", "", "c2"))


def chunk(**fields):
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o", **fields}


def test_chat_stream_reads_usage_finish_and_done():
    """A streamed chat completion: model, finish reason, the usage chunk, and [DONE] for completeness."""
    usage = streamed(
        "chat.completions",
        chunk(choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}}]),
        chunk(choices=[{"index": 0, "delta": {"content": "Hi"}}]),
        chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]),
        chunk(choices=[], usage={"prompt_tokens": 9, "completion_tokens": 3,
                                 "prompt_tokens_details": {"cached_tokens": 4}}),
        b"[DONE]")
    assert (usage.model, usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == ("gpt-4o", 5, 4, 3)
    assert usage.stop_reason == "stop"
    assert usage.complete is True


def test_chat_stream_null_usage_does_not_reset_counts():
    """Chunks with C{"usage": null} (sent before the usage chunk) do not wipe counts already read."""
    usage = streamed("chat.completions",
                     chunk(choices=[], usage={"prompt_tokens": 9, "completion_tokens": 3}),
                     chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}], usage=None))
    assert (usage.input_tokens, usage.output_tokens) == (9, 3)


def test_chat_stream_without_done_is_incomplete():
    """A chat stream that ends before [DONE] is incomplete."""
    assert streamed("chat.completions", chunk(choices=[{"index": 0, "delta": {"content": "x"}}])).complete is False


def test_chat_stream_error_event():
    """An error object in a chat stream is recorded; a message-less one says 'stream error'."""
    assert streamed("chat.completions", {"error": {"message": "boom", "type": "server_error"}}).error == "boom"
    assert streamed("chat.completions", {"error": {"type": "server_error"}}).error == "stream error"
    usage = streamed("chat.completions", {"error": "text", "model": "m"})
    assert usage.error is None and usage.model == "m"


def test_chat_stream_tool_calls_per_choice_and_index():
    """Streamed tool calls are keyed by choice and call index; deltas extend the right call."""
    usage = streamed(
        "chat.completions",
        chunk(choices=[{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": "{"}}]}}]),
        chunk(choices=[{"index": 1, "delta": {"tool_calls": [
            {"index": 0, "id": "b", "type": "function", "function": {"name": "g", "arguments": "["}}]}}]),
        chunk(choices=[{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}},
                       {"index": 1, "delta": {"tool_calls": [{"function": {"arguments": "]"}}, "junk"]}},
                       "junk"]),
        chunk(choices=[{"delta": {"tool_calls": [{"index": 1, "id": "c", "custom": {"name": "h", "input": "t"}}]}}]),
    )
    assert usage.tool_calls == (ToolCall("f", "{}", "a"), ToolCall("g", "[]", "b"), ToolCall("h", "t", "c"))


@pytest.mark.parametrize("payload", [
    b'{"usage":{"prompt_tokens":7,"completion_tokens":2},"content":"x"}',
    b'{"choices":[{"delta":{"content":"x","tool_calls":[{"index":0,"id":"t","function":{"name":"n"}}]}}]}',
    b'{"error":{"message":"boom"},"content":"x"}',
    b'{"choices":[{"delta":{"content":"x"},"finish_reason":"length"}]}',
    b'{"choices": [{"delta": {"content": "x"}, "finish_reason": "length"}]}',
])
def test_chat_stream_content_chunks_that_carry_more_are_read(payload):
    """A content delta is skipped unread only when it carries nothing else: usage, tools, errors, finish."""
    usage = streamed("chat.completions", chunk(choices=[{"index": 0, "delta": {"role": "assistant"}}]), payload)
    assert (usage.input_tokens, usage.output_tokens) in ((7, 2), (0, 0))
    assert usage.input_tokens == 7 or usage.tool_calls or usage.error == "boom" or usage.stop_reason == "length"


def test_chat_stream_first_content_chunk_is_read_for_the_model():
    """Until the model is known, even a plain content chunk is read (it names the model)."""
    usage = streamed("chat.completions", b'{"model":"gpt-x","choices":[{"delta":{"content":"x"}}]}')
    assert usage.model == "gpt-x"


def test_chat_stream_plain_content_chunks_are_skipped():
    """Once the model is known, plain content deltas are not read (a later model name there is not taken)."""
    usage = streamed("chat.completions", chunk(choices=[]),
                     b'{"model":"other","choices":[{"delta":{"content":"x"},"finish_reason":null}]}')
    assert usage.model == "gpt-4o"


# -- responses -------------------------------------------------------------------

RESPONSE = {
    "id": "resp_1", "object": "response", "model": "gpt-5", "status": "completed",
    "output": [
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "shell", "arguments": "{\"c\":1}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "ok"},
        {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"query": "q"}},
        {"type": "file_search_call", "name": "", "queries": ["a"]},
        "junk", {"type": 3},
    ],
    "usage": {"input_tokens": 50, "input_tokens_details": {"cached_tokens": 20}, "output_tokens": 7},
}


def test_responses_blocking_reads_everything():
    """A blocking response: model, status, tokens (cached apart), and the calls the model made, in order."""
    usage = blocking("responses", RESPONSE)
    assert (usage.model, usage.stop_reason) == ("gpt-5", "completed")
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (30, 20, 7)
    assert usage.tool_calls == (ToolCall("shell", "{\"c\":1}", "call_1"),
                                ToolCall("web_search", '{"action":{"query":"q"}}', "ws_1"),
                                ToolCall("file_search", '{"queries":["a"]}', None))
    assert usage.complete is True


def test_responses_cached_tokens_never_make_input_negative():
    """More cached than input tokens records zero input."""
    usage = blocking("responses", {"usage": {"input_tokens": 1, "input_tokens_details": {"cached_tokens": 3}}})
    assert (usage.input_tokens, usage.cache_read_tokens) == (0, 3)


def test_responses_error_and_odd_fields():
    """A failed response's error message is recorded; non-string model/status and message-less errors are not."""
    usage = blocking("responses", {"status": "failed", "error": {"message": "quota"}})
    assert (usage.stop_reason, usage.error) == ("failed", "quota")
    usage = blocking("responses", {"model": 1, "status": 2, "error": {"code": "x"}, "usage": "n"})
    assert (usage.model, usage.stop_reason, usage.error, usage.input_tokens) == (None, None, None, 0)


def test_responses_calls_without_ids_are_kept_apart():
    """Built-in calls without any id are still recorded one by one."""
    usage = blocking("responses", {"output": [{"type": "x_call"}, {"type": "y_call"}]})
    assert [t.name for t in usage.tool_calls] == ["x", "y"]


def test_responses_stream():
    """A streamed response: created then completed (which completes it), calls from output_item.done."""
    item = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": "{}"}
    usage = streamed(
        "responses",
        ("response.created", {"type": "response.created", "response": {"model": "gpt-5", "status": "in_progress"}}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "hi"}),
        ("response.function_call_arguments.delta",
         {"type": "response.function_call_arguments.delta", "delta": "{"}),
        ("response.output_item.done", {"type": "response.output_item.done", "item": item}),
        ("response.completed", {"type": "response.completed", "response": {
            "model": "gpt-5", "status": "completed", "output": [item],
            "usage": {"input_tokens": 3, "output_tokens": 4}}}))
    assert (usage.model, usage.stop_reason, usage.input_tokens, usage.output_tokens) == ("gpt-5", "completed", 3, 4)
    assert usage.tool_calls == (ToolCall("f", "{}", "call_1"),)
    assert usage.complete is True


def test_responses_stream_created_alone_is_incomplete():
    """A stream that stops after response.created is incomplete, but its model is known."""
    usage = streamed("responses", ("response.created", {"type": "response.created",
                                                        "response": {"model": "gpt-5"}}))
    assert usage.model == "gpt-5" and usage.complete is False


@pytest.mark.parametrize("kind", ["response.incomplete", "response.failed"])
def test_responses_stream_other_endings_complete(kind):
    """response.incomplete and response.failed end the stream as the provider meant (complete)."""
    usage = streamed("responses", (kind, {"type": kind, "response": {"status": kind.split(".")[1]}}))
    assert usage.complete is True and usage.stop_reason == kind.split(".")[1]


def test_responses_stream_ending_without_response_object():
    """A completed event without a response object still completes the stream."""
    assert streamed("responses", ("response.completed", {"type": "response.completed"})).complete is True


def test_responses_stream_event_type_from_the_event_line():
    """An event whose JSON has no type is read by its C{event:} name."""
    usage = streamed("responses", ("response.completed", {"response": {"model": "m"}}))
    assert usage.model == "m" and usage.complete is True


def test_responses_stream_errors():
    """An error event's message is recorded, from either shape, or 'stream error'."""
    assert streamed("responses", ("error", {"type": "error", "message": "m1"})).error == "m1"
    assert streamed("responses", ("error", {"type": "error", "error": {"message": "m2"}})).error == "m2"
    assert streamed("responses", ("error", {"type": "error"})).error == "stream error"


def test_responses_stream_deltas_other_than_arguments_are_not_read():
    """Text deltas are skipped unread; an event not ending in .delta is read."""
    parser = P.usage_parser("responses", True)
    assert parser.uninteresting("response.output_text.delta", "{}") is True
    assert parser.uninteresting("response.function_call_arguments.delta", "{}") is False
    assert parser.uninteresting("response.completed", "{}") is False
    assert parser.uninteresting(None, "{}") is False
    usage = streamed("responses", ("response.output_text.delta", {"type": "error", "message": "hidden"}))
    assert usage.error is None


def test_responses_completed_does_not_repeat_streamed_calls():
    """A call seen in output_item.done and again in response.completed is one call."""
    item = {"type": "custom_tool_call", "call_id": "c", "name": "patch", "input": "x"}
    usage = streamed("responses",
                     ("response.output_item.done", {"type": "response.output_item.done", "item": item}),
                     ("response.completed", {"type": "response.completed", "response": {"output": [item]}}))
    assert usage.tool_calls == (ToolCall("patch", "x", "c"),)


# -- routing, URLs and keys ----------------------------------------------------------


def test_routes_and_parser_kinds():
    """Chat completions and responses are intercepted (trailing slash ignored); nothing else is."""
    assert P.route(b"/v1/chat/completions") == "chat.completions"
    assert P.route(b"/v1/responses/") == "responses"
    assert P.route(b"/v1/models") is None
    assert type(P.usage_parser("responses", False)).__name__ == "ResponsesParser"
    assert type(P.usage_parser("chat.completions", True)).__name__ == "ChatCompletionsParser"
    assert P.name == "openai" and P.default_base_url == "https://api.openai.com/v1"


def test_upstream_url_drops_the_v1_the_base_already_has():
    """C{/v1/x} goes to C{<base>/x} (the base ends in /v1), with the query when there is one."""
    assert P.upstream_url("https://api.openai.com/v1", b"/v1/chat/completions", b"") == \
        b"https://api.openai.com/v1/chat/completions"
    assert P.upstream_url("http://h/v1", b"/v1/models", b"a=1&b=2") == b"http://h/v1/models?a=1&b=2"


def test_central_and_client_keys_are_bearer_tokens():
    """The gateway's key and a client's own key both go in C{Authorization: Bearer}."""
    headers = Headers()
    P.set_central_key(headers, "sk-central")
    assert headers.getRawHeaders(b"authorization") == [b"Bearer sk-central"]
    headers = Headers()
    assert P.set_client_key(headers, "sk-own", "sk-other") == "sk-own"
    assert headers.getRawHeaders(b"authorization") == [b"Bearer sk-own"]
    headers = Headers()
    assert P.set_client_key(headers, None, "sk-api") == "sk-api"
    assert headers.getRawHeaders(b"authorization") == [b"Bearer sk-api"]


@pytest.mark.parametrize("kind, type_, code", [
    ("invalid_request", "invalid_request_error", None),
    ("authentication", "invalid_request_error", "invalid_api_key"),
    ("permission", "permission_error", "forbidden"),
    ("not_found", "invalid_request_error", "unknown_url"),
    ("request_too_large", "invalid_request_error", "request_too_large"),
    ("rate_limit", "rate_limit_error", "rate_limit_exceeded"),
    ("overloaded", "server_error", "overloaded"),
    ("timeout", "server_error", "upstream_timeout"),
    ("api_error", "server_error", None),
    ("no-such-kind", "server_error", None),
])
def test_error_bodies_have_openais_shape(kind, type_, code):
    """Every refusal kind maps to OpenAI's error type and code; unknown kinds are server errors."""
    assert json.loads(P.error_body(kind, "msg")) == {
        "error": {"message": "msg", "type": type_, "param": None, "code": code}}
    assert openai_error(kind, "m")["error"]["type"] == type_


def test_stream_error_events():
    """A chat stream ends with an error chunk and [DONE]; a responses stream with an C{error} event."""
    assert P.stream_error_event("chat.completions", "timeout", "late") == (
        b'data: {"error":{"message":"late","type":"server_error","param":null,"code":"upstream_timeout"}}'
        b"\n\ndata: [DONE]\n\n")
    assert P.stream_error_event("responses", "timeout", "late") == (
        b'event: error\ndata: {"type":"error","code":"upstream_timeout","message":"late","param":null}\n\n')


# -- asking for stream usage, prompts ----------------------------------------------------


def test_ask_stream_usage_only_for_chat_streams_that_do_not_ask():
    """A chat stream gets C{include_usage} added (other options kept); others are left alone."""
    assert P.ask_stream_usage("chat.completions", {"stream": True, "model": "m"}) == {
        "stream": True, "model": "m", "stream_options": {"include_usage": True}}
    assert P.ask_stream_usage("chat.completions", {"stream": True, "stream_options": {"x": 1}}) == {
        "stream": True, "stream_options": {"x": 1, "include_usage": True}}
    assert P.ask_stream_usage("chat.completions", {"stream": True, "stream_options": "junk"}) == {
        "stream": True, "stream_options": {"include_usage": True}}
    assert P.ask_stream_usage("chat.completions", {"stream": True, "stream_options": {"include_usage": False}}) == {
        "stream": True, "stream_options": {"include_usage": True}}
    assert P.ask_stream_usage("chat.completions", {"stream": True,
                                                   "stream_options": {"include_usage": True}}) is None
    assert P.ask_stream_usage("chat.completions", {"stream": "yes"}) is None
    assert P.ask_stream_usage("chat.completions", {}) is None
    assert P.ask_stream_usage("responses", {"stream": True}) is None


def test_chat_prompt_is_the_last_user_text():
    """The recorded prompt is the last user message with text, skipping empty ones and other roles."""
    body = {"messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "a"},
                         {"role": "user", "content": [{"type": "text", "text": "second"}]},
                         {"role": "user", "content": ""}, "junk", {"role": "tool", "content": "t"}]}
    assert P.prompt_of("chat.completions", body) == "second"
    assert P.prompt_of("chat.completions", {"messages": [{"role": "system", "content": "s"}]}) is None
    assert P.prompt_of("chat.completions", {}) is None


def test_responses_prompt_string_or_last_user_item():
    """A responses prompt is the input string, or the last user item with text."""
    assert P.prompt_of("responses", {"input": "just text"}) == "just text"
    assert P.prompt_of("responses", {"input": ""}) is None
    assert P.prompt_of("responses", {"input": [
        {"role": "user", "content": "one"}, {"role": "user", "content": [{"type": "input_text", "text": ""}]},
        {"type": "function_call_output", "output": "x"}, "junk"]}) == "one"
    assert P.prompt_of("responses", {"input": [{"role": "developer", "content": "d"}]}) is None
    assert P.prompt_of("responses", {}) is None


def test_openai_compatible_provider():
    """An OpenAI-compatible server needs its own base URL, may have no key, and passes only its model list."""
    from bridgeproxy.providers.openai import OpenAICompatibleProvider
    from bridgeproxy.proxy.routing import Passthrough
    compatible = OpenAICompatibleProvider()
    assert (compatible.name, compatible.default_base_url, compatible.key_required) == (
        "openai-compatible", None, False)
    assert P.key_required is True
    allow = Passthrough.parse(compatible.passthrough)
    assert allow.allows(b"GET", b"/v1/models/llama")
    assert not allow.allows(b"GET", b"/v1/conversations")
    assert compatible.route(b"/v1/chat/completions") == "chat.completions"


def test_chat_junk_choices_do_not_hide_the_rest():
    """A choice that is not an object is skipped; the choices after it are still read."""
    obj = {"choices": ["junk", {"index": 1, "finish_reason": "stop", "message": {"tool_calls": [
        {"id": "a", "function": {"name": "f", "arguments": "{}"}}]}}]}
    usage = blocking("chat.completions", obj)
    assert usage.stop_reason == "stop" and usage.tool_calls == (ToolCall("f", "{}", "a"),)
    usage = streamed("chat.completions", chunk(choices=["junk", {"index": 0, "delta": {}, "finish_reason": "stop"}]))
    assert usage.stop_reason == "stop"


def test_chat_stream_chunk_without_choice_index_continues_choice_zero():
    """A streamed chunk whose choice has no index continues choice 0's tool call."""
    usage = streamed(
        "chat.completions",
        chunk(choices=[{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}]}}]),
        chunk(choices=[{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}}]))
    assert usage.tool_calls == (ToolCall("f", "{}", "a"),)


def test_chat_several_custom_or_unknown_calls_stay_apart():
    """Two custom tool calls, or two calls of an unknown kind, in one answer are two calls each."""
    obj = {"choices": [{"message": {"tool_calls": [
        {"id": "c1", "custom": {"name": "sql", "input": "SELECT 1"}},
        {"id": "c2", "custom": {"name": "sql", "input": "SELECT 2"}},
        {"id": "c3", "type": "mystery"}, {"id": "c4", "type": "enigma"}]}}]}
    assert blocking("chat.completions", obj).tool_calls == (
        ToolCall("sql", "SELECT 1", "c1"), ToolCall("sql", "SELECT 2", "c2"),
        ToolCall("mystery", "", "c3"), ToolCall("enigma", "", "c4"))


def test_responses_stream_failed_carries_its_error():
    """A streamed response.failed records the response's error message."""
    usage = streamed("responses", ("response.failed", {"type": "response.failed", "response": {
        "status": "failed", "error": {"code": "server_error", "message": "The model crashed"}}}))
    assert (usage.stop_reason, usage.error, usage.complete) == ("failed", "The model crashed", True)


def test_responses_stream_event_type_from_the_json_without_event_lines():
    """Events sent as data only (no C{event:} line) are read by their JSON type."""
    usage = streamed("responses", {"type": "response.completed", "response": {"model": "m", "status": "completed"}})
    assert (usage.model, usage.complete) == ("m", True)
