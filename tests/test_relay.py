"""
The relay and the error-body reader on a fake clock: what reaches the client,
back-pressure passed to the upstream, the stall timer (and its pause while
the client is not reading), cancellation, truncation, and the error-body cap.
"""

from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed

from bridgeproxy.proxy.relay import (
    CLIENT_GONE, COMPLETE, STALLED, TRUNCATED, UPSTREAM_BROKE, Discard, ErrorBody, Relay,
)

TIMEOUT = 10.0


class Client:
    """The client's side of a request, as the relay sees it."""

    def __init__(self):
        self.written = []
        self.producer = None
        self.finished = False
        self.lost = False
        self.channel = object()

    def write(self, data):
        self.written.append(data)

    def registerProducer(self, producer, streaming):
        assert streaming
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def finish(self):
        self.finished = True

    def loseConnection(self):
        self.lost = True

    @property
    def body(self):
        return b"".join(self.written)


class UpstreamTransport:
    """The upstream body's producer: records pause, resume and stop."""

    def __init__(self):
        self.paused = False
        self.stopped = False
        self.calls = []

    def pauseProducing(self):
        self.paused = True
        self.calls.append("pause")

    def resumeProducing(self):
        self.paused = False
        self.calls.append("resume")

    def stopProducing(self):
        self.stopped = True
        self.calls.append("stop")


def relay(stream=True, terminal=None):
    clock, client, upstream = Clock(), Client(), UpstreamTransport()
    ended, fed = [], []
    tail = (lambda kind, message: f"TAIL {kind}: {message}".encode()) if stream else None
    r = Relay(client, clock, TIMEOUT, fed.append, lambda outcome, failure: ended.append((outcome, failure)),
              tail, terminal)
    r.makeConnection(upstream)
    return r, clock, client, upstream, ended, fed


def done():
    return Failure(ResponseDone())


def broken():
    return Failure(ResponseFailed([Failure(ConnectionError("reset"))]))


def test_bytes_reach_the_client_as_they_arrive_and_feed_the_tap():
    """Each chunk is written to the client when it arrives and handed to the recording tap after it."""
    r, clock, client, _, ended, fed = relay()
    r.dataReceived(b"event: a\n\n")
    assert client.written == [b"event: a\n\n"] and fed == [b"event: a\n\n"]
    clock.advance(3)
    r.dataReceived(b"event: b\n\n")
    assert client.body == b"event: a\n\nevent: b\n\n"
    assert r.first_at == 0 and r.bytes_relayed == 20
    r.connectionLost(done())
    assert ended == [(COMPLETE, None)] and client.finished and client.producer is None


def test_client_back_pressure_pauses_and_resumes_the_upstream():
    """The relay is the client's producer: a full client pauses the upstream read, a draining one resumes it."""
    r, _, client, upstream, _, _ = relay()
    assert client.producer is r
    r.pauseProducing()
    assert upstream.paused
    r.resumeProducing()
    assert not upstream.paused and upstream.calls == ["pause", "resume"]


def test_a_pause_before_delivery_is_kept():
    """A pause asked while the body was being connected survives deliverBody's own resume (delivered())."""
    r, _, _, upstream, _, _ = relay()
    r.pauseProducing()
    upstream.resumeProducing()  # what deliverBody does after connecting the protocol
    r.delivered()
    assert upstream.paused
    r2, _, _, upstream2, _, _ = relay()
    r2.delivered()
    assert not upstream2.paused and upstream2.calls == []


def test_stall_ends_a_stream_with_the_error_tail_and_stops_the_upstream():
    """No bytes for the timeout while the client reads: the stream gets the provider's error event, the upstream stops."""
    r, clock, client, upstream, ended, _ = relay()
    r.dataReceived(b"event: a\n\n")
    clock.advance(TIMEOUT - 0.1)
    assert not upstream.stopped
    r.dataReceived(b"event: b\n\n")  # bytes restart the count
    clock.advance(TIMEOUT - 0.1)
    assert not upstream.stopped
    clock.advance(0.2)
    assert upstream.stopped
    assert client.body.endswith(b"TAIL timeout: The upstream stopped sending before the answer was complete.")
    r.connectionLost(broken())
    assert ended[0][0] == STALLED and client.finished


def test_no_stall_while_the_client_is_not_reading():
    """While the client has paused the relay, silence from the upstream is not a stall; after resuming it counts again."""
    r, clock, client, upstream, _, _ = relay()
    r.pauseProducing()
    clock.advance(TIMEOUT * 5)
    assert not upstream.stopped
    r.resumeProducing()
    clock.advance(TIMEOUT - 0.1)
    assert not upstream.stopped
    clock.advance(0.2)
    assert upstream.stopped


def test_client_gone_stops_the_upstream_and_writes_nothing_more():
    """A client that disconnects stops the upstream at once; nothing is written or finished after."""
    r, clock, client, upstream, ended, _ = relay()
    r.dataReceived(b"a")
    r.stopProducing()
    assert upstream.stopped
    r.dataReceived(b"late")
    r.connectionLost(broken())
    assert client.body == b"a" and not client.finished
    assert ended[0][0] == CLIENT_GONE
    clock.advance(TIMEOUT * 2)
    assert upstream.calls == ["stop"]


def test_truncated_and_broken_streams_get_the_tail_unless_complete():
    """A stream that ends before its terminal event gets the tail (clean end: TRUNCATED, broken: UPSTREAM_BROKE);
    one whose terminal event went by is complete whatever the connection did."""
    for reason, outcome in ((done(), TRUNCATED), (broken(), UPSTREAM_BROKE)):
        r, _, client, _, ended, _ = relay(terminal=lambda: False)
        r.dataReceived(b"data: x\n\n")
        r.connectionLost(reason)
        assert ended[0][0] == outcome
        assert client.body.startswith(b"data: x\n\nTAIL api_error: The upstream")
        assert client.finished and not client.lost
    r, _, client, _, ended, _ = relay(terminal=lambda: True)
    r.connectionLost(broken())
    assert ended == [(COMPLETE, None)] and client.body == b""


def test_a_broken_blocking_answer_is_not_finished():
    """A non-stream answer cut short closes the client's connection without the last chunk: never a complete-looking body."""
    r, _, client, _, ended, _ = relay(stream=False)
    r.dataReceived(b'{"partial": ')
    r.connectionLost(broken())
    assert ended[0][0] == UPSTREAM_BROKE
    assert client.lost and not client.finished


def test_error_body_is_capped_and_timed():
    """An upstream error body is read up to its cap (the rest dropped) and cut at the stall timeout."""
    clock, got = Clock(), []
    body = ErrorBody(clock, TIMEOUT, 10, got.append)
    transport = UpstreamTransport()
    body.makeConnection(transport)
    body.dataReceived(b"0123456")
    body.dataReceived(b"789abc")
    body.dataReceived(b"def")
    clock.advance(TIMEOUT)
    assert transport.stopped
    body.connectionLost(broken())
    assert got == [b"0123456789"]
    assert not clock.getDelayedCalls()


def test_error_body_that_ends_cancels_its_timer():
    """An error body that ends in time hands over the whole body and leaves no timer behind."""
    clock, got = Clock(), []
    body = ErrorBody(clock, TIMEOUT, 1000, got.append)
    body.makeConnection(UpstreamTransport())
    body.dataReceived(b'{"error": {}}')
    body.connectionLost(done())
    assert got == [b'{"error": {}}'] and not clock.getDelayedCalls()


def test_discard_stops_the_answer():
    """An answer nobody waits for is stopped as soon as it is delivered."""
    transport = UpstreamTransport()
    Discard().makeConnection(transport)
    assert transport.stopped


def test_nothing_follows_the_stall_tail():
    """Bytes the upstream had already sent when the stall tail went out are not written after it."""
    r, clock, client, upstream, _, _ = relay()
    r.dataReceived(b"event: a\n\n")
    clock.advance(TIMEOUT)
    r.dataReceived(b"event: late\n\n")
    assert client.body.endswith(b"complete.") and b"late" not in client.body


def test_an_answer_without_a_length_that_ends_with_its_connection_is_complete():
    """An HTTP/1.0-style answer (no length: it ends when the connection does, PotentialDataLoss) is whole."""
    from twisted.web.http import PotentialDataLoss
    r, _, client, _, ended, _ = relay(stream=False)
    r.dataReceived(b'{"ok": true}')
    r.connectionLost(Failure(PotentialDataLoss()))
    assert ended == [(COMPLETE, None)] and client.finished and not client.lost


def test_a_broken_upstream_hands_its_failure_on():
    """How the upstream broke reaches on_done (it is the recorded error); a complete relay hands none."""
    r, _, _, _, ended, _ = relay()
    reason = broken()
    r.connectionLost(reason)
    assert ended == [(UPSTREAM_BROKE, reason)]


def test_a_finished_relay_starts_no_timer_and_stops_nothing_again():
    """After the relay ended, the client's resume starts no stall timer and its disconnect stops nothing."""
    r, clock, client, upstream, ended, _ = relay()
    r.pauseProducing()
    r.connectionLost(done())
    calls = list(upstream.calls)
    r.resumeProducing()
    r.stopProducing()
    assert not [c for c in clock.getDelayedCalls() if c.active()]
    assert upstream.calls == calls + ["resume"] and "stop" not in upstream.calls
    assert len(ended) == 1


def test_error_body_keeps_exactly_up_to_its_cap():
    """With one byte of room left, one more byte is kept; with none, nothing."""
    body = ErrorBody(Clock(), TIMEOUT, 10, lambda data: None)
    body.makeConnection(UpstreamTransport())
    body.dataReceived(b"012345678")
    body.dataReceived(b"9abc")
    body.dataReceived(b"d")
    assert b"".join(body.chunks) == b"0123456789" and body.size == 10


def test_silence_from_the_start_is_a_stall():
    """An upstream that sends no body byte at all is a stall after the timeout, counted from the connection."""
    r, clock, client, upstream, _, _ = relay()
    clock.advance(TIMEOUT - 0.1)
    assert not upstream.stopped
    clock.advance(0.1)
    assert upstream.stopped and client.body.startswith(b"TAIL timeout: ")


def test_a_client_that_leaves_after_the_stall_changes_nothing():
    """Once a stall has ended the relay, the client's leaving neither changes how it ended nor stops the
    upstream again."""
    r, clock, client, upstream, ended, _ = relay()
    clock.advance(TIMEOUT)
    r.stopProducing()
    r.connectionLost(broken())
    assert upstream.calls == ["stop"] and ended[0][0] == STALLED
