# -*- test-case-name: tests.test_ui -*-
"""
What the dashboard's pages and resources share: the reply a page makes,
the refusal it raises, reading query arguments and forms.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import parse_qs

#: What a form's body may hold at most (a sign-in, a key's creation).
MAX_FORM_BYTES = 16 * 1024


class Refused(Exception):
    """A request the dashboard answers with an error page: its status and what to tell the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Reply:
    """
    What a handler answers: a page (C{title}, C{content}, the navigation's
    C{current} entry) or a redirect (C{see_other}), with cookies to set.
    """

    title: str = ""
    content: Any = None
    status: int = 200
    current: Optional[str] = None
    see_other: Optional[str] = None
    cookies: list[bytes] = field(default_factory=list)


def read_form(request: Any) -> dict[str, str]:
    """
    A POSTed form's fields (the first value of each), from the body.

    @raise Refused: for a body that is not a URL-encoded form, or too large.
    """
    if getattr(request, "too_large", False):
        raise Refused(413, "The form is too large.")
    kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if kind != b"application/x-www-form-urlencoded":
        raise Refused(415, "Send the form as application/x-www-form-urlencoded.")
    content = request.content
    if content is None:
        return {}
    content.seek(0)
    body = content.read(MAX_FORM_BYTES + 1)
    if len(body) > MAX_FORM_BYTES:
        raise Refused(413, "The form is too large.")
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=50)
    except ValueError:
        raise Refused(400, "The form has too many fields.") from None
    return {name: values[0] for name, values in fields.items()}


def arg(request: Any, name: str) -> Optional[str]:
    """A query argument, stripped (L{None} when absent or empty)."""
    values = request.args.get(name.encode())
    if not values:
        return None
    value = values[0].decode("utf-8", "replace").strip()
    return value or None


def same(given: Optional[str], expected: Optional[str]) -> bool:
    """Whether two tokens are equal (in constant time; nothing equals a missing token)."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8", "replace"))


__all__ = ["MAX_FORM_BYTES", "Refused", "Reply", "arg", "read_form", "same"]
