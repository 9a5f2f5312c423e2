"""
Helpers for the AI proxy's tests: a bridge with its AI proxy on loopback, a
resolver that answers from a table, clients that go through the proxy, and
a TLS server that echoes what it gets.
"""

from __future__ import annotations

import base64
import socket
import time
import ssl as stdlib_ssl
from dataclasses import dataclass
from typing import Any, Optional

from types import SimpleNamespace

from twisted.internet import defer, reactor, ssl
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from bridgeproxy.aiproxy import AIProxy, CertificateAuthority, create_ca, make_aiproxy
from tests import fakes, memory
from tests.certs import make_ca


class TableResolver:
    """Answers host names from a table (an empty answer for any other name); counts lookups."""

    def __init__(self, table: Optional[dict[str, list[str]]] = None):
        self.table = table or {}
        self.asked: list[str] = []
        #: The port of each lookup.
        self.ports: list[int] = []

    def resolve(self, host: str, port: int):
        self.asked.append(host)
        self.ports.append(port)
        return defer.succeed(list(self.table.get(host, [])))


@dataclass
class ProxyRunning:
    """A bridge (L{fakes.Running}) with its AI proxy listening beside it."""

    bridge: fakes.Running
    proxy: AIProxy
    port: int
    ca_path: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_with_key(self, key: str) -> str:
        return f"http://bridge:{key}@127.0.0.1:{self.port}"

    @defer.inlineCallbacks
    def stop(self):
        yield self.bridge.stop()


@defer.inlineCallbacks
def start_proxy(tmp_path, extra: Optional[dict] = None, resolver: Any = None, aiproxy: Optional[dict] = None):
    """
    A fake upstream, a bridge in front of it and an AI proxy beside the
    bridge, with a CA made for the test; C{aiproxy} adds C{[aiproxy]} settings.
    """
    ca_cert, ca_key = create_ca(str(tmp_path / "ca"))
    settings = {"listen": "tcp:0:interface=127.0.0.1", "ca_cert": ca_cert, "ca_key": ca_key, **(aiproxy or {})}
    running = yield fakes.start_bridge(tmp_path, {**(extra or {}), "aiproxy": settings})
    app = running.app
    ca = CertificateAuthority.load(ca_cert, ca_key, reactor, app.metrics)
    proxy = AIProxy(app, ca, reactor, resolver)
    port = reactor.listenTCP(0, proxy, interface="127.0.0.1")
    running.ports.insert(0, port)
    return ProxyRunning(bridge=running, proxy=proxy, port=port.getHost().port, ca_path=ca_cert)


def basic(key: str, user: str = "bridge") -> str:
    """A C{Proxy-Authorization: Basic} value carrying C{key} as the password."""
    return "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()


def raw_exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send C{request} to the proxy on a blocking socket; everything it answers until it closes (run in a thread)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def connect_tunnel(port: int, target: str, key: Optional[str], timeout: float = 5.0):
    """
    A blocking socket to the proxy after a C{CONNECT target}: C{(socket, head)}
    where head is the proxy's answer head (run in a thread).
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if key is not None:
        lines.append("Proxy-Authorization: " + basic(key))
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(1)
        if not data:
            break
        head += data
    return sock, head


def tls_client(sock: socket.socket, host: str, ca_path: str) -> stdlib_ssl.SSLSocket:
    """
    C{sock} with TLS for C{host}, trusting only C{ca_path}; an end of the
    connection without TLS's own close (close_notify) is an error, not an end.
    """
    context = stdlib_ssl.create_default_context(cafile=ca_path)
    return context.wrap_socket(sock, server_hostname=host, suppress_ragged_eofs=False)


@defer.inlineCallbacks
def tls_listener(proxy: AIProxy, directory):
    """
    C{proxy} also on an C{ssl:} listener on loopback, with a certificate for
    C{localhost} from a CA made in C{directory}: C{(port, ca_path)}.
    """
    directory.mkdir(exist_ok=True)
    test_ca, issue = make_ca(directory)
    cert, key = issue("localhost")
    port = yield serverFromString(
        reactor, f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}").listen(proxy)
    return port, str(test_ca)


class _Echo(Protocol):
    """Echoes what it reads, prefixed by nothing; remembers everything."""

    def connectionMade(self):
        self.factory.connections.append(self)
        self.received = b""

    def dataReceived(self, data):
        self.received += data
        self.transport.write(data)


def echo_tls_server(cert_path, key_path):
    """A TLS echo server on loopback: C{(port, factory)}; C{factory.connections} holds its protocols."""
    cert = ssl.PrivateCertificate.loadPEM(cert_path.read_text() + key_path.read_text())
    factory = Factory.forProtocol(_Echo)
    factory.connections = []
    port = reactor.listenSSL(0, factory, cert.options(), interface="127.0.0.1")
    return port, factory


class HalfClosingTransport(StringTransport):
    """A L{StringTransport} that also takes a half-close (C{loseWriteConnection})."""

    write_closed = False

    def loseWriteConnection(self):
        self.write_closed = True

    def setTcpNoDelay(self, enabled):
        pass


@dataclass
class MemoryProxy:
    """
    An AI proxy in memory, beside the in-memory bridge of L{memory.gateway}:
    client connections over L{StringTransport}s, outgoing connections
    recorded by a L{MemoryReactorClock} (C{reactor.tcpClients}).
    """

    proxy: AIProxy
    reactor: MemoryReactorClock
    gateway: memory.Gateway
    resolver: TableResolver

    def connect(self):
        """A new client connection: C{(protocol, transport)}."""
        protocol = self.proxy.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        transport = HalfClosingTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        protocol.makeConnection(transport)
        return protocol, transport

    def send(self, raw: bytes):
        """A new client connection that sends C{raw}: C{(protocol, transport)}."""
        protocol, transport = self.connect()
        protocol.dataReceived(raw)
        return protocol, transport

    def connect_request(self, target: str, key: Optional[str] = memory.TOKEN, extra: bytes = b""):
        """A client connection that sent C{CONNECT target} (with C{key} in Proxy-Authorization) and C{extra}."""
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if key is not None:
            lines.append("Proxy-Authorization: " + basic(key))
        return self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + extra)

    def accept_outbound(self, index: int = -1):
        """Complete the outgoing connection C{index}: C{(protocol, transport)} of the target's side."""
        host, port, factory = self.reactor.tcpClients[index][:3]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = HalfClosingTransport(peerAddress=IPv4Address("TCP", host, port))
        protocol.makeConnection(transport)
        return protocol, transport

    def sample(self, name: str, **labels) -> Optional[float]:
        return self.gateway.bridge.metrics.registry.get_sample_value(name, labels)


def memory_proxy(tmp_path, aiproxy: Optional[dict] = None, identities: Any = None,
                 resolver: Optional[TableResolver] = None, extra: Optional[dict] = None) -> MemoryProxy:
    """
    An AI proxy in memory beside L{memory.gateway}'s bridge, with
    C{[aiproxy]} settings C{aiproxy} (and the rest of the configuration
    C{extra}), made as C{twistd} makes it (L{make_aiproxy}).
    """
    ca_cert, ca_key = create_ca(str(tmp_path / "ca"))
    settings = {"listen": "tcp:0", "ca_cert": ca_cert, "ca_key": ca_key, **(aiproxy or {})}
    identities = identities if identities is not None else memory.Identities()
    gateway = memory.gateway({**(extra or {}), "aiproxy": settings}, identities)
    bridge = gateway.bridge
    app = SimpleNamespace(bridge=bridge, site=gateway.site, config=bridge.config, identity=identities,
                          metrics=bridge.metrics)
    clock = MemoryReactorClock()
    resolver = resolver if resolver is not None else TableResolver()
    return MemoryProxy(proxy=make_aiproxy(app, clock, resolver), reactor=clock, gateway=gateway, resolver=resolver)


class _Inside(Protocol):
    """The client's side inside its TLS: what it reads, and how it ended."""

    def __init__(self):
        self.received = b""
        self.ended: Any = None

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason=None):
        self.ended = reason


class TLSClient:
    """
    A client's TLS inside a tunnel the proxy decrypts, in memory: a
    C{CONNECT host:443} with C{key}, then what the client's TLS writes is
    fed to the proxy's connection, what the proxy writes back is fed to it
    (L{pump}), and the bridge's upstream is flushed meanwhile.

    @param trust: the PEM of the CA the client trusts (the proxy's by default).
    @param alpn: the protocols the client offers (ALPN), if any.
    @param together: send the TLS hello with the CONNECT, without waiting for its answer.
    """

    def __init__(self, proxied: "MemoryProxy", host: str, key: Optional[str] = memory.TOKEN,
                 trust: Optional[bytes] = None, alpn: Optional[list] = None, together: bool = False):
        self.proxied = proxied
        options = ssl.optionsForClientTLS(
            host, trustRoot=ssl.Certificate.loadPEM(trust if trust is not None else proxied.proxy.ca.pem),
            acceptableProtocols=alpn)
        self.inside = _Inside()
        #: The connection has ended.
        self.lost = False
        self.tls = TLSMemoryBIOProtocol(TLSMemoryBIOFactory(options, True, Factory()), self.inside)
        self.wire = StringTransport()
        self.tls.makeConnection(self.wire)
        hello = b""
        if together:
            hello = self.wire.value()
            self.wire.clear()
        self.protocol, self.transport = proxied.connect_request(f"{host}:443", key=key, extra=hello)
        #: What the proxy wrote before TLS began (its answer to the CONNECT).
        self.head = self.transport.value()[:len(b"HTTP/1.1 200 Connection established\r\n\r\n")]
        self._read = len(self.head)
        self.pump()

    def pump(self) -> None:
        """
        Move bytes both ways (and let the upstream answer) until nothing
        moves; then a side that closed its connection ends it for both, as a
        socket would once its bytes are written.
        """
        for _ in range(100):
            moved = False
            out = self.wire.value()
            if out:
                self.wire.clear()
                self.protocol.dataReceived(out)
                moved = True
            back = self.transport.value()[self._read:]
            if back:
                self._read += len(back)
                self.tls.dataReceived(back)
                moved = True
            self.proxied.gateway.pump(1)
            if not moved:
                break
        if (self.transport.disconnecting or self.wire.disconnecting) and not self.lost:
            self.lost = True
            self.protocol.connectionLost(Failure(ConnectionDone()))
            self.tls.connectionLost(Failure(ConnectionDone()))

    def send(self, raw: bytes) -> None:
        """Write C{raw} inside the TLS, and pump."""
        self.tls.write(raw)
        self.pump()

    def answers(self) -> list:
        """The HTTP answers read inside the TLS so far."""
        found, rest = [], self.inside.received
        while rest:
            answer = memory.parse_answer(rest)
            length = int(answer.headers["content-length"][0])
            found.append(answer)
            rest = rest[len(rest) - len(answer.body) + length:]
            answer.body = answer.body[:length]
        return found


def memory_tls_client(proxied: "MemoryProxy", host: str, **options: Any) -> TLSClient:
    """
    A L{TLSClient} for C{host} (its handshake done), with its C{options}.
    The proxy's clock is first brought to the wall clock's time: the client
    checks the leaf's dates against it.
    """
    proxied.reactor.advance(max(0.0, time.time() - proxied.reactor.seconds()))
    return TLSClient(proxied, host, **options)


OPENAI_HOST = "api.openai.com"
ANTHROPIC_HOST = "api.anthropic.com"
__all__ = ["ANTHROPIC_HOST", "HalfClosingTransport", "MemoryProxy", "OPENAI_HOST", "ProxyRunning", "TLSClient",
           "TableResolver", "basic", "connect_tunnel", "echo_tls_server", "memory_proxy", "memory_tls_client",
           "raw_exchange", "start_proxy", "tls_client", "tls_listener"]
