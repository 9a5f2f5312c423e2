"""
The bridge's own pooled HTTP/1.1 agent (bridgeproxy.proxy.http1), in memory:
each upstream connection is a StringTransport, each answer bytes fed to it.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from bridgeproxy.proxy.http1 import BadResponse, PooledAgent, ResponseFailed, ResponseNeverReceived
from bridgeproxy.proxy.upstream import BytesProducer

pytestmark = pytest.mark.timeout(10)


class Transport(StringTransport):
    """A StringTransport that also keeps each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))


class Endpoints:
    """An endpoint factory whose connections are StringTransports; connects wait until told."""

    def __init__(self) -> None:
        self.uris: list[Any] = []
        self.pending: list[tuple[Deferred, Any]] = []
        self.connections: list[tuple[Any, StringTransport]] = []
        self.immediate = True

    def endpointForURI(self, uri: Any) -> Any:
        self.uris.append(uri)
        return self

    def connect(self, factory: Any) -> Deferred:
        d: Deferred = Deferred(lambda d: self.pending.remove((d, factory)))
        self.pending.append((d, factory))
        if self.immediate:
            self.finish_connect()
        return d

    def finish_connect(self) -> Any:
        d, factory = self.pending.pop(0)
        protocol = factory.buildProtocol(None)
        transport = Transport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        d.callback(protocol)
        return protocol

    def last(self) -> tuple[Any, Transport]:
        return self.connections[-1]


class Body(Protocol):
    """Collects a body; can pause its transport."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.ended: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.ended = reason


def make() -> tuple[PooledAgent, Endpoints, Clock]:
    clock, endpoints = Clock(), Endpoints()
    return PooledAgent(clock, endpoints, max_idle=2, idle_timeout=30.0), endpoints, clock


def answer(d: Deferred) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the request's Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def failure_of(d: Deferred) -> Failure:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results and isinstance(results[0], Failure), results
    return results[0]


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"


def test_request_head_and_body_are_written_in_one_write():
    agent, endpoints, _ = make()
    headers = Headers({b"Authorization": [b"Bearer sk-up"], b"X-Two": [b"a", b"b"]})
    agent.request(b"POST", b"http://upstream.test:8080/v1/chat?x=1", headers, BytesProducer(b'{"a":1}'))
    _, transport = endpoints.last()
    head, _, body = transport.value().partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat?x=1 HTTP/1.1"
    assert set(lines[1:]) == {b"Host: upstream.test:8080", b"Authorization: Bearer sk-up", b"X-Two: a",
                              b"X-Two: b", b"Content-Length: 7"}
    assert body == b'{"a":1}'


def test_host_header_on_default_ports_and_ipv6():
    agent, endpoints, _ = make()
    agent.request(b"GET", b"https://api.example.com/v1/models")
    assert b"\r\nHost: api.example.com\r\n" in endpoints.last()[1].value()
    agent.request(b"GET", b"http://[::1]:9000/x")
    assert b"\r\nHost: [::1]:9000\r\n" in endpoints.last()[1].value()
    agent.request(b"GET", b"http://h.test/x", Headers({b"Host": [b"given.test"]}))
    value = endpoints.last()[1].value()
    assert b"\r\nHost: given.test\r\n" in value and value.count(b"Host:") == 1


def test_post_without_body_says_length_zero_and_get_says_nothing():
    agent, endpoints, _ = make()
    agent.request(b"POST", b"http://h.test/x")
    assert b"\r\nContent-Length: 0\r\n" in endpoints.last()[1].value()
    agent.request(b"GET", b"http://h.test/y")
    assert b"Content-Length" not in endpoints.last()[1].value()


def test_a_body_of_unknown_length_is_sent_chunked():
    class Streaming:
        length = UNKNOWN_LENGTH

        def startProducing(self, consumer: Any) -> Deferred:
            consumer.write(b"abc")
            consumer.write(b"")
            consumer.write(b"0123456789abcdef!")
            return self.done

        def stopProducing(self) -> None:
            pass

    producer = Streaming()
    producer.done = Deferred()
    agent, endpoints, _ = make()
    d = agent.request(b"PUT", b"http://h.test/up", None, producer)
    protocol, transport = endpoints.last()
    assert b"\r\nTransfer-Encoding: chunked\r\n" in transport.value()
    assert transport.value().endswith(b"\r\n\r\n3\r\nabc\r\n11\r\n0123456789abcdef!\r\n")
    protocol.dataReceived(OK)
    response = answer(d)
    assert response.code == 200
    # The answer came before the end of the body: the connection waits for the body to end.
    assert not agent._pools.get(("http", b"h.test", 80))
    producer.done.callback(None)
    assert transport.value().endswith(b"0\r\n\r\n")
    d2 = agent.request(b"GET", b"http://h.test/again")
    assert len(endpoints.connections) == 1
    assert transport.value().endswith(b"GET /again HTTP/1.1\r\nHost: h.test\r\n\r\n")
    assert not d2.called


def test_content_length_answer_is_delivered_and_the_connection_reused():
    agent, endpoints, _ = make()
    d = agent.request(b"GET", b"http://h.test/a")
    protocol, transport = endpoints.last()
    protocol.dataReceived(OK[:50])
    protocol.dataReceived(OK[50:])
    response = answer(d)
    assert (response.code, response.phrase, response.length) == (200, b"OK", 5)
    assert response.headers.getRawHeaders(b"content-type") == [b"text/plain"]
    body = Body()
    response.deliverBody(body)
    assert b"".join(body.data) == b"hello"
    assert body.ended.check(ResponseDone)
    transport.clear()
    d2 = agent.request(b"GET", b"http://h.test/b")
    assert len(endpoints.connections) == 1, "a second connection was opened"
    assert transport.value().startswith(b"GET /b HTTP/1.1\r\n")
    protocol.dataReceived(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert answer(d2).code == 404


def test_chunked_answer_arrives_piece_by_piece():
    agent, endpoints, _ = make()
    d = agent.request(b"GET", b"http://h.test/stream")
    protocol, _ = endpoints.last()
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    response = answer(d)
    assert response.length is UNKNOWN_LENGTH
    body = Body()
    response.deliverBody(body)
    protocol.dataReceived(b"5\r\nevent\r\n")
    assert body.data == [b"event"] and body.ended is None
    protocol.dataReceived(b"3\r\ntwo\r\n0\r\n\r\n")
    assert body.data == [b"event", b"two"]
    assert body.ended.check(ResponseDone)


def test_close_delimited_answer_ends_with_potential_data_loss_and_is_not_reused():
    agent, endpoints, _ = make()
    d = agent.request(b"GET", b"http://h.test/old")
    protocol, _ = endpoints.last()
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nall of it")
    body = Body()
    answer(d).deliverBody(body)
    protocol.connectionLost(Failure(ConnectionDone()))
    assert b"".join(body.data) == b"all of it"
    assert body.ended.check(PotentialDataLoss)
    agent.request(b"GET", b"http://h.test/next")
    assert len(endpoints.connections) == 2


def test_connection_close_answer_closes_the_connection():
    agent, endpoints, _ = make()
    d = agent.request(b"GET", b"http://h.test/a")
    protocol, transport = endpoints.last()
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
    assert answer(d).code == 200
    assert transport.disconnecting
    agent.request(b"GET", b"http://h.test/b")
    assert len(endpoints.connections) == 2


def test_cut_body_fails_the_body_protocol():
    agent, endpoints, _ = make()
    d = agent.request(b"GET", b"http://h.test/a")
    protocol, _ = endpoints.last()
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
    body = Body()
    answer(d).deliverBody(body)
    protocol.connectionLost(Failure(ConnectionLost()))
    assert body.data == [b"half"]
    assert body.ended.check(ResponseFailed)


def test_head_204_and_304_have_no_body():
    agent, endpoints, _ = make()
    d = agent.request(b"HEAD", b"http://h.test/a")
    protocol, transport = endpoints.last()
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    response = answer(d)
    assert response.length == 0
    body = Body()
    response.deliverBody(body)
    assert body.data == [] and body.ended.check(ResponseDone)
    assert transport.disconnecting  # httptools cannot tell where a HEAD answer ends on a kept connection
    for code in (204, 304):
        d = agent.request(b"GET", b"http://h.test/%d" % code)
        protocol, transport = endpoints.last()
        protocol.dataReceived(b"HTTP/1.1 %d X\r\n\r\n" % code)
        response = answer(d)
        assert (response.code, response.length) == (code, 0)
        assert not transport.disconnecting


def test_interim_answers_are_skipped():
    agent, endpoints, _ = make()
    d = agent.request(b"POST", b"http://h.test/a", None, BytesProducer(b"x"))
    protocol, _ = endpoints.last()
    protocol.dataReceived(b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n")
    assert not d.called
    protocol.dataReceived(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    response = answer(d)
    assert response.code == 201 and response.phrase == b"Created"
    assert not response.headers.hasHeader(b"x-interim")


def test_a_body_nobody_reads_yet_pauses_the_socket_until_delivered():
    agent, endpoints, _ = make()
    d = agent.request(b"GET", b"http://h.test/a")
    protocol, transport = endpoints.last()
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
    response = answer(d)
    assert transport.producerState == "paused"
    body = Body()
    response.deliverBody(body)
    assert transport.producerState == "producing"
    protocol.dataReceived(b"def")
    assert b"".join(body.data) == b"abcdef" and body.ended.check(ResponseDone)


def test_the_body_protocol_pauses_and_resumes_the_socket():
    agent, endpoints, _ = make()
    d = agent.request(b"GET", b"http://h.test/a")
    protocol, transport = endpoints.last()
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    body = Body()
    answer(d).deliverBody(body)
    body.transport.pauseProducing()
    assert transport.producerState == "paused"
    body.transport.resumeProducing()
    assert transport.producerState == "producing"
    body.transport.pauseProducing()
    protocol.dataReceived(b"0\r\n\r\n")
    # The answer is whole: the connection goes back to the pool reading again.
    assert transport.producerState == "producing"
    assert body.ended.check(ResponseDone)


def test_stop_producing_aborts_the_connection_and_fails_the_body():
    agent, endpoints, _ = make()
    d = agent.request(b"GET", b"http://h.test/a")
    protocol, transport = endpoints.last()
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    body = Body()
    answer(d).deliverBody(body)
    body.transport.stopProducing()
    assert transport.disconnecting
    protocol.connectionLost(Failure(ConnectionLost()))
    assert body.ended.check(ResponseFailed)
    agent.request(b"GET", b"http://h.test/b")
    assert len(endpoints.connections) == 2


def test_cancel_before_the_answer_aborts_the_connection():
    agent, endpoints, _ = make()
    d = agent.request(b"POST", b"http://h.test/a", None, BytesProducer(b"{}"))
    protocol, transport = endpoints.last()
    d.cancel()
    assert failure_of(d).check(CancelledError)
    assert transport.disconnecting
    protocol.connectionLost(Failure(ConnectionLost()))  # nothing more happens
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\n")


def test_cancel_while_connecting_cancels_the_connect():
    agent, endpoints, _ = make()
    endpoints.immediate = False
    d = agent.request(b"GET", b"http://h.test/a")
    assert len(endpoints.pending) == 1
    d.cancel()
    assert failure_of(d).check(CancelledError)
    assert endpoints.pending == []


def test_connect_failure_fails_the_request():
    agent, endpoints, _ = make()
    endpoints.immediate = False
    d = agent.request(b"GET", b"http://h.test/a")
    pending, _ = endpoints.pending.pop()
    pending.errback(ConnectionRefusedError("refused"))
    assert failure_of(d).check(ConnectionRefusedError)


def idle_connection(agent: PooledAgent, endpoints: Endpoints) -> tuple[Any, Transport]:
    d = agent.request(b"GET", b"http://h.test/first")
    protocol, transport = endpoints.last()
    protocol.dataReceived(OK)
    answer(d).deliverBody(Body())
    transport.clear()
    return protocol, transport


def test_a_reused_connection_closed_by_the_server_retries_an_idempotent_request_once():
    agent, endpoints, _ = make()
    protocol, transport = idle_connection(agent, endpoints)
    d = agent.request(b"GET", b"http://h.test/again")
    assert transport.value().startswith(b"GET /again ")
    protocol.connectionLost(Failure(ConnectionDone()))  # the keep-alive race
    assert len(endpoints.connections) == 2
    new_protocol, new_transport = endpoints.last()
    assert new_transport.value().startswith(b"GET /again ")
    new_protocol.connectionLost(Failure(ConnectionDone()))  # a fresh connection failing is final
    assert failure_of(d).check(ResponseNeverReceived)


def test_a_reused_connection_closed_by_the_server_fails_a_post():
    agent, endpoints, _ = make()
    protocol, _ = idle_connection(agent, endpoints)
    d = agent.request(b"POST", b"http://h.test/chat", None, BytesProducer(b"{}"))
    protocol.connectionLost(Failure(ConnectionDone()))
    assert failure_of(d).check(ResponseNeverReceived)
    assert len(endpoints.connections) == 1  # not sent again: the upstream may have acted on it


def test_idle_connections_expire_and_ones_the_server_closed_leave_the_pool():
    agent, endpoints, clock = make()
    protocol, transport = idle_connection(agent, endpoints)
    clock.advance(29)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting
    protocol.connectionLost(Failure(ConnectionDone()))
    protocol, transport = idle_connection(agent, endpoints)
    protocol.connectionLost(Failure(ConnectionDone()))  # closed by the server while idle
    agent.request(b"GET", b"http://h.test/b")
    assert len(endpoints.connections) == 3
    assert clock.getDelayedCalls() == []


def test_at_most_max_idle_connections_are_kept():
    agent, endpoints, _ = make()
    requests = [agent.request(b"GET", b"http://h.test/%d" % i) for i in range(3)]
    assert len(endpoints.connections) == 3
    for (protocol, _), d in zip(endpoints.connections, requests):
        protocol.dataReceived(OK)
        answer(d).deliverBody(Body())
    assert [t.disconnecting for _, t in endpoints.connections] == [True, False, False]  # the oldest goes
    agent.closeCachedConnections()
    assert [t.disconnecting for _, t in endpoints.connections] == [True, True, True]


def test_pools_are_per_host_and_port():
    agent, endpoints, _ = make()
    idle_connection(agent, endpoints)
    agent.request(b"GET", b"http://h.test:81/x")
    agent.request(b"GET", b"http://other.test/x")
    assert len(endpoints.connections) == 3


def test_malformed_answers_fail_cleanly():
    agent, endpoints, _ = make()
    d = agent.request(b"GET", b"http://h.test/a")
    protocol, transport = endpoints.last()
    protocol.dataReceived(b"NOT HTTP AT ALL\r\n\r\n")
    failure = failure_of(d)
    assert failure.check(ResponseNeverReceived)
    assert "malformed answer" in str(failure.value)
    assert transport.disconnecting
    d = agent.request(b"GET", b"http://h.test/b")
    protocol, transport = endpoints.last()
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    body = Body()
    answer(d).deliverBody(body)
    assert body.ended.check(ResponseFailed)
    assert transport.disconnecting


def test_bytes_after_a_whole_answer_close_the_connection():
    agent, endpoints, _ = make()
    d = agent.request(b"GET", b"http://h.test/a")
    protocol, transport = endpoints.last()
    protocol.dataReceived(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    body = Body()
    answer(d).deliverBody(body)
    assert b"".join(body.data) == b"hello" and body.ended.check(ResponseDone)
    assert transport.disconnecting
    protocol.dataReceived(b"more")  # unasked for


def test_a_switching_protocols_answer_is_refused():
    agent, endpoints, _ = make()
    d = agent.request(b"GET", b"http://h.test/ws")
    protocol, _ = endpoints.last()
    protocol.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    assert failure_of(d).check(ResponseNeverReceived)


# -- what reaches the upstream ---------------------------------------------------------------------


class Streaming:
    """A body producer of a given length (or UNKNOWN_LENGTH), not in memory: it writes when told."""

    def __init__(self, length: Any = UNKNOWN_LENGTH) -> None:
        self.length = length
        self.consumer: Any = None
        self.done: Deferred = Deferred()

    def startProducing(self, consumer: Any) -> Deferred:
        self.consumer = consumer
        return self.done

    def stopProducing(self) -> None:
        pass


def test_an_in_memory_body_goes_with_the_head_in_one_write():
    """One write per request: head and body together (one TCP segment for small requests)."""
    agent, endpoints, _ = make()
    agent.request(b"POST", b"http://h.test/v1/chat", None, BytesProducer(b'{"a":1}'))
    _, transport = endpoints.last()
    assert transport.writes == [b"POST /v1/chat HTTP/1.1\r\nHost: h.test\r\nContent-Length: 7\r\n\r\n{\"a\":1}"]


def test_a_body_of_known_length_not_in_memory_is_streamed_as_it_is():
    """A producer of known length: Content-Length, then its writes as they come, not chunked; it may
    register itself as the producer of the connection (back-pressure)."""
    agent, endpoints, _ = make()
    producer = Streaming(length=10)
    d = agent.request(b"PUT", b"http://h.test/up", None, producer)
    protocol, transport = endpoints.last()
    assert transport.writes == [b"PUT /up HTTP/1.1\r\nHost: h.test\r\nContent-Length: 10\r\n\r\n"]
    producer.consumer.registerProducer(producer, True)
    assert (transport.producer, transport.streaming) == (producer, True)
    producer.consumer.write(b"01234")
    producer.consumer.write(b"56789")
    producer.consumer.unregisterProducer()
    assert transport.producer is None
    producer.done.callback(None)
    assert transport.writes[1:] == [b"01234", b"56789"]
    protocol.dataReceived(OK)
    assert answer(d).code == 200


def test_chunk_sizes_are_lower_case_hex():
    """Each write of a producer of unknown length is one chunk, its size in hex."""
    agent, endpoints, _ = make()
    producer = Streaming()
    agent.request(b"POST", b"http://h.test/up", None, producer)
    _, transport = endpoints.last()
    producer.consumer.write(b"z" * 26)
    assert transport.writes[-1] == b"1a\r\n" + b"z" * 26 + b"\r\n"


def test_a_producer_that_fails_aborts_the_connection():
    """The body could not be read to its end: the upstream must not take half a body as whole."""
    agent, endpoints, _ = make()
    producer = Streaming()
    d = agent.request(b"POST", b"http://h.test/up", None, producer)
    protocol, transport = endpoints.last()
    producer.consumer.write(b"abc")
    producer.done.errback(OSError("the client's body broke off"))
    assert transport.disconnected
    assert not transport.value().endswith(b"0\r\n\r\n")
    protocol.connectionLost(Failure(ConnectionLost()))
    assert failure_of(d).check(ResponseNeverReceived)


def test_a_body_finished_after_a_broken_answer_is_not_ended():
    """A malformed answer mid-upload aborts the connection: the body's end is not written after it."""
    agent, endpoints, _ = make()
    producer = Streaming()
    d = agent.request(b"POST", b"http://h.test/up", None, producer)
    protocol, transport = endpoints.last()
    protocol.dataReceived(b"NOT HTTP\r\n\r\n")
    assert failure_of(d).check(ResponseNeverReceived) and transport.disconnected
    written = transport.value()
    producer.done.callback(None)
    assert transport.value() == written


def test_an_upload_that_ends_before_its_answer_leaves_the_connection_reusable():
    """The whole body sent, then the whole answer: the connection goes back to the pool."""
    agent, endpoints, _ = make()
    producer = Streaming()
    d = agent.request(b"POST", b"http://h.test/up", None, producer)
    protocol, transport = endpoints.last()
    producer.consumer.write(b"abc")
    producer.done.callback(None)
    assert transport.value().endswith(b"3\r\nabc\r\n0\r\n\r\n")
    protocol.dataReceived(OK)
    answer(d).deliverBody(Body())
    agent.request(b"GET", b"http://h.test/next")
    assert len(endpoints.connections) == 1 and transport.value().endswith(b"GET /next HTTP/1.1\r\nHost: h.test\r\n\r\n")


@pytest.mark.parametrize("method", [b"GE T", b"GET\r", b"GET\n", b""])
def test_invalid_methods_are_refused_before_connecting(method):
    """A method that would break the request line is refused: nothing is sent."""
    agent, endpoints, _ = make()
    failure = failure_of(agent.request(method, b"http://h.test/a"))
    assert failure.check(ValueError) and str(failure.value) == "invalid method"
    assert endpoints.connections == []


def test_invalid_targets_are_refused_before_connecting():
    """A request target that would break the request line is refused: nothing is sent."""
    agent, endpoints, _ = make()
    failure = failure_of(agent.request(b"GET", b"http://h.test/a b"))
    assert failure.check(ValueError) and str(failure.value) == "invalid request target"
    assert endpoints.connections == []


def test_line_breaks_in_a_target_never_reach_the_upstream():
    """CR and LF in a URL cannot add a header line: they never reach the request line."""
    agent, endpoints, _ = make()
    agent.request(b"GET", b"http://h.test/a\r\nX-Evil:1")
    head = endpoints.last()[1].value()
    assert b"\r\nX-Evil" not in head and head.count(b"\r\n") == 3


def test_the_endpoint_is_looked_up_once_per_url_and_the_memory_of_urls_is_bounded():
    """The upstream URLs are a handful: each is parsed and its endpoint found once, up to 512 URLs."""
    agent, endpoints, _ = make()
    agent.request(b"GET", b"https://h.test:8443/v1/models")
    agent.request(b"GET", b"https://h.test:8443/v1/models")
    [uri] = endpoints.uris
    assert (uri.scheme, uri.host, uri.port, uri.path) == (b"https", b"h.test", 8443, b"/v1/models")
    for i in range(511):
        agent.request(b"GET", b"http://h.test/%d" % i)
    agent.request(b"GET", b"https://h.test:8443/v1/models")
    assert len(endpoints.uris) == 512
    agent.request(b"GET", b"http://h.test/one-more")
    agent.request(b"GET", b"https://h.test:8443/v1/models")
    assert len(endpoints.uris) == 514


# -- what the caller gets ---------------------------------------------------------------------------


def test_the_response_describes_the_request_as_sent():
    """IResponse.request: the method, the URL and the headers given; previousResponse is settable."""
    agent, endpoints, _ = make()
    headers = Headers({b"X-Trace": [b"t-1"]})
    d = agent.request(b"DELETE", b"http://h.test/v1/files/f-1", headers)
    endpoints.last()[0].dataReceived(OK)
    response = answer(d)
    assert (response.request.method, response.request.absoluteURI) == (b"DELETE", b"http://h.test/v1/files/f-1")
    assert response.request.headers is headers
    assert response.version == (b"HTTP", 1, 1) and response.previousResponse is None
    earlier = object()
    response.setPreviousResponse(earlier)
    assert response.previousResponse is earlier


def test_a_status_phrase_in_two_reads_is_whole():
    agent, endpoints, _ = make()
    d = agent.request(b"GET", b"http://h.test/a")
    protocol, _ = endpoints.last()
    protocol.dataReceived(b"HTTP/1.1 404 Not Fo")
    protocol.dataReceived(b"und\r\nContent-Length: 0\r\n\r\n")
    response = answer(d)
    assert (response.code, response.phrase) == (404, b"Not Found")


def test_the_end_of_a_body_says_so():
    """The body protocol ends with ResponseDone, as Twisted's own agent says it."""
    agent, endpoints, _ = make()
    d = agent.request(b"GET", b"http://h.test/a")
    endpoints.last()[0].dataReceived(OK)
    body = Body()
    answer(d).deliverBody(body)
    assert body.ended.check(ResponseDone) and body.ended.getErrorMessage() == "Response body fully received"


def test_a_body_is_delivered_once_only():
    agent, endpoints, _ = make()
    d = agent.request(b"GET", b"http://h.test/a")
    endpoints.last()[0].dataReceived(OK)
    response = answer(d)
    response.deliverBody(Body())
    with pytest.raises(RuntimeError, match=r"^the body of this answer was delivered already$"):
        response.deliverBody(Body())


def test_a_chunked_body_cut_short_is_a_failure_even_when_closed_cleanly():
    """A chunked or Content-Length body has its own end: the connection closing before it is a failure
    (only a body delimited by the close ends with PotentialDataLoss)."""
    for head in (b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", b"Content-Length: 10\r\n\r\nabc"):
        agent, endpoints, _ = make()
        d = agent.request(b"GET", b"http://h.test/a")
        protocol, _ = endpoints.last()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\n" + head)
        body = Body()
        answer(d).deliverBody(body)
        protocol.connectionLost(Failure(ConnectionDone()))
        assert body.data == [b"abc"]
        assert body.ended.check(ResponseFailed), head
        assert body.ended.value.reason.check(ConnectionDone)
        assert str(body.ended.value) == "Connection was closed cleanly."


def test_a_chunked_bodys_trailers_are_passed_over():
    agent, endpoints, _ = make()
    d = agent.request(b"GET", b"http://h.test/a")
    protocol, transport = endpoints.last()
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\n\r\n")
    body = Body()
    response = answer(d)
    response.deliverBody(body)
    assert body.data == [b"abc"] and body.ended.check(ResponseDone)
    assert not response.headers.hasHeader(b"x-checksum") and not transport.disconnecting


def test_a_head_answer_has_no_body_whatever_follows():
    """Bytes after a HEAD answer's head are not its body."""
    agent, endpoints, _ = make()
    d = agent.request(b"HEAD", b"http://h.test/a")
    endpoints.last()[0].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    body = Body()
    answer(d).deliverBody(body)
    assert body.data == [] and body.ended.check(ResponseDone)


def test_a_connection_lost_before_the_answer_says_why():
    """A fresh connection closed before any answer fails the request at once (no second try), with the reason."""
    agent, endpoints, _ = make()
    d = agent.request(b"GET", b"http://h.test/a")
    endpoints.last()[0].connectionLost(Failure(ConnectionDone()))
    failure = failure_of(d)
    assert failure.check(ResponseNeverReceived) and failure.value.reason.check(ConnectionDone)
    assert str(failure.value) == "Connection was closed cleanly."
    assert len(endpoints.connections) == 1


def test_a_malformed_answer_says_what_the_parser_said():
    agent, endpoints, _ = make()
    d = agent.request(b"GET", b"http://h.test/a")
    protocol, _ = endpoints.last()
    protocol.dataReceived(b"NOT HTTP AT ALL\r\n\r\n")
    failure = failure_of(d)
    assert failure.value.reason.check(BadResponse)
    assert str(failure.value).startswith("malformed answer from the upstream (HttpParserError: ")
    protocol.connectionLost(Failure(ConnectionLost()))  # the abort completes: nothing more happens


def test_a_switching_protocols_answer_says_so_and_other_interim_answers_are_passed_over():
    agent, endpoints, _ = make()
    d = agent.request(b"GET", b"http://h.test/ws")
    endpoints.last()[0].dataReceived(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    assert str(failure_of(d).value) == \
        "malformed answer from the upstream (BadResponse: the upstream switched protocols)"
    d = agent.request(b"GET", b"http://h.test/slow")
    protocol, _ = endpoints.last()
    protocol.dataReceived(b"HTTP/1.1 102 Processing\r\n\r\n" + OK)
    assert answer(d).code == 200


def test_garbage_after_a_cancel_is_quiet():
    """A cancelled request's connection is being aborted; bytes that still arrive change nothing."""
    agent, endpoints, _ = make()
    d = agent.request(b"GET", b"http://h.test/a")
    protocol, transport = endpoints.last()
    d.cancel()
    protocol.dataReceived(b"NOT HTTP\r\n\r\n")
    assert failure_of(d).check(CancelledError) and transport.disconnected


def test_cancel_on_a_reused_connection_aborts_it():
    agent, endpoints, _ = make()
    protocol, transport = idle_connection(agent, endpoints)
    d = agent.request(b"GET", b"http://h.test/again")
    d.cancel()
    assert failure_of(d).check(CancelledError) and transport.disconnected


def test_a_body_protocol_that_lingers_cannot_touch_the_next_request():
    """Once its answer ended (and the connection went on to the next request), a body protocol's transport
    calls do nothing."""
    agent, endpoints, _ = make()
    d = agent.request(b"GET", b"http://h.test/a")
    protocol, transport = endpoints.last()
    protocol.dataReceived(OK)
    body = Body()
    answer(d).deliverBody(body)
    agent.request(b"GET", b"http://h.test/b")
    body.transport.pauseProducing()
    body.transport.stopProducing()
    body.transport.loseConnection()
    assert transport.producerState == "producing" and not transport.disconnecting


def test_a_post_without_a_body_is_not_sent_again():
    """Only idempotent methods are sent again after the keep-alive race."""
    agent, endpoints, _ = make()
    protocol, _ = idle_connection(agent, endpoints)
    d = agent.request(b"POST", b"http://h.test/v1/reset")
    protocol.connectionLost(Failure(ConnectionDone()))
    assert failure_of(d).check(ResponseNeverReceived) and len(endpoints.connections) == 1


def test_the_keep_alive_race_is_retried_once_only():
    """Two pooled connections the server closed: the request tries the second, then fails."""
    agent, endpoints, _ = make()
    first = [agent.request(b"GET", b"http://h.test/%d" % i) for i in range(2)]
    for (protocol, _), d in zip(endpoints.connections, first):
        protocol.dataReceived(OK)
        answer(d).deliverBody(Body())
    d = agent.request(b"GET", b"http://h.test/again")
    endpoints.connections[1][0].connectionLost(Failure(ConnectionDone()))
    assert not d.called
    endpoints.connections[0][0].connectionLost(Failure(ConnectionDone()))
    assert failure_of(d).check(ResponseNeverReceived)
    assert len(endpoints.connections) == 2


def test_connections_the_server_closed_while_idle_leave_room_in_the_pool():
    """max_idle counts live connections: two closed while idle (their timers gone with them) do not keep a
    third, busy meanwhile, out of the pool."""
    agent, endpoints, clock = make()
    requests = [agent.request(b"GET", b"http://h.test/%d" % i) for i in range(3)]
    for (protocol, _), d in zip(endpoints.connections[1:], requests[1:]):
        protocol.dataReceived(OK)
        answer(d).deliverBody(Body())
    for protocol, _ in endpoints.connections[1:]:
        protocol.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []
    protocol, transport = endpoints.connections[0]
    protocol.dataReceived(OK)
    answer(requests[0]).deliverBody(Body())
    assert not transport.disconnecting and len(clock.getDelayedCalls()) == 1
    agent.request(b"GET", b"http://h.test/again")
    assert len(endpoints.connections) == 3
    assert transport.value().endswith(b"GET /again HTTP/1.1\r\nHost: h.test\r\n\r\n")


def test_closing_the_pool_leaves_no_timer():
    agent, endpoints, clock = make()
    idle_connection(agent, endpoints)
    agent.closeCachedConnections()
    assert clock.getDelayedCalls() == []
