"""
Tunnels that are not decrypted, in memory: what an upstream proxy may
answer a tunnel's CONNECT (and what the client and the log get when it says
no), and how the two sides' half-closes, losses and back-pressure are
passed on.
"""

import pytest
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from tests.aiproxies import basic, memory_proxy, TableResolver
from tests import memory
from tests.memory import parse_answer

PUBLIC = "93.184.216.34"
ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
CONNECT = f"CONNECT example.test:443 HTTP/1.1\r\nProxy-Authorization: {basic(memory.TOKEN)}\r\n\r\n".encode()


def via_proxy(tmp_path):
    """An AI proxy whose tunnels go through an upstream proxy; a CONNECT to example.test sent and dialled."""
    proxied = memory_proxy(tmp_path, aiproxy={"upstream_proxy": "http://proxy.corp.test:3128"},
                           resolver=TableResolver({"example.test": [PUBLIC]}))
    client, client_transport = proxied.send(CONNECT)
    assert [c[1:4:2] for c in proxied.reactor.tcpClients] == [
        (3128, proxied.gateway.bridge.config.upstream.connect_timeout)]
    target, target_transport = proxied.accept_outbound()
    assert target_transport.value().startswith(f"CONNECT {PUBLIC}:443 HTTP/1.1\r\n".encode())
    return proxied, (client, client_transport), (target, target_transport)


def failures(captured_log):
    return [e["reason"] for e in captured_log.events if e.get("log_format", "").startswith("aiproxy: CONNECT {target} failed")]


def test_the_upstream_proxys_answer_may_come_in_pieces(tmp_path):
    """The upstream proxy's 200 in several reads; what follows its head (whatever it holds) is the target's."""
    proxied, (client, client_transport), (target, target_transport) = via_proxy(tmp_path)
    target.dataReceived(b"HTTP/1.1 200 Connection established\r\n")
    assert client_transport.value() == b""
    target.dataReceived(b"Via: corp\r\n")
    target.dataReceived(b"\r\nfirst\r\n\r\nbytes")
    assert client_transport.value() == ESTABLISHED + b"first\r\n\r\nbytes"
    target.dataReceived(b" and more")
    assert client_transport.value() == ESTABLISHED + b"first\r\n\r\nbytes and more"


def test_a_status_line_without_a_reason_phrase_opens_the_tunnel(tmp_path):
    proxied, (client, client_transport), (target, target_transport) = via_proxy(tmp_path)
    target.dataReceived(b"HTTP/1.0 200\r\n\r\n")
    assert client_transport.value() == ESTABLISHED
    assert not target_transport.disconnecting


@pytest.mark.parametrize("answer,reason", [
    (b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", "407"),
    (b"HTTP/1.1 407\r\nVia: corp\r\nX-Why: no\r\n\r\n", "407"),
    (b"HTTP/1.1 403 Forbidden\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", "403"),
    (b"HTTP/1.1\r\n\r\n", "?"),
    (b"\r\n\r\n", "?"),
    (b"HTTP/1.1  200 OK\r\n\r\n", ""),
    (b"SSH-2.0 200 OK\r\n\r\n", "200"),
    (b"HTTP/1.1 \xff07 Odd\r\n\r\n", "\ufffd07"),
    (b"HTTP/1.1 5" + b"0" * 30 + b" Long\r\n\r\n", "5" + "0" * 19),
    (b"HTTP/1.1 200 OK\r\nX-Filler: " + b"a" * 16400, "an over-long answer"),
])
def test_an_upstream_proxy_that_does_not_open_the_tunnel_is_502(tmp_path, captured_log, answer, reason):
    """
    Anything but a 2xx HTTP/1.x answer: the client gets 502, the connection
    to the upstream proxy is closed, and the log says what the proxy said.
    """
    proxied, (client, client_transport), (target, target_transport) = via_proxy(tmp_path)
    target.dataReceived(answer)
    assert target_transport.disconnecting
    got = parse_answer(client_transport.value())
    assert (got.status, got.json()["error"]["message"]) == (502, "example.test:443 could not be reached.")
    assert failures(captured_log) == [reason]


def test_an_upstream_proxy_answer_head_is_read_up_to_its_limit(tmp_path):
    """An answer head of exactly 16 KiB so far is still read; its end then opens the tunnel."""
    proxied, (client, client_transport), (target, target_transport) = via_proxy(tmp_path)
    head = b"HTTP/1.1 200 OK\r\nX-Filler: "
    target.dataReceived(head + b"a" * (16 * 1024 - len(head)))
    assert not target_transport.disconnecting and client_transport.value() == b""
    target.dataReceived(b"\r\n\r\n")
    assert client_transport.value() == ESTABLISHED


@pytest.mark.parametrize("reason,logged", [
    (Failure(ConnectionLost("the proxy hung up")),
     "Connection to the other side was lost in a non-clean fashion: the proxy hung up."),
    (None, "Connection was closed cleanly."),
])
def test_an_upstream_proxy_that_closes_before_answering_is_502_at_once(tmp_path, captured_log, reason, logged):
    proxied, (client, client_transport), (target, target_transport) = via_proxy(tmp_path)
    target.connectionLost(reason)
    assert parse_answer(client_transport.value()).status == 502
    assert failures(captured_log) == [logged]


def test_an_upstream_proxy_answering_after_the_client_left_is_ignored(tmp_path, captured_log):
    """The client went while the upstream proxy was thinking: its late 200 and bytes open nothing."""
    proxied, (client, client_transport), (target, target_transport) = via_proxy(tmp_path)
    client.connectionLost(None)
    assert target_transport.disconnecting
    target.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
    target.dataReceived(b"late bytes")
    target.connectionLost(Failure(ConnectionDone()))
    assert client_transport.value() == b""
    assert failures(captured_log) == []
    assert proxied.sample("bridgeproxy_aiproxy_tunnels_open", kind="tunnelled") in (None, 0)


def direct(tmp_path):
    proxied = memory_proxy(tmp_path, resolver=TableResolver({"example.test": [PUBLIC]}))
    client, client_transport = proxied.send(CONNECT)
    target, target_transport = proxied.accept_outbound()
    return proxied, (client, client_transport), (target, target_transport)


def test_each_side_produces_for_the_other_as_a_streaming_producer(tmp_path):
    """Back-pressure: each transport is the other's streaming producer (a full buffer pauses the other's reads)."""
    proxied, (client, client_transport), (target, target_transport) = direct(tmp_path)
    assert client_transport.producer is target_transport and client_transport.streaming is True
    assert target_transport.producer is client_transport and target_transport.streaming is True


def test_a_target_that_half_closes_first_still_hears_the_client(tmp_path):
    """
    The target's end of sending half-closes the client's side; the client
    may go on sending; its own end then closes both.
    """
    proxied, (client, client_transport), (target, target_transport) = direct(tmp_path)
    target.readConnectionLost()
    assert client_transport.write_closed and not client_transport.disconnecting
    assert client_transport.producer is None
    client.writeConnectionLost()
    assert not client_transport.disconnecting and not target_transport.disconnecting
    client.dataReceived(b"still talking")
    assert target_transport.value() == b"still talking"
    client.readConnectionLost()
    assert target_transport.write_closed and not target_transport.disconnecting
    target.writeConnectionLost()
    assert client_transport.disconnecting and target_transport.disconnecting


def test_one_half_close_alone_closes_nothing(tmp_path):
    """The client's end of sending, passed on: neither connection closes until the other side is done too."""
    proxied, (client, client_transport), (target, target_transport) = direct(tmp_path)
    client.readConnectionLost()
    assert target_transport.write_closed
    assert not client_transport.disconnecting and not target_transport.disconnecting
    target.writeConnectionLost()
    assert not client_transport.disconnecting and not target_transport.disconnecting
    target.dataReceived(b"answer")
    assert client_transport.value() == ESTABLISHED + b"answer"


class _NoHalfClose(StringTransport):
    """A connection as a TLS listener gives it: no half-close; letting go of no producer is no error."""

    def unregisterProducer(self):
        self.producer = None


def test_a_client_connection_that_cannot_half_close_ends_after_the_targets_end(tmp_path):
    """
    A client on the proxy's TLS listener (its connection cannot half-close):
    the target's end of sending ends the client's connection, after what it
    holds is written.
    """
    proxied = memory_proxy(tmp_path, resolver=TableResolver({"example.test": [PUBLIC]}))
    client = proxied.proxy.buildProtocol(None)
    client_transport = _NoHalfClose()
    client.makeConnection(client_transport)
    client.dataReceived(CONNECT)
    target, target_transport = proxied.accept_outbound()
    target.dataReceived(b"last words")
    target.readConnectionLost()
    assert client_transport.value() == ESTABLISHED + b"last words"
    assert client_transport.disconnecting
    assert client_transport.producer is None and target_transport.producer is None
    assert not target_transport.disconnecting  # its own end comes as it closes
