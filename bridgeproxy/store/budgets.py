# -*- test-case-name: tests.test_budgets,tests.test_budgets_store -*-
"""
Budgets in the store: each user's own amount per period, what each user
spent per UTC day, and the holds that requests in flight have on what is
left.

A request is admitted by L{hold}: in one transaction that no other
admission for the same user can interleave with (SQLite C{BEGIN
IMMEDIATE}, which takes the database's write lock; PostgreSQL a
transaction-scoped advisory lock on the user), the user's spend in the
current period and the holds that have not expired are added up, and a
hold of the request's worst-case cost is inserted only if that sum plus
the new hold stays within the budget.  When the request ends, L{settle}
deletes its hold and adds its real cost to the day's spend, again in one
transaction.  A process that dies leaves its holds behind; they stop
counting at their C{expires_at}, which a living process keeps pushing
forward for its own (L{keep}).

Days are epoch day numbers (C{floor(unix time / 86400)}, UTC); a period
is the run of days from its first (C{start}) to the first of the next
(C{end}, excluded).  Everything here blocks: it runs on the store's
thread, or in the command line.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Callable, Iterable, Optional, TypeVar

from bridgeproxy.store.database import in_transaction

T = TypeVar("T")

#: The periods a budget can be given for: UTC calendar days, weeks (Monday to Sunday) and months.
PERIODS = ("day", "week", "month")
DAY_SECONDS = 86400
_EPOCH = date(1970, 1, 1)


def day_number(when: float) -> int:
    """The UTC day C{when} (unix time) falls in, as days since 1970-01-01."""
    return int(when // DAY_SECONDS)


def period_days(period: str, when: float) -> tuple[int, int]:
    """
    The UTC calendar C{period} holding C{when}: C{(first day, first day of
    the next period)}, as day numbers.

    @raise ValueError: for a period not in L{PERIODS}.
    """
    day = day_number(when)
    if period == "day":
        return day, day + 1
    if period == "week":
        start = day - (day + 3) % 7  # 1970-01-01 was a Thursday; weeks start on Monday
        return start, start + 7
    if period == "month":
        today = _EPOCH + timedelta(days=day)
        first = date(today.year, today.month, 1)
        following = date(today.year + today.month // 12, today.month % 12 + 1, 1)
        return (first - _EPOCH).days, (following - _EPOCH).days
    raise ValueError(f"a budget's period is day, week or month, not {period!r}")


@dataclass(frozen=True)
class Budget:
    """
    An amount a user may spend per period.

    @ivar amount_micros: in micro-units of the price table's currency.
    @ivar own: whether it is the user's own (set with C{bridgeproxy budgets
        set}) or the configuration's default.
    """

    user_id: str
    amount_micros: int
    period: str
    username: Optional[str] = None
    own: bool = True


@dataclass(frozen=True)
class Standing:
    """Where a user stands against a budget in the period holding a moment."""

    budget: Budget
    start_day: int
    end_day: int
    spent_micros: int
    held_micros: int

    @property
    def left_micros(self) -> int:
        """What may still be spent (never below 0)."""
        return max(0, self.budget.amount_micros - self.spent_micros - self.held_micros)

    @property
    def ends_at(self) -> float:
        """When the period ends (unix time): a refused user may try again then."""
        return float(self.end_day * DAY_SECONDS)


@dataclass(frozen=True)
class Held:
    """
    What L{hold} decided.

    @ivar standing: the user's standing before this request (L{None}: no budget applies).
    @ivar held: whether the request may go (a hold was taken if its cost is above 0).
    """

    standing: Optional[Standing]
    held: bool


# -- transactions -------------------------------------------------------------------------


def lock_key(name: str) -> int:
    """A 64-bit advisory lock key for C{name} (PostgreSQL's C{pg_advisory_xact_lock} takes a bigint)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()[:8], "big", signed=True)


def exclusive(db: Any, locks: Iterable[str], work: Callable[[Any], T]) -> T:
    """
    Run C{work(db)} in one transaction that excludes every other one taking
    any of the same C{locks}: SQLite takes its write lock at C{BEGIN
    IMMEDIATE} (which excludes every other writer, whatever its locks);
    PostgreSQL takes a transaction-scoped advisory lock per name, in sorted
    order so that two transactions never wait on each other.
    """
    if db.dialect == "sqlite":
        return in_transaction(db, work, begin="BEGIN IMMEDIATE")

    def locked(db: Any) -> T:
        for name in sorted(set(locks)):
            db.execute("SELECT pg_advisory_xact_lock(?)", (lock_key(name),))
        return work(db)
    return in_transaction(db, locked)


def user_lock(user_id: str) -> str:
    """The lock name that serialises the admissions of one user."""
    return "budget:" + user_id


# -- budgets ---------------------------------------------------------------------------------


def set_budget(db: Any, user_id: str, amount_micros: int, period: str, username: Optional[str] = None,
               now: Optional[float] = None) -> Budget:
    """Give C{user_id} a budget of its own (replacing any it had)."""
    if period not in PERIODS:
        raise ValueError(f"a budget's period is day, week or month, not {period!r}")
    db.execute(
        "INSERT INTO budgets (user_id, username, amount_micros, period, updated_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (user_id) DO UPDATE SET username = excluded.username, amount_micros = excluded.amount_micros, "
        "period = excluded.period, updated_at = excluded.updated_at",
        (user_id, username, amount_micros, period, time.time() if now is None else now))
    return Budget(user_id, amount_micros, period, username)


def remove_budget(db: Any, user_id: str) -> bool:
    """Remove C{user_id}'s own budget; C{False} when it had none."""
    if not db.execute("SELECT 1 FROM budgets WHERE user_id = ?", (user_id,)):
        return False
    db.execute("DELETE FROM budgets WHERE user_id = ?", (user_id,))
    return True


def own_budget(db: Any, user_id: str) -> Optional[Budget]:
    """C{user_id}'s own budget, or L{None}."""
    rows = db.execute("SELECT user_id, amount_micros, period, username FROM budgets WHERE user_id = ?", (user_id,))
    return Budget(rows[0][0], int(rows[0][1]), rows[0][2], rows[0][3]) if rows else None


def own_budgets(db: Any) -> list[Budget]:
    """Every budget of a user's own, by username (then id)."""
    rows = db.execute("SELECT user_id, amount_micros, period, username FROM budgets "
                      "ORDER BY COALESCE(username, user_id), user_id")
    return [Budget(r[0], int(r[1]), r[2], r[3]) for r in rows]


def budget_user_ids(db: Any) -> frozenset[str]:
    """The users with a budget of their own."""
    return frozenset(r[0] for r in db.execute("SELECT user_id FROM budgets"))


def effective(db: Any, user_id: str, default: Optional[Budget]) -> Optional[Budget]:
    """The budget that applies to C{user_id}: its own, else C{default} (made its), else L{None}."""
    own = own_budget(db, user_id)
    if own is not None:
        return own
    if default is None:
        return None
    return Budget(user_id, default.amount_micros, default.period, None, own=False)


def standing(db: Any, budget: Budget, now: float) -> Standing:
    """Where C{budget}'s user stands in the period holding C{now}: spent, and held by live holds."""
    start, end = period_days(budget.period, now)
    # One statement: on PostgreSQL (read committed) each statement sees its own snapshot, so a settlement
    # committed between two reads (its hold gone, its spend not yet seen) would make the sum too small.
    spent, held = db.execute(
        "SELECT (SELECT COALESCE(SUM(spent_micros), 0) FROM budget_spend "
        "WHERE user_id = ? AND day >= ? AND day < ?), "
        "(SELECT COALESCE(SUM(amount_micros), 0) FROM budget_holds "
        "WHERE user_id = ? AND day >= ? AND day < ? AND expires_at > ?)",
        (budget.user_id, start, end, budget.user_id, start, end, now))[0]
    return Standing(budget, start, end, int(spent), int(held))


def spenders(db: Any, since_day: int) -> list[tuple[str, Optional[str]]]:
    """C{(user_id, username)} of every user who spent something since C{since_day}."""
    rows = db.execute("SELECT user_id, MAX(username) FROM budget_spend WHERE day >= ? GROUP BY user_id "
                      "ORDER BY COALESCE(MAX(username), user_id)", (since_day,))
    return [(r[0], r[1]) for r in rows]


def find_user(db: Any, ref: str) -> Optional[tuple[str, Optional[str]]]:
    """
    C{(user_id, username)} of the user C{ref} names (a username or an id):
    a user of the key store, else an initiator of a recorded request (a
    Coder user, say), else one with a budget; L{None} if nobody.
    """
    for statement in ("SELECT id, username FROM users WHERE username = ? OR id = ? ORDER BY username = ? DESC",
                      "SELECT initiator_id, initiator_username FROM interceptions WHERE initiator_id IS NOT NULL "
                      "AND (initiator_username = ? OR initiator_id = ?) ORDER BY COALESCE(initiator_username = ?, FALSE) DESC, "
                      "started_at DESC LIMIT 1",
                      "SELECT user_id, username FROM budgets WHERE username = ? OR user_id = ? "
                      "ORDER BY COALESCE(username = ?, FALSE) DESC"):
        rows = db.execute(statement, (ref, ref, ref))
        if rows:
            return rows[0][0], rows[0][1]
    return None


# -- admission and settlement ---------------------------------------------------------------------


def hold(db: Any, *, user_id: str, default: Optional[Budget], cost_micros: int, hold_id: str, holder: str,
         now: float, expires_at: float) -> Held:
    """
    Inside a transaction that holds L{user_lock}: admit a request whose
    worst case costs C{cost_micros} if the budget that applies to
    C{user_id} has room for it, and hold that much until it is settled.

    A user at or over the budget is refused even for a request of no known
    cost (C{cost_micros} 0: a model without a price); such a request takes
    no hold.
    """
    budget = effective(db, user_id, default)
    if budget is None:
        return Held(None, True)
    now_standing = standing(db, budget, now)
    if now_standing.spent_micros + now_standing.held_micros + max(cost_micros, 1) > budget.amount_micros:
        return Held(now_standing, False)
    if cost_micros > 0:
        db.execute("INSERT INTO budget_holds (id, user_id, day, amount_micros, holder, expires_at) "
                   "VALUES (?, ?, ?, ?, ?, ?)",
                   (hold_id, user_id, day_number(now), cost_micros, holder, expires_at))
    return Held(now_standing, True)


@dataclass(frozen=True)
class Settlement:
    """A finished request's hold, and what it really cost (added to the spend of the day it was admitted)."""

    hold_id: str
    user_id: str
    username: Optional[str]
    day: int
    cost_micros: int


def settle(db: Any, settlements: Iterable[Settlement]) -> None:
    """Inside a transaction: drop each hold and add its real cost to its user's spend of its day."""
    for one in settlements:
        db.execute("DELETE FROM budget_holds WHERE id = ?", (one.hold_id,))
        if one.cost_micros:
            db.execute(
                "INSERT INTO budget_spend (user_id, day, username, spent_micros) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (user_id, day) DO UPDATE SET "
                "spent_micros = budget_spend.spent_micros + excluded.spent_micros, "
                "username = COALESCE(excluded.username, budget_spend.username)",
                (one.user_id, one.day, one.username, one.cost_micros))


def keep(db: Any, holder: str, now: float, expires_at: float) -> None:
    """Push the expiry of C{holder}'s holds to C{expires_at}; delete everyone's expired holds."""
    db.execute("UPDATE budget_holds SET expires_at = ? WHERE holder = ?", (expires_at, holder))
    db.execute("DELETE FROM budget_holds WHERE expires_at <= ?", (now,))


__all__ = ["Budget", "DAY_SECONDS", "Held", "PERIODS", "Settlement", "Standing", "budget_user_ids", "day_number",
           "effective", "exclusive", "find_user", "hold", "keep", "lock_key", "own_budget", "own_budgets", "period_days",
           "remove_budget", "set_budget", "settle", "spenders", "standing", "user_lock"]
