# -*- test-case-name: tests.test_upstream,tests.test_endpoint -*-
"""
Talking to the upstream: treq over a pooled, verified HTTP/1.1 agent.

treq is the API every upstream request goes through.  A reverse proxy needs
it to be transparent, so the client is set up to add nothing of its own:
no cookie jar shared between users, no redirects followed (the client gets
the 3xx), and no C{Accept-Encoding} added (the bridge reads intercepted
answers as they stream; a client's own C{Accept-Encoding} on a passthrough
route is kept).  One thing treq does keep: a gzip answer to a passthrough
request that asked for it is decoded, and reaches the client as identity.
"""

from __future__ import annotations

import math
import socket
from pathlib import Path
from typing import Any, Callable, Optional

from hyperlink import EncodedURL
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import Certificate
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.web.client import (
    URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, _HTTP11ClientFactory,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from bridgeproxy.config import UpstreamConfig
from bridgeproxy.errors import BadRequest
from bridgeproxy.proxy.http1 import PooledAgent


@implementer(IBodyProducer)
class BytesProducer:
    """
    A request body already in memory, written in one go.

    (L{twisted.web.client.FileBodyProducer} goes through a cooperator
    and costs a reactor turn per request.)
    """

    def __init__(self, body: bytes):
        #: The whole body (L{bridgeproxy.proxy.http1.PooledAgent} writes it with the request head).
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Any:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IStreamClientEndpoint)
class ResolvedTCPEndpoint:
    """
    TCP to C{host:port}: the host's addresses resolved at most every C{ttl}
    seconds (never for an IP literal), each connection a plain C{connectTCP}
    to one of them.

    L{HostnameEndpoint} (Agent's default) resolves the name in a thread,
    defines a class and starts a LoopingCall for every connection: about
    0.7 ms of the reactor thread each, and the pool opens one connection per
    concurrent request (a login burst: 2,000 at once).

    @param resolve: C{resolve(host, port)} fires with C{getaddrinfo}'s
        answer; by default C{getaddrinfo} in the reactor's thread pool.
    """

    def __init__(self, reactor: Any, host: str, port: int, timeout: float, ttl: float = 60.0,
                 resolve: Optional[Callable[[str, int], Deferred]] = None):
        self._reactor, self._host, self._port, self._timeout, self._ttl = reactor, host, port, timeout, ttl
        self._lookup = resolve if resolve is not None else self._getaddrinfo
        self._addresses: list[tuple[Any, str]] = []
        self._expires = 0.0
        self._waiting: list[Deferred] = []
        self._next = 0
        if isIPAddress(host):
            self._addresses, self._expires = [(TCP4ClientEndpoint, host)], math.inf
        elif isIPv6Address(host):
            self._addresses, self._expires = [(TCP6ClientEndpoint, host)], math.inf

    def connect(self, factory: Any) -> Deferred:
        # Addresses are known until _expires (0 until the first lookup answered).
        if self._reactor.seconds() < self._expires:
            return self._connect(factory)
        return self._resolve().addCallback(lambda _: self._connect(factory))

    def _resolve(self) -> Deferred:
        """Fires once the addresses are known: one lookup however many connections wait for it."""
        d: Deferred = Deferred()
        self._waiting.append(d)
        if len(self._waiting) == 1:
            self._lookup(self._host, self._port).addBoth(self._resolved)
        return d

    def _getaddrinfo(self, host: str, port: int) -> Deferred:
        """The system resolver, in the injected reactor's thread pool."""
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                                 socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)

    def _resolved(self, result: Any) -> None:
        waiting, self._waiting = self._waiting, []
        if not isinstance(result, Failure):
            addresses = [(TCP4ClientEndpoint if family == socket.AF_INET else TCP6ClientEndpoint, sockaddr[0])
                         for family, _, _, _, sockaddr in result if family in (socket.AF_INET, socket.AF_INET6)]
            if addresses:
                self._addresses = addresses
                self._expires = self._reactor.seconds() + self._ttl
            else:
                result = Failure(OSError(f"no address for {self._host}"))
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)

    def _connect(self, factory: Any, tried: int = 0) -> Deferred:
        """
        Connect to the address that last worked; when it fails, to the next
        ones in turn (each once), then give up until the name is resolved
        again.
        """
        addresses = self._addresses
        i = self._next % len(addresses)
        kind, address = addresses[i]

        def failed(failure: Failure) -> Any:
            # A cancelled attempt (the request went away) says nothing about the address.
            if failure.check(ConnectingCancelledError) or addresses is not self._addresses:
                return failure
            self._next = i + 1
            if tried + 1 < len(addresses):
                return self._connect(factory, tried + 1)
            if self._expires != math.inf:
                self._expires = 0.0  # resolve again for the next connection
            return failure
        return kind(self._reactor, address, self._port, timeout=self._timeout).connect(factory).addErrback(failed)


class _QuietHTTP11ClientFactory(_HTTP11ClientFactory):
    """Logs no "Starting factory" / "Stopping factory" line for every upstream connection."""

    noisy = False


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietHTTP11ClientFactory


@implementer(IAgentEndpointFactory)
class CachingEndpointFactory:
    """
    The endpoint of each upstream (scheme, host, port), made once: a
    L{ResolvedTCPEndpoint}, wrapped in TLS verified by C{tls_policy} for
    C{https}.  The upstreams are a handful of fixed hosts, and building an
    endpoint (making the TLS creator) for every request costs more than the
    rest of the request set-up.
    """

    def __init__(self, reactor: Any, tls_policy: Any, connect_timeout: float):
        self._reactor = reactor
        self._tls_policy = tls_policy
        self._timeout = connect_timeout
        self._endpoints: dict[tuple, Any] = {}

    def endpointForURI(self, uri: Any) -> Any:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            if uri.scheme not in (b"http", b"https"):
                raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")
            endpoint = ResolvedTCPEndpoint(self._reactor, uri.host.decode("ascii"), uri.port, self._timeout)
            if uri.scheme == b"https":
                endpoint = wrapClientTLS(self._tls_policy.creatorForNetloc(uri.host, uri.port), endpoint)
            self._endpoints[key] = endpoint
        return endpoint


def make_agent(reactor: Any, config: UpstreamConfig, tls_policy: Any = None) -> Any:
    """
    The upstream L{IAgent} the config asks for (C{[upstream] client}): the
    bridge's L{PooledAgent}, or an L{Agent} over Twisted's
    L{HTTPConnectionPool}; either keeps C{max_connections_per_host} idle
    connections per host (treq's default pool keeps only 2).  Upstream TLS
    is verified (service-identity, through Twisted's
    L{BrowserLikePolicyForHTTPS}) against the system's CAs, or against
    C{[upstream] ca_file} when set.
    """
    if tls_policy is None:
        trust = None
        if config.ca_file:
            trust = Certificate.loadPEM(Path(config.ca_file).read_bytes())
        tls_policy = BrowserLikePolicyForHTTPS(trustRoot=trust)
    factory = CachingEndpointFactory(reactor, tls_policy, config.connect_timeout)
    if config.client == "httptools":
        return PooledAgent(reactor, factory, config.max_connections_per_host, config.idle_connection_seconds)
    pool = _QuietPool(reactor, persistent=True)
    pool.maxPersistentPerHost = config.max_connections_per_host
    pool.cachedConnectionTimeout = config.idle_connection_seconds  # type: ignore[assignment]
    return Agent.usingEndpointFactory(reactor, factory, pool=pool)


class _NoCookies(IndexableCookieJar):
    """A cookie jar that keeps nothing: an upstream's cookie is its client's, never every user's."""

    def set_cookie(self, cookie: Any) -> None:
        pass

    def add_cookie_header(self, request: Any) -> None:
        pass  # nothing is kept, so nothing is sent (and no urllib request is looked at)

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass


@implementer(IAgent)
class _AsSent:
    """
    Below treq: takes back the C{Accept-Encoding: gzip} value treq's content
    decoder appends to every request, so that the headers the pipeline
    built are the headers the upstream gets; and refuses a request whose
    URL the agent would send otherwise than the pipeline checked it.
    """

    def __init__(self, agent: Any):
        self._agent = agent
        #: The URL the pipeline is sending now (treq calls down synchronously).
        self.expected: Optional[bytes] = None
        #: URLs found to be sent as written (a handful of provider routes, mostly).
        self._as_written: set[bytes] = set()

    def request(self, method: bytes, uri: bytes, headers: Optional[Headers] = None,
                bodyProducer: Any = None) -> Deferred:
        if uri != self.expected:
            return _not_as_checked()
        if uri not in self._as_written:
            if URI.fromBytes(uri).originForm != _origin_form(uri):
                return _not_as_checked()
            if len(self._as_written) >= 512:
                self._as_written.clear()
            self._as_written.add(uri)
        if headers is not None:
            values = headers.getRawHeaders(b"accept-encoding")
            if values and values[-1] == b"gzip":
                if len(values) > 1:
                    headers.setRawHeaders(b"accept-encoding", values[:-1])
                else:
                    headers.removeHeader(b"accept-encoding")
        return self._agent.request(method, uri, headers, bodyProducer)


class Upstream:
    """
    The upstream requests of the pipeline, made with treq.

    @param agent: the L{IAgent} beneath treq: the pooled one of
        L{make_agent}, or an in-memory one in tests
        (L{treq.testing.RequestTraversalAgent}).
    @param clock: the reactor treq is given (it would import the global one).
    """

    def __init__(self, agent: Any, clock: Any):
        self._clock = clock
        self._sent = _AsSent(agent)
        self._jar = _NoCookies()
        self._client = HTTPClient(self._sent, cookiejar=self._jar)

    def request(self, method: bytes, url: bytes, headers: Headers, body: Optional[bytes]) -> Deferred:
        """
        Send one request; fires with the response (its body not read yet:
        the caller delivers it to a protocol of its own, with back-pressure).

        @raise BadRequest: (as the Deferred's failure) when the URL would not
            reach the upstream exactly as given.
        """
        self._sent.expected = url
        try:
            verbatim = _Verbatim.of(url)
        except (UnicodeDecodeError, ValueError):
            return _not_as_checked()
        return self._client.request(
            method.decode("ascii"), verbatim, headers=headers,
            data=BytesProducer(body) if body is not None else None,
            allow_redirects=False, unbuffered=True, reactor=self._clock,
            cookies=self._jar)  # a jar, so that treq does not build an empty one for every request


#: The bytes a URL may hold as sent: visible ASCII.
_VISIBLE_ASCII = bytes(range(0x21, 0x7f))


class _Verbatim(EncodedURL):
    """
    A URL treq sends exactly as the pipeline built and checked it.

    treq turns every URL into a URI (C{to_uri().to_text()}: about 20 µs of
    hyperlink per request).  The pipeline's URLs are ASCII already, their
    paths refused unless made of plain path characters, so that step could
    only rewrite what was checked; here it is the identity.
    """

    _verbatim: str
    #: The URLs made lately (a handful of provider routes, mostly): one parse each.
    _made: dict[bytes, "_Verbatim"] = {}

    @classmethod
    def of(cls, url: bytes) -> "_Verbatim":
        made: Any = cls._made.get(url)
        if made is None:
            if url.translate(None, _VISIBLE_ASCII):
                raise ValueError("a URL is visible ASCII only")  # a control byte or space, say in the query
            text = url.decode("ascii")
            made = cls.from_text(text)
            made._verbatim = text
            if len(cls._made) >= 512:
                cls._made.clear()
            cls._made[url] = made
        return made  # type: ignore[no-any-return]

    def to_uri(self, *args: Any, **kwargs: Any) -> "_Verbatim":
        return self

    def to_text(self, *args: Any, **kwargs: Any) -> str:
        return self._verbatim


def _not_as_checked() -> Deferred:
    """The refusal of a URL that would not reach the upstream exactly as the pipeline checked it."""
    return fail(BadRequest("Refused path: it would not reach the provider as it was checked."))


def _origin_form(uri: bytes) -> bytes:
    """The path and query of an absolute URL, as written."""
    start = uri.find(b"/", uri.find(b"://") + 3)
    return uri[start:] if start >= 0 else b"/"


__all__ = ["BytesProducer", "Upstream", "make_agent"]
