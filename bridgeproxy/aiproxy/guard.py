# -*- test-case-name: tests.test_aiproxy_units -*-
"""
Where a tunnel may go (the SSRF guard): a name is resolved once, every
address it resolves to is checked, and the tunnel connects to a checked
address, never to the name again (a second lookup could answer otherwise).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Sequence, Union

from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, maybeDeferred
from twisted.internet.interfaces import IResolutionReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

#: NAT64's well-known prefix (RFC 6052): its addresses reach the IPv4 address in their last 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
#: Ranges Python's tables may not know as special (they differ between versions).
_NOT_PUBLIC = (
    ipaddress.IPv4Network("192.0.0.0/24"),  # IETF protocol assignments (RFC 6890)
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # local-use NAT64 (RFC 8215)
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible (deprecated; ::127.0.0.1 may reach the loopback)
    ipaddress.IPv6Network("::ffff:0:0:0/96"),  # IPv4-translated (SIIT, RFC 2765)
    ipaddress.IPv6Network("fec0::/10"),  # site-local (deprecated, RFC 3879)
)


def _plain(address: Address) -> Address:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, Teredo, NAT64), or the address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address.teredo is not None:
            return address.teredo[1]
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def is_public(address: Address) -> bool:
    """
    Whether C{address} is a public unicast address: not private, loopback,
    link-local, shared (CGNAT), multicast, unspecified or otherwise
    reserved, nor an IPv6 address standing for one of those (the IPv6
    address of a public IPv4 one is as public as it).
    """
    plain = _plain(address)
    if plain is not address:
        return is_public(plain)
    if any(address in net for net in _NOT_PUBLIC if net.version == address.version):
        return False
    # (IPv6 site-local, fec0::/10, is refused above.)
    return address.is_global and not address.is_multicast and not address.is_unspecified and not address.is_reserved


class Guard:
    """
    The addresses a tunnel may reach: public ones, and those in the
    configured C{allowed_private_cidrs}.
    """

    def __init__(self, allowed_cidrs: Iterable[str] = ()):
        self.allowed = tuple(ipaddress.ip_network(c, strict=False) for c in allowed_cidrs)

    def allows(self, address: Union[str, Address]) -> bool:
        """Whether a tunnel may connect to C{address}."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if is_public(ip):
            return True
        return any(ip in net or _plain(ip) in net for net in self.allowed)

    def check(self, addresses: Sequence[str]) -> list[str]:
        """
        C{addresses} if every one is allowed; else none: a name that
        resolves to an internal address among public ones is refused
        whole (DNS answers are the attacker's to choose).
        """
        if not addresses or not all(self.allows(a) for a in addresses):
            return []
        return list(addresses)


@implementer(IResolutionReceiver)
class _Collect:
    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.done: Deferred = Deferred()

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        if address.host not in self.addresses:
            self.addresses.append(address.host)

    def resolutionComplete(self) -> None:
        self.done.callback(self.addresses)


class Resolver:
    """
    Host names to addresses, through the reactor's name resolver
    (C{getaddrinfo} in a thread, by default).

    Anything with the same C{resolve} method can stand in for it (tests
    inject their own).
    """

    def __init__(self, reactor: Any):
        self.reactor = reactor

    def resolve(self, host: str, port: int) -> "Deferred[list[str]]":
        """The addresses of C{host} (IPv4 and IPv6, in the resolver's order); empty when unknown."""
        receiver = _Collect()
        self.reactor.nameResolver.resolveHostName(receiver, host, port)
        return receiver.done


#: Tunnels' name lookups running at once, at most: they share the reactor's
#: threads with the bridge's own lookups of its providers.
MAX_LOOKUPS = 4


class Lookups:
    """
    A resolver's lookups, at most C{limit} at once; the others wait their turn.

    Cancelling a lookup that waits takes it out of the queue.  One that has
    started keeps its turn until it ends (a thread doing C{getaddrinfo}
    cannot be stopped): the caller gets L{CancelledError} at once.
    """

    def __init__(self, resolver: Any, limit: int = MAX_LOOKUPS):
        self.resolver = resolver
        self._turns = DeferredSemaphore(limit)

    def resolve(self, host: str, port: int) -> "Deferred[list[str]]":
        """C{resolver.resolve(host, port)}, in turn."""
        turn = self._turns.acquire()
        result: Deferred = Deferred(lambda d: turn.cancel())

        def start(_: Any) -> None:
            if result.called:  # cancelled meanwhile
                self._turns.release()
                return
            maybeDeferred(self.resolver.resolve, host, port).addBoth(done)

        def done(outcome: Any) -> None:
            self._turns.release()
            if result.called:
                return
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)

        def dequeued(failure: Failure) -> None:
            failure.trap(CancelledError)  # cancelled while waiting: nothing was started

        turn.addCallbacks(start, dequeued)
        return result


__all__ = ["Guard", "Lookups", "MAX_LOOKUPS", "Resolver", "is_public"]
