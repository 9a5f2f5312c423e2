# -*- test-case-name: tests.test_aiproxy_tunnel,tests.test_aiproxy_units,tests.test_aiproxy_e2e -*-
"""
A tunnel that is not decrypted: bytes passed through unchanged both ways.

Each side's transport is the other's producer, so a slow reader on one side
slows the reads on the other (memory stays flat).  A side that finishes
sending (a half-close) is passed on as a half-close; the tunnel closes when
both have, or at once when either connection is lost.

The target side may first go through an HTTP proxy (C{upstream_proxy}):
L{Outbound} then opens with a C{CONNECT} of its own.
"""

from __future__ import annotations

import base64
from typing import Any, Optional
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

#: The longest response head an upstream proxy may send.
_MAX_PROXY_HEAD = 16 * 1024


class Splice:
    """
    Joins two connected transports: C{ends[0]} the client's, C{ends[1]}
    the target's.  The protocols on each call L{received}, L{read_ended},
    L{write_ended} and L{lost} with their side's index.
    """

    def __init__(self, client: Any, target: Any):
        self.transports = (client, target)
        self._read_done = [False, False]
        self._write_done = [False, False]
        self.closed = False
        # Each transport produces what the other writes: a full write
        # buffer on one side pauses the reads on the other.
        client.registerProducer(target, True)
        target.registerProducer(client, True)

    def received(self, side: int, data: bytes) -> None:
        """Bytes read on C{side}: written to the other."""
        self.transports[1 - side].write(data)

    def read_ended(self, side: int) -> None:
        """C{side} will send no more: half-close the other's writing, once it has written what it holds."""
        self._read_done[side] = True
        other = self.transports[1 - side]
        # It produced for the other's writes; it has nothing more to produce.
        other.unregisterProducer()
        if getattr(type(other), "loseWriteConnection", None) is None:
            # A TLS listener's connection cannot half-close (its TLS would end
            # without close_notify): it ends, once it has written what it holds.
            self.lost(side)
            return
        other.loseWriteConnection()
        self._close_when_done()

    def write_ended(self, side: int) -> None:
        """C{side}'s writing is closed (our half-close of it went out)."""
        self._write_done[side] = True
        self._close_when_done()

    def _close_when_done(self) -> None:
        for side in (0, 1):
            if self._read_done[side] and self._write_done[side]:
                self.transports[side].loseConnection()

    def lost(self, side: int) -> None:
        """C{side}'s connection is gone: the other closes once it has written what it holds."""
        if self.closed:
            return
        self.closed = True
        other = self.transports[1 - side]
        for transport in self.transports:
            transport.unregisterProducer()
        other.loseConnection()


@implementer(IHalfCloseableProtocol)
class Outbound(Protocol):
    """
    The target's side of a tunnel.

    @ivar ready: fires with this protocol once the target (or the
        upstream proxy's tunnel to it) is ready for the client's bytes;
        fails with L{UpstreamProxyRefused} when the upstream proxy says no.
    """

    splice: Optional[Splice] = None
    transport: Any

    def __init__(self, via_proxy: Optional[bytes] = None):
        #: The CONNECT request to send an upstream proxy first, if any.
        self._proxy_request = via_proxy
        self._head = b""
        # Cancelled (the client left, or took too long): the connection goes too.
        # (Only a connected Outbound's ready is waited on, so it has a transport.)
        self.ready: Deferred = Deferred(lambda d: self.transport.abortConnection())
        #: Bytes the target sent before the tunnel was spliced (after an upstream proxy's answer).
        self.early = b""

    def connectionMade(self) -> None:
        if self._proxy_request is None:
            self.ready.callback(self)
        else:
            self.transport.write(self._proxy_request)

    def dataReceived(self, data: bytes) -> None:
        if self.splice is not None:
            self.splice.received(1, data)
            return
        if self._proxy_request is None or self.ready.called:
            self.early += data
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > _MAX_PROXY_HEAD:
                self._refused(b"an over-long answer")
            return
        status_line = self._head.split(b"\r\n", 1)[0]
        self.early = self._head[end + 4:]
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].startswith(b"2"):
            self._refused(parts[1] if len(parts) > 1 else b"?")
            return
        self.ready.callback(self)

    def _refused(self, status: bytes) -> None:
        self.transport.loseConnection()
        if not self.ready.called:
            self.ready.errback(UpstreamProxyRefused(status.decode("ascii", "replace")[:20]))

    def readConnectionLost(self) -> None:
        if self.splice is not None:
            self.splice.read_ended(1)
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        if self.splice is not None:
            self.splice.write_ended(1)

    def connectionLost(self, reason: Any = None) -> None:
        if self.splice is not None:
            self.splice.lost(1)
        elif not self.ready.called:
            self.ready.errback(reason if reason is not None else Failure(ConnectionDone()))


class UpstreamProxyRefused(Exception):
    """The upstream proxy did not open the tunnel (its status in the message)."""


def proxy_connect_request(proxy_url: str, address: str, port: int) -> bytes:
    """
    The C{CONNECT} an upstream proxy gets for a tunnel to C{address}
    (a checked IP address, never the name: the proxy must not resolve it
    again), with its credentials from C{proxy_url} when it has any.
    """
    authority = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    url = urlsplit(proxy_url)
    if url.username is not None:
        credentials = f"{unquote(url.username)}:{unquote(url.password or '')}".encode("utf-8")
        lines.append("Proxy-Authorization: Basic " + base64.b64encode(credentials).decode("ascii"))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def proxy_address(proxy_url: str) -> tuple[str, int]:
    """The C{(host, port)} of an C{http://host:port} upstream proxy."""
    url = urlsplit(proxy_url)
    assert url.hostname is not None and url.port is not None  # checked by the configuration
    return url.hostname, url.port


__all__ = ["Outbound", "Splice", "UpstreamProxyRefused", "proxy_address", "proxy_connect_request"]
