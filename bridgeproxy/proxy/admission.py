# -*- test-case-name: tests.test_budgets,tests.test_e2e_budgets -*-
"""
The checks that need the store, made before a request is forwarded and
settled after it ended: the user's budget (L{bridgeproxy.budgets}).

One store round trip admits a request (on the store's thread: the reactor
never waits for it) and one settles it; settlements made while another is
being written go together in the next transaction.  A request that no
budget applies to (a passthrough request; one sent with the client's own
provider key; one of a user with no budget of their own when there is no
default) does not touch the store at all: the users
with a budget of their own are read from the store at start and every
L{KEEP_EVERY} seconds, so a budget given to a user takes effect within
that time, and one removed at once.

Every L{KEEP_EVERY} seconds this process also renews its holds (a process
that dies leaves holds that stop counting after C{[budgets] hold_seconds})
and retries settlements the store did not take.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional
from uuid import uuid4

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from bridgeproxy.budgets import BudgetUnavailable, default_budget, refusal, worst_case
from bridgeproxy.errors import BridgeError
from bridgeproxy.store.budgets import (
    Held, Settlement, budget_user_ids, day_number, exclusive, hold, keep, settle, user_lock,
)

#: Seconds between renewals of this process's holds (and refreshes of who has a budget).
KEEP_EVERY = 5.0


@dataclass(frozen=True)
class Ticket:
    """An admitted request's place in the store, until it is settled."""

    hold_id: str
    user_id: str
    username: Optional[str]
    day: int


class Admission:
    """
    Admits requests against the store and settles them.

    @param store: an L{bridgeproxy.store.AsyncStore} (anything with its C{run}).
    @param clock: an L{IReactorTime}: periods, holds and renewals go by it.
    @param holder: this process's name on its holds (a new random one by default).
    """

    log = Logger()

    def __init__(self, store: Any, clock: Any, config: Any, prices: Any, metrics: Any,
                 holder: Optional[str] = None):
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.holder = holder or uuid4().hex
        #: Users with a budget of their own; L{None} until read (then every request asks the store).
        self.budget_users: Optional[frozenset[str]] = None
        self._queue: list[Settlement] = []
        self._settling: Optional[Deferred] = None
        self._failing = False
        self._loop: Optional[LoopingCall] = None
        self.reconfigure(config, prices)

    def reconfigure(self, config: Any, prices: Any) -> None:
        """Use a new configuration's C{[budgets]} and price table (a reload)."""
        self.config = config.budgets
        self.default = default_budget(config.budgets)
        self.prices = prices

    # -- admission ---------------------------------------------------------------------

    def admit(self, ex: Any) -> Optional[Deferred]:
        """
        Check C{ex} (initiator resolved, body read) against its user's
        budget and hold its worst case.

        @return: L{None} when nothing applies to it (go on at once), else a
            L{Deferred} that fires when it may go on, or fails with the
            L{BridgeError} that refuses it.
        """
        if not ex.route or ex.credential_kind != "centralized":
            return None  # a passthrough request costs nothing; one with the client's own key costs the gateway nothing
        user_id = ex.initiator.user_id
        if self.default is None and self.budget_users is not None and user_id not in self.budget_users:
            return None
        provider = ex.entry.name
        model = (ex.parsed or {}).get("model")
        price = self.prices.price(provider, model if isinstance(model, str) else None)
        if price is None:
            cost = 0
            self.metrics.budget_unpriced.labels(provider, self.metrics.model_label(
                model if isinstance(model, str) else None)).inc()
        else:
            cost = worst_case(price, len(ex.body), ex.parsed, self.config.assumed_max_tokens)
        now = self.clock.seconds()
        default, holder, expires_at = self.default, self.holder, now + self.config.hold_seconds

        def work(db: Any) -> Held:
            return exclusive(db, [user_lock(user_id)], lambda db: hold(
                db, user_id=user_id, default=default, cost_micros=cost, hold_id=ex.id, holder=holder, now=now,
                expires_at=expires_at))
        d = self.store.run(work)
        d.addCallbacks(self._decided, self._unavailable, callbackArgs=(ex, cost, now), errbackArgs=(ex,))
        return d

    def _decided(self, held: Held, ex: Any, cost: int, now: float) -> None:
        self.metrics.admission_latency.observe(self.clock.seconds() - now)
        if not held.held:
            assert held.standing is not None
            self.metrics.budget_refusals.labels(held.standing.budget.period).inc()
            raise refusal(held.standing, cost, now, ex.initiator.username)
        if held.standing is not None:
            ex.admitted = Ticket(ex.id, ex.initiator.user_id, ex.initiator.username, day_number(now))

    def _unavailable(self, failure: Failure, ex: Any) -> Optional[Failure]:
        if failure.check(BridgeError):
            return failure
        describe = getattr(self.store, "describe", None)
        reason = describe(failure.value) if describe is not None else failure.getErrorMessage()
        if self.config.fail_open:
            self.log.warn("Budget of {user} not checked, the store failed ({reason}); forwarding {id} (fail_open)",
                          user=ex.initiator.user_id, reason=reason, id=ex.id)
            self.metrics.inc("budget_unchecked")
            return None
        self.log.warn("Budget of {user} not checked, the store failed ({reason}); refusing {id}",
                      user=ex.initiator.user_id, reason=reason, id=ex.id)
        raise BudgetUnavailable("The gateway cannot check this user's budget right now; retry shortly.",
                                headers={"Retry-After": "5"})

    # -- settlement ----------------------------------------------------------------------

    def finish(self, ex: Any, cost_micros: Optional[int]) -> None:
        """
        C{ex} ended, having cost C{cost_micros} (L{None}: nothing known):
        replace its hold by that cost.  Never blocks, never raises.
        """
        ticket, ex.admitted = ex.admitted, None
        if ticket is None:
            return
        self._queue.append(Settlement(ticket.hold_id, ticket.user_id, ticket.username, ticket.day,
                                      cost_micros or 0))
        if not self._failing:
            self._settle()

    def _settle(self) -> Deferred:
        if self._settling is not None:
            return self._settling
        if not self._queue:
            return succeed(None)
        batch, self._queue = self._queue, []
        d = self._settling = self.store.run(lambda db: exclusive(db, (), lambda db: settle(db, batch)))

        def done(_: Any) -> Any:
            self._settling = None
            self._failing = False
            return self._settle() if self._queue else None

        def failed(failure: Failure) -> None:
            self._settling = None
            self._failing = True  # retried at the next renewal, not at once
            self._queue[:0] = batch
            describe = getattr(self.store, "describe", None)
            self.log.warn("Cannot settle {count} budget holds ({reason}); retrying in {delay:g} s",
                          count=len(self._queue), reason=describe(failure.value) if describe else
                          failure.getErrorMessage(), delay=KEEP_EVERY)
        d.addCallbacks(done, failed)
        return d

    # -- upkeep ----------------------------------------------------------------------------

    def start(self) -> None:
        """Read who has a budget, then renew this process's holds every L{KEEP_EVERY} seconds."""
        if self._loop is None:
            self._loop = LoopingCall(self._tick)
            self._loop.clock = self.clock
            self._loop.start(KEEP_EVERY, now=True)

    def _tick(self) -> Deferred:
        now = self.clock.seconds()
        holder, expires_at = self.holder, now + self.config.hold_seconds

        def work(db: Any) -> frozenset[str]:
            exclusive(db, (), lambda db: keep(db, holder, now, expires_at))
            return budget_user_ids(db)
        d = self.store.run(work)

        def refreshed(users: frozenset[str]) -> Deferred:
            self.budget_users = users
            self._failing = False
            return self._settle()

        def failed(failure: Failure) -> None:
            describe = getattr(self.store, "describe", None)
            self.log.warn("Cannot renew budget holds ({reason})",
                          reason=describe(failure.value) if describe else failure.getErrorMessage())
        return d.addCallbacks(refreshed, failed)

    def stop(self) -> Deferred:
        """Stop renewing; write the settlements still queued (what the store refuses now is lost)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self._failing = False
        pending = self._settling if self._settling is not None else succeed(None)

        def last(_: Any) -> Deferred:
            return self._settle()
        return pending.addCallback(last).addErrback(lambda failure: None)
