"""
The official OpenAI and Anthropic Python SDKs, pointed at the bridge, work
for blocking and streamed calls; what they did is recorded.
"""

import json

import anthropic
import openai
import pytest_twisted
from twisted.internet import threads

from tests import fakes


def sse(events):
    return [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]


def named_sse(events):
    return [b"event: " + e["type"].encode() + b"\ndata: " + json.dumps(e).encode() + b"\n\n" for e in events]


CHAT_JSON = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-2024-08-06",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
    "usage": {"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59,
              "prompt_tokens_details": {"cached_tokens": 20}},
}
CHAT_CHUNKS = sse([
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
     "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
     "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o", "choices": [],
     "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}},
]) + [b"data: [DONE]\n\n"]
RESPONSE_JSON = {
    "id": "resp_1", "object": "response", "created_at": 1, "model": "gpt-5", "status": "completed",
    "output": [{"type": "message", "id": "m1", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": "Hi", "annotations": []}]}],
    "usage": {"input_tokens": 30, "output_tokens": 4, "total_tokens": 34,
              "input_tokens_details": {"cached_tokens": 10}, "output_tokens_details": {"reasoning_tokens": 0}},
    "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
}
RESPONSE_EVENTS = named_sse([
    {"type": "response.created", "sequence_number": 0, "response": {**RESPONSE_JSON, "status": "in_progress",
                                                                     "output": [], "usage": None}},
    {"type": "response.output_text.delta", "sequence_number": 1, "item_id": "m1", "output_index": 0,
     "content_index": 0, "delta": "Hi", "logprobs": []},
    {"type": "response.completed", "sequence_number": 2, "response": RESPONSE_JSON},
])
MESSAGE_JSON = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
    "content": [{"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {"path": "a.py"}}],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 40, "output_tokens": 15, "cache_read_input_tokens": 300,
              "cache_creation_input_tokens": 12},
}
MESSAGE_EVENTS = named_sse([
    {"type": "message_start", "message": {**MESSAGE_JSON, "content": [], "stop_reason": None,
                                          "usage": {"input_tokens": 40, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_2",
                                                                  "name": "bash", "input": {}}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"cmd\": "}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "\"ls\"}"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
     "usage": {"output_tokens": 21}},
    {"type": "message_stop"},
])


def provider_like(request, received):
    """Answers each intercepted route as the real provider would, streamed or not."""
    path = received.uri.split(b"?")[0]
    streamed = json.loads(received.body).get("stream") is True
    answers = {
        b"/v1/chat/completions": (CHAT_JSON, CHAT_CHUNKS),
        b"/v1/responses": (RESPONSE_JSON, RESPONSE_EVENTS),
        b"/v1/messages": (MESSAGE_JSON, MESSAGE_EVENTS),
    }
    blocking, events = answers[path]
    if streamed:
        return fakes.sse_answer(events)(request, received)
    return fakes.json_answer(200, blocking)(request, received)


def openai_client(bridge, token):
    return openai.OpenAI(base_url=bridge.url + "/openai/v1", api_key=token, max_retries=0, timeout=10)


def anthropic_client(bridge, token):
    return anthropic.Anthropic(base_url=bridge.url + "/anthropic", api_key=token, max_retries=0, timeout=10)


@pytest_twisted.inlineCallbacks
def test_openai_sdk_chat_blocking_and_streamed(bridge):
    """openai.chat.completions.create works blocking and streamed; tokens and tool calls are recorded."""
    token = bridge.create_key("alice")
    bridge.upstream.handler = provider_like
    client = openai_client(bridge, token)
    messages = [{"role": "user", "content": "weather in Paris?"}]
    result = yield threads.deferToThread(client.chat.completions.create, model="gpt-4o", messages=messages)
    assert result.choices[0].message.tool_calls[0].function.name == "get_weather"

    def stream():
        return "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            model="gpt-4o", messages=messages, stream=True, stream_options={"include_usage": True})
            if chunk.choices)
    text = yield threads.deferToThread(stream)
    assert text == "Hello"
    assert bridge.upstream.requests[0].headers["authorization"] == [f"Bearer {fakes.OPENAI_KEY}"]
    yield bridge.flush()
    rows = sorted(bridge.rows(), key=lambda r: r["streamed"])
    assert (rows[0]["input_tokens"], rows[0]["cache_read_tokens"], rows[0]["output_tokens"]) == (30, 20, 9)
    assert rows[0]["tool_calls"] == [{"name": "get_weather", "arguments": "{\"city\":\"Paris\"}", "id": "call_1"}]
    assert rows[0]["model"] == "gpt-4o-2024-08-06"
    assert (rows[1]["streamed"], rows[1]["input_tokens"], rows[1]["output_tokens"]) == (True, 11, 2)
    assert {r["prompt"] for r in rows} == {"weather in Paris?"}


@pytest_twisted.inlineCallbacks
def test_openai_sdk_responses_blocking_and_streamed(bridge):
    """openai.responses.create works blocking and streamed through the bridge."""
    token = bridge.create_key("alice")
    bridge.upstream.handler = provider_like
    client = openai_client(bridge, token)
    result = yield threads.deferToThread(client.responses.create, model="gpt-5", input="hi")
    assert result.output_text == "Hi"

    def stream():
        return [event.type for event in client.responses.create(model="gpt-5", input="hi", stream=True)]
    types = yield threads.deferToThread(stream)
    assert types[-1] == "response.completed"
    yield bridge.flush()
    for row in bridge.rows():
        assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (20, 10, 4)
        assert row["route"] == "responses"


@pytest_twisted.inlineCallbacks
def test_anthropic_sdk_messages_blocking_and_streamed(bridge):
    """anthropic.messages.create works blocking and streamed; streamed tool-call arguments are assembled."""
    token = bridge.create_key("alice")
    bridge.upstream.handler = provider_like
    client = anthropic_client(bridge, token)
    kwargs = dict(model="claude-sonnet-4-6", max_tokens=100, messages=[{"role": "user", "content": "ls"}])
    result = yield threads.deferToThread(client.messages.create, **kwargs)
    assert result.content[1].name == "read_file"

    def stream():
        with client.messages.stream(**kwargs) as s:
            return s.get_final_message()
    final = yield threads.deferToThread(stream)
    assert final.content[0].input == {"cmd": "ls"}
    assert bridge.upstream.requests[0].headers["x-api-key"] == [fakes.ANTHROPIC_KEY]
    assert token not in json.dumps(bridge.upstream.requests[0].headers)
    yield bridge.flush()
    rows = sorted(bridge.rows(), key=lambda r: r["streamed"])
    assert (rows[0]["input_tokens"], rows[0]["output_tokens"], rows[0]["cache_read_tokens"],
            rows[0]["cache_write_tokens"]) == (40, 15, 300, 12)
    assert rows[0]["tool_calls"][0]["name"] == "read_file"
    assert rows[1]["tool_calls"] == [{"name": "bash", "arguments": "{\"cmd\": \"ls\"}", "id": "toolu_2"}]
    assert rows[1]["output_tokens"] == 21


@pytest_twisted.inlineCallbacks
def test_sdk_sees_errors_as_its_own(bridge):
    """An SDK gets the bridge's refusals as its own typed errors (the error shape is the provider's)."""
    bridge.upstream.handler = provider_like

    def bad_openai():
        try:
            openai_client(bridge, "bp_wrong-key-0123456789").chat.completions.create(model="gpt-4o", messages=[])
        except openai.AuthenticationError as e:
            return e.body
    body = yield threads.deferToThread(bad_openai)
    assert body["code"] == "invalid_api_key"

    def bad_anthropic():
        try:
            anthropic_client(bridge, "bp_wrong-key-0123456789").messages.create(
                model="m", max_tokens=1, messages=[{"role": "user", "content": "x"}])
        except anthropic.AuthenticationError as e:
            return e.body
    body = yield threads.deferToThread(bad_anthropic)
    assert body["error"]["type"] == "authentication_error"
    assert bridge.upstream.requests == []


