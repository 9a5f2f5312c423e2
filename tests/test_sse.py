"""
The SSE parser (L{bridgeproxy.sse}) at its boundaries: what events it
reports for a byte stream, whatever the chunking, and how it bounds memory.
"""

from __future__ import annotations

import pytest

from bridgeproxy import sse
from bridgeproxy.sse import SSEParser


def parse(*chunks: bytes) -> list:
    parser = SSEParser()
    events: list = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events


def test_event_name_and_multi_line_data():
    """An event's C{event:} field names it and its C{data:} lines are joined with newlines."""
    assert parse(b"event: ping\ndata: a\ndata: b\n\n") == [("ping", "a\nb")]


def test_event_without_a_name_is_none_and_the_name_does_not_carry_over():
    """Without an C{event:} field the name is L{None}, also after a named event."""
    assert parse(b"event: one\ndata: 1\n\ndata: 2\n\n") == [("one", "1"), (None, "2")]


def test_only_one_leading_space_is_dropped():
    """A single space after the colon is not part of the value; more spaces and no space are kept as sent."""
    assert parse(b"data:  two\n\ndata:none\n\nevent:  e\ndata: x\n\n") == [
        (None, " two"), (None, "none"), (" e", "x")]


def test_a_field_without_a_colon_has_an_empty_value():
    """A bare C{data} line is a data line with an empty value (the event has data, so it is reported)."""
    assert parse(b"data\n\n") == [(None, "")]
    assert parse(b"event\ndata: x\n\n") == [("", "x")]


def test_comments_and_unknown_fields_are_ignored():
    """Lines starting with a colon are comments; unknown fields (C{id:}, C{retry:}) are not data."""
    assert parse(b": keep-alive\nid: 7\nretry: 10\ndata: d\n\n") == [(None, "d")]
    assert parse(b":data: not data\n\n") == []


def test_blank_line_without_data_reports_nothing_and_resets_the_name():
    """An event with a name but no data is not reported, and its name does not stick to the next event."""
    assert parse(b"event: lonely\n\ndata: x\n\n") == [(None, "x")]


def test_events_complete_only_at_their_blank_line():
    """Nothing is reported until the blank line that ends an event arrives."""
    parser = SSEParser()
    assert parser.feed(b"data: x\n") == []
    assert parser.feed(b"\n") == [(None, "x")]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(ending):
    """LF, CRLF and lone CR all end lines (a CR that ends a chunk is decided by the next byte)."""
    stream = b"event: e" + ending + b"data: x" + ending + ending + b"data: y" + ending + ending + b":"
    assert parse(stream) == [("e", "x"), (None, "y")]


def test_crlf_split_between_chunks_is_one_line_end():
    """A CR at the end of a chunk and the LF at the start of the next are one line end, not two."""
    assert parse(b"data: a\r", b"\ndata: b\r\n\r\n") == [(None, "a\nb")]


def test_lone_cr_at_the_end_of_a_chunk_ends_the_line_when_more_comes():
    """A CR ending a chunk followed by something else than LF still ends a line."""
    assert parse(b"data: a\r", b"data: b\r", b"\r", b"x") == [(None, "a\nb")]


def test_cr_split_then_blank_line():
    """CR, then CR LF in the next chunk: the first CR ends the data line, the CR LF is the blank line."""
    assert parse(b"data: a\r", b"\r\n") == [(None, "a")]


def test_a_line_split_anywhere_including_inside_utf8():
    """Chunks cut inside a line or inside a UTF-8 sequence join up into the same text."""
    stream = "event: é\ndata: ünïcødé ✓\n\n".encode()
    for cut in range(1, len(stream)):
        assert parse(stream[:cut], stream[cut:]) == [("é", "ünïcødé ✓")], cut


def test_one_byte_at_a_time():
    """A stream fed a byte at a time gives the same events as fed whole."""
    stream = b"event: a\r\ndata: 1\r\n\r\ndata: 2\rdata: 3\r\r: c\n\n"
    assert parse(*[stream[i:i + 1] for i in range(len(stream))]) == parse(stream) == [
        ("a", "1"), (None, "2\n3")]


def test_invalid_utf8_is_replaced_not_fatal():
    """Bytes that are not UTF-8 become replacement characters; the event is still reported."""
    assert parse(b"event: \xff\ndata: a\xffb\n\n") == [("\ufffd", "a\ufffdb")]


def test_an_oversized_partial_line_is_dropped(monkeypatch):
    """A line that grows past the limit without a line end is dropped, not buffered without bound."""
    monkeypatch.setattr(sse, "MAX_EVENT_BYTES", 10)
    parser = SSEParser()
    assert parser.feed(b"data: 0123") == []
    assert parser.feed(b"456789") == []  # 16 bytes: over the limit, dropped
    assert parser.feed(b"\n\n") == []
    assert parser.feed(b"data: ok\n\n") == [(None, "ok")]


def test_a_partial_line_at_the_limit_is_kept(monkeypatch):
    """A line exactly at the limit is still buffered and completes normally."""
    monkeypatch.setattr(sse, "MAX_EVENT_BYTES", 10)
    parser = SSEParser()
    assert parser.feed(b"data: 0123") == []  # exactly 10 bytes
    assert parser.feed(b"\n\n") == [(None, "0123")]


def test_oversized_event_data_is_dropped_but_the_stream_goes_on(monkeypatch):
    """Data lines past the per-event limit are dropped; the event keeps what fit; the next event is whole."""
    monkeypatch.setattr(sse, "MAX_EVENT_BYTES", 6)
    assert parse(b"data: abc\ndata: def\ndata: g\n\ndata: abcdef\n\n") == [
        (None, "abc\ndef"), (None, "abcdef")]


def test_event_size_counter_is_reset_per_event(monkeypatch):
    """Each event gets the full size allowance, however big the one before was."""
    monkeypatch.setattr(sse, "MAX_EVENT_BYTES", 4)
    assert parse(b"data: abcd\n\ndata: efgh\n\n") == [(None, "abcd"), (None, "efgh")]


def test_default_limit_is_sixteen_megabytes():
    """The documented bound on one event is 16 MiB."""
    assert sse.MAX_EVENT_BYTES == 16 * 1024 * 1024


def test_close_ends_a_line_held_back_by_a_final_cr():
    """At the end of the stream, a CR that ended the last chunk ends its line: the last event is reported."""
    parser = SSEParser()
    assert parser.feed(b"data: a\r\r") == []
    assert parser.close() == [(None, "a")]
    assert parser.close() == []


def test_close_without_a_held_cr_reports_nothing():
    """Closing a stream that ended cleanly, or in the middle of an event, reports nothing more."""
    parser = SSEParser()
    assert parser.feed(b"data: a\n\n") == [(None, "a")]
    assert parser.close() == []
    parser = SSEParser()
    parser.feed(b"data: cut")
    assert parser.close() == []
