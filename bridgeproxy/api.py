# -*- test-case-name: tests.test_api,tests.test_e2e_api,tests.test_startup -*-
"""
The bridge's own HTTP endpoints: reading interceptions and usage back
(C{/api/v1/...}, authenticated with a bridge key; admins see every row,
others their own) and health checks (C{/healthz}, C{/readyz}, no
authentication, never touching an upstream).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from bridgeproxy.auth import extract_credential
from bridgeproxy.values import parse_since
from bridgeproxy.errors import AuthenticationFailed, BadRequest, BridgeError, NotFound, PermissionDenied
from bridgeproxy.proxy.errors import write_error

MAX_PAGE = 500


def _json(request: Any, status: int, obj: Any) -> None:
    body = json.dumps(obj, separators=(",", ":")).encode()
    request.setResponseCode(status)
    request.responseHeaders.setRawHeaders(b"Content-Type", [b"application/json"])
    request.responseHeaders.setRawHeaders(b"Cache-Control", [b"no-store"])
    request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
    request.write(body)
    request.finish()


def _arg(request: Any, name: str) -> Optional[str]:
    values = request.args.get(name.encode())
    if not values:
        return None
    value = values[0].decode("utf-8", "replace").strip()
    return value or None


def _since(value: Optional[str]) -> Optional[float]:
    try:
        return parse_since(value)
    except ValueError:
        raise BadRequest("since must be an ISO 8601 date or time") from None


def _int(request: Any, name: str, default: int, lowest: int, highest: int) -> int:
    value = _arg(request, name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number") from None
    if not lowest <= number <= highest:
        raise BadRequest(f"{name} must be between {lowest} and {highest}")
    return number


def serve_metrics(request: Any, metrics: Any) -> None:
    """Answer with the Prometheus text exposition."""
    body = metrics.exposition()
    request.setResponseCode(200)
    request.responseHeaders.setRawHeaders(b"Content-Type", [b"text/plain; version=0.0.4; charset=utf-8"])
    request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
    request.write(body)
    request.finish()


class MetricsResource(Resource):
    """A tiny resource serving only C{/metrics} (the separate C{metrics_listen})."""

    isLeaf = True

    def __init__(self, metrics: Any):
        super().__init__()
        self.metrics = metrics

    def render(self, request: Any) -> Any:
        if request.path != b"/metrics":
            write_error(request, None, NotFound("Only /metrics is served here."))
        else:
            serve_metrics(request, self.metrics)
        return NOT_DONE_YET


class BridgeAPI:
    """
    What the bridge's own endpoints need (the key chain, the identity
    backend, the store, the recorder, the providers), and their answers:
    C{/healthz}, C{/readyz}, C{/metrics}, C{/api/v1/interceptions},
    C{/api/v1/usage}.  L{ApiResource} and the root resource route to them.
    """

    log = Logger()

    def __init__(self, *, extractors: Any, identity: Any, store: Any, recorder: Any, providers: Any,
                 metrics: Any = None):
        self.extractors = extractors
        self.identity = identity
        self.store = store
        self.recorder = recorder
        self.providers = providers
        #: Serve C{/metrics} here (when no separate metrics listener is configured).
        self.metrics = metrics

    def health(self, request: Any) -> None:
        _json(request, 200, {"status": "ok", "pid": os.getpid()})

    def serve_metrics(self, request: Any) -> None:
        if self.metrics is None:
            write_error(request, None, NotFound("Metrics are served on the metrics listener."))
        else:
            serve_metrics(request, self.metrics)

    def view(self, name: str, request: Any) -> None:
        """Answer C{/api/v1/<name>} for the caller the request's credential names."""
        views = {"interceptions": self._interceptions, "usage": self._usage}
        try:
            if name not in views:
                raise NotFound("Unknown API path.")
            if request.method not in (b"GET", b"HEAD"):
                raise BadRequest("Only GET is supported here.")
            credential = extract_credential(self.extractors, request)
            if credential is None:
                raise AuthenticationFailed("No API key provided.")
            d = self.identity.identify(credential.token)
            d.addCallback(self._authorized, request, views[name])
            d.addErrback(self._failed, request)
        except BridgeError as error:
            write_error(request, None, error)

    def _authorized(self, identity: Any, request: Any, view: Any) -> Deferred:
        if identity is None:
            raise AuthenticationFailed("Invalid, expired or revoked API key.")
        if identity.disabled:
            raise PermissionDenied("This user is disabled.")
        initiator = _arg(request, "initiator")
        if not identity.admin:
            if initiator not in (None, identity.user_id, identity.username):
                raise PermissionDenied("Only admins can read other users' interceptions.")
            initiator = identity.user_id
        return view(request, initiator)

    def _interceptions(self, request: Any, initiator: Optional[str]) -> Deferred:
        limit = _int(request, "limit", 100, 1, MAX_PAGE)
        offset = _int(request, "offset", 0, 0, 10**9)
        client, since = _arg(request, "client"), _since(_arg(request, "since"))
        d = self.store.run(lambda db: db.interceptions(
            initiator=initiator, client=client, since=since, limit=limit + 1, offset=offset))

        def page(rows: list) -> None:
            more = len(rows) > limit
            _json(request, 200, {"data": rows[:limit], "next_offset": offset + limit if more else None})
        return d.addCallback(page)

    def _usage(self, request: Any, initiator: Optional[str]) -> Deferred:
        by = _arg(request, "by") or "initiator"
        if by not in ("initiator", "client", "model"):
            raise BadRequest("by must be initiator, client or model")
        client, since = _arg(request, "client"), _since(_arg(request, "since"))
        d = self.store.run(lambda db: db.usage(by=by, initiator=initiator, client=client, since=since))
        return d.addCallback(lambda rows: _json(request, 200, {"by": by, "data": rows}))

    def ready(self, request: Any) -> None:
        d = self.store.run(lambda db: db.ping())

        def answer(result: Any) -> None:
            store_ok = result is True
            providers = {name: bool(entry.config.key) for name, entry in self.providers.items()}
            ready = store_ok and bool(providers)
            body = {
                "status": "ready" if ready else "not ready", "store": "ok" if store_ok else "unavailable",
                "providers_with_key": providers, "recording_queue": len(self.recorder.queue)}
            if isinstance(result, Failure):
                body["reason"] = self.store.describe(result.value)  # a few words, without the database password
            _json(request, 200 if ready else 503, body)
        d.addBoth(answer)

    def _failed(self, failure: Any, request: Any) -> None:
        if failure.check(BridgeError):
            error = failure.value
        else:
            self.log.failure("API request failed", failure)
            error = BridgeError("The store could not answer.")
        if not request.finished:
            write_error(request, None, error)


class Endpoint(Resource):
    """A leaf answering with C{answer(request)} (which finishes the request)."""

    isLeaf = True

    def __init__(self, answer: Any):
        super().__init__()
        self.answer = answer

    def render(self, request: Any) -> Any:
        if request.postpath:
            write_error(request, None, NotFound("Unknown path."))
        else:
            self.answer(request)
        return NOT_DONE_YET


class ApiV1Resource(Resource):
    """C{/api/v1/}: one child per view (C{interceptions}, C{usage})."""

    def __init__(self, api: BridgeAPI):
        super().__init__()
        self.api = api

    def getChild(self, path: bytes, request: Any) -> Resource:
        name = path.decode("latin-1")
        return Endpoint(lambda request: self.api.view(name, request))

    def render(self, request: Any) -> Any:
        self.api.view("", request)
        return NOT_DONE_YET
