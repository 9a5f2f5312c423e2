# -*- test-case-name: tests.test_api,tests.test_e2e_api,tests.test_startup -*-
"""
The bridge's own HTTP endpoints: reading interceptions and usage back
(C{/api/v1/...}, authenticated with a bridge key; admins see every row,
others their own; C{/api/v1/openapi.json} describes them) and health checks (C{/healthz}, C{/readyz}, no
authentication, never touching an upstream).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from bridgeproxy.auth import extract_credential
from bridgeproxy.budgets import report
from bridgeproxy.store.budgets import find_user
from bridgeproxy.values import parse_since
from bridgeproxy.errors import AuthenticationFailed, BadRequest, BridgeError, NotFound, PermissionDenied
from bridgeproxy.proxy.errors import write_error
from bridgeproxy.store import dashboard
from bridgeproxy.store.database import StoreError, by_columns

MAX_PAGE = 500
#: The views only administrators may read.
ADMIN_VIEWS = frozenset({"overview", "sessions", "users"})
#: The views with one more path segment (an id): C{/api/v1/<view>/<id>}.
_DETAIL_VIEWS = frozenset({"interceptions", "sessions"})


def _known_subpath(name: str, postpath: list) -> bool:
    return not postpath or (name in _DETAIL_VIEWS and len(postpath) == 1 and postpath[0] != b"")


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


def _time(value: Optional[str], name: str) -> Optional[float]:
    try:
        return parse_since(value)
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 date or time") from None


def _cursor(value: Optional[str]) -> Optional[tuple[float, str]]:
    if value is None:
        return None
    try:
        return dashboard.parse_cursor(value)
    except ValueError:
        raise BadRequest("cursor must be a next_cursor this API returned") from None


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


class _WallClock:
    def seconds(self) -> float:
        return time.time()


class BridgeAPI:
    """
    What the bridge's own endpoints need (the key chain, the identity
    backend, the store, the recorder, the providers), and their answers:
    C{/healthz}, C{/readyz}, C{/metrics}, C{/api/v1/interceptions},
    C{/api/v1/usage}, C{/api/v1/budgets}.  L{ApiResource} and the root
    resource route to them.
    """

    log = Logger()

    def __init__(self, *, extractors: Any, identity: Any, store: Any, recorder: Any, providers: Any,
                 metrics: Any = None, clock: Any = None, admission: Any = None):
        self.extractors = extractors
        self.identity = identity
        self.store = store
        self.recorder = recorder
        self.providers = providers
        #: Serve C{/metrics} here (when no separate metrics listener is configured).
        self.metrics = metrics
        #: What "now" is for the overview's ranges (an L{IReactorTime}; the wall clock by default).
        self.clock = clock if clock is not None else _WallClock()
        #: The budgets' settings (its C{default}) and clock: a L{bridgeproxy.proxy.admission.Admission}.
        self.admission = admission

    def health(self, request: Any) -> None:
        _json(request, 200, {"status": "ok", "pid": os.getpid()})

    def serve_metrics(self, request: Any) -> None:
        if self.metrics is None:
            write_error(request, None, NotFound("Metrics are served on the metrics listener."))
        else:
            serve_metrics(request, self.metrics)

    def view(self, name: str, request: Any) -> None:
        """Answer C{/api/v1/<name>} for the caller the request's credential names."""
        views = {"interceptions": self._interceptions, "usage": self._usage, "overview": self._overview,
                 "sessions": self._sessions, "users": self._users, "budgets": self._budgets}
        try:
            if name == "openapi.json" and not request.postpath:
                from bridgeproxy.openapi import document
                _json(request, 200, document())
                return
            if name not in views or not _known_subpath(name, request.postpath):
                raise NotFound("Unknown API path.")
            if request.method not in (b"GET", b"HEAD"):
                raise BadRequest("Only GET is supported here.")
            credential = extract_credential(self.extractors, request)
            if credential is None:
                raise AuthenticationFailed("No API key provided.")
            d = self.identity.identify(credential.token)
            d.addCallback(self._authorized, request, views[name], name in ADMIN_VIEWS)
            d.addErrback(self._failed, request)
        except BridgeError as error:
            write_error(request, None, error)

    def _authorized(self, identity: Any, request: Any, view: Any, admin_only: bool = False) -> Deferred:
        if identity is None:
            raise AuthenticationFailed("Invalid, expired or revoked API key.")
        if identity.disabled:
            raise PermissionDenied("This user is disabled.")
        if admin_only and not identity.admin:
            raise PermissionDenied("Only admins can read this.")
        initiator = _arg(request, "initiator")
        if not identity.admin:
            if initiator not in (None, identity.user_id, identity.username):
                raise PermissionDenied("Only admins can read other users' interceptions.")
            initiator = identity.user_id
        return view(request, initiator)

    def _interceptions(self, request: Any, initiator: Optional[str]) -> Deferred:
        if request.postpath:
            return self._interception(request, initiator, request.postpath[0].decode("utf-8", "replace"))
        limit = _int(request, "limit", 100, 1, MAX_PAGE)
        offset = _int(request, "offset", 0, 0, 10**9)
        filters = dashboard.Filters(
            initiator=initiator, client=_arg(request, "client"), model=_arg(request, "model"),
            provider=_arg(request, "provider"), status=_arg(request, "status"), since=_since(_arg(request, "since")),
            until=_time(_arg(request, "until"), "until"), text=_arg(request, "q"),
            session=_arg(request, "session"))
        cursor = _cursor(_arg(request, "cursor"))
        if (cursor is not None or filters.text) and offset:
            raise BadRequest("offset cannot be combined with cursor or q: follow next_cursor instead")
        d = self.store.run(lambda db: dashboard.interceptions(db, filters, cursor, limit, offset=offset))

        def page(found: Any) -> None:
            more = found.next_cursor is not None
            _json(request, 200, {
                "data": found.rows,
                "next_offset": offset + limit if more and cursor is None and not filters.text else None,
                "next_cursor": dashboard.cursor_text(found.next_cursor) if more else None,
                "scanned": found.scanned})
        return d.addCallback(page)

    def _interception(self, request: Any, initiator: Optional[str], interception_id: str) -> Deferred:
        d = self.store.run(lambda db: dashboard.interception(db, interception_id))

        def found(row: Optional[dict]) -> None:
            # A user asking for someone else's record is told it does not exist.
            if row is None or (initiator is not None and initiator not in (
                    row["initiator_id"], row["initiator_username"])):
                raise NotFound("No interception with that id.")
            _json(request, 200, row)
        return d.addCallback(found)

    def _overview(self, request: Any, initiator: Optional[str]) -> Deferred:
        name = _arg(request, "range") or "24h"
        if name not in dashboard.RANGES:
            raise BadRequest("range must be one of " + ", ".join(dashboard.RANGES))
        span, bucket = dashboard.RANGES[name]
        wanted = _arg(request, "bucket")
        if wanted not in (None, "hour", "day") or (wanted == "hour" and span > dashboard.MAX_HOURLY):
            raise BadRequest("bucket must be hour (for ranges up to 30d) or day")
        if wanted is not None:
            bucket = dashboard.HOUR if wanted == "hour" else dashboard.DAY
        since, until = dashboard.window(self.clock.seconds(), span, bucket)
        d = self.store.run(lambda db: dashboard.overview(db, since, until, bucket))
        return d.addCallback(lambda data: _json(request, 200, data))

    def _sessions(self, request: Any, initiator: Optional[str]) -> Deferred:
        if request.postpath:
            session_id = request.postpath[0].decode("utf-8", "replace")
            d = self.store.run(lambda db: dashboard.session(db, session_id))

            def found(data: Optional[dict]) -> None:
                if data is None:
                    raise NotFound("No client session with that id.")
                _json(request, 200, data)
            return d.addCallback(found)
        limit = _int(request, "limit", 50, 1, MAX_PAGE)
        since, until = _since(_arg(request, "since")), _time(_arg(request, "until"), "until")
        cursor = _cursor(_arg(request, "cursor"))
        user, client = _arg(request, "user"), _arg(request, "client")
        d = self.store.run(lambda db: dashboard.sessions(db, since=since, until=until, initiator=user,
                                                         client=client, cursor=cursor, limit=limit))
        return d.addCallback(lambda found: _json(request, 200, {
            "data": found[0], "next_cursor": dashboard.cursor_text(found[1]) if found[1] else None}))

    def _users(self, request: Any, initiator: Optional[str]) -> Deferred:
        now = self.clock.seconds()
        since = _since(_arg(request, "since"))
        d = self.store.run(lambda db: dashboard.users(db, now - 30 * 86400 if since is None else since,
                                                      now + 3600))
        return d.addCallback(lambda rows: _json(request, 200, {"data": rows}))

    def _usage(self, request: Any, initiator: Optional[str]) -> Deferred:
        by = _arg(request, "by") or "initiator"
        try:
            by_columns(by)
        except StoreError:
            raise BadRequest("by must be initiator, client, model or day, or several of them comma-separated "
                             "(initiator,day)") from None
        client, since = _arg(request, "client"), _since(_arg(request, "since"))
        d = self.store.run(lambda db: db.usage(by=by, initiator=initiator, client=client, since=since))
        return d.addCallback(lambda rows: _json(request, 200, {"by": by, "data": rows}))

    def _budgets(self, request: Any, initiator: Optional[str]) -> Deferred:
        admission = self.admission
        if admission is None:
            raise NotFound("Budgets are not served here.")
        default, now = admission.default, admission.clock.seconds()

        def work(db: Any) -> Any:
            if initiator is None:
                return report(db, default, now)
            user = find_user(db, initiator) or (initiator, None)
            return report(db, default, now, user)
        d = self.store.run(work)
        return d.addCallback(lambda rows: _json(request, 200, {"data": rows}))

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


class _View(Resource):
    """A view of C{/api/v1/}: it checks what follows its name itself (an id, or nothing)."""

    isLeaf = True

    def __init__(self, api: BridgeAPI, name: str):
        super().__init__()
        self.api = api
        self.name = name

    def render(self, request: Any) -> Any:
        self.api.view(self.name, request)
        return NOT_DONE_YET


class ApiV1Resource(Resource):
    """
    C{/api/v1/}: one child per view (C{interceptions}, C{usage}, C{overview},
    C{sessions}, C{users}), and C{openapi.json}, the document describing them.
    """

    def __init__(self, api: BridgeAPI):
        super().__init__()
        self.api = api

    def getChild(self, path: bytes, request: Any) -> Resource:
        return _View(self.api, path.decode("latin-1"))

    def render(self, request: Any) -> Any:
        self.api.view("", request)
        return NOT_DONE_YET
