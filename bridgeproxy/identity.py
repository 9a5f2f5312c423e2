# -*- test-case-name: tests.test_identity -*-
"""
The built-in identity backend: bridge keys kept (as hashes) in the store.

Answers are cached for C{[auth] cache_seconds} so that a request does not
wait on the database: a revoked key or a disabled user takes effect within
that time.  Unknown tokens are cached too (briefly), so that a client
hammering with a bad key costs no database round trips.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from bridgeproxy.errors import NotConfigured
from bridgeproxy.flights import Flights
from bridgeproxy.interfaces import IConfigurable, IIdentityBackend
from bridgeproxy.store import AsyncStore, hash_token
from bridgeproxy.types import Identity

_MAX_CACHE = 100_000


@implementer(IIdentityBackend)
class KeystoreBackend:
    """
    L{IIdentityBackend} over the store's C{api_keys} and C{users} tables.

    @param clock: an L{IReactorTime} for cache expiry.
    """

    name = "keystore"
    log = Logger()

    def __init__(self, store: AsyncStore, clock: Any, cache_seconds: float = 5.0):
        self._store = store
        self._clock = clock
        self._ttl = cache_seconds
        self._tokens: dict[str, tuple[float, Optional[Identity]]] = {}
        self._users: dict[str, tuple[float, Optional[Identity]]] = {}
        self._flights = Flights()
        #: Answers served from an expired cache entry while the store was down.
        self.metrics_stale = 0

    def _cached(self, cache: dict, key: str):
        entry = cache.get(key)
        if entry is not None and entry[0] > self._clock.seconds():
            return True, entry[1]
        return False, None

    def _remember(self, cache: dict, key: str, value: Optional[Identity]) -> Optional[Identity]:
        if len(cache) >= _MAX_CACHE:
            cache.clear()
        # Kept past expiry (a zero ttl included) as the fallback for a store outage.
        cache[key] = (self._clock.seconds() + self._ttl, value)
        return value

    def identify(self, token: str) -> "Deferred[Optional[Identity]]":
        key = hash_token(token)
        hit, value = self._cached(self._tokens, key)
        if hit:
            return succeed(value)
        # One store round trip however many requests with this token arrive
        # before it answers (a client opening many streams).
        return self._flights.ask(key, lambda: self._ask_store(token, key))

    def _ask_store(self, token: str, key: str) -> Deferred:
        d = self._store.run(lambda db: db.identify(token))
        d.addCallbacks(lambda identity: self._remember(self._tokens, key, identity),
                       self._stale, errbackArgs=(self._tokens, key))
        return d

    def _stale(self, failure: Failure, cache: dict, key: str) -> Optional[Identity]:
        """
        The store did not answer: keep serving a user it knew (a database
        restart must not lock everybody out); refuse with 503 otherwise.
        """
        entry = cache.get(key)
        if entry is not None:
            self.metrics_stale += 1
            return entry[1]
        self.log.warn("Key store unavailable: {error}", error=failure.getErrorMessage().splitlines()[0][:200]
                      if failure.getErrorMessage() else failure.type.__name__)
        raise NotConfigured("The key store is unavailable; try again shortly.")

    def lookup_user(self, user_id: str) -> "Deferred[Optional[Identity]]":
        hit, value = self._cached(self._users, user_id)
        if hit:
            return succeed(value)
        d = self._store.run(lambda db: db.lookup_user(user_id))
        d.addCallbacks(lambda identity: self._remember(self._users, user_id, identity),
                       self._stale, errbackArgs=(self._users, user_id))
        return d


@implementer(IPlugin, IIdentityBackend, IConfigurable)
class KeystorePlugin:
    """The C{keystore} identity backend's plugin: configured, it is a L{KeystoreBackend}."""

    name = "keystore"

    def configure(self, context: Any) -> KeystoreBackend:
        return KeystoreBackend(context.store, context.reactor, context.config.auth.cache_seconds)

    def identify(self, token: str) -> Deferred:  # pragma: no cover - replaced by configure
        raise NotImplementedError("configure() first")

    def lookup_user(self, user_id: str) -> Deferred:  # pragma: no cover - replaced by configure
        raise NotImplementedError("configure() first")
