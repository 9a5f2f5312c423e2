"""
Provider answers as the real APIs shape them (blocking JSON and SSE streams),
shared by the tests that need them.
"""

import json


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
