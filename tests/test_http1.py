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

from bridgeproxy.proxy.http1 import PooledAgent, ResponseFailed, ResponseNeverReceived
from bridgeproxy.proxy.upstream import BytesProducer

pytestmark = pytest.mark.timeout(10)


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
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        d.callback(protocol)
        return protocol

    def last(self) -> tuple[Any, StringTransport]:
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


def idle_connection(agent: PooledAgent, endpoints: Endpoints) -> tuple[Any, StringTransport]:
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
    assert [t.disconnecting for _, t in endpoints.connections] == [False, False, True]
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


def test_invalid_requests_fail_before_connecting():
    agent, endpoints, _ = make()
    assert failure_of(agent.request(b"GET X", b"http://h.test/a"))
    assert failure_of(agent.request(b"GET", b"http://h.test/a b"))
    assert endpoints.connections == []


def test_the_body_is_delivered_once():
    agent, endpoints, _ = make()
    d = agent.request(b"GET", b"http://h.test/a")
    endpoints.last()[0].dataReceived(OK)
    response = answer(d)
    response.deliverBody(Body())
    with pytest.raises(RuntimeError):
        response.deliverBody(Body())
