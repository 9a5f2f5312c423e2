# -*- test-case-name: tests.test_breaker -*-
"""
A circuit breaker per provider: after a run of failures the bridge stops
sending that provider requests for a while, then lets a few probes through
to see whether it has recovered.

- B{closed}: requests go through.  C{failures} failures in a row (connect
  errors, timeouts, 5xx, and 429 answered to the gateway's own key), each
  within C{window} seconds of the first of the run, open it; any success
  ends the run.
- B{open}: for C{open_seconds}, requests are refused at once (503 in the
  provider's error shape, with C{Retry-After}); the provider sees nothing.
- B{half-open}: then up to C{probes} requests go through.  If they all
  succeed the breaker closes; the first that fails opens it again.

A verdict belongs to the state a request was let through in: an answer
that comes back after the state changed (a slow request admitted before
the breaker opened) counts for nothing.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Callable, Optional

from bridgeproxy.config import BreakerConfig
from bridgeproxy.errors import CircuitOpen

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
#: The number of each state, for a gauge.
STATES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class Breaker:
    """
    The breaker of one provider.

    @param name: the provider's name (for messages and the change callback).
    @param clock: an L{IReactorTime}: the open period is measured on it.
    @param on_change: called as C{on_change(name, old_state, new_state)} on
        every change of state.
    """

    def __init__(self, name: str, config: BreakerConfig, clock: Any,
                 on_change: Optional[Callable[[str, str, str], None]] = None):
        self.name = name
        self.config = config
        self._clock = clock
        self._on_change = on_change
        self.state = CLOSED
        #: Bumped at every change of state: a ticket from another generation has no say.
        self._generation = 0  # pragma: no mutate - any start works: only equality with a ticket matters
        self._run: deque[float] = deque()
        # Read only while open or half-open, and set by the change to that state (no start value matters):
        self._opened_at = 0.0  # pragma: no mutate
        self._probes = 0  # pragma: no mutate
        self._passed = 0  # pragma: no mutate

    def admit(self) -> int:
        """
        Let a request through, or refuse it.

        @return: the ticket to hand back with L{succeeded}, L{failed} or
            L{released} once the request's outcome is known.
        @raise CircuitOpen: while the breaker is open, or half-open with
            every probe already out.
        """
        if self.state == OPEN:
            wait = self._opened_at + self.config.open_seconds - self._clock.seconds()
            if wait > 0:
                raise CircuitOpen(
                    f"The provider {self.name} is failing; the gateway stopped sending it requests for "
                    f"{math.ceil(wait)} s.", headers={"Retry-After": str(math.ceil(wait))})
            self._change(HALF_OPEN)
        if self.state == HALF_OPEN:
            if self._probes >= self.config.probes:
                raise CircuitOpen(f"The provider {self.name} is being probed after failures; retry shortly.",
                                  headers={"Retry-After": "1"})
            self._probes += 1
        return self._generation

    def succeeded(self, ticket: int) -> None:
        """The request admitted with C{ticket} got an answer that says the provider is up."""
        if ticket != self._generation:
            return
        if self.state == HALF_OPEN:
            self._passed += 1
            if self._passed >= self.config.probes:
                self._change(CLOSED)
        else:
            self._run.clear()

    def failed(self, ticket: int) -> None:
        """The request admitted with C{ticket} failed in a way that says the provider is not well."""
        if ticket != self._generation:
            return
        now = self._clock.seconds()
        if self.state == HALF_OPEN:
            self._open(now)
            return
        run = self._run
        run.append(now)
        while now - run[0] > self.config.window:
            run.popleft()
        if len(run) >= self.config.failures:
            self._open(now)

    def released(self, ticket: int) -> None:
        """The request admitted with C{ticket} ended without a verdict (its client left): its probe is free."""
        if ticket == self._generation and self.state == HALF_OPEN:
            self._probes -= 1

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._change(OPEN)

    def _change(self, state: str) -> None:
        old, self.state = self.state, state
        self._generation += 1
        self._run.clear()
        self._probes = self._passed = 0
        if self._on_change is not None:
            self._on_change(self.name, old, state)


class Breakers:
    """
    The breakers of the configured providers, by name; none when
    C{[breaker] failures} is 0.
    """

    def __init__(self, config: BreakerConfig, clock: Any,
                 on_change: Optional[Callable[[str, str, str], None]] = None):
        self.config = config
        self._clock = clock
        self._on_change = on_change
        self._breakers: dict[str, Breaker] = {}

    def get(self, name: str) -> Optional[Breaker]:
        """The breaker of the provider C{name} (made on first use), or L{None} when breakers are off."""
        if not self.config.failures:
            return None
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = self._breakers[name] = Breaker(name, self.config, self._clock, self._on_change)
        return breaker

    def states(self) -> dict[str, str]:
        """Each provider's state (those that served a request)."""
        return {name: breaker.state for name, breaker in self._breakers.items()}


__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "STATES", "Breaker", "Breakers"]
