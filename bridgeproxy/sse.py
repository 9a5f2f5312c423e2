# -*- test-case-name: tests.test_sse -*-
"""
An incremental Server-Sent Events parser.

It reads a copy of what the relay forwards, so it must accept any chunk
boundaries (inside a line, between C{\\r} and C{\\n}, inside a UTF-8
sequence) and never hold the relay up: it only ever sees bytes already
written to the client.
"""

from __future__ import annotations

from typing import Optional

#: An event is dropped rather than buffered past this size (a runaway line
#: must not grow memory without bound).
MAX_EVENT_BYTES = 16 * 1024 * 1024


class SSEParser:
    """
    Turns a byte stream into C{(event, data)} pairs.

    C{event} is the C{event:} field (L{None} when absent); C{data} is the
    C{data:} lines joined with newlines, as text.
    """

    def __init__(self) -> None:
        self._cr = False
        self._partial = b""
        self._event: Optional[str] = None
        self._data: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> list[tuple[Optional[str], str]]:
        """Parse C{chunk}; return the events it completed."""
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if chunk.endswith(b"\r"):
            # It may be the first half of \r\n: decide when the next byte comes.
            self._cr = True
            chunk = chunk[:-1]
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"\n" not in chunk:
            self._partial += chunk
            if len(self._partial) > MAX_EVENT_BYTES:
                self._partial = b""
            return []
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        events: list[tuple[Optional[str], str]] = []
        for line in lines:
            self._line(line, events)
        return events

    def close(self) -> list[tuple[Optional[str], str]]:
        """
        The stream ended: a CR held back (it might have been half of a CRLF)
        ends its line after all.  Return the events that completes.
        """
        if not self._cr:
            return []
        self._cr = False
        return self.feed(b"\n")

    def _line(self, line: bytes, events: list) -> None:
        if not line:
            if self._data:
                data = b"\n".join(self._data).decode("utf-8", "replace")
                events.append((self._event, data))
            self._event = None
            self._data = []
            self._size = 0
            return
        if line[:1] == b":":
            return
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._size += len(value)
            if self._size <= MAX_EVENT_BYTES:
                self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
