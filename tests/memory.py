"""
The whole pipeline in memory: raw request bytes fed to the bridge's own
L{Site} over a L{StringTransport}, an upstream reached through
L{treq.testing.RequestTraversalAgent}, and time on a L{Clock}.  Nothing
listens on a socket and nothing sleeps, so these tests are fast and
deterministic, and can throw any bytes at the server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from treq.testing import RequestTraversalAgent
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web import server
from twisted.web.resource import Resource

from bridgeproxy.auth import ApiKeyExtractor, BearerExtractor, CoderTokenExtractor
from bridgeproxy.clients import TableDetector
from bridgeproxy.config import parse
from bridgeproxy.initiator import CoderAgentsOwnerResolver, TokenResolver
from bridgeproxy.metrics import Metrics
from bridgeproxy.providers.anthropic import AnthropicProvider
from bridgeproxy.providers.openai import OpenAIProvider
from bridgeproxy.proxy.pipeline import Bridge, ProviderEntry
from bridgeproxy.proxy.resource import BridgeResource
from bridgeproxy.proxy.site import make_site
from bridgeproxy.types import Identity

OPENAI_KEY = "sk-central-openai-MEMORY-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-central-MEMORY-0123456789abcdef"
TOKEN = "bp_memory-bridge-token-0123456789abcdefXYZ"
USER_ID = "3f6c2a1e-9b8d-4c7e-a5f4-0d1e2c3b4a59"
UPSTREAM = "http://upstream.test"


class Identities:
    """An identity backend that knows one token; answers at once."""

    name = "memory"

    def __init__(self, tokens: Optional[dict] = None):
        self.tokens = tokens if tokens is not None else {TOKEN: Identity(USER_ID, "alice")}

    def identify(self, token):
        return succeed(self.tokens.get(token))

    def lookup_user(self, user_id):
        return succeed(next((i for i in self.tokens.values() if i.user_id == user_id), None))


@dataclass
class Seen:
    """A request as the upstream received it."""

    method: bytes
    uri: bytes
    headers: dict
    body: bytes

    def header(self, name: str) -> Optional[bytes]:
        values = self.headers.get(name.lower().encode())
        return values[0] if values else None


class Upstream(Resource):
    """Records what it receives; answers with C{handler(request)} (bytes or NOT_DONE_YET)."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.seen: list[Seen] = []
        self.handler: Callable[[Any], Any] = json_answer(200, {"ok": True})
        self.requests: list[Any] = []
        #: Requests whose connection went away before they were answered.
        self.lost: list[Any] = []

    def render(self, request):
        headers: dict = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            headers.setdefault(name.lower(), []).extend(values)
        self.seen.append(Seen(request.method, request.uri, headers, request.content.read()))
        self.requests.append(request)
        request.notifyFinish().addErrback(lambda failure: self.lost.append(request))
        return self.handler(request)


def json_answer(status: int, obj: Any) -> Callable[[Any], bytes]:
    def handler(request):
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(obj).encode()
    return handler


def sse_answer(events: list[bytes], end: str = "finish") -> Callable[[Any], Any]:
    """
    Streams C{events} at once, then ends the response: C{"finish"} (clean),
    C{"abort"} (the connection dropped), or C{"hang"} (stays open).
    """
    def handler(request):
        request.setHeader(b"content-type", b"text/event-stream")
        for event in events:
            request.write(event)
        if end == "finish":
            request.finish()
        elif end == "abort":
            request.channel.transport.abortConnection()
        return server.NOT_DONE_YET
    return handler


@dataclass
class Answer:
    """What the client got: status, reason phrase, headers (lower-case names), body."""

    status: int
    phrase: bytes
    headers: dict
    body: bytes
    raw: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_answer(raw: bytes) -> Optional[Answer]:
    """Parse one HTTP/1.1 response (chunked or not); L{None} if none was written."""
    if not raw:
        return None
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    _, status, phrase = (lines[0].split(b" ", 2) + [b""])[:3]
    headers: dict = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower().decode("latin-1"), []).append(value.strip())
    if headers.get("transfer-encoding") == [b"chunked"]:
        body = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2:]
    else:
        body = rest
    return Answer(int(status), phrase, headers, body, raw)


@dataclass
class Gateway:
    """A bridge wired in memory; L{send} serves one request to completion."""

    bridge: Bridge
    site: Any
    clock: Clock
    upstream: Upstream
    upstream_agent: RequestTraversalAgent
    records: list = field(default_factory=list)
    #: The metrics the bridge was given (what /metrics would serve).
    metrics: Any = None

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(transport)
        return protocol, transport

    def pump(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            self.upstream_agent.flush()

    def send_raw(self, raw: bytes) -> Optional[Answer]:
        """Feed raw bytes to a new connection; return the answer written to it."""
        protocol, transport = self.connect()
        protocol.dataReceived(raw)
        self.pump()
        answer = parse_answer(transport.value())
        protocol.connectionLost(None)
        self.pump()
        return answer

    def send(self, method: str, path: str, body: Any = None, headers: Optional[dict] = None) -> Answer:
        """Send a well-formed request; a dict body is JSON."""
        answer = self.send_raw(request_bytes(method, path, body, headers))
        assert answer is not None, "no answer was written"
        return answer

    def open(self, method: str, path: str, body: Any = None, headers: Optional[dict] = None):
        """Send a request and leave its connection open: C{(protocol, transport)}, to drive with the clock."""
        protocol, transport = self.connect()
        protocol.dataReceived(request_bytes(method, path, body, headers))
        self.pump()
        return protocol, transport


def request_bytes(method: str, path: str, body: Any = None, headers: Optional[dict] = None) -> bytes:
    """A well-formed HTTP/1.1 request; a dict body is JSON."""
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else (body or b"")
    lines = [f"{method} {path} HTTP/1.1".encode("latin-1"), b"Host: bridge.test",
             b"Connection: close", b"Content-Length: %d" % len(data)]
    for name, value in (headers or {}).items():
        for one in value if isinstance(value, list) else [value]:
            lines.append(f"{name}: {one}".encode("latin-1"))
    return b"\r\n".join(lines) + b"\r\n\r\n" + data


class _Records:
    def __init__(self, into: list):
        self.into = into

    def record(self, record):
        self.into.append(record)


def config(extra: Optional[dict] = None) -> Any:
    """The configuration of the in-memory gateway: the defaults, two providers at L{UPSTREAM}, plus C{extra}."""
    data: dict[str, Any] = {
        "providers": {"openai": {"base_url": UPSTREAM + "/v1", "key_env": "K_OPENAI"},
                      "anthropic": {"base_url": UPSTREAM, "key_env": "K_ANTHROPIC"}},
        "upstream": {"timeout": 30},
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse(data, environ={"K_OPENAI": OPENAI_KEY, "K_ANTHROPIC": ANTHROPIC_KEY})


def providers(config: Any) -> dict:
    """The built-in providers, as the bridge is given them for C{config}."""
    builtins = {"openai": OpenAIProvider(), "anthropic": AnthropicProvider()}
    return {name: ProviderEntry(builtins[name], pc) for name, pc in config.providers.items()}


def gateway(extra: Optional[dict] = None, identities: Optional[Identities] = None) -> Gateway:
    """A bridge in memory in front of a recording upstream, configured like the defaults plus C{extra}."""
    settings = config(extra)
    identities = identities or Identities()
    metrics = Metrics()
    clock = Clock()
    upstream = Upstream()
    agent = RequestTraversalAgent(upstream)
    records: list = []
    bridge = Bridge(
        settings, providers=providers(settings),
        extractors=[CoderTokenExtractor(settings.auth.coder_token_headers), BearerExtractor(), ApiKeyExtractor()],
        resolvers=[TokenResolver(identities),
                   CoderAgentsOwnerResolver(settings.initiator.delegators, identities, metrics)],
        detectors=[TableDetector()], agent=agent, clock=clock, recorder=_Records(records), metrics=metrics)
    site = make_site(BridgeResource(bridge), settings.max_body_bytes, clock)
    return Gateway(bridge=bridge, site=site, clock=clock, upstream=upstream, upstream_agent=agent,
                   records=records, metrics=metrics)
