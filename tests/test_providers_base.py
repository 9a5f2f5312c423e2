"""
What every provider's answer reader shares (L{bridgeproxy.providers.base}):
reading untrusted JSON, the blocking/streamed skeleton, tool calls, and
the body-size bound.
"""

from __future__ import annotations

import json

import pytest

from bridgeproxy.providers import base
from bridgeproxy.providers.base import (
    UsageParser,
    as_int,
    dumps,
    error_message,
    get,
    route_of,
    text_of,
    tool_arguments,
)
from bridgeproxy.types import ToolCall, Usage


class Recording(UsageParser):
    """A parser that keeps what the skeleton hands it."""

    def __init__(self, streamed: bool):
        super().__init__(streamed)
        self.json_seen: list = []
        self.events_seen: list = []
        self.skip: set = set()

    def on_json(self, obj):
        self.json_seen.append(obj)

    def on_event(self, event, obj):
        self.events_seen.append((event, obj))

    def uninteresting(self, event, payload):
        return event in self.skip


@pytest.mark.parametrize("value, expected", [
    (5, 5), (0, 0), (-3, 0), (7.9, 7), (True, 0), (False, 0), ("12", 0), (None, 0), ([1], 0),
])
def test_as_int_reads_token_counts_defensively(value, expected):
    """Token counts from a provider are non-negative integers; anything else (booleans, strings) counts 0."""
    assert as_int(value) == expected
    assert type(as_int(value)) is int


def test_get_walks_nested_dicts_and_stops_at_anything_else():
    """C{get} follows a key path through dicts and gives L{None} where a step is missing or not a dict."""
    obj = {"a": {"b": {"c": 3}}, "l": [1]}
    assert get(obj, "a", "b", "c") == 3
    assert get(obj, "a", "x", "c") is None
    assert get(obj, "l", "0") is None
    assert get("text", "a") is None
    assert get(obj) is obj


def test_text_of_strings_and_parts():
    """A message's text: a non-empty string, or its text parts joined by newlines; else L{None}."""
    assert text_of("hello") == "hello"
    assert text_of("") is None
    assert text_of([{"type": "text", "text": "a"}, {"type": "image", "text": "no"},
                    {"type": "input_text", "text": "b"}, "junk", {"type": "text", "text": 3},
                    {"type": "text", "text": ""}]) == "a\nb"
    assert text_of([{"type": "image"}]) is None
    assert text_of({"type": "text", "text": "dict"}) is None
    assert text_of(None) is None
    assert text_of([{"type": "input_text", "text": "x"}], ("text",)) is None


def test_error_message_reads_both_shapes():
    """A provider error's message is found under C{error.message} or at the top level."""
    assert error_message({"error": {"message": "nested"}}) == "nested"
    assert error_message({"message": "flat"}) == "flat"
    assert error_message({"error": {"message": 3}, "message": "flat"}) == "flat"
    assert error_message({"message": 3}) is None
    assert error_message("message") is None
    assert error_message(None) is None


def test_route_of_ignores_trailing_slashes_only():
    """An intercepted route is found with or without trailing slashes; other paths are not routes."""
    routes = {b"/v1/messages": "messages"}
    assert route_of(routes, b"/v1/messages") == "messages"
    assert route_of(routes, b"/v1/messages//") == "messages"
    assert route_of(routes, b"/v1/messages/x") is None
    assert route_of(routes, b"/v1/message") is None


def test_tool_arguments_prefers_the_named_fields_in_order():
    """The first named field holding text is the arguments, even when empty."""
    assert tool_arguments({"arguments": "{}", "input": "raw"}, "arguments", "input") == "{}"
    assert tool_arguments({"arguments": 3, "input": "raw"}, "arguments", "input") == "raw"
    assert tool_arguments({"input": ""}, "arguments", "input") == ""


def test_tool_arguments_describes_built_in_calls_without_ids_or_results():
    """Without an arguments field, the call is described as sorted compact JSON minus ids, status and results."""
    item = {"id": "x", "type": "t", "status": "s", "call_id": "c", "name": "n", "output": "o", "outputs": [],
            "result": "big", "results": [], "error": None, "action": {"b": 1, "a": [1, 2]}, "query": "q"}
    assert tool_arguments(item, "arguments") == '{"action":{"a":[1,2],"b":1},"query":"q"}'
    assert tool_arguments({"id": "x", "result": "r"}, "arguments") == ""


def test_dumps_is_compact_utf8():
    """Error bodies are compact UTF-8 JSON."""
    assert dumps({"a": [1, "é"]}) == b'{"a":[1,"\\u00e9"]}'


def test_blocking_body_is_parsed_once_at_finish():
    """A blocking answer is read whole at C{finish}, however it was chunked; it marks the answer complete."""
    parser = Recording(streamed=False)
    body = json.dumps({"x": 1}).encode()
    parser.feed(body[:3])
    parser.feed(body[3:])
    assert parser.json_seen == []
    usage = parser.finish()
    assert parser.json_seen == [{"x": 1}]
    assert usage.complete is True


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'"text"'])
def test_blocking_body_that_is_not_an_object_is_incomplete(body):
    """An empty, non-JSON or non-object blocking answer is not handed on and is not complete."""
    parser = Recording(streamed=False)
    if body:
        parser.feed(body)
    usage = parser.finish()
    assert parser.json_seen == []
    assert usage.complete is False
    assert usage == Usage(complete=False)


def test_blocking_error_body_sets_the_error():
    """A blocking answer with an C{error} object records its message."""
    parser = Recording(streamed=False)
    parser.feed(b'{"error": {"message": "overloaded"}}')
    assert parser.finish().error == "overloaded"
    parser = Recording(streamed=False)
    parser.feed(b'{"error": "a string", "message": "m"}')
    assert parser.finish().error is None


def test_blocking_body_over_the_limit_is_relayed_but_not_parsed(monkeypatch):
    """A blocking answer bigger than the parse limit is not parsed (and does not grow memory)."""
    monkeypatch.setattr(base, "MAX_PARSED_BODY", 10)
    parser = Recording(streamed=False)
    parser.feed(b'{"a": "0123')
    parser.feed(b'456789"}')
    usage = parser.finish()
    assert parser.json_seen == []
    assert usage.complete is False


def test_blocking_body_at_the_limit_is_parsed(monkeypatch):
    """A blocking answer exactly at the parse limit is still parsed."""
    body = b'{"a": "x"}'
    monkeypatch.setattr(base, "MAX_PARSED_BODY", len(body))
    parser = Recording(streamed=False)
    parser.feed(body)
    parser.finish()
    assert parser.json_seen == [{"a": "x"}]


def test_finish_twice_does_not_parse_twice():
    """Finishing a blocking answer twice hands it on once."""
    parser = Recording(streamed=False)
    parser.feed(b'{"a": 1}')
    parser.finish()
    parser.finish()
    assert parser.json_seen == [{"a": 1}]


def test_streamed_events_are_parsed_as_they_come():
    """Each SSE event's JSON object is handed on with its event name; non-objects and bad JSON are skipped."""
    parser = Recording(streamed=True)
    parser.feed(b'event: a\ndata: {"n": 1}\n\ndata: [1]\n\ndata: nope\n\ndata: {"n": 2}\n\n')
    assert parser.events_seen == [("a", {"n": 1}), (None, {"n": 2})]
    assert parser.json_seen == []
    assert parser.finish().complete is False


def test_done_marks_a_stream_complete():
    """C{data: [DONE]} completes a stream (and is not handed on)."""
    parser = Recording(streamed=True)
    parser.feed(b"data: [DONE]\n\n")
    assert parser.events_seen == []
    assert parser.finish().complete is True


def test_uninteresting_events_are_not_parsed():
    """Events the subclass calls uninteresting are skipped before their JSON is read."""
    parser = Recording(streamed=True)
    parser.skip = {"delta"}
    parser.feed(b'event: delta\ndata: {"n": 1}\n\nevent: keep\ndata: {"n": 2}\n\n')
    assert parser.events_seen == [("keep", {"n": 2})]


def test_base_parser_finds_every_event_interesting():
    """The skeleton itself skips nothing."""
    assert UsageParser(True).uninteresting("content_block_delta", "{}") is False


def test_fresh_parser_reports_nothing():
    """A parser that saw nothing reports zero tokens, no model, no tools, incomplete."""
    assert UsageParser(False).finish() == Usage(complete=False)
    assert UsageParser(True).finish() == Usage(complete=False)


def test_tool_calls_accumulate_deltas_and_keep_their_order():
    """Tool calls are reported in the order they started; argument deltas are concatenated; blanks ignored."""
    parser = Recording(streamed=True)
    parser.tool("b", "call_b", "second")
    parser.tool("a", "call_a", "first", '{"x"')
    parser.tool("a", arguments=':1}')
    parser.tool("a", "", "", "")
    parser.tool("a", 5, 6, 7)
    parser.tool("c")
    assert parser.finish().tool_calls == (
        ToolCall("second", "", "call_b"), ToolCall("first", '{"x":1}', "call_a"), ToolCall("", "", None))


def test_usage_carries_every_count():
    """What the subclass set is what C{finish} reports."""
    parser = Recording(streamed=False)
    parser.model, parser.input_tokens, parser.output_tokens = "m", 1, 2
    parser.cache_read_tokens, parser.cache_write_tokens = 3, 4
    parser.stop_reason, parser.error = "end", "boom"
    assert parser.finish() == Usage(model="m", input_tokens=1, output_tokens=2, cache_read_tokens=3,
                                    cache_write_tokens=4, stop_reason="end", error="boom", complete=False)


def test_a_stream_ending_in_a_lone_cr_is_complete():
    """SSE allows lone CR line ends: a stream whose last blank line is a CR ends complete."""
    parser = Recording(streamed=True)
    parser.feed(b'data: {"n": 1}\r\rdata: [DONE]\r\r')
    usage = parser.finish()
    assert parser.events_seen == [(None, {"n": 1})]
    assert usage.complete is True


def test_a_body_that_grows_past_the_limit_is_not_parsed(monkeypatch):
    """The limit is on the whole body, however it is chunked: chunks under it that add up to more are not parsed."""
    monkeypatch.setattr(base, "MAX_PARSED_BODY", 10)
    parser = Recording(streamed=False)
    parser.feed(b'{"a": ')
    parser.feed(b'"xx"}')  # 11 bytes of valid JSON in all
    assert parser.finish().complete is False
    assert parser.json_seen == []


def test_one_byte_past_the_limit_is_not_parsed(monkeypatch):
    """A body one byte over the limit is not parsed, even when its first part alone was valid JSON."""
    body = b'{"a": "x"}'
    monkeypatch.setattr(base, "MAX_PARSED_BODY", len(body))
    parser = Recording(streamed=False)
    parser.feed(body)
    parser.feed(b" ")
    parser.finish()
    assert parser.json_seen == []


def test_events_after_done_in_the_same_chunk_are_still_read():
    """[DONE] does not stop the reading of what follows it in the same chunk."""
    parser = Recording(streamed=True)
    parser.feed(b'data: [DONE]\n\ndata: {"late": true}\n\n')
    assert parser.events_seen == [(None, {"late": True})]


def test_routes_are_exact_paths():
    """Only the route's own path (with trailing slashes) is the route: not a longer name."""
    routes = {b"/v1/messages": "messages"}
    for path in (b"/v1/messagesX", b"/v1/messagesXX/", b"/v1/messages-x"):
        assert route_of(routes, path) is None, path


def test_ended_says_whether_a_stream_is_whole():
    """A stream is whole once its terminal event went by, or once the upstream reported an error in it."""
    parser = Recording(streamed=True)
    parser.feed(b'data: {"n": 1}\n\n')
    assert parser.ended() is False
    parser.feed(b"data: [DONE]\n\n")
    assert parser.ended() is True
    erring = Recording(streamed=True)
    erring.error = "overloaded"
    assert erring.ended() is True


def test_ended_flushes_a_final_cr():
    """A stream whose terminal event ends with a lone CR is whole when asked at its end."""
    parser = Recording(streamed=True)
    parser.feed(b'data: {"n": 1}\r\rdata: [DONE]\r\r')
    assert parser.ended() is True
    assert parser.events_seen == [(None, {"n": 1})]


def test_ended_for_a_blocking_answer():
    """A blocking answer is whole once finished with a JSON object (ended() does not parse it)."""
    parser = Recording(streamed=False)
    parser.feed(b'{"a": 1}')
    assert parser.ended() is False
    parser.finish()
    assert parser.ended() is True
