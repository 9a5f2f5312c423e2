# -*- test-case-name: tests.test_site,tests.test_pipeline -*-
"""
The HTTP server side: a request class that enforces the body limit while
the body arrives, and an access log that never shows a query string.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.web.server import Request, Site


class BoundedRequest(Request):
    """
    A request whose body is kept in memory up to C{max_body} bytes.  Past
    that, the body is discarded as it arrives and C{too_large} is set; the
    pipeline answers 413.
    """

    max_body = 32 * 1024 * 1024
    too_large = False
    content: Any
    _received = 0

    def gotLength(self, length: Any) -> None:
        self.content = BytesIO()
        if length is not None and length > self.max_body:
            self.too_large = True

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self.too_large = True
            self.content = BytesIO()
            return
        self.content.write(data)


def _clean(raw: bytes, limit: int) -> str:
    """Printable text for a log line: no quotes, backslashes or control characters."""
    text = raw[:limit].decode("latin-1")
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c not in '"\\' else "?" for c in text)


def access_log_line(timestamp: str, request: Any) -> str:
    """
    A combined-log-format line without the query string (it can carry
    keys) and without the Referer (it can carry anything).
    """
    peer = request.getClientAddress()
    host = getattr(peer, "host", "-")
    path = _clean(request.path, 512)
    agent = _clean(request.getHeader(b"user-agent") or b"-", 256)
    return '%s - - %s "%s %s %s" %d %s "-" "%s"' % (
        host, timestamp, request.method.decode("latin-1"), path,
        request.clientproto.decode("latin-1"), request.code,
        request.sentLength or "-", agent,
    )


def _no_access_log(request: Any) -> None:
    """The access log when it is off: no line."""


def make_site(resource: Any, max_body: int, reactor: Any = None, timeout: float = 60.0,
              access_log: bool = False) -> Site:
    """A L{Site} for the bridge resource with the body limit and the safe access log."""
    limit = max_body

    class BridgeRequest(BoundedRequest):
        max_body = limit
    # parsePOSTFormSubmission=False: a gateway never reads form arguments
    # from a body, and Twisted parses every POST's Content-Type with the
    # email package to look for them, which raises on hostile values (a NEL
    # byte) and drops the connection without an answer.
    site = Site(resource, requestFactory=BridgeRequest, timeout=timeout,
                logFormatter=access_log_line, reactor=reactor, parsePOSTFormSubmission=False)
    site.displayTracebacks = False
    if not access_log:
        site.log = _no_access_log  # type: ignore[method-assign]
    return site


__all__ = ["BoundedRequest", "access_log_line", "make_site"]
