# -*- test-case-name: tests.test_relay -*-
"""
The protocols an upstream's answer is delivered to: the relay that streams
it to the client with back-pressure, a stall timeout and cancellation; the
reader of an error answer (read whole, so that a key it repeats can be
masked); and the discard of an answer nobody waits for.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

#: How a relay ended.
COMPLETE = "complete"
#: The upstream's stream ended (cleanly or not) before its terminal event.
TRUNCATED = "incomplete"
UPSTREAM_BROKE = "upstream_broken"
CLIENT_GONE = "client_disconnected"
STALLED = "timeout"


@implementer(IPushProducer)
class Relay(Protocol):
    """
    Receives the upstream's response body and writes it to the client's
    request as it arrives.

    As the client's producer it passes back-pressure on: when the client's
    socket is full, the upstream socket stops being read.  When the client
    goes away, the upstream request is stopped at once.  When the upstream
    sends nothing for C{timeout} seconds (while the client is reading), the
    relay ends: a stream gets C{stall_tail(kind, message)} (the provider's
    error event),
    so the client's SDK sees an error, not a silent truncation.  So does a
    stream that ends, cleanly or not, before C{terminal()} says its terminal
    event went by.

    @param on_data: called with every chunk after it is written (the
        recording tap); must be cheap.
    @param on_done: called once with how the relay ended.
    @param terminal: whether the stream's terminal event was seen (asked at
        the end of a stream); L{None} when nobody can tell.
    """

    def __init__(self, request: Any, clock: Any, timeout: float,
                 on_data: Optional[Callable[[bytes], None]],
                 on_done: Callable[[str, Optional[Failure]], None],
                 stall_tail: Optional[Callable[[str, str], bytes]] = None,
                 terminal: Optional[Callable[[], bool]] = None):
        self.request = request
        self.clock = clock
        self.timeout = timeout
        self.on_data = on_data
        self.on_done = on_done
        self.stall_tail = stall_tail
        self.terminal = terminal
        self.transport: Any = None  # the upstream body's producer (TransportProxyProducer)
        self.outcome: Optional[str] = None
        self.bytes_relayed = 0
        #: When the first body byte arrived (the clock's seconds), if it did.
        self.first_at: Optional[float] = None
        self._last = 0.0
        self._timer: Any = None
        self._paused = False
        self._finished = False

    # -- upstream side (IProtocol) ------------------------------------------------

    def connectionMade(self) -> None:
        self._last = self.clock.seconds()
        self.request.registerProducer(self, True)
        self._timer = self.clock.callLater(self.timeout, self._check_stall)

    def dataReceived(self, data: bytes) -> None:
        # Once an outcome is decided (the client left, the stream stalled and
        # got its error tail), bytes still on their way are not relayed.
        if self._finished or self.outcome is not None:
            return
        self._last = self.clock.seconds()
        if self.first_at is None:
            self.first_at = self._last
        self.bytes_relayed += len(data)
        self.request.write(data)
        if self.on_data is not None:
            self.on_data(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.outcome is None:
            clean = reason is None or reason.check(ResponseDone, PotentialDataLoss) is not None
            whole = self.terminal() if self.terminal is not None else clean
            if whole:
                self.outcome = COMPLETE
            elif clean:
                self.outcome = TRUNCATED
                self._tail("api_error", "The upstream ended the stream before the answer was complete.")
            else:
                self.outcome = UPSTREAM_BROKE
                self._tail("api_error", "The upstream connection broke before the answer was complete.")
        self._finish()
        failure = None if self.outcome == COMPLETE else reason
        self.on_done(self.outcome, failure)

    def _tail(self, kind: str, message: str) -> None:
        """End a stream with the provider's error event, while the client is there to read it."""
        if self.stall_tail is not None and not self._finished and self.request.channel is not None:
            self.request.write(self.stall_tail(kind, message))

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        request = self.request
        if request.channel is None:  # the client is gone already
            return
        request.unregisterProducer()
        if self.outcome == CLIENT_GONE:
            return
        if self.outcome != COMPLETE and self.stall_tail is None:
            # A truncated JSON answer must not look complete: close the
            # connection without the final chunk, so the client sees an error.
            request.loseConnection()
            return
        request.finish()

    def _check_stall(self) -> None:
        self._timer = None
        if self._paused:
            return
        idle = self.clock.seconds() - self._last
        if idle < self.timeout:
            self._timer = self.clock.callLater(self.timeout - idle, self._check_stall)
            return
        self.outcome = STALLED
        self._tail("timeout", "The upstream stopped sending before the answer was complete.")
        self.transport.stopProducing()

    # -- client side (IPushProducer) ----------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self._paused:
            self._paused = False
            self._last = self.clock.seconds()
            if self._timer is None and not self._finished:
                self._timer = self.clock.callLater(self.timeout, self._check_stall)
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.client_gone()

    def delivered(self) -> None:
        """
        Call after C{response.deliverBody(relay)}: deliverBody resumes the
        upstream transport after connecting the relay, which would undo a
        pause the client asked for while the relay was being connected.
        """
        if self._paused and not self._finished:
            self.transport.pauseProducing()

    def client_gone(self) -> None:
        """The client disconnected: stop reading (and paying for) the answer."""
        if self._finished or self.outcome is not None:
            return
        self.outcome = CLIENT_GONE
        self.transport.stopProducing()



class ErrorBody(Protocol):
    """
    Reads an upstream's error answer whole (up to C{limit} bytes; the rest
    is dropped), then hands it to C{on_done}.  The stall timeout holds here
    too: an error body that never ends must not hold the client and an
    upstream connection for ever.
    """

    transport: Any

    def __init__(self, clock: Any, timeout: float, limit: int, on_done: Callable[[bytes], None]):
        self.clock = clock
        self.timeout = timeout
        self.limit = limit
        self.on_done = on_done
        self.chunks: list[bytes] = []
        self.size = 0
        self.timer: Any = None

    def connectionMade(self) -> None:
        self.timer = self.clock.callLater(self.timeout, self.stop)

    def stop(self) -> None:
        """Stop reading (the client left, or the body stalled)."""
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        room = self.limit - self.size
        if room > 0:
            kept = data[:room]
            self.chunks.append(kept)
            self.size += len(kept)

    def connectionLost(self, reason: Any = None) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.on_done(b"".join(self.chunks))


class Discard(Protocol):
    """Takes an answer nobody is waiting for, and stops it."""

    transport: Any

    def connectionMade(self) -> None:
        self.transport.stopProducing()


__all__ = ["COMPLETE", "CLIENT_GONE", "Discard", "ErrorBody", "Relay", "STALLED", "TRUNCATED", "UPSTREAM_BROKE"]
