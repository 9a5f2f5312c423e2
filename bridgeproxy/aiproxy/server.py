# -*- test-case-name: tests.test_aiproxy_server,tests.test_aiproxy_memory,tests.test_aiproxy_e2e -*-
"""
The AI proxy's listener: one L{ProxyConnection} per client connection.

A connection starts with one request head, read by hand (the proxy must
take the connection over after a C{CONNECT}, which an HTTP channel would
not let it do):

    CONNECT allow-listed-host:port   key checked (407), port checked (403),
                                     then TLS with the host's leaf and the
                                     bridge's own HTTP channel inside (mitm.py)
    CONNECT other-host:port          key checked (407), port checked (403),
                                     name resolved once, addresses checked
                                     (guard.py, 403), bytes passed through (tunnel.py)
    GET /ca.pem                      the CA certificate, no key needed
    GET http://host/...              refused: providers are HTTPS only, and
                                     nothing else is forwarded in the clear

Nothing is answered until the decision is made; the client's connection is
not read meanwhile.  After an answer that ends the connection (a refusal,
the CA certificate) the client's bytes are read and dropped until it closes
its side, or for L{CLOSE_TIMEOUT} seconds at most.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from http import HTTPStatus
from typing import Any, Optional, Sequence

from twisted.internet import endpoints
from twisted.internet.defer import CancelledError, maybeDeferred, succeed
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocolNegotiationFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from bridgeproxy.aiproxy.ca import CertificateAuthority
from bridgeproxy.aiproxy.guard import Guard, Lookups, Resolver
from bridgeproxy.aiproxy.head import MAX_HEAD, BadHead, ProxyRequest, absolute_host, parse_authority, parse_head, \
    proxy_token
from bridgeproxy.aiproxy.mitm import Tunnel, TunnelRequest, TunnelResource, tunnel_channel
from bridgeproxy.aiproxy.tunnel import Outbound, Splice, proxy_address, proxy_connect_request
from bridgeproxy.errors import BridgeError, openai_error
from bridgeproxy.proxy.site import make_site

log = Logger(namespace="bridgeproxy.aiproxy")

#: Seconds a client has to send its request head.
HEAD_TIMEOUT = 30.0
#: Seconds the proxy may take to check a key and reach a tunnel's target.
DECIDE_TIMEOUT = 60.0
#: Seconds a client has, after an answer the proxy closes on, to end its side
#: (a TLS listener waits for the client's close_notify); then it is cut.
CLOSE_TIMEOUT = 5.0

#: Each refusal status as a provider-neutral error kind (L{bridgeproxy.errors}).
_KINDS = {400: "invalid_request", 403: "permission", 404: "not_found", 405: "invalid_request",
          407: "authentication", 408: "timeout", 431: "invalid_request", 501: "invalid_request",
          502: "api_error", 503: "overloaded", 504: "timeout"}
_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
#: How a step the proxy gave up on fails (a connection attempt fails with the second).
_CANCELLED = (CancelledError, ConnectingCancelledError)


def _phrase(status: int) -> bytes:
    """The reason phrase of C{status} (Python's; C{Error} for a status it does not know)."""
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b"Error"


def _header_bytes(value: str) -> bytes:
    """A header name or value for the answer: Latin-1, without line breaks."""
    return value.encode("latin-1", "replace").replace(b"\r", b" ").replace(b"\n", b" ")


def _outcome(status: int) -> str:
    """A CONNECT's outcome for the metric, from its refusal status."""
    if status == 407:
        return "407"
    if status in (502, 504):
        return "unreachable"
    return "refused"


class _OneShot(Factory):
    """The factory of one outgoing connection of a tunnel (quiet: no log line per tunnel)."""

    noisy = False

    def __init__(self, protocol: Protocol):
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._protocol


class ProxyConnection(Protocol):
    """One client connection to the AI proxy (see the module's docstring)."""

    transport: Any

    def __init__(self, proxy: "AIProxy"):
        self.proxy = proxy
        self._buffer = b""
        self._reading_head = True
        self._timer: Any = None
        self._gone = False
        #: Answered; the connection is ending (what the client sends is dropped).
        self._closing = False
        self._close_timer: Any = None
        self._pending: Any = None
        #: The TLS layer of a decrypted tunnel (the bridge's channel inside it).
        self._tls: Optional[TLSMemoryBIOProtocol] = None
        #: The two ends of a tunnel that is not decrypted.
        self._splice: Optional[Splice] = None
        self._kind: Optional[str] = None
        self._connect = False
        self._target = ""
        self._provider: Any = None
        self._user: Optional[str] = None

    # -- the connection ---------------------------------------------------------------

    def connectionMade(self) -> None:
        handle = getattr(self.transport, "getHandle", None)
        if handle is not None:
            try:
                handle().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass  # not a TCP socket (a unix one, a TLS listener's wrapper)
        self._timer = self.proxy.reactor.callLater(HEAD_TIMEOUT, self._timed_out, 408,
                                                   "The request head did not arrive in time.")

    def dataReceived(self, data: bytes) -> None:
        if self._tls is not None:
            self._tls.dataReceived(data)
            return
        if self._splice is not None:
            self._splice.received(0, data)
            return
        if self._closing:
            return  # answered: nothing more is read
        self._buffer += data
        if not self._reading_head:
            # The start of a tunnel's bytes, kept for when it opens; not
            # without end (the connection is paused meanwhile, but a TLS
            # listener's connection may still hand over what it holds).
            if len(self._buffer) > MAX_HEAD:
                self._closing = True
                self.transport.abortConnection()
            return
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0 or end > MAX_HEAD:
            if len(self._buffer) > MAX_HEAD:
                self._refuse(431, f"The request head is larger than {MAX_HEAD} bytes.")
            return
        head, self._buffer = self._buffer[:end], self._buffer[end + 4:]
        self._reading_head = False
        self._cancel_timer()
        # Nothing more is read until the proxy has decided what this is.
        self.transport.pauseProducing()
        try:
            request = parse_head(head)
            if request.method == b"CONNECT":
                self._connect = True
                self._connect_request(request)
            else:
                self._plain_request(request)
        except BadHead as e:
            self._refuse(e.status, e.message)

    def connectionLost(self, reason: Any = None) -> None:
        self._gone = True
        self._cancel_timer()
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()
        if self._tls is not None:
            self._tls.connectionLost(reason)
        if self._splice is not None:
            self._splice.lost(0)
        if self._kind is not None:
            self.proxy.metrics.aiproxy_tunnels.labels(self._kind).dec()
            self._kind = None

    # Only once a tunnel that is not decrypted is open (alsoProvides):
    # before, and in a decrypted one, the end of the client's sending is
    # the end of the connection, as on the bridge's own listener.

    def readConnectionLost(self) -> None:
        if self._splice is not None:
            self._splice.read_ended(0)

    def writeConnectionLost(self) -> None:
        if self._splice is not None:
            self._splice.write_ended(0)

    # -- requests that are not CONNECT ------------------------------------------------------

    def _plain_request(self, request: ProxyRequest) -> None:
        if request.target.startswith(b"/"):
            if request.target.split(b"?", 1)[0] != b"/ca.pem":
                raise BadHead("Not found: this is an HTTPS proxy; its CA certificate is at /ca.pem.", 404)
            if request.method not in (b"GET", b"HEAD"):
                raise BadHead("Only GET and HEAD read /ca.pem.", 405)
            pem = self.proxy.ca.pem
            self._answer(200, b"OK", [(b"Content-Type", b"application/x-pem-file"),
                                      (b"Content-Disposition", b'attachment; filename="bridgeproxy-ca.pem"')],
                         b"" if request.method == b"HEAD" else pem, length=len(pem))
            return
        host = absolute_host(request.target)
        if host is None:
            raise BadHead("Malformed request target.")
        provider_name = self.proxy.settings.domains.get(host)
        if provider_name is not None:
            self._provider = self.proxy.provider(provider_name)
            raise BadHead(f"{host} is served over HTTPS only: use https:// (the proxy decrypts it with CONNECT).",
                          403)
        raise BadHead("This proxy forwards HTTPS only (CONNECT); plain HTTP requests are not forwarded.", 501)

    # -- CONNECT ------------------------------------------------------------------------

    def _connect_request(self, request: ProxyRequest) -> None:
        host, port = parse_authority(request.target)
        self._target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        provider_name = self.proxy.settings.domains.get(host)
        if provider_name is not None:
            self._provider = self.proxy.provider(provider_name)
        token = proxy_token(request.values(b"proxy-authorization"))
        if token is None:
            self._refuse(407, "Proxy authentication required: send your bridge key as the password of "
                              "Proxy-Authorization: Basic (or as a Bearer token).")
            return
        self._timer = self.proxy.reactor.callLater(DECIDE_TIMEOUT, self._timed_out, 504,
                                                   "The proxy could not open the tunnel in time.")
        d = maybeDeferred(self.proxy.identity.identify, token)
        self._pending = d
        d.addCallbacks(self._identified, self._identify_failed, callbackArgs=(host, port, provider_name, token))
        d.addErrback(self._crashed)

    def _identified(self, identity: Any, host: str, port: int, provider_name: Optional[str], token: str) -> None:
        self._pending = None
        if self._gone:
            return
        if identity is None:
            self._refuse(407, "Invalid, expired or revoked bridge key in Proxy-Authorization.")
            return
        self._user = identity.username or identity.user_id
        if identity.disabled:
            self._refuse(403, "This user is disabled.")
            return
        settings = self.proxy.settings
        if port not in settings.allowed_ports:
            allowed = ", ".join(str(p) for p in settings.allowed_ports) or "none"
            self._refuse(403, f"Port {port} is not allowed (allowed: {allowed}).")
            return
        if provider_name is not None:
            if self.proxy.ca.expired():
                self._refuse(503, "The AI proxy's CA certificate has expired; an administrator must renew it.")
                return
            self._decrypt(host, provider_name, token)
        else:
            self._resolve(host, port)

    def _identify_failed(self, failure: Failure) -> None:
        self._pending = None
        if self._gone or failure.check(*_CANCELLED):
            return
        if failure.check(BridgeError):
            # The backend's own answer, as on the bridge's own listener (a
            # suspended user's 403, a deployment that is down's 503 and its
            # Retry-After); a key it refuses is the proxy's 407.
            error = failure.value
            status = 407 if error.status == 401 else error.status
            self._refuse(status, error.message, kind=error.kind,
                         headers=[(_header_bytes(name), _header_bytes(value)) for name, value in error.headers.items()])
            return
        log.failure("aiproxy: checking a bridge key failed", failure)
        self._refuse(503, "The bridge key could not be checked; try again shortly.")

    def _crashed(self, failure: Failure) -> None:
        log.failure("aiproxy: unexpected error serving CONNECT {target}", failure, target=self._target)
        if not self._gone:
            self.transport.abortConnection()

    # -- a decrypted tunnel -----------------------------------------------------------------

    def _decrypt(self, host: str, provider_name: str, token: str) -> None:
        proxy = self.proxy
        tls_factory = proxy.ca.tls_for(host)
        self._cancel_timer()
        self.transport.write(_ESTABLISHED)
        channel = tunnel_channel(proxy.site, proxy.app.site,
                                 Tunnel(provider=provider_name.encode("ascii"), token=token, host=host,
                                        username=self._user or "", bridge=proxy.app.bridge),
                                 proxy.reactor)
        tls = TLSMemoryBIOProtocol(tls_factory, channel)
        self._tls = tls
        self._opened("mitm")
        tls.makeConnection(self.transport)
        if self._buffer:
            early, self._buffer = self._buffer, b""
            tls.dataReceived(early)
        self.transport.resumeProducing()

    # -- a tunnel that is not decrypted -------------------------------------------------------

    def _resolve(self, host: str, port: int) -> None:
        try:
            d = succeed([str(ipaddress.ip_address(host))])  # an address already: nothing to resolve
        except ValueError:
            d = self.proxy.lookups.resolve(host, port)
        self._pending = d
        d.addCallbacks(self._resolved, self._unresolved, callbackArgs=(host, port), errbackArgs=(host,))
        d.addErrback(self._crashed)

    def _unresolved(self, failure: Failure, host: str) -> None:
        self._pending = None
        if self._gone or failure.check(*_CANCELLED):
            return
        self._refuse(502, f"{host} could not be resolved.")

    def _resolved(self, addresses: list[str], host: str, port: int) -> None:
        self._pending = None
        if self._gone:
            return
        if not addresses:
            self._refuse(502, f"{host} could not be resolved.")
            return
        allowed = self.proxy.guard().check(addresses)
        if not allowed:
            self._refuse(403, f"{host} is a private, loopback, link-local or reserved address; "
                              f"tunnels there are not allowed.")
            return
        self._dial(allowed, port)

    def _dial(self, addresses: list[str], port: int) -> None:
        address = addresses[0]
        proxy = self.proxy
        timeout = proxy.app.config.upstream.connect_timeout
        upstream_proxy = proxy.settings.upstream_proxy
        if upstream_proxy:
            proxy_host, proxy_port = proxy_address(upstream_proxy)
            endpoint: Any = endpoints.HostnameEndpoint(proxy.reactor, proxy_host, proxy_port, timeout=timeout)
            outbound = Outbound(proxy_connect_request(upstream_proxy, address, port))
        else:
            kind = endpoints.TCP6ClientEndpoint if ":" in address else endpoints.TCP4ClientEndpoint
            endpoint = kind(proxy.reactor, address, port, timeout=timeout)
            outbound = Outbound()
        d = endpoint.connect(_OneShot(outbound))
        d.addCallback(lambda outbound: outbound.ready)
        self._pending = d
        d.addCallbacks(self._spliced, self._unreachable, errbackArgs=(addresses[1:], port))
        d.addErrback(self._crashed)

    def _unreachable(self, failure: Failure, rest: list[str], port: int) -> None:
        self._pending = None
        if self._gone or failure.check(*_CANCELLED):
            return
        if rest and not self.proxy.settings.upstream_proxy:
            self._dial(rest, port)
            return
        log.info("aiproxy: CONNECT {target} failed: {reason}", target=self._target,
                 reason=failure.getErrorMessage()[:200])
        self._refuse(502, f"{self._target} could not be reached.")

    def _spliced(self, outbound: Outbound) -> None:
        self._pending = None
        if self._gone:
            outbound.transport.loseConnection()
            return
        self._cancel_timer()
        self.transport.write(_ESTABLISHED)
        splice = Splice(self.transport, outbound.transport)
        outbound.splice = splice
        self._splice = splice
        alsoProvides(self, IHalfCloseableProtocol)
        self._opened("tunnelled")
        if self._buffer:
            early, self._buffer = self._buffer, b""
            splice.received(0, early)
        if outbound.early:
            early, outbound.early = outbound.early, b""
            splice.received(1, early)
        self.transport.resumeProducing()

    # -- answers ------------------------------------------------------------------------

    def _opened(self, kind: str) -> None:
        self._kind = kind
        metrics = self.proxy.metrics
        metrics.aiproxy_connects.labels(kind).inc()
        metrics.aiproxy_tunnels.labels(kind).inc()
        log.info("aiproxy CONNECT {target} user={user}: {kind}", target=self._target, user=self._user, kind=kind)

    def _refuse(self, status: int, message: str, kind: Optional[str] = None,
                headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        """
        Answer with an error in the provider's shape (the target's, else
        OpenAI's) and close.

        @param kind: the neutral error kind (by default the status's).
        @param headers: more headers for the answer.
        """
        self._cancel_timer()
        if status == 407:
            kind = "authentication"
        elif kind is None:
            kind = _KINDS.get(status, "api_error")
        provider = self._provider
        body = provider.error_body(kind, message) if provider is not None else \
            json.dumps(openai_error(kind, message)).encode("utf-8")
        headers = [(b"Content-Type", b"application/json"), *headers]
        if status == 407:
            headers.append((b"Proxy-Authenticate", b'Basic realm="bridgeproxy"'))
        if self._connect:
            self.proxy.metrics.aiproxy_connects.labels(_outcome(status)).inc()
            log.info("aiproxy CONNECT {target} user={user}: refused {status} ({message})",
                     target=self._target or "?", user=self._user, status=status, message=message)
        self._answer(status, _phrase(status), headers, body)

    def _answer(self, status: int, phrase: bytes, headers: list[tuple[bytes, bytes]], body: bytes,
                length: Optional[int] = None) -> None:
        lines = [b"HTTP/1.1 %d %s" % (status, phrase)]
        lines += [name + b": " + value for name, value in headers]
        lines += [b"Content-Length: %d" % (len(body) if length is None else length), b"Connection: close"]
        self._closing = True
        self._buffer = b""
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        # Read again, to see the client's end: a TLS listener's connection
        # ends only once the client's close_notify (or its close) is read.
        self.transport.resumeProducing()
        self.transport.loseConnection()
        if not self._gone:
            self._close_timer = self.proxy.reactor.callLater(CLOSE_TIMEOUT, self.transport.abortConnection)

    def _timed_out(self, status: int, message: str) -> None:
        self._timer = None
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()
        self._refuse(status, message)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


@implementer(IProtocolNegotiationFactory)
class AIProxy(Factory):
    """
    The AI proxy's protocol factory, serving beside the bridge of C{app}.

    @param app: the running bridge: its C{bridge}, C{site}, C{config},
        C{identity} and C{metrics} (a L{bridgeproxy.tap.App}); what a reload
        changes there applies to the next C{CONNECT}.
    @param ca: the L{CertificateAuthority} that signs the leaves.
    @param resolver: host names to addresses (a L{Resolver} by default).
    """

    def __init__(self, app: Any, ca: CertificateAuthority, reactor: Any, resolver: Any = None):
        self.app = app
        self.ca = ca
        self.reactor = reactor
        self.resolver = resolver if resolver is not None else Resolver(reactor)
        #: The tunnels' lookups, a few at a time (see L{Lookups}).
        self.lookups = Lookups(self.resolver)
        #: The decrypted tunnels' site: the bridge's pipeline, the bridge's request class.
        self.site = make_site(TunnelResource(app.bridge), app.config.max_body_bytes, reactor)
        self.site.requestFactory = type(  # type: ignore[assignment]
            "TunnelRequest", (TunnelRequest, app.site.requestFactory), {})
        self._guard: tuple[Any, Guard] = ((), Guard())

    @property
    def settings(self) -> Any:
        """The C{[aiproxy]} configuration in force (a reload may change it)."""
        return self.app.config.aiproxy

    @property
    def identity(self) -> Any:
        """The identity backend in force."""
        return self.app.identity

    @property
    def metrics(self) -> Any:
        return self.app.metrics

    def provider(self, name: str) -> Any:
        """The L{bridgeproxy.interfaces.IProvider} configured as C{name}, if any (for its error shape)."""
        entry = self.app.bridge.providers.get(name.encode("ascii"))
        return entry.provider if entry is not None else None

    def guard(self) -> Guard:
        """The SSRF guard for the configured C{allowed_private_cidrs}."""
        cidrs = self.settings.allowed_private_cidrs
        if self._guard[0] != cidrs:
            self._guard = (cidrs, Guard(cidrs))
        return self._guard[1]

    def buildProtocol(self, addr: Any) -> ProxyConnection:
        return ProxyConnection(self)

    def acceptableProtocols(self) -> list[bytes]:
        """
        HTTP/1.1, for a TLS listener (C{ssl:}) whose clients offer ALPN:
        without a protocol in common, Twisted's TLS would end the handshake.
        """
        return [b"http/1.1"]


def make_aiproxy(app: Any, reactor: Any, resolver: Any = None) -> AIProxy:
    """
    The AI proxy for C{app}, its CA loaded from C{[aiproxy] ca_cert} and C{ca_key}.

    @raise bridgeproxy.errors.ConfigError: when the CA cannot be used.
    """
    settings = app.config.aiproxy
    ca = CertificateAuthority.load(settings.ca_cert, settings.ca_key, reactor, app.metrics)
    return AIProxy(app, ca, reactor, resolver)


__all__ = ["AIProxy", "ProxyConnection", "make_aiproxy"]
