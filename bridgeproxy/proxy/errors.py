# -*- test-case-name: tests.test_errors,tests.test_pipeline -*-
"""
The one place where a refusal becomes an HTTP answer in the provider's
own error shape.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Optional

from bridgeproxy.errors import BridgeError, openai_error
from bridgeproxy.providers.base import dumps


def write_error(request: Any, provider: Optional[Any], error: BridgeError) -> None:
    """
    Answer C{request} with C{error}: its status, the provider's JSON shape
    (OpenAI's when no provider is known), and finish it.
    """
    if provider is not None:
        body = provider.error_body(error.kind, error.message)
    else:
        body = dumps(openai_error(error.kind, error.message))
    request.setResponseCode(error.status, _phrase(error.status))
    # (Header names are case-insensitive: Twisted writes them capitalised.)
    request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
    request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
    for name, value in error.headers.items():
        request.responseHeaders.setRawHeaders(name, [value.encode("latin-1")])
    request.write(body)
    request.finish()


def _phrase(status: int) -> bytes:
    """The standard reason phrase (Twisted's table lacks some, such as 426's)."""
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b"Error"
