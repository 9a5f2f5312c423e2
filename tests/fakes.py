"""
Test doubles that speak real HTTP: a fake upstream that records what it
receives, and helpers to run a whole bridge on loopback.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from twisted.internet import defer, reactor
from twisted.internet.interfaces import IPushProducer
from twisted.web import server
from twisted.web.resource import Resource
from zope.interface import implementer

from bridgeproxy.config import parse
from bridgeproxy.store import Database
from bridgeproxy.tap import App, BridgeService, build

OPENAI_KEY = "sk-central-openai-KEY-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-central-KEY-0123456789abcdef"
DELEGATOR_ID = "8f3e1c7a-2b4d-4e6f-8a9b-0c1d2e3f4a5b"
OWNER_ID = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"


@dataclass
class Received:
    """One request as the upstream saw it."""

    method: bytes
    uri: bytes
    headers: dict[str, list[str]]
    body: bytes
    peer_port: int = 0

    def header(self, name: str) -> Optional[str]:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


def json_answer(status: int, obj: Any, headers: Optional[dict] = None):
    """A handler answering with JSON."""
    def handler(request, received):
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        for k, v in (headers or {}).items():
            request.setHeader(k.encode(), v.encode())
        return json.dumps(obj).encode()
    return handler


def sse_answer(events: list[bytes], gate: Optional[defer.Deferred] = None, gate_after: int = 1,
               hang_after: Optional[int] = None):
    """
    A handler streaming SSE C{events}.  With C{gate}, it sends the first
    C{gate_after} events, then waits for C{gate} before the rest.  With
    C{hang_after}, it sends that many events and then never another.
    """
    def handler(request, received):
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")

        def send(index: int):
            if request.finished or received.gone:
                return
            if hang_after is not None and index >= hang_after:
                return
            if index == len(events):
                request.finish()
                return
            request.write(events[index])
            if gate is not None and index + 1 == gate_after:
                gate.addCallback(lambda _: send(index + 1))
            else:
                reactor.callLater(0, send, index + 1)
        send(0)
        return server.NOT_DONE_YET
    return handler


def never_answer(request, received):
    return server.NOT_DONE_YET


@implementer(IPushProducer)
class Firehose:
    """Writes chunks as fast as the connection takes them; counts what it wrote."""

    def __init__(self, request, chunk: bytes = b"data: " + b"x" * 16378 + b"\n\n"):
        self.request = request
        self.chunk = chunk
        self.written = 0
        self.paused = False
        self.pauses = 0
        self.stopped = False

    def start(self):
        self.request.registerProducer(self, True)
        self._pump()

    def _pump(self):
        if self.paused or self.stopped or self.request.finished:
            return
        for _ in range(16):
            self.request.write(self.chunk)
            self.written += len(self.chunk)
            if self.paused:
                return
        reactor.callLater(0, self._pump)

    def pauseProducing(self):
        self.paused = True
        self.pauses += 1

    def resumeProducing(self):
        self.paused = False
        reactor.callLater(0, self._pump)

    def stopProducing(self):
        self.stopped = True


class FakeUpstream(Resource):
    """A provider stand-in that records every request and answers as told."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests: list[Received] = []
        self.handler: Callable = json_answer(200, {"ok": True})
        self.lost: list[Received] = []
        self.firehose: Optional[Firehose] = None

    def render(self, request):
        headers: dict[str, list[str]] = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            headers.setdefault(name.decode().lower(), []).extend(v.decode("latin-1") for v in values)
        received = Received(request.method, request.uri, headers, request.content.read(),
                            request.getClientAddress().port)
        received.gone = False
        self.requests.append(received)

        def lost(_):
            received.gone = True
            self.lost.append(received)
        request.notifyFinish().addErrback(lost)
        return self.handler(request, received)


@dataclass
class Running:
    """A bridge and its fake upstream, both listening on loopback."""

    app: App
    upstream: FakeUpstream
    url: str
    upstream_url: str
    ports: list = field(default_factory=list)
    service: Any = None
    db_path: str = ""

    def db(self) -> Database:
        return Database(f"sqlite:{self.db_path}")

    def create_key(self, username: str, user_id: Optional[str] = None, admin: bool = False) -> str:
        db = self.db()
        try:
            return db.create_key(username, user_id, admin=admin)[1]
        finally:
            db.close()

    def rows(self) -> list[dict]:
        db = self.db()
        try:
            return db.interceptions(limit=1000)
        finally:
            db.close()

    @defer.inlineCallbacks
    def flush(self):
        """Wait for the requests in flight to end (a client may be done first), then write every record."""
        for _ in range(250):
            if not self.app.bridge.in_flight:
                break
            d = defer.Deferred()
            reactor.callLater(0.02, d.callback, None)
            yield d
        yield self.app.recorder.flush_all()

    @defer.inlineCallbacks
    def stop(self):
        for port in self.ports:
            yield port.stopListening()
        yield self.service.stopService()


@defer.inlineCallbacks
def start_bridge(tmp_path, extra: Optional[dict] = None, environ: Optional[dict] = None,
                 upstream: Optional[FakeUpstream] = None, plugin_package: Any = None,
                 extra_for: Optional[Callable[[str], dict]] = None):
    """
    Start a fake upstream and a bridge in front of it; return a L{Running}.

    @param extra_for: makes more configuration from the fake upstream's URL.
    """
    upstream = upstream or FakeUpstream()
    up_site = server.Site(upstream)
    up_site.log = lambda request: None  # the provider's own logs are not ours to check
    up_port = reactor.listenTCP(0, up_site, interface="127.0.0.1")
    up_url = f"http://127.0.0.1:{up_port.getHost().port}"
    db_path = os.path.join(str(tmp_path), "bridge.db")
    data: dict[str, Any] = {
        "database": f"sqlite:{db_path}",
        "providers": {
            "openai": {"base_url": up_url + "/v1", "key_env": "T_OPENAI_KEY"},
            "anthropic": {"base_url": up_url, "key_env": "T_ANTHROPIC_KEY"},
        },
        "auth": {"cache_seconds": 0},
        "recording": {"spool_path": os.path.join(str(tmp_path), "spool.jsonl"), "flush_interval": 0.05},
        "upstream": {"timeout": 5},
    }
    if extra_for is not None:
        extra = {**(extra or {}), **extra_for(up_url)}
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    env = {"T_OPENAI_KEY": OPENAI_KEY, "T_ANTHROPIC_KEY": ANTHROPIC_KEY}
    env.update(environ or {})
    config = parse(data, environ=env)
    app = build(config, reactor, plugin_package=plugin_package)
    svc = BridgeService(app)
    svc.startService()
    yield app.store.run(lambda db: db.version())
    port = reactor.listenTCP(0, app.site, interface="127.0.0.1")
    running = Running(app=app, upstream=upstream, url=f"http://127.0.0.1:{port.getHost().port}",
                      upstream_url=up_url, ports=[port, up_port], service=svc, db_path=db_path)
    return running
