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
from tests.payloads import (
    CHAT_CHUNKS, CHAT_JSON, MESSAGE_EVENTS, MESSAGE_JSON, RESPONSE_EVENTS, RESPONSE_JSON,
)


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


