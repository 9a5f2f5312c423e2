# -*- test-case-name: tests.test_budgets,tests.test_shared_limits,tests.test_e2e_budgets -*-
"""
The checks that need the store, made before a request is forwarded and
settled after it ended: the user's budget (L{bridgeproxy.budgets}), and
the C{[limits]} when they are counted for the whole gateway
(L{bridgeproxy.store.limits}: every worker and every instance on the same
database).

A request is admitted in one call on the store's thread (the reactor never
waits for it): requests in flight, then the initiator's rate, then the
budget, in the order the limits are checked in one process.  When it ends
it is settled (its hold replaced by its cost, its slot given back).  The
admissions and settlements that arrive while the store's thread is busy go
together in its next call, in one transaction (so that a failure part
way leaves nothing half done), so that under load a request costs the store a few statements, not a thread hop
and a transaction of its own.

A request that nothing here applies to does not touch the store at all: no
budget applies to a passthrough request, to one sent with the client's own
provider key, or to one of a user with no budget of their own when there
is no default.  The users with a budget of their own are read from the
store at start and every L{KEEP_EVERY} seconds, so a budget given to a
user takes effect within that time, and one removed at once.

Every L{KEEP_EVERY} seconds this process also renews its holds and its
count of requests in flight (a process that dies leaves rows that stop
counting after C{[budgets] hold_seconds}) and retries settlements the store
did not take.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional
from uuid import uuid4

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from bridgeproxy.budgets import BudgetUnavailable, default_budget, refusal, worst_case
from bridgeproxy.errors import BridgeError
from bridgeproxy.proxy.limits import Limits, overloaded, rate_limited
from bridgeproxy.store.budgets import (
    Held, Settlement, budget_user_ids, day_number, exclusive, hold, keep, settle, user_lock,
)
from bridgeproxy.store.limits import keep_slots, prune_buckets, release_slots, take_slot, take_token

#: Seconds between renewals of this process's holds (and refreshes of who has a budget).
KEEP_EVERY = 5.0


@dataclass(frozen=True)
class Ticket:
    """
    An admitted request's place in the store, until it is settled: its
    budget hold (C{user_id} L{None}: no budget applied) and whether it took
    one of the gateway's slots for requests in flight.
    """

    hold_id: str
    user_id: Optional[str]
    username: Optional[str]
    day: int
    slot: bool


@dataclass(frozen=True)
class Verdict:
    """What the store said: a refusal (C{overloaded}, C{wait} for the rate, a budget not held) or a go."""

    overloaded: bool = False
    wait: float = 0.0
    held: Optional[Held] = None
    slot: bool = False


@dataclass(frozen=True)
class Ask:
    """One request to admit: who, whether its budget applies and its worst case, and when."""

    hold_id: str
    user_id: str
    budgeted: bool
    cost: int
    now: float


class Admission:
    """
    Admits requests against the store and settles them.

    @param store: an L{bridgeproxy.store.AsyncStore} (anything with its C{run}).
    @param clock: an L{IReactorTime}: periods, holds, buckets and renewals go by it.
    @param holder: this process's name on its rows (a new random one by default).
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
        self._asks: list[tuple[Ask, Deferred]] = []
        self._queue: list[Settlement] = []
        self._slots_done = 0
        self._running: Optional[Deferred] = None
        self._failing = False
        self._store_down = False
        self._loop: Optional[LoopingCall] = None
        self.reconfigure(config, prices, None)

    def reconfigure(self, config: Any, prices: Any, limits: Optional[Limits]) -> None:
        """
        Use a new configuration's C{[budgets]}, price table and limits (a
        reload).  C{limits} is the pipeline's L{Limits}: counted in the
        store when it says C{in_store}, and here when the store cannot be
        asked.
        """
        self.config = config.budgets
        self.default = default_budget(config.budgets)
        self.prices = prices
        self.limits = limits
        shared = limits is not None and limits.in_store
        #: The gateway's limits counted here: C{max_concurrency}, and C{(rate, burst)} (or 0 and L{None}).
        self.slots = config.limits.max_concurrency if shared else 0
        self.rate = (config.limits.per_initiator_rps, float(limits.burst)) if (
            shared and limits is not None and config.limits.per_initiator_rps) else None

    # -- admission ---------------------------------------------------------------------

    def _budgeted(self, ex: Any) -> bool:
        if not ex.route or ex.credential_kind != "centralized":
            return False  # a passthrough request costs nothing; one with the client's own key costs us nothing
        users = self.budget_users
        return self.default is not None or users is None or ex.initiator.user_id in users

    def admit(self, ex: Any) -> Optional[Deferred]:
        """
        Check C{ex} (initiator resolved, upstream request made) against the
        gateway's limits and its user's budget, and hold its worst case.

        @return: L{None} when nothing here applies to it (go on at once),
            else a L{Deferred} that fires when it may go on, or fails with
            the L{BridgeError} that refuses it.
        """
        budgeted = self._budgeted(ex)
        if not (budgeted or self.slots or self.rate):
            return None
        cost = self._worst_case(ex) if budgeted else 0
        ask = Ask(ex.id, ex.initiator.user_id, budgeted, cost, self.clock.seconds())
        d: Deferred = Deferred()
        d.addCallbacks(self._decided, self._unavailable, callbackArgs=(ex, ask), errbackArgs=(ex, budgeted))
        self._asks.append((ask, d))
        self._flush()
        return d

    def _worst_case(self, ex: Any) -> int:
        """What C{ex} may cost at most; 0 (and counted) when its model has no price."""
        provider = ex.entry.name
        model = (ex.parsed or {}).get("model")
        model = model if isinstance(model, str) else None
        price = self.prices.price(provider, model)
        if price is None:
            self.metrics.budget_unpriced.labels(provider, self.metrics.model_label(model)).inc()
            return 0
        return worst_case(price, len(ex.body), ex.parsed, self.config.assumed_max_tokens)

    def _decided(self, verdict: Verdict, ex: Any, ask: Ask) -> None:
        self._store_down = False
        cost, now = ask.cost, ask.now
        self.metrics.admission_latency.observe(self.clock.seconds() - now)
        if verdict.overloaded:
            raise overloaded()
        if verdict.wait:
            raise rate_limited(verdict.wait)
        held = verdict.held
        if held is not None and not held.held:
            assert held.standing is not None
            self.metrics.budget_refusals.labels(held.standing.budget.period).inc()
            raise refusal(held.standing, cost, now, ex.initiator.username)
        budget = held is not None and held.standing is not None
        if budget or verdict.slot:
            ex.admitted = Ticket(ex.id, ex.initiator.user_id if budget else None, ex.initiator.username,
                                 day_number(now), verdict.slot)

    def _unavailable(self, failure: Failure, ex: Any, budgeted: bool) -> Optional[Failure]:
        if failure.check(BridgeError):
            return failure
        describe = getattr(self.store, "describe", None)
        reason = describe(failure.value) if describe is not None else failure.getErrorMessage()
        if budgeted and not self.config.fail_open:
            self.log.warn("Budget of {user} not checked, the store failed ({reason}); refusing {id}",
                          user=ex.initiator.user_id, reason=reason, id=ex.id)
            raise BudgetUnavailable("The gateway cannot check this user's budget right now; retry shortly.",
                                    headers={"Retry-After": "5"})
        if not self._store_down:  # once per outage, not once per request
            self.log.warn("Store failed ({reason}) admitting {id}: until it answers, limits are counted in this "
                          "process and budgets are not checked", reason=reason, id=ex.id)
        self._store_down = True
        self.metrics.inc("admission_unchecked")
        if budgeted:
            self.metrics.inc("budget_unchecked")
        if self.rate is not None and self.limits is not None:
            self.limits.check_rate(ex.initiator.user_id, here=True)
        return None

    # -- settlement ----------------------------------------------------------------------

    def finish(self, ex: Any, cost_micros: Optional[int]) -> None:
        """
        C{ex} ended, having cost C{cost_micros} (L{None}: nothing known):
        replace its hold by that cost, give its slot back.  Never blocks,
        never raises.
        """
        ticket, ex.admitted = ex.admitted, None
        if ticket is None:
            return
        if ticket.user_id is not None:
            self._queue.append(Settlement(ticket.hold_id, ticket.user_id, ticket.username, ticket.day,
                                          cost_micros or 0))
        if ticket.slot:
            self._slots_done += 1
        if not self._failing:
            self._flush()

    # -- the store's calls ---------------------------------------------------------------------

    def _flush(self) -> Deferred:
        """
        Unless a call is under way (its end starts the next), hand the store
        everything waiting: the settlements, then the admissions.  After a
        failure, settlements alone wait for the next renewal.
        """
        if self._running is not None:
            return self._running
        asks, self._asks = self._asks, []
        if not asks and (self._failing or not (self._queue or self._slots_done)):
            return succeed(None)
        batch, self._queue = self._queue, []
        released, self._slots_done = self._slots_done, 0
        slots, rate, default, holder = self.slots, self.rate, self.default, self.holder
        hold_seconds = self.config.hold_seconds

        def admit(db: Any, ask: Ask) -> Verdict:
            expires_at = ask.now + hold_seconds
            if slots and not take_slot(db, holder, slots, expires_at):
                return Verdict(overloaded=True)
            if rate is not None:
                wait = take_token(db, ask.user_id, rate[0], rate[1], ask.now)
                if wait:
                    if slots:
                        release_slots(db, holder, 1)
                    return Verdict(wait=wait)
            held = None
            if ask.budgeted:
                held = hold(db, user_id=ask.user_id, default=default, cost_micros=ask.cost, hold_id=ask.hold_id,
                            holder=holder, now=ask.now, expires_at=expires_at)
                if not held.held:
                    if slots:
                        release_slots(db, holder, 1)
                    return Verdict(held=held)
            return Verdict(held=held, slot=bool(slots))

        def everything(db: Any) -> list[Verdict]:
            if batch:
                settle(db, batch)
            if released:
                release_slots(db, holder, released)
            return [admit(db, ask) for ask, _ in asks]

        def work(db: Any) -> list[Verdict]:
            # Always one transaction: a failure part way (a slot taken, then the store fails) rolls back
            # everything, so no slot is left taken by a request that never got its ticket, and the
            # slots given back are given back again (once) by the retry.
            budgeted = [ask.user_id for ask, _ in asks if ask.budgeted]
            return exclusive(db, [user_lock(user_id) for user_id in budgeted], everything)
        d = self._running = self.store.run(work)

        def done(verdicts: list[Verdict]) -> None:
            self._running = None
            self._failing = False
            for (_, waiting), verdict in zip(asks, verdicts):
                waiting.callback(verdict)
            self._flush()

        def failed(failure: Failure) -> None:
            self._running = None
            self._failing = True  # settlements are retried at the next renewal, or with the next admission
            self._queue[:0] = batch
            self._slots_done += released
            if batch or released:
                describe = getattr(self.store, "describe", None)
                self.log.warn("Cannot settle {count} admissions ({reason}); retrying in {delay:g} s",
                              count=len(self._queue) + self._slots_done, reason=describe(failure.value) if describe
                              else failure.getErrorMessage(), delay=KEEP_EVERY)
            for _, waiting in asks:
                waiting.errback(failure)
            if self._asks:
                self._flush()
        d.addCallbacks(done, failed)
        return d

    # -- upkeep ----------------------------------------------------------------------------

    def start(self) -> None:
        """Read who has a budget, then renew this process's rows every L{KEEP_EVERY} seconds."""
        if self._loop is None:
            self._loop = LoopingCall(self._tick)
            self._loop.clock = self.clock
            self._loop.start(KEEP_EVERY, now=True)

    def _tick(self) -> Deferred:
        now = self.clock.seconds()
        holder, expires_at = self.holder, now + self.config.hold_seconds
        # A bucket idle long enough to be full again is the same as none.
        idle = math.ceil(self.rate[1] / self.rate[0]) + KEEP_EVERY if self.rate is not None else None

        slots = self.slots

        def upkeep(db: Any) -> None:
            if slots:
                keep_slots(db, holder, now, expires_at)
            keep(db, holder, now, expires_at)
            if idle is not None:
                prune_buckets(db, now - idle)

        def work(db: Any) -> frozenset[str]:
            exclusive(db, (), upkeep)
            return budget_user_ids(db)
        d = self.store.run(work)

        def refreshed(users: frozenset[str]) -> Deferred:
            self.budget_users = users
            self._failing = False
            return self._flush()

        def failed(failure: Failure) -> None:
            describe = getattr(self.store, "describe", None)
            self.log.warn("Cannot renew this process's budget holds and slots ({reason})",
                          reason=describe(failure.value) if describe else failure.getErrorMessage())
        return d.addCallbacks(refreshed, failed)

    def stop(self) -> Deferred:
        """Stop renewing; write the settlements still queued (what the store refuses now is lost)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self._failing = False
        pending = self._running if self._running is not None else succeed(None)

        def last(_: Any) -> Deferred:
            return self._flush()
        return pending.addCallback(last).addErrback(lambda failure: None)
