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
