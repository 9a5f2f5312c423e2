"""
The dashboard in memory: the bridge of L{tests.memory} with its own
endpoints over a real SQLite store (answering at once, on the test's
thread), the key store as identity backend, and every record written to the
store as the pipeline makes it.  L{Browser} keeps cookies like a browser
does, and L{Document} reads the pages back.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from typing import Any, Optional
from urllib.parse import urlencode

from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock

from bridgeproxy.api import BridgeAPI
from bridgeproxy.identity import KeystoreBackend
from bridgeproxy.proxy.admission import Admission
from bridgeproxy.store import Database
from bridgeproxy.types import Interception, ToolCall
from tests import memory

#: A time of day the tests start at (2026-11-24 10:00 UTC), so that buckets have real dates.
START = 1_795_514_400.0


class SyncStore:
    """L{bridgeproxy.store.AsyncStore}'s face over one SQLite connection: each call runs at once."""

    def __init__(self, url: str = "sqlite::memory:"):
        self.url = url
        self.db = Database(url)
        self.db.migrate()

    def run(self, work):
        return maybeDeferred(work, self.db)

    def describe(self, error):
        return str(error)


class _Recorder:
    """Writes each record to the store at once (and keeps it)."""

    def __init__(self, store: SyncStore):
        self.store = store
        self.records: list = []
        self.queue: list = []

    def record(self, record):
        self.records.append(record)
        self.store.db.insert_interceptions([record])


@dataclass
class Dashboard:
    """A gateway in memory with its dashboard; C{store.db} is the SQLite store behind both."""

    gateway: memory.Gateway
    store: SyncStore
    identity: KeystoreBackend

    @property
    def clock(self):
        return self.gateway.clock

    def key(self, username: str, admin: bool = False) -> str:
        return self.store.db.create_key(username, admin=admin)[1]

    def browser(self) -> "Browser":
        return Browser(self.gateway)

    def signed_in(self, username: str = "root") -> "Browser":
        """A browser signed in as a (new) administrator."""
        browser = self.browser()
        answer = browser.sign_in(self.key(username, admin=True))
        assert answer.status == 303, answer.body
        return browser

    def add(self, *records: Interception) -> None:
        self.store.db.insert_interceptions(records)


def dashboard(extra: Optional[dict] = None) -> Dashboard:
    """The gateway of L{tests.memory.gateway}, identifying keys with the key store, and its dashboard."""
    store = SyncStore()
    identity = KeystoreBackend(store, Clock(), cache_seconds=0)
    gw = memory.gateway(extra, identities=identity)
    gw.clock.advance(START)
    identity._clock = gw.clock  # the key store and the gateway keep one time
    recorder = _Recorder(store)
    gw.bridge.recorder = recorder
    gw.bridge.api = BridgeAPI(extractors=gw.bridge.extractors, identity=identity, store=store, recorder=recorder,
                              clock=gw.clock,
                              providers={name.decode(): entry for name, entry in gw.bridge.providers.items()})
    # Budgets are read (the users page, /api/v1/budgets), not enforced: the bridge itself admits everything.
    gw.bridge.api.admission = Admission(store, gw.clock, gw.bridge.config, gw.bridge.prices, gw.bridge.metrics)
    return Dashboard(gateway=gw, store=store, identity=identity)


class Browser:
    """Sends requests to the gateway in memory with the cookies it was given, as a browser would."""

    def __init__(self, gateway: memory.Gateway):
        self.gateway = gateway
        self.cookies: dict[str, str] = {}
        #: Every Set-Cookie line received, as sent.
        self.set_cookies: list[str] = []

    def _headers(self, extra: Optional[dict] = None) -> dict:
        headers = dict(extra or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        return headers

    def _keep(self, answer: memory.Answer) -> memory.Answer:
        for line in answer.headers.get("set-cookie", []):
            text = line.decode("latin-1")
            self.set_cookies.append(text)
            name, _, rest = text.partition("=")
            value = rest.split(";", 1)[0]
            if "Max-Age=0" in text:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return answer

    def get(self, path: str, headers: Optional[dict] = None) -> memory.Answer:
        return self._keep(self.gateway.send("GET", path, None, self._headers(headers)))

    def post(self, path: str, fields: dict, headers: Optional[dict] = None) -> memory.Answer:
        body = urlencode(fields).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        return self._keep(self.gateway.send("POST", path, body, self._headers(headers)))

    def sign_in(self, key: str) -> memory.Answer:
        form = Document(self.get("/ui/signin").body)
        return self.post("/ui/signin", {"csrf": form.value("csrf"), "key": key})

    def csrf(self, path: str = "/ui/users") -> str:
        """The CSRF token of this browser's session, as a page of the dashboard carries it."""
        return Document(self.get(path).body).value("csrf")


# -- reading pages -------------------------------------------------------------------------------------


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list = field(default_factory=list)
    parent: Optional["Node"] = None

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def all(self, tag: str) -> list["Node"]:
        """Every element of C{tag} below this one."""
        return [n for n in self.walk() if n.tag == tag and n is not self]

    def walk(self):
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.walk()


_VOID = {"input", "meta", "link", "br", "img", "hr", "col", "source", "wbr", "area", "base", "embed"}


class Document(HTMLParser):
    """A page parsed into L{Node}s, as a browser would (the text and attribute values unescaped)."""

    def __init__(self, body: bytes):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self._open = self.root
        self.feed(body.decode("utf-8"))
        self.close()

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, parent=self._open)
        self._open.children.append(node)
        if tag not in _VOID:
            self._open = node

    def handle_startendtag(self, tag, attrs):
        self._open.children.append(Node(tag, {k: v or "" for k, v in attrs}, parent=self._open))

    def handle_endtag(self, tag):
        node = self._open
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self._open = node.parent

    def handle_data(self, data):
        self._open.children.append(data)

    def all(self, tag: Optional[str] = None, **attrs: str) -> list[Node]:
        """Every element of C{tag} (any tag: L{None}) whose attributes include C{attrs} (C{class_} is C{class})."""
        wanted = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()}
        return [n for n in self.root.walk() if (tag is None or n.tag == tag)
                and all(n.attrs.get(k) == v for k, v in wanted.items())]

    def by_id(self, ident: str) -> Node:
        found = self.all(id=ident)
        assert found, f"no element with id {ident!r}"
        return found[0]

    def value(self, name: str) -> str:
        """The value of the (first) input named C{name}."""
        return self.all("input", name=name)[0].attrs["value"]

    def links(self) -> list[str]:
        return [n.attrs["href"] for n in self.root.walk() if "href" in n.attrs]

    def text(self) -> str:
        return self.root.text()


def cookie_attributes(line: str) -> dict[str, str]:
    """The attributes of one Set-Cookie line, by lower-cased name (flags map to C{""})."""
    parts = [p.strip() for p in line.split(";")[1:]]
    return {p.partition("=")[0].lower(): p.partition("=")[2] for p in parts}


# -- records -------------------------------------------------------------------------------------------------

_BASE = Interception(
    id="", started_at=START, ended_at=START + 1.5, provider="openai", route="chat", intercepted=True, method="POST",
    model="gpt-4o", streamed=False, client="Claude Code", client_session_id=None, user_agent="claude-cli/1.0",
    initiator_id="3f6c2a1e-9b8d-4c7e-a5f4-0d1e2c3b4a59", initiator_username="alice",
    credential_user_id="3f6c2a1e-9b8d-4c7e-a5f4-0d1e2c3b4a59", credential_kind="central",
    credential_hint="sk-c...ef", upstream_status=200, http_status=200, input_tokens=100, output_tokens=20,
    cache_read_tokens=0, cache_write_tokens=0, prompt="hello", status="ok", cost_micros=500, attempts=1,
    ttfb_ms=120)


def record(**changes: Any) -> Interception:
    """An interception like a blocking chat completion of alice's, with C{changes}; a fresh id by default."""
    changes.setdefault("id", str(uuid.uuid4()))
    if "started_at" in changes and "ended_at" not in changes:
        changes["ended_at"] = changes["started_at"] + 1.5
    if "tool_calls" in changes:
        changes["tool_calls"] = tuple(t if isinstance(t, ToolCall) else ToolCall(*t) for t in changes["tool_calls"])
    return replace(_BASE, **changes)


def csrf_of(body: bytes) -> str:
    found = re.search(rb'name="csrf" value="([^"]+)"', body)
    assert found, "no CSRF token in the page"
    return found.group(1).decode()
