# -*- test-case-name: tests.test_http1 -*-
"""
A lean, pooled HTTP/1.1 client agent on the C{httptools} parser.

L{PooledAgent} is the L{IAgent} beneath treq when C{[upstream] client} is
C{"httptools"} (the default).  It does what a reverse proxy's upstream
client needs and no more:

  - keep-alive connections, pooled per (scheme, host, port), the most
    recently used first; idle ones closed after a while; a connection
    the server closed while idle is dropped from the pool;
  - the request head and an in-memory body written in one C{write};
    a body of unknown length sent chunked;
  - content-length, chunked and close-delimited answers; C{1xx} interim
    answers skipped; no body for C{HEAD}, C{204} and C{304};
  - the answer's body handed to the protocol given to C{deliverBody},
    with back-pressure (its transport pauses and resumes the socket) and
    cancellation (C{stopProducing} aborts the connection);
  - a request cancelled before its answer aborts its connection;
  - an idempotent request without a body that finds its reused
    connection closed by the server before any answer byte is sent again
    once, on a new connection (the keep-alive race).  Other requests fail:
    the upstream may have acted on them.

TLS (verified with service-identity) comes from the endpoints of the
endpoint factory, as for L{twisted.web.client.Agent}.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Optional

import httptools
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web import client as _client
from twisted.web.client import URI, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IClientRequest, IResponse
from zope.interface import implementer

#: Methods a request may be sent again for, when it had no body.
_IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE"))
#: Methods that announce an empty body (C{Content-Length: 0}) when they have none.
_EXPECT_BODY = frozenset((b"POST", b"PUT", b"PATCH"))


class ResponseNeverReceived(_client.ResponseNeverReceived):
    """
    The connection ended (or failed) before an answer's headers arrived:
    Twisted's exception (C{reasons}), with the one C{reason} and its message.
    """

    def __init__(self, reason: Failure):
        super().__init__([reason])
        self.reason = reason

    def __str__(self) -> str:
        return self.reason.getErrorMessage()


class ResponseFailed(_client.ResponseFailed):
    """The connection ended (or the parser failed) in the middle of an answer's body (as L{ResponseNeverReceived})."""

    def __init__(self, reason: Failure):
        super().__init__([reason])
        self.reason = reason

    def __str__(self) -> str:
        return self.reason.getErrorMessage()


class BadResponse(Exception):
    """The upstream's bytes are not an HTTP/1.1 answer."""


@implementer(IClientRequest)
class _Sent:
    """What C{IResponse.request} describes: the request as sent."""

    def __init__(self, method: bytes, uri: bytes, headers: Headers):
        self.method, self.absoluteURI, self.headers = method, uri, headers


@implementer(IResponse)
class Response:
    """
    One answer.  Body bytes that arrive before C{deliverBody} are kept
    (the socket is paused meanwhile), then handed over in order.
    """

    version = (b"HTTP", 1, 1)
    previousResponse = None

    def __init__(self, connection: "_Connection", code: int, phrase: bytes, headers: Headers,
                 length: Any, request: _Sent):
        self.code, self.phrase, self.headers, self.length, self.request = code, phrase, headers, length, request
        self._connection: Optional[_Connection] = connection
        self._protocol: Any = None
        self._buffer: list[bytes] = []
        self._end: Optional[Failure] = None

    def setPreviousResponse(self, response: Any) -> None:
        self.previousResponse = response

    def deliverBody(self, protocol: Any) -> None:
        if self._protocol is not None:
            raise RuntimeError("the body of this answer was delivered already")
        self._protocol = protocol
        protocol.makeConnection(_BodyTransport(self))
        buffered, self._buffer = self._buffer, []
        for data in buffered:
            protocol.dataReceived(data)
        if self._end is not None:
            self._finish()
        elif self._connection is not None:
            self._connection.body_wanted()

    # -- from the connection -------------------------------------------------------

    def _data(self, data: bytes) -> None:
        if self._protocol is not None:
            self._protocol.dataReceived(data)
        else:
            self._buffer.append(data)

    def _ended(self, reason: Failure) -> None:
        self._connection = None
        self._end = reason
        if self._protocol is not None:
            self._finish()

    def _finish(self) -> None:
        protocol, self._protocol = self._protocol, _Done
        if protocol is not _Done:
            assert self._end is not None
            protocol.connectionLost(self._end)


class _DoneProtocol:
    def dataReceived(self, data: bytes) -> None:
        pass


_Done: Any = _DoneProtocol()


class _BodyTransport:
    """The transport a body protocol gets: the socket's producer controls, for this answer only."""

    def __init__(self, response: Response):
        self._response = response

    def pauseProducing(self) -> None:
        connection = self._response._connection
        if connection is not None:
            connection.pause()

    def resumeProducing(self) -> None:
        connection = self._response._connection
        if connection is not None:
            connection.resume()

    def stopProducing(self) -> None:
        connection = self._response._connection
        if connection is not None:
            connection.abort()

    def loseConnection(self) -> None:
        self.stopProducing()


class _Exchange:
    """One request on its way: what to write, and the Deferred waiting for the answer."""

    def __init__(self, method: bytes, head: bytes, body: Optional[bytes], producer: Any, sent: _Sent):
        self.method, self.head, self.body, self.producer, self.sent = method, head, body, producer, sent
        self.deferred: Deferred = Deferred(self._cancel)
        self.connecting: Optional[Deferred] = None
        # Set (by the connect, or the reuse of a pooled connection) before a cancel can read it:
        self.connection: Optional[_Connection] = None  # pragma: no mutate
        self.retried = False  # pragma: no mutate - None is as false

    def retryable(self) -> bool:
        return self.method in _IDEMPOTENT and self.body is None and self.producer is None and not self.retried

    def _cancel(self, d: Deferred) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
        elif self.connection is not None:
            self.connection.abort()


class _ProducerConsumer:
    """The consumer an L{IBodyProducer} of unknown length writes into: each write one chunk."""

    def __init__(self, transport: Any, chunked: bool):
        self._transport, self._chunked = transport, chunked

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._chunked:
            self._transport.writeSequence([b"%x\r\n" % len(data), data, b"\r\n"])
        else:
            self._transport.write(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._transport.unregisterProducer()


class _Connection(Protocol):
    """
    One upstream connection: sends one request at a time and parses its
    answer with httptools.
    """

    transport: Any  # a TCP or TLS transport: a producer too

    def __init__(self, pool: "PooledAgent", key: tuple):
        self._pool, self.key = pool, key
        # The connection is handed its first request (L{send}) as soon as it is made, and each of these is
        # set again for every request, or by the answer's head, before it is read (and None would do for
        # each False: they are only tested for truth).
        # pragma: no mutate start
        self._exchange: Optional[_Exchange] = None
        self._response: Optional[Response] = None
        self._parser: Any = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._phrase = b""
        self._body_sent = True
        self._complete = False
        self._close_delimited = False
        self._paused = False
        self._lost = False
        self._keep_alive = False
        # pragma: no mutate end
        self.reused = False  # pragma: no mutate - None is as false
        self.idle_timer: Any = None

    # -- requests --------------------------------------------------------------------

    def send(self, exchange: _Exchange) -> None:
        self._exchange, self._response = exchange, None
        exchange.connection = self
        self._parser = httptools.HttpResponseParser(self)
        self._headers, self._phrase = [], b""
        self._complete = False  # pragma: no mutate - None is as false
        transport = self.transport
        if exchange.producer is None:
            transport.write(exchange.head + exchange.body if exchange.body else exchange.head)
            self._body_sent = True
            return
        self._body_sent = False  # pragma: no mutate - None is as false
        transport.write(exchange.head)
        chunked = exchange.producer.length is UNKNOWN_LENGTH
        d = exchange.producer.startProducing(_ProducerConsumer(transport, chunked))
        d.addCallbacks(self._produced, self._produce_failed, callbackArgs=(exchange, chunked),
                       errbackArgs=(exchange,))

    # A lost connection has no exchange: one that is not this connection's is over.

    def _produced(self, _: Any, exchange: _Exchange, chunked: bool) -> None:
        if exchange is not self._exchange:
            return
        if chunked:
            self.transport.write(b"0\r\n\r\n")
        self._body_sent = True
        if self._complete:
            self._release()  # the answer came before the whole body was sent

    def _produce_failed(self, failure: Failure, exchange: _Exchange) -> None:
        if exchange is self._exchange:
            self.abort()

    # -- flow control (from the body protocol) ------------------------------------------

    def pause(self) -> None:
        if not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def resume(self) -> None:
        if self._paused:
            self._paused = False  # pragma: no mutate - None is as false
            self.transport.resumeProducing()

    def body_wanted(self) -> None:
        """A protocol now takes the body: read on."""
        self.resume()

    def abort(self) -> None:
        if not self._lost:
            self.transport.abortConnection()

    # -- httptools callbacks --------------------------------------------------------------
    # They run inside C{feed_data}; the end of an answer is acted on once it
    # returns (L{dataReceived}), so that nothing re-enters this connection
    # while its parser is at work.

    def on_message_begin(self) -> None:
        if self._complete:
            raise _Extra()  # bytes after the answer: nobody asked for them

    def on_status(self, phrase: bytes) -> None:
        self._phrase += phrase

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        code = self._parser.get_status_code()
        exchange = self._exchange
        assert exchange is not None
        if 100 <= code < 200:
            if code == 101:
                raise BadResponse("the upstream switched protocols")
            self._headers, self._phrase = [], b""  # an interim answer: the real one follows
            return
        headers = Headers()
        length: Any = UNKNOWN_LENGTH
        chunked = False  # pragma: no mutate - None is as false
        for name, value in self._headers:
            headers.addRawHeader(name, value)
            lowered = name.lower()
            if lowered == b"content-length":
                length = int(value)
            elif lowered == b"transfer-encoding":
                chunked = True
        if chunked:
            length = UNKNOWN_LENGTH
        if exchange.method == b"HEAD" or code in (204, 304):
            length = 0
        self._close_delimited = length is UNKNOWN_LENGTH and not chunked
        response = self._response = Response(self, code, self._phrase, headers, length, exchange.sent)
        self._headers = []  # trailers of a chunked body come as headers too
        if exchange.method == b"HEAD":
            # httptools would wait for the body a Content-Length announces.
            self._complete, self._keep_alive = True, False
        exchange.deferred.callback(response)

    def on_body(self, data: bytes) -> None:
        response = self._response
        if response is not None and not self._complete:
            response._data(data)

    def on_message_complete(self) -> None:
        if self._response is not None and not self._complete:  # not an interim answer, nor HEAD's
            self._complete = True
            self._keep_alive = self._parser.should_keep_alive()

    def _release(self) -> None:
        # pragma: no mutate start - read again only by a new send (which sets them), or while the answer
        # is complete (which ignores them)
        self._exchange = self._response = None
        # pragma: no mutate end
        self._parser = None
        if self._keep_alive and not self._lost:
            self.resume()
            self._pool._idle(self)
        else:
            self.transport.loseConnection()

    # -- the socket -----------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            # Bytes nobody asked for: this connection is no longer in step.
            self.abort()
            return
        try:
            parser.feed_data(data)
        except Exception as e:
            if not self._complete:
                self._broken(Failure(BadResponse(_parser_message(e))))
                return
            self._keep_alive = False  # pragma: no mutate - the answer is whole; what came after it is not ours
        response = self._response
        if self._complete:
            if self._body_sent:
                self._release()
            assert response is not None
            response._ended(Failure(ResponseDone("Response body fully received")))
        elif response is not None and response._protocol is None:
            self.pause()  # nobody reads this body yet

    def _broken(self, failure: Failure) -> None:
        exchange, response = self._exchange, self._response
        self._exchange = self._response = self._parser = None
        self.abort()
        if response is not None:
            response._ended(Failure(ResponseFailed(failure)))
        elif exchange is not None and not exchange.deferred.called:
            exchange.deferred.errback(ResponseNeverReceived(failure))

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self._lost = True
        self._pool._lost(self)
        exchange, response, complete = self._exchange, self._response, self._complete
        self._exchange = self._response = self._parser = None
        if exchange is None or complete:
            return
        if response is not None:
            if self._close_delimited and reason.check(ConnectionDone):
                response._ended(Failure(PotentialDataLoss()))
            else:
                response._ended(Failure(ResponseFailed(reason)))
            return
        if exchange.deferred.called:
            return
        if self.reused and exchange.retryable():
            exchange.retried = True
            self._pool._send(exchange)
            return
        exchange.deferred.errback(ResponseNeverReceived(reason))


class _Extra(Exception):
    """Raised from a parser callback to stop parsing bytes that follow a whole answer."""


def _parser_message(e: Exception) -> str:
    # An error raised in one of our callbacks reaches us wrapped (HttpParserCallbackError): name ours.
    cause = e.__context__ if isinstance(e.__context__, BadResponse) else e
    return f"malformed answer from the upstream ({type(cause).__name__}: {cause})"


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, pool: "PooledAgent", key: tuple):
        self._pool, self._key = pool, key

    def buildProtocol(self, addr: Any) -> _Connection:
        return _Connection(self._pool, self._key)


@implementer(IAgent)
class PooledAgent:
    """
    An L{IAgent} over pooled keep-alive connections, parsing answers with httptools.

    @param reactor: for the idle timers.
    @param endpoints: an L{IAgentEndpointFactory}, e.g.
        L{bridgeproxy.proxy.upstream.CachingEndpointFactory} (TLS included).
    @param max_idle: idle connections kept per (scheme, host, port).
    @param idle_timeout: seconds an idle connection is kept.
    """

    def __init__(self, reactor: Any, endpoints: Any, max_idle: int, idle_timeout: float):
        self._reactor, self._endpoints = reactor, endpoints
        self.max_idle, self.idle_timeout = max_idle, idle_timeout
        self._pools: dict[tuple, deque[_Connection]] = {}
        #: URL -> (pool key, endpoint, request target, Host value): the upstream URLs are a handful of routes.
        self._targets: dict[bytes, tuple[tuple, Any, bytes, bytes]] = {}

    def request(self, method: bytes, uri: bytes, headers: Optional[Headers] = None,
                bodyProducer: Any = None) -> Deferred:
        try:
            target = self._targets.get(uri)
            if target is None:
                target = self._target(uri)
            key, endpoint, origin, host = target
            head, body, producer, sent = _head(method, origin, host, uri, headers, bodyProducer)
        except Exception:
            return fail()
        exchange = _Exchange(method, head, body, producer, sent)
        exchange.key = key  # type: ignore[attr-defined]
        exchange.endpoint = endpoint  # type: ignore[attr-defined]
        self._send(exchange)
        return exchange.deferred

    def _target(self, uri: bytes) -> tuple[tuple, Any, bytes, bytes]:
        parsed = URI.fromBytes(uri)
        endpoint = self._endpoints.endpointForURI(parsed)
        origin = parsed.originForm
        # (URI parsing drops CR and LF already, as urlsplit does: their check is a second line of defence.)
        if any(c in origin for c in (b" ", b"\r", b"\n")):  # pragma: no mutate
            raise ValueError("invalid request target")
        default = 443 if parsed.scheme == b"https" else 80
        host = b"[" + parsed.host + b"]" if b":" in parsed.host else parsed.host
        if parsed.port != default:
            host = b"%s:%d" % (host, parsed.port)
        target = ((parsed.scheme, parsed.host, parsed.port), endpoint, origin, host)
        if len(self._targets) >= 512:
            self._targets.clear()
        self._targets[uri] = target
        return target

    def _send(self, exchange: _Exchange) -> None:
        key = exchange.key  # type: ignore[attr-defined]
        idle = self._pools.get(key)
        while idle:
            connection = idle.pop()
            _busy(connection)
            if not connection._lost:
                connection.reused = True
                connection.send(exchange)
                return
        factory = _ConnectionFactory(self, key)
        exchange.connecting = d = exchange.endpoint.connect(factory)  # type: ignore[attr-defined]
        d.addCallbacks(self._connected, self._connect_failed, callbackArgs=(exchange,), errbackArgs=(exchange,))

    def _connected(self, connection: _Connection, exchange: _Exchange) -> None:
        exchange.connecting = None
        if exchange.deferred.called:  # cancelled meanwhile
            connection.transport.loseConnection()
            return
        connection.send(exchange)

    def _connect_failed(self, failure: Failure, exchange: _Exchange) -> None:
        if not exchange.deferred.called:  # a cancelled connect fails the request with its CancelledError
            exchange.deferred.errback(failure)

    # -- the pool -------------------------------------------------------------------------

    def _idle(self, connection: _Connection) -> None:
        idle = self._pools.setdefault(connection.key, deque())
        if len(idle) >= self.max_idle:
            # The pool is full: the longest idle goes (the server is likeliest to close it soon).
            oldest = idle.popleft()
            if oldest.idle_timer is not None:
                oldest.idle_timer.cancel()
                oldest.idle_timer = None
            oldest.transport.loseConnection()
        idle.append(connection)
        connection.idle_timer = self._reactor.callLater(self.idle_timeout, self._expire, connection)

    def _expire(self, connection: _Connection) -> None:
        connection.idle_timer = None
        connection.transport.loseConnection()

    def _lost(self, connection: _Connection) -> None:
        if connection.idle_timer is not None:  # it was idle
            _busy(connection)
            idle = self._pools.get(connection.key)
            if idle is not None:
                try:
                    idle.remove(connection)
                except ValueError:
                    pass

    def closeCachedConnections(self) -> Deferred:
        """Close every idle connection (as L{HTTPConnectionPool} does at shutdown)."""
        for idle in self._pools.values():
            while idle:
                connection = idle.pop()
                _busy(connection)
                connection.transport.loseConnection()
        return succeed(None)


def _busy(connection: _Connection) -> None:
    """C{connection} leaves the pool: its idle timer goes."""
    if connection.idle_timer is not None:
        connection.idle_timer.cancel()
        connection.idle_timer = None


def _head(method: bytes, target: bytes, host: bytes, raw: bytes, headers: Optional[Headers],
          producer: Any) -> tuple[bytes, Optional[bytes], Any, _Sent]:
    """The request line and headers, as one string; the body when it is in memory."""
    if headers is None:
        headers = Headers()
    if b" " in method or b"\r" in method or b"\n" in method or not method:
        raise ValueError("invalid method")
    lines = [method, b" ", target, b" HTTP/1.1\r\n"]
    if not headers.hasHeader(b"host"):  # pragma: no mutate - header names are case-insensitive
        lines += [b"Host: ", host, b"\r\n"]
    for name, values in headers.getAllRawHeaders():
        for value in values:
            lines += [name, b": ", value, b"\r\n"]
    body: Optional[bytes] = None
    if producer is not None:
        in_memory = getattr(producer, "body", None)
        if isinstance(in_memory, bytes):
            body, producer = in_memory, None
            lines += [b"Content-Length: %d\r\n" % len(body)]
        elif producer.length is UNKNOWN_LENGTH:
            lines += [b"Transfer-Encoding: chunked\r\n"]
        else:
            lines += [b"Content-Length: %d\r\n" % producer.length]
    elif method in _EXPECT_BODY:
        lines += [b"Content-Length: 0\r\n"]
    lines.append(b"\r\n")
    return b"".join(lines), body, producer, _Sent(method, raw, headers)


__all__ = ["BadResponse", "PooledAgent", "Response", "ResponseFailed", "ResponseNeverReceived"]
