# -*- test-case-name: tests.test_providers,tests.test_providers_base -*-
"""
What the providers share: the usage-parser skeleton (blocking JSON or SSE)
and helpers for reading untrusted JSON.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from zope.interface import implementer

from bridgeproxy.interfaces import IUsageParser
from bridgeproxy.sse import SSEParser
from bridgeproxy.types import ToolCall, Usage

#: A blocking answer bigger than this is relayed but not parsed.
MAX_PARSED_BODY = 8 * 1024 * 1024


def as_int(value: Any) -> int:
    """A token count from untrusted JSON: non-negative int, else 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return max(0, int(value))


def get(obj: Any, *path: str) -> Any:
    """C{obj[path[0]][path[1]]...}, or L{None} where any step is missing."""
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def text_of(content: Any, types: tuple[str, ...] = ("text", "input_text")) -> Optional[str]:
    """The text of a message's content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content or None
    if isinstance(content, list):
        parts = [p.get("text") for p in content
                 if isinstance(p, dict) and p.get("type") in types and isinstance(p.get("text"), str)]
        joined = "\n".join(p for p in parts if p)
        return joined or None
    return None


def error_message(body: Any) -> Optional[str]:
    """The message of a provider error body (both shapes), if any."""
    message = get(body, "error", "message")
    if isinstance(message, str):
        return message
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return None


@implementer(IUsageParser)
class UsageParser:
    """
    The skeleton of a provider's answer reader.

    Subclasses implement C{on_json(obj)} for a blocking answer and
    C{on_event(event, data)} for each SSE event; both update C{self.state}.
    """

    def __init__(self, streamed: bool):
        self.streamed = streamed
        self._sse = SSEParser() if streamed else None
        self._body: list[bytes] = []
        self._size = 0
        self.model: Optional[str] = None
        self.input_tokens = 0
        self.output_tokens = 0
        self.cache_read_tokens = 0
        self.cache_write_tokens = 0
        self.stop_reason: Optional[str] = None
        self.error: Optional[str] = None
        self.complete = False
        self.tools: dict[Any, dict[str, Any]] = {}

    def feed(self, data: bytes) -> None:
        if self._sse is not None:
            self._dispatch(self._sse.feed(data))
        elif self._size <= MAX_PARSED_BODY:
            self._size += len(data)
            self._body.append(data)

    def _dispatch(self, events: list[tuple[Optional[str], str]]) -> None:
        for event, payload in events:
            if payload == "[DONE]":
                self.complete = True
                continue
            if self.uninteresting(event, payload):
                continue
            try:
                obj = json.loads(payload)
            except ValueError:
                continue
            if isinstance(obj, dict):
                self.on_event(event, obj)

    def ended(self) -> bool:
        """Whether the stream is whole: its terminal event went by, or the upstream reported an error in it."""
        if self._sse is not None:
            self._dispatch(self._sse.close())
        return self.complete or self.error is not None

    def finish(self) -> Usage:
        if self._sse is not None:
            self._dispatch(self._sse.close())
        if self._sse is None and self._size <= MAX_PARSED_BODY and self._body:
            try:
                obj = json.loads(b"".join(self._body))
            except ValueError:
                obj = None
            self._body = []
            if isinstance(obj, dict):
                self.complete = True
                if "error" in obj and isinstance(obj.get("error"), dict):
                    self.error = error_message(obj)
                self.on_json(obj)
        return Usage(
            model=self.model,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_read_tokens=self.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens,
            stop_reason=self.stop_reason,
            tool_calls=tuple(
                ToolCall(name=t.get("name") or "", arguments="".join(t.get("arguments", [])),
                         call_id=t.get("id"))
                for t in self.tools.values()
            ),
            error=self.error,
            complete=self.complete,
        )

    def tool(self, key: Any, call_id: Any = None, name: Any = None, arguments: Any = None) -> None:
        """Start or extend the tool call C{key} (deltas are appended)."""
        entry = self.tools.setdefault(key, {"id": None, "name": None, "arguments": []})
        if isinstance(call_id, str) and call_id:
            entry["id"] = call_id
        if isinstance(name, str) and name:
            entry["name"] = name
        if isinstance(arguments, str) and arguments:
            entry["arguments"].append(arguments)

    def uninteresting(self, event: Optional[str], payload: str) -> bool:
        """
        Whether an event can be skipped without parsing its JSON: most of a
        stream is text deltas that say nothing about usage or tools, and
        parsing them all would cost the relay time it needs.
        """
        return False

    def on_json(self, obj: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_event(self, event: Optional[str], obj: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def route_of(routes: dict[bytes, str], subpath: bytes) -> Optional[str]:
    """
    The intercepted route's name for C{subpath} (a trailing slash ignored),
    or L{None}: everything else is for the passthrough allow-list to decide.
    """
    return routes.get(subpath.rstrip(b"/"))


def tool_arguments(item: dict, *fields: str) -> str:
    """
    A tool call's arguments as text: the first of C{fields} that holds a
    string (OpenAI C{arguments}, a custom tool's raw C{input}), else what
    the item says of the call, as JSON, without ids and without results
    (an image generation's result is megabytes of base64).
    """
    for name in fields:
        value = item.get(name)
        if isinstance(value, str):
            return value
    rest = {k: v for k, v in item.items() if k not in _NOT_ARGUMENTS}
    return json.dumps(rest, separators=(",", ":"), sort_keys=True) if rest else ""


_NOT_ARGUMENTS = frozenset({"id", "type", "status", "call_id", "name", "output", "outputs", "result",
                            "results", "error"})


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes."""
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")
