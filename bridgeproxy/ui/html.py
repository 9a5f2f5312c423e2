# -*- test-case-name: tests.test_ui -*-
"""
Pages as L{twisted.web.template} trees: every string put in one is escaped
when it is written out (text and attribute values alike), so a prompt, a
tool call's arguments or a user name can hold anything.  Nothing here ever
builds HTML by pasting strings together.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any, Iterable, Optional
from urllib.parse import urlencode

from twisted.internet.defer import Deferred
from twisted.web.template import Element, Tag, XMLString, flattenString, renderer, tags

#: The pages in the navigation bar: (path, title).
PAGES = (("/ui/", "Overview"), ("/ui/interceptions", "Interceptions"), ("/ui/sessions", "Sessions"),
         ("/ui/users", "Users and keys"))

#: Sent with every page.  The pages need nothing but their own style sheet and icon.
SECURITY_HEADERS = {
    b"Content-Type": b"text/html; charset=utf-8",
    b"Cache-Control": b"no-store",
    b"Content-Security-Policy": b"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                                b"frame-ancestors 'none'; base-uri 'none'",
    b"X-Content-Type-Options": b"nosniff",
    b"X-Frame-Options": b"DENY",
    b"Referrer-Policy": b"no-referrer",
}


def text(value: Any) -> str:
    """C{value} as text that can be written as UTF-8 (a lone surrogate becomes U+FFFD)."""
    if value is None:
        return ""
    found = value if isinstance(value, str) else str(value)
    try:
        found.encode("utf-8")
    except UnicodeEncodeError:
        # A pair of surrogates becomes its character again, a lone one U+FFFD.
        found = found.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return found


def url(path: str, **query: Any) -> str:
    """A path with a query string of the arguments that are set (percent-encoded)."""
    pairs = [(name, text(value)) for name, value in query.items() if value not in (None, "")]
    return path + ("?" + urlencode(pairs) if pairs else "")


def link(label: Any, href: str, **attributes: str) -> Tag:
    return tags.a(text(label), href=href, **attributes)


def utc(seconds: Optional[float], with_seconds: bool = True) -> str:
    """A POSIX time as C{YYYY-MM-DD HH:MM[:SS]} in UTC."""
    if seconds is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S" if with_seconds else "%Y-%m-%d %H:%M", time.gmtime(seconds))


def count(value: Optional[int]) -> str:
    """A whole number with thousands separated (C{1,234,567})."""
    return "—" if value is None else f"{int(value):,}"


def short(value: Optional[int]) -> str:
    """A large count, short (C{1.2k}, C{3.4M})."""
    if value is None:
        return "—"
    number = float(value)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(number) >= size:
            return f"{number / size:.1f}{unit}"
    return str(int(number)) if number == int(number) else f"{number:.1f}"


def cost(micros: Optional[int]) -> str:
    """A cost in micro-units as currency units (C{12.3456}), L{None} as C{—}."""
    if micros is None:
        return "—"
    return f"{micros / 1e6:,.4f}" if micros < 1e9 else f"{micros / 1e6:,.2f}"


def percent(part: int, whole: int) -> str:
    return "—" if not whole else f"{100 * part / whole:.1f}%"


BAD_STATUSES = frozenset({"error", "timeout", "upstream_unreachable", "incomplete", "shutdown",
                          "client_disconnected"})


def status_badge(status: Optional[str], upstream_status: Optional[int] = None) -> Tag:
    """An interception's status as a coloured badge (an upstream error status shown beside C{ok})."""
    status = status or "?"
    kind = "ok" if status == "ok" else "refused" if status == "refused" else "bad"
    label = status
    if status == "ok" and upstream_status is not None and upstream_status >= 400:
        kind, label = "bad", f"ok · upstream {upstream_status}"
    return tags.span(text(label), class_=f"status {kind}")


def table(headers: Iterable[Any], rows: Iterable[Iterable[Any]], numeric: Iterable[int] = (),
          **attributes: str) -> Tag:
    """A table; the columns at the indexes in C{numeric} are right-aligned."""
    right = set(numeric)
    head = tags.tr([tags.th(h, class_="num") if i in right else tags.th(h) for i, h in enumerate(headers)])
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if isinstance(cell, Tag) and cell.tagName == "td":
                cells.append(cell)
            else:
                cells.append(tags.td(cell, class_="num") if i in right else tags.td(cell))
        body.append(tags.tr(cells))
    return tags.table(tags.thead(head), tags.tbody(body), **attributes)


def hidden(name: str, value: str) -> Tag:
    return tags.input(type="hidden", name=name, value=value)


def post_button(action: str, label: str, csrf: str, fields: Optional[dict[str, str]] = None,
                kind: str = "") -> Tag:
    """A one-button form that POSTs C{fields} (and the CSRF token) to C{action}."""
    inputs = [hidden(name, value) for name, value in (fields or {}).items()]
    attributes = {"class": kind} if kind else {}
    return tags.form(hidden("csrf", csrf), inputs, tags.button(label, type="submit", **attributes),
                     method="post", action=action, class_="inline")


def _template() -> str:
    return resources.files("bridgeproxy.ui").joinpath("templates/page.html").read_text("utf-8")


class PageElement(Element):
    """The page layout (C{templates/page.html}): title, navigation, account, content."""

    loader = XMLString(_template())

    def __init__(self, title: str, content: Any, current: Optional[str] = None,
                 account: Any = None):
        super().__init__()
        self.title = title
        self.content = content
        self.current = current
        self.account = account

    @renderer
    def page(self, request: Any, tag: Tag) -> Tag:
        nav: Any = ""
        if self.current is not None:
            nav = tags.nav([tags.a(title, href=path, class_="current" if path == self.current else "")
                            for path, title in PAGES], class_="pages")
        return tag.fillSlots(title=text(self.title), content=self.content, nav=nav,
                             account=self.account if self.account is not None else "")


def flatten(element: Any) -> "Deferred[bytes]":
    """The page as bytes, its doctype first."""
    return flattenString(None, element).addCallback(lambda body: b"<!DOCTYPE html>\n" + body)


def write_page(request: Any, status: int, body: bytes, headers: Optional[dict[bytes, bytes]] = None) -> None:
    """Answer C{request} with a page and the security headers (unless it is gone)."""
    if request.finished or getattr(request, "_disconnected", False):
        return
    request.setResponseCode(status)
    for name, value in {**SECURITY_HEADERS, **(headers or {})}.items():
        request.responseHeaders.setRawHeaders(name, [value])
    request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
    request.write(body)
    request.finish()


__all__ = ["PAGES", "PageElement", "SECURITY_HEADERS", "count", "cost", "flatten", "link", "percent",
           "post_button", "short", "status_badge", "table", "text", "url", "utc", "write_page"]
