# -*- test-case-name: tests.test_routing -*-
"""
Which paths the bridge serves: the path-safety rules applied before any
routing, and the passthrough allow-list.

A passthrough rule is C{"METHODS /path/pattern"}: C{METHODS} is C{*} or a
comma-separated list (C{GET,DELETE}); in the pattern, C{*} stands for exactly
one path segment and a final C{**} for any number of segments (none
included).  Patterns are matched against the path after the provider's
prefix (C{/v1/models/gpt-4o} for C{/openai/v1/models/gpt-4o}).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Optional

from bridgeproxy.errors import ConfigError


def unsafe_path(path: bytes) -> Optional[str]:
    """
    Why C{path} (raw, without the query string) must not be routed, or
    L{None} when it is safe.

    An upstream or a server behind it may normalise what the bridge did not:
    a C{..} segment, an encoded slash or backslash, an empty segment or a NUL
    could turn an allowed path into one that is not.  The reasons name the
    rule, never the path (it is hostile input).
    """
    if not path.startswith(b"/"):
        return "the path must start with '/'"
    lower = path.lower()
    if b"\x00" in path or b"%00" in lower:
        return "the path contains a NUL byte"
    if b"\\" in path or b"%5c" in lower:
        return "the path contains a backslash"
    if b"%2f" in lower:
        return "the path contains an encoded slash"
    segments = lower.split(b"/")[1:]
    for i, segment in enumerate(segments):
        if not segment and i < len(segments) - 1:
            return "the path contains an empty segment ('//')"
        if segment.replace(b"%2e", b".") in (b".", b".."):
            return "the path contains a '.' or '..' segment"
    if len(path.translate(None, _CONTROL_BYTES)) != len(path):
        return "the path contains a control character"
    if path.translate(None, _PATH_BYTES):
        # '#' ends the URL and ';' starts parameters for the HTTP client that
        # forwards it: what it sent would not be the path checked here.
        return "the path contains a character that is not allowed in a path"
    if _BAD_ESCAPE.search(path):
        return "the path contains a malformed percent-escape"
    return None


#: The control characters: C0 and DEL.
_CONTROL_BYTES = bytes(range(0x20)) + b"\x7f"

#: What a path may hold: RFC 3986's path characters, less ';' (parameters).
_PATH_BYTES = (b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
               b"-._~!$&'()*+,=:@%/")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def _segments(path: bytes) -> list[bytes]:
    """The segments of a safe path, a single trailing slash ignored."""
    parts = path.split(b"/")[1:]
    if len(parts) > 1 and parts[-1] == b"":
        parts.pop()
    return parts


@dataclass(frozen=True)
class PassthroughRule:
    """
    One allow-list entry.

    @ivar methods: upper-case method names, or L{None} for any method.
    @ivar pattern: the pattern's segments (C{b"*"}, C{b"**"} or literals).
    @ivar text: the rule as configured, for messages.
    """

    methods: Optional[frozenset[bytes]]
    pattern: tuple[bytes, ...]
    text: str

    @classmethod
    def parse(cls, text: str) -> "PassthroughRule":
        """
        @raise ConfigError: for a rule that is not C{"METHODS /pattern"}.
        """
        parts = text.split()
        if len(parts) != 2 or not parts[1].startswith("/"):
            raise ConfigError(f"passthrough rule {text!r} must be 'METHODS /path/pattern', e.g. 'GET /v1/models/*'")
        methods_text, path = parts
        if methods_text == "*":
            methods = None
        else:
            names = [m.strip().upper() for m in methods_text.split(",")]
            if not all(name.isalpha() for name in names):
                raise ConfigError(f"passthrough rule {text!r}: methods must be '*' or names like GET,POST")
            methods = frozenset(name.encode("ascii") for name in names)
        try:
            encoded = path.encode("ascii")
        except UnicodeEncodeError:
            raise ConfigError(f"passthrough rule {text!r}: the path must be ASCII") from None
        if unsafe_path(encoded) is not None:
            raise ConfigError(f"passthrough rule {text!r}: {unsafe_path(encoded)}")
        pattern = tuple(_segments(encoded))
        if b"**" in pattern[:-1]:
            raise ConfigError(f"passthrough rule {text!r}: '**' may only end a pattern")
        return cls(methods, pattern, text)

    def allows(self, method: bytes, path: bytes) -> bool:
        """Whether C{method} on the (safe) C{path} matches this rule."""
        if self.methods is not None and method not in self.methods:
            return False
        segments = _segments(path)
        pattern = self.pattern
        if pattern and pattern[-1] == b"**":
            head = pattern[:-1]
            if len(segments) < len(head):
                return False
            segments = segments[:len(head)]
            pattern = head
        elif len(segments) != len(pattern):
            return False
        return all(p == b"*" and s != b"" or p == s for p, s in zip(pattern, segments))


class Passthrough:
    """A provider's allow-list: a path is passed through when a rule allows it."""

    def __init__(self, rules: Iterable[PassthroughRule]):
        self.rules = tuple(rules)

    @classmethod
    def parse(cls, texts: Iterable[str]) -> "Passthrough":
        return cls(PassthroughRule.parse(text) for text in texts)

    def allows(self, method: bytes, path: bytes) -> bool:
        return any(rule.allows(method, path) for rule in self.rules)


__all__ = ["Passthrough", "PassthroughRule", "unsafe_path"]
