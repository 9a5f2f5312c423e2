"""
The providers' answer readers: every tool call the model made is recorded,
in order, whatever its kind, from blocking and streamed answers.
"""

import json

import pytest

from bridgeproxy.providers.anthropic import AnthropicProvider
from bridgeproxy.providers.openai import OpenAIProvider
from tests import memory

RESPONSE_OUTPUT = [
    {"type": "reasoning", "id": "rs_1", "summary": []},
    {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "read_file",
     "arguments": "{\"path\":\"a.py\"}", "status": "completed"},
    {"type": "custom_tool_call", "id": "ctc_1", "call_id": "call_b", "name": "apply_patch",
     "input": "*** Begin Patch\n*** Update File: a.py\n-x\n+y\n*** End Patch"},
    {"type": "message", "id": "m1", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
    {"type": "web_search_call", "id": "ws_1", "status": "completed",
     "action": {"type": "search", "query": "twisted agent"}},
    {"type": "mcp_call", "id": "mcp_1", "name": "list_issues", "server_label": "github",
     "arguments": "{\"repo\":\"x\"}", "output": "[...]"},
    {"type": "local_shell_call", "id": "ls_1", "call_id": "call_c", "status": "completed",
     "action": {"type": "exec", "command": ["ls", "-la"]}},
    {"type": "image_generation_call", "id": "ig_1", "status": "completed", "result": "iVBORw0KGgo" * 1000},
]
EXPECTED_RESPONSE_TOOLS = [
    ("read_file", "{\"path\":\"a.py\"}", "call_a"),
    ("apply_patch", "*** Begin Patch\n*** Update File: a.py\n-x\n+y\n*** End Patch", "call_b"),
    ("web_search", "{\"action\":{\"query\":\"twisted agent\",\"type\":\"search\"}}", "ws_1"),
    ("list_issues", "{\"repo\":\"x\"}", "mcp_1"),
    ("local_shell", "{\"action\":{\"command\":[\"ls\",\"-la\"],\"type\":\"exec\"}}", "call_c"),
    ("image_generation", "", "ig_1"),
]


def tools(usage):
    return [(t.name, t.arguments, t.call_id) for t in usage.tool_calls]


def sse(events):
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + json.dumps(e).encode() + b"\n\n"
                    for e in events)


def test_responses_blocking_records_every_kind_of_call_in_order():
    """A Responses answer's function, custom and built-in tool calls are all recorded, in output order;
    messages, reasoning and results are not calls."""
    parser = OpenAIProvider().usage_parser("responses", False)
    parser.feed(json.dumps({"model": "gpt-5", "status": "completed", "output": RESPONSE_OUTPUT}).encode())
    assert tools(parser.finish()) == EXPECTED_RESPONSE_TOOLS


@pytest.mark.parametrize("completed", [True, False])
def test_responses_streamed_records_every_kind_of_call(completed):
    """Streamed, calls come from output_item.done (so a stream cut before response.completed keeps them),
    and response.completed neither repeats nor reorders them."""
    events = [{"type": "response.created", "response": {"model": "gpt-5", "status": "in_progress", "output": []}}]
    for index, item in enumerate(RESPONSE_OUTPUT):
        events.append({"type": "response.output_item.added", "output_index": index, "item": {**item, "status": "in_progress"}})
        if item["type"] == "custom_tool_call":
            events.append({"type": "response.custom_tool_call_input.delta", "output_index": index, "delta": "*** Begin"})
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    if completed:
        events.append({"type": "response.completed",
                       "response": {"model": "gpt-5", "status": "completed", "output": RESPONSE_OUTPUT}})
    parser = OpenAIProvider().usage_parser("responses", True)
    parser.feed(sse(events))
    usage = parser.finish()
    assert tools(usage) == EXPECTED_RESPONSE_TOOLS
    assert usage.complete is completed


def test_chat_custom_tool_calls_blocking_and_streamed():
    """Chat completions' custom tool calls (free-text input) are recorded beside function calls."""
    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
             {"id": "call_2", "type": "custom", "custom": {"name": "grammar_tool", "input": "SELECT 1"}}]
    parser = OpenAIProvider().usage_parser("chat.completions", False)
    parser.feed(json.dumps({"model": "gpt-5", "choices": [{"index": 0, "message": {"tool_calls": calls}}]}).encode())
    assert tools(parser.finish()) == [("f", "{}", "call_1"), ("grammar_tool", "SELECT 1", "call_2")]
    chunks = [
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_2", "type": "custom", "custom": {"name": "grammar_tool", "input": "SELECT"}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "custom": {"input": " 1"}}]}}]},
    ]
    parser = OpenAIProvider().usage_parser("chat.completions", True)
    parser.feed(b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks))
    assert tools(parser.finish()) == [("grammar_tool", "SELECT 1", "call_2")]


ANTHROPIC_CONTENT = [
    {"type": "text", "text": "Let me look."},
    {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"cmd": "ls"}},
    {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "x"}},
    {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
    {"type": "mcp_tool_use", "id": "mcptoolu_1", "name": "echo", "server_name": "s", "input": {"a": 1}},
]


def test_anthropic_tool_uses_of_every_kind():
    """Anthropic tool_use, server_tool_use and mcp_tool_use blocks are recorded, blocking and streamed."""
    expected = [("bash", '{"cmd":"ls"}', "toolu_1"), ("web_search", '{"query":"x"}', "srvtoolu_1"),
                ("echo", '{"a":1}', "mcptoolu_1")]
    parser = AnthropicProvider().usage_parser("messages", False)
    parser.feed(json.dumps({"model": "claude", "content": ANTHROPIC_CONTENT, "stop_reason": "tool_use"}).encode())
    assert tools(parser.finish()) == expected
    events = [{"type": "message_start", "message": {"model": "claude", "usage": {"input_tokens": 3}}}]
    for index, block in enumerate(ANTHROPIC_CONTENT):
        start = {**block, "input": {}} if "input" in block else block
        events.append({"type": "content_block_start", "index": index, "content_block": start})
        if "input" in block:
            events.append({"type": "content_block_delta", "index": index,
                           "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"], separators=(",", ":"))}})
        events.append({"type": "content_block_stop", "index": index})
    events.append({"type": "message_stop"})
    parser = AnthropicProvider().usage_parser("messages", True)
    parser.feed(sse(events))
    assert tools(parser.finish()) == expected


def test_custom_tool_call_is_recorded_through_the_gateway():
    """A streamed Responses answer with a custom tool call reaches the record with its raw input."""
    g = memory.gateway()
    item = RESPONSE_OUTPUT[2]
    g.upstream.handler = memory.sse_answer([sse([
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": {"model": "gpt-5", "status": "completed", "output": [item],
                                                     "usage": {"input_tokens": 5, "output_tokens": 7}}}])])
    answer = g.send("POST", "/openai/v1/responses", {"model": "gpt-5", "input": "patch it", "stream": True},
                    {"Authorization": f"Bearer {memory.TOKEN}"})
    assert answer.status == 200
    (record,) = g.records
    assert [(t.name, t.arguments) for t in record.tool_calls] == [("apply_patch", item["input"])]
    assert record.status == "ok"
