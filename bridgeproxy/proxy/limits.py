# -*- test-case-name: tests.test_pipeline,tests.test_limits,tests.test_shared_limits -*-
"""
The limits an operator sets (C{[limits]}): requests in flight, and a request
rate per initiator, counted in this process.  Counted for the whole gateway
(C{[limits] shared}), they are checked in the store instead, when a request
is admitted (L{bridgeproxy.proxy.admission}, L{bridgeproxy.store.limits}).
"""

from __future__ import annotations

import math
from typing import Any, Optional

from bridgeproxy.config import LimitsConfig
from bridgeproxy.errors import Overloaded, RateLimited

#: Buckets kept before they are all dropped (a flood of initiators must not
#: grow memory without bound; dropping them only forgives).
MAX_BUCKETS = 100_000


class TokenBuckets:
    """Per-key token buckets: C{rate} tokens a second, holding at most C{burst}."""

    def __init__(self, clock: Any, rate: float, burst: int):
        self.clock = clock
        self.rate = rate
        self.burst = float(burst)
        self.buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """Take a token; return 0 if there was one, else the seconds until there is."""
        now = self.clock.seconds()
        tokens, last = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            if len(self.buckets) >= MAX_BUCKETS:
                self.buckets.clear()
            self.buckets[key] = (tokens - 1, now)
            return 0.0
        self.buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate


class Limits:
    """
    The configured limits, checked by the pipeline.

    @param in_store: the rate is counted in the store for the whole gateway
        (L{bridgeproxy.store.limits}): L{check_rate} then checks nothing,
        unless told to count here (when the store cannot be asked).
    """

    def __init__(self, config: LimitsConfig, clock: Any, in_store: bool = False):
        self.config = config
        self.in_store = in_store
        self.rate: Optional[TokenBuckets] = None
        #: How many requests an initiator may make at once.
        self.burst = config.per_initiator_burst or max(1, math.ceil(config.per_initiator_rps))
        if config.per_initiator_rps:
            self.rate = TokenBuckets(clock, config.per_initiator_rps, self.burst)

    def check_concurrency(self, in_flight: int) -> None:
        """
        @raise Overloaded: when C{in_flight} (this request included) is over C{max_concurrency}.
        """
        limit = self.config.max_concurrency
        if limit and in_flight > limit:
            raise overloaded()

    def check_rate(self, initiator_id: str, here: bool = False) -> None:
        """
        @param here: count in this process even when the rate is counted in the store.
        @raise RateLimited: when the initiator is over C{per_initiator_rps}, with C{Retry-After}.
        """
        if self.rate is None or (self.in_store and not here):
            return
        wait = self.rate.take(initiator_id)
        if wait:
            raise rate_limited(wait)


def rate_limited(wait: float) -> RateLimited:
    """The 429 for an initiator over its rate, who may try again in C{wait} seconds."""
    return RateLimited("Too many requests; slow down.", headers={"Retry-After": str(max(1, math.ceil(wait)))})


def overloaded() -> Overloaded:
    """The 503 for a request beyond C{max_concurrency}."""
    return Overloaded("The gateway is at its concurrency limit; retry shortly.", headers={"Retry-After": "1"})
