"""A small HTTP client for the tests: a plain Agent, so no header is added behind our back."""

from __future__ import annotations

import json
from typing import Any, Optional

from twisted.internet import defer
from twisted.web.client import readBody
from twisted.web.http_headers import Headers

from bridgeproxy.proxy.upstream import BytesProducer


@defer.inlineCallbacks
def call(agent: Any, method: str, url: str, body: Any = None, headers: Optional[dict] = None):
    """
    Send a request; return C{(response, body_bytes)}.  A dict or list body
    is sent as JSON.  A header value may be a list (sent as several lines).
    """
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    hdrs = Headers()
    if data is not None:
        hdrs.setRawHeaders(b"Content-Type", [b"application/json"])
    for name, value in (headers or {}).items():
        values = value if isinstance(value, list) else [value]
        hdrs.setRawHeaders(name.encode(), [v.encode("latin-1") for v in values])
    producer = BytesProducer(data) if data is not None else None
    response = yield agent.request(method.encode(), url.encode(), hdrs, producer)
    content = yield readBody(response)
    return response, content


def header(response: Any, name: str) -> Optional[str]:
    values = response.headers.getRawHeaders(name)
    return values[0].decode() if values else None
