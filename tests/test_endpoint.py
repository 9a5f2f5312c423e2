"""
The upstream endpoint on a fake reactor: names resolved once for many
connections and again after their time to live, IP literals never, and a
failed address passed over for the next.
"""

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from bridgeproxy.proxy.upstream import ResolvedTCPEndpoint

V4 = (2, 1, 6, "", ("10.0.0.1", 443))
V4B = (2, 1, 6, "", ("10.0.0.2", 443))


class Resolver:
    """Answers lookups when told to; counts them."""

    def __init__(self):
        self.lookups = []

    def __call__(self, host, port):
        d = Deferred()
        self.lookups.append((host, port, d))
        return d


def connected_to(reactor):
    return [(host, port) for host, port, *_ in reactor.tcpClients]


def refuse(reactor, index):
    _, _, factory, _, _ = reactor.tcpClients[index]
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))


def test_one_lookup_for_many_connections_then_again_after_the_ttl():
    """Connections made while a name is being resolved share one lookup; the addresses are reused until
    their time to live ends, then resolved again."""
    reactor, resolver = MemoryReactorClock(), Resolver()
    endpoint = ResolvedTCPEndpoint(reactor, "api.example", 443, 10, ttl=60, resolve=resolver)
    factory = Factory.forProtocol(Protocol)
    for _ in range(3):
        endpoint.connect(factory)
    assert len(resolver.lookups) == 1 and reactor.tcpClients == []
    resolver.lookups[0][2].callback([V4])
    assert connected_to(reactor) == [("10.0.0.1", 443)] * 3
    reactor.advance(59)
    endpoint.connect(factory)
    assert len(resolver.lookups) == 1
    reactor.advance(2)
    endpoint.connect(factory)
    assert len(resolver.lookups) == 2


def test_ip_literals_are_never_resolved():
    """An upstream given by address connects straight to it."""
    reactor = MemoryReactorClock()
    endpoint = ResolvedTCPEndpoint(reactor, "127.0.0.1", 8000, 10, resolve=lambda h, p: 1 / 0)
    endpoint.connect(Factory.forProtocol(Protocol))
    reactor.advance(3600)
    endpoint.connect(Factory.forProtocol(Protocol))
    assert connected_to(reactor) == [("127.0.0.1", 8000)] * 2


def test_a_refused_address_is_passed_over():
    """When an address refuses, the next one is tried, and kept for the next connections; when all refuse,
    the connection fails and the name is resolved again for the next one."""
    reactor = MemoryReactorClock()
    lookups = []

    def resolve(host, port):
        lookups.append(host)
        return succeed([V4, V4B])
    endpoint = ResolvedTCPEndpoint(reactor, "api.example", 443, 10, resolve=resolve)
    results = []
    endpoint.connect(Factory.forProtocol(Protocol)).addBoth(results.append)
    refuse(reactor, 0)
    assert connected_to(reactor) == [("10.0.0.1", 443), ("10.0.0.2", 443)]
    endpoint.connect(Factory.forProtocol(Protocol))
    assert connected_to(reactor)[-1] == ("10.0.0.2", 443)
    refuse(reactor, 2)
    refuse(reactor, 3)
    assert len(lookups) == 1
    endpoint.connect(Factory.forProtocol(Protocol))
    assert len(lookups) == 2


def test_a_failed_lookup_fails_every_waiting_connection():
    """A name that cannot be resolved fails the connections waiting for it (the request becomes a 502)."""
    reactor, resolver = MemoryReactorClock(), Resolver()
    endpoint = ResolvedTCPEndpoint(reactor, "nowhere.example", 443, 10, resolve=resolver)
    results = []
    for _ in range(2):
        endpoint.connect(Factory.forProtocol(Protocol)).addErrback(results.append)
    resolver.lookups[0][2].errback(OSError("no such name"))
    assert len(results) == 2 and all(r.check(OSError) for r in results)
    endpoint.connect(Factory.forProtocol(Protocol))
    assert len(resolver.lookups) == 2


# -- what a connection is made with ----------------------------------------------------

V6 = (10, 1, 6, "", ("2001:db8::1", 443, 0, 0))
V4C = (2, 1, 6, "", ("10.0.0.3", 443))
UNIX_ONLY = (1, 1, 0, "", "/run/x.sock")


class Mine(Protocol):
    """The protocol a connection should end up speaking."""


def complete(reactor, index):
    """Let connection attempt C{index} succeed; the protocol built for it."""
    from twisted.internet.testing import StringTransport
    _, _, factory, _, _ = reactor.tcpClients[index]
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    return protocol


def test_a_connection_speaks_the_factorys_protocol_within_the_connect_timeout():
    """Whether the name was resolved or given as an address, connect() fires with the factory's protocol,
    and every attempt carries the connect timeout."""
    reactor = MemoryReactorClock()
    for host, resolve in (("api.example", lambda h, p: succeed([V4])), ("10.0.0.9", None)):
        endpoint = ResolvedTCPEndpoint(reactor, host, 443, 7, resolve=resolve)
        results = []
        endpoint.connect(Factory.forProtocol(Mine)).addCallback(results.append)
        complete(reactor, -1)
        assert len(results) == 1 and isinstance(results[0], Mine)
    assert [(host, timeout) for host, _, _, timeout, _ in reactor.tcpClients] == [("10.0.0.1", 7), ("10.0.0.9", 7)]


def test_the_lookup_asks_for_the_upstreams_host_and_port():
    reactor, resolver = MemoryReactorClock(), Resolver()
    ResolvedTCPEndpoint(reactor, "api.example", 8443, 10, resolve=resolver).connect(Factory.forProtocol(Protocol))
    assert [(host, port) for host, port, _ in resolver.lookups] == [("api.example", 8443)]


def test_addresses_are_kept_for_a_minute_by_default():
    """Without a ttl, a name is resolved again once a minute has passed, not before."""
    reactor, resolver = MemoryReactorClock(), Resolver()
    endpoint = ResolvedTCPEndpoint(reactor, "api.example", 443, 10, resolve=resolver)
    endpoint.connect(Factory.forProtocol(Protocol))
    resolver.lookups[0][2].callback([V4])
    reactor.advance(59.9)
    endpoint.connect(Factory.forProtocol(Protocol))
    assert len(resolver.lookups) == 1
    reactor.advance(0.2)
    endpoint.connect(Factory.forProtocol(Protocol))
    assert len(resolver.lookups) == 2


def test_an_ipv6_literal_is_never_resolved():
    reactor = MemoryReactorClock()
    endpoint = ResolvedTCPEndpoint(reactor, "::1", 8000, 10, resolve=lambda h, p: 1 / 0)
    results = []
    endpoint.connect(Factory.forProtocol(Mine)).addCallback(results.append)
    complete(reactor, 0)
    reactor.advance(3600)
    endpoint.connect(Factory.forProtocol(Protocol))
    assert connected_to(reactor) == [("::1", 8000)] * 2 and isinstance(results[0], Mine)


def test_ipv6_answers_are_connected_to():
    """A name that resolves to IPv6 and IPv4 addresses is connected to in the order of the answer."""
    reactor = MemoryReactorClock()
    endpoint = ResolvedTCPEndpoint(reactor, "api.example", 443, 10, resolve=lambda h, p: succeed([V6, V4]))
    endpoint.connect(Factory.forProtocol(Protocol))
    refuse(reactor, 0)
    assert connected_to(reactor) == [("2001:db8::1", 443), ("10.0.0.1", 443)]


def test_each_address_is_tried_once_in_turn():
    """With three addresses, a refused one passes to the next in the answer's order, each tried once, and the
    attempt that succeeds speaks the factory's protocol; when all refuse, the connection fails."""
    reactor = MemoryReactorClock()
    endpoint = ResolvedTCPEndpoint(reactor, "api.example", 443, 10, resolve=lambda h, p: succeed([V4, V4B, V4C]))
    results = []
    endpoint.connect(Factory.forProtocol(Mine)).addBoth(results.append)
    refuse(reactor, 0)
    complete(reactor, 1)
    assert connected_to(reactor) == [("10.0.0.1", 443), ("10.0.0.2", 443)]
    assert isinstance(results[0], Mine)
    failed = []
    endpoint.connect(Factory.forProtocol(Mine)).addErrback(failed.append)
    for index in (2, 3, 4):
        refuse(reactor, index)
    assert connected_to(reactor)[2:] == [("10.0.0.2", 443), ("10.0.0.3", 443), ("10.0.0.1", 443)]
    assert len(failed) == 1 and failed[0].check(ConnectionRefusedError)


def test_a_lookup_without_a_usable_address_fails_naming_the_host():
    """An answer with no IPv4 or IPv6 address fails the connection with an error that names the host."""
    reactor = MemoryReactorClock()
    endpoint = ResolvedTCPEndpoint(reactor, "api.example", 443, 10, resolve=lambda h, p: succeed([UNIX_ONLY]))
    failed = []
    endpoint.connect(Factory.forProtocol(Protocol)).addErrback(failed.append)
    assert failed[0].check(OSError) and failed[0].getErrorMessage() == "no address for api.example"
    assert reactor.tcpClients == []


def test_a_cancelled_connection_passes_no_address_over():
    """A connection attempt cancelled (its request went away) stops there: the next address is not tried, and
    the next connection goes to the same address."""
    reactor = MemoryReactorClock()
    lookups = []

    def resolve(host, port):
        lookups.append(host)
        return succeed([V4, V4B])
    endpoint = ResolvedTCPEndpoint(reactor, "api.example", 443, 10, resolve=resolve)
    failed = []
    d = endpoint.connect(Factory.forProtocol(Protocol))
    d.addErrback(failed.append)
    d.cancel()
    assert len(failed) == 1 and connected_to(reactor) == [("10.0.0.1", 443)]
    endpoint.connect(Factory.forProtocol(Protocol))
    assert connected_to(reactor) == [("10.0.0.1", 443)] * 2 and lookups == ["api.example"]


# -- the system resolver, and the agent over these endpoints -------------------------------


class ThreadPool:
    """Records the calls made in it; the test answers them."""

    def __init__(self):
        self.calls = []

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        self.calls.append((f, args, on_result))


class Reactor(MemoryReactorClock):
    """A fake reactor with a thread pool the test answers."""

    def __init__(self):
        super().__init__()
        self.pool = ThreadPool()

    def getThreadPool(self):
        return self.pool

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


def test_names_are_resolved_by_the_system_in_the_thread_pool():
    """Without a resolver given, a name is looked up with getaddrinfo for stream sockets, in the reactor's
    thread pool (never in the reactor's thread)."""
    import socket
    reactor = Reactor()
    endpoint = ResolvedTCPEndpoint(reactor, "api.example", 443, 10)
    endpoint.connect(Factory.forProtocol(Protocol))
    ((f, args, on_result),) = reactor.pool.calls
    assert (f, args) == (socket.getaddrinfo, ("api.example", 443, 0, socket.SOCK_STREAM))
    assert reactor.tcpClients == []
    on_result(True, [V4])
    assert connected_to(reactor) == [("10.0.0.1", 443)]


def agent_on(reactor, tls_policy=None, **upstream):
    from bridgeproxy.config import UpstreamConfig
    from bridgeproxy.proxy.upstream import make_agent
    return make_agent(reactor, UpstreamConfig(**upstream), tls_policy)


def answer(reactor, index, body=b"ok"):
    """Let connection C{index} succeed and answer its request: C{(protocol, transport)}."""
    from twisted.internet.testing import StringTransport
    _, _, factory, _, _ = reactor.tcpClients[index]
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    return protocol, transport


def read(d):
    from twisted.web.client import readBody
    bodies = []
    d.addCallback(readBody).addCallback(bodies.append)
    return bodies


def test_the_agent_keeps_connections_and_closes_them_when_idle():
    """Connections are made with the configured connect timeout, kept for the next request, and closed after
    idle_connection_seconds without one."""
    reactor = MemoryReactorClock()
    agent = agent_on(reactor, connect_timeout=3, idle_connection_seconds=30)
    bodies = read(agent.request(b"GET", b"http://10.0.0.1:8080/v1/models"))
    protocol, transport = answer(reactor, 0)
    assert bodies == [b"ok"] and transport.value().startswith(b"GET /v1/models HTTP/1.1\r\n")
    assert [(host, port, timeout) for host, port, _, timeout, _ in reactor.tcpClients] == [("10.0.0.1", 8080, 3)]
    transport.clear()
    agent.request(b"GET", b"http://10.0.0.1:8080/v1/models/gpt-4o")
    assert len(reactor.tcpClients) == 1 and transport.value().startswith(b"GET /v1/models/gpt-4o HTTP/1.1\r\n")
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    reactor.advance(29.9)
    assert not transport.disconnecting
    reactor.advance(0.2)
    assert transport.disconnecting


def test_the_agent_keeps_at_most_max_connections_per_host():
    """Past max_connections_per_host idle connections to one upstream, the oldest is closed."""
    reactor = MemoryReactorClock()
    agent = agent_on(reactor, max_connections_per_host=1)
    for _ in range(2):
        agent.request(b"GET", b"http://10.0.0.1/v1/models")
    transports = [answer(reactor, 0)[1], answer(reactor, 1)[1]]
    assert [t.disconnecting for t in transports] == [True, False]


def test_one_lookup_serves_every_request_to_an_upstream():
    """The endpoint of an upstream is made once: concurrent requests to one name share its lookup."""
    import socket
    reactor = Reactor()
    agent = agent_on(reactor)
    agent.request(b"GET", b"http://api.example/v1/models")
    (call,) = reactor.pool.calls
    call[2](True, [V4])
    agent.request(b"GET", b"http://api.example/v1/models")
    assert len(reactor.pool.calls) == 1 and connected_to(reactor) == [("10.0.0.1", 80)] * 2
    agent.request(b"GET", b"http://other.example:8000/v1/models")
    assert [args for _, args, _ in reactor.pool.calls] == [("api.example", 80, 0, socket.SOCK_STREAM),
                                                          ("other.example", 8000, 0, socket.SOCK_STREAM)]


def test_only_http_and_https_upstreams():
    failures = []
    agent_on(MemoryReactorClock()).request(b"GET", b"ftp://10.0.0.1/x").addErrback(failures.append)
    from twisted.web.error import SchemeNotSupported
    assert failures[0].check(SchemeNotSupported) and failures[0].getErrorMessage() == "Unsupported scheme: b'ftp'"


def test_https_upstreams_speak_tls_made_by_the_policy_for_their_host():
    """An https upstream is connected to in TLS, with the connection creator the policy gives for its host and
    port; a plain http one is not."""
    from twisted.internet.ssl import optionsForClientTLS
    from twisted.internet.testing import StringTransport

    class TCPTransport(StringTransport):
        def setTcpNoDelay(self, enabled):
            pass

    class Policy:
        def __init__(self):
            self.asked = []

        def creatorForNetloc(self, host, port):
            self.asked.append((host, port))
            return optionsForClientTLS(host.decode())
    reactor, policy = MemoryReactorClock(), Policy()
    agent = agent_on(reactor, tls_policy=policy)
    agent.request(b"GET", b"https://10.0.0.1:8443/v1/models")
    agent.request(b"GET", b"http://10.0.0.1:8080/v1/models")
    assert policy.asked == [(b"10.0.0.1", 8443)]
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("10.0.0.1", 8443), ("10.0.0.1", 8080)]
    written = []
    for index in range(2):
        transport = TCPTransport()
        reactor.tcpClients[index][2].buildProtocol(None).makeConnection(transport)
        written.append(transport.value())
    assert written[0][:1] == b"\x16"  # a TLS handshake record: the ClientHello
    assert written[1].startswith(b"GET /v1/models HTTP/1.1\r\n")


def tls_exchange(directory, monkeypatch, ca_file, server_host):
    """One https request from make_agent's agent (no policy given) to a server whose certificate the test CA
    issued for C{server_host}, all in memory: what the request got (the body, or a failure)."""
    from twisted.internet.ssl import PrivateCertificate
    from twisted.internet.task import Clock
    from twisted.protocols import tls
    from twisted.test.iosim import FakeTransport, connect
    from twisted.web import server
    from twisted.web.resource import Resource

    from tests.certs import make_ca

    class Hello(Resource):
        isLeaf = True

        def render_GET(self, request):
            return b"hello"
    directory.mkdir()
    ca_path, issue = make_ca(directory)
    cert_path, key_path = issue(server_host)
    reactor = Reactor()
    # TLS gathers small writes and sends them on the next reactor turn: this reactor's.
    monkeypatch.setattr(tls, "_get_default_clock", lambda: reactor)
    agent = agent_on(reactor, ca_file=str(ca_path) if ca_file else None)
    from twisted.web.client import readBody
    got = []
    agent.request(b"GET", b"https://api.example/v1/models").addCallback(readBody).addBoth(got.append)
    reactor.pool.calls[0][2](True, [V4])
    client = reactor.tcpClients[0][2].buildProtocol(None)
    cert = PrivateCertificate.loadPEM(cert_path.read_text() + key_path.read_text())
    upstream = tls.TLSMemoryBIOFactory(cert.options(), False, server.Site(Hello(), reactor=Clock()))
    tls_server = upstream.buildProtocol(None)
    pump = connect(tls_server, FakeTransport(tls_server, True), client, FakeTransport(client, False))
    for _ in range(5):
        reactor.advance(0)
        pump.pump()
    return got


def test_upstream_tls_is_verified_against_the_ca_file(tmp_path, monkeypatch):
    """With [upstream] ca_file, an upstream whose certificate that CA issued for its name is trusted; one issued
    for another name is refused, and so is any, without the CA file, that the system's CAs did not issue."""
    assert tls_exchange(tmp_path / "a", monkeypatch, True, "api.example") == [b"hello"]
    wrong_name = tls_exchange(tmp_path / "b", monkeypatch, True, "other.example")
    untrusted = tls_exchange(tmp_path / "c", monkeypatch, False, "api.example")
    from OpenSSL.SSL import Error as TLSError
    from service_identity import VerificationError
    from twisted.web.client import ResponseNeverReceived
    for got, why in ((wrong_name, VerificationError), (untrusted, TLSError)):
        assert len(got) == 1 and got[0].check(ResponseNeverReceived) and got[0].value.reasons[0].check(why)
