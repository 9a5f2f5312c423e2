# -*- test-case-name: tests.test_shared_limits -*-
"""
C{[limits]} counted in the store, for the whole gateway: every worker
process and every instance on the same database.  Each check is one
statement that is atomic on its own, so that a request pays one round trip
per limit and needs no lock:

- B{The rate per initiator}: one token bucket per initiator
  (C{limit_buckets}), refilled and taken from by one C{INSERT ... ON
  CONFLICT DO UPDATE ... WHERE ... RETURNING} (L{take_token}).  PostgreSQL
  locks the conflicting row and evaluates the update on its latest
  version; SQLite runs each statement under its write lock.
- B{Requests in flight}: the gateway's total is one row of C{limit_slots}
  (holder C{''}), raised by a conditional C{UPDATE ... WHERE in_flight <
  limit} (PostgreSQL re-checks that condition on the row's latest version
  once it holds its lock, so two processes cannot both take the last
  slot); each process also counts its own in a row of its own, renewed
  with its budget holds.  The row of a process that died stops counting
  when it expires: every renewal (L{keep_slots}) deletes expired rows and
  sets the total again to the sum of the live ones, under a lock on the
  table, which also heals any drift (a process killed between two
  statements).

The clocks are the instances' own (unix time): keep them in step (NTP).  A
clock behind another's never makes tokens out of negative time.
"""

from __future__ import annotations

from typing import Any

#: The holder name of the row that holds the gateway's total of requests in flight.
TOTAL = ""


def _least_greatest(db: Any) -> tuple[str, str]:
    return ("LEAST", "GREATEST") if db.dialect == "postgresql" else ("MIN", "MAX")


def take_token(db: Any, key: str, rate: float, burst: float, now: float) -> float:
    """
    Take a token from C{key}'s bucket (C{rate} a second, at most C{burst}).

    @return: 0 when there was one; else the seconds until there is (nothing is written).
    """
    least, greatest = _least_greatest(db)
    refill = f"{least}(?, limit_buckets.tokens + {greatest}(0, ? - limit_buckets.updated_at) * ?)"
    taken = db.execute(
        f"INSERT INTO limit_buckets (key, tokens, updated_at) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
        f"tokens = {refill} - 1, updated_at = {greatest}(?, limit_buckets.updated_at) WHERE {refill} >= 1 "
        f"RETURNING tokens",
        (key, burst - 1, now, burst, now, rate, now, burst, now, rate))
    if taken:
        return 0.0
    rows = db.execute("SELECT tokens, updated_at FROM limit_buckets WHERE key = ?", (key,))
    tokens = min(burst, float(rows[0][0]) + max(0.0, now - float(rows[0][1])) * rate) if rows else burst
    return max(0.0, 1 - tokens) / rate


def take_slot(db: Any, holder: str, limit: int, expires_at: float) -> bool:
    """One more request in flight for C{holder}, if the gateway has fewer than C{limit}."""
    if db.dialect == "postgresql":
        return bool(db.execute(
            "WITH total AS (UPDATE limit_slots SET in_flight = in_flight + 1 WHERE holder = '' AND in_flight < ? "
            "RETURNING 1) INSERT INTO limit_slots (holder, in_flight, expires_at) SELECT ?, 1, ? FROM total "
            "ON CONFLICT (holder) DO UPDATE SET in_flight = limit_slots.in_flight + 1, "
            "expires_at = excluded.expires_at RETURNING 1", (limit, holder, expires_at)))
    # SQLite: the caller's transaction holds the write lock.
    if not db.execute("UPDATE limit_slots SET in_flight = in_flight + 1 WHERE holder = '' AND in_flight < ? "
                      "RETURNING 1", (limit,)):
        return False
    db.execute("INSERT INTO limit_slots (holder, in_flight, expires_at) VALUES (?, 1, ?) ON CONFLICT (holder) "
               "DO UPDATE SET in_flight = limit_slots.in_flight + 1, expires_at = excluded.expires_at",
               (holder, expires_at))
    return True


def release_slots(db: Any, holder: str, count: int) -> None:
    """C{count} fewer requests in flight for C{holder} and for the gateway (never below 0)."""
    _, greatest = _least_greatest(db)
    if db.dialect == "postgresql":
        db.execute("WITH mine AS (UPDATE limit_slots SET in_flight = GREATEST(0, in_flight - ?) WHERE holder = ?) "
                   "UPDATE limit_slots SET in_flight = GREATEST(0, in_flight - ?) WHERE holder = ''",
                   (count, holder, count))
        return
    db.execute(f"UPDATE limit_slots SET in_flight = {greatest}(0, in_flight - ?) WHERE holder IN (?, '')",
               (count, holder))


def keep_slots(db: Any, holder: str, now: float, expires_at: float) -> None:
    """
    Inside a transaction: renew C{holder}'s row until C{expires_at}, delete
    everyone's expired rows, and set the gateway's total to the sum of the
    rows left.
    """
    if db.dialect == "postgresql":
        # Excludes every other writer of the table (their updates wait) until the commit.
        db.execute("LOCK TABLE limit_slots IN SHARE ROW EXCLUSIVE MODE")
    db.execute("UPDATE limit_slots SET expires_at = ? WHERE holder = ?", (expires_at, holder))
    db.execute("DELETE FROM limit_slots WHERE holder <> '' AND expires_at <= ?", (now,))
    db.execute("UPDATE limit_slots SET in_flight = (SELECT COALESCE(SUM(in_flight), 0) FROM limit_slots "
               "WHERE holder <> '') WHERE holder = ''")


def slots_in_use(db: Any) -> int:
    """Requests in flight in the whole gateway."""
    rows = db.execute("SELECT in_flight FROM limit_slots WHERE holder = ''")
    return int(rows[0][0]) if rows else 0


def prune_buckets(db: Any, idle_since: float) -> None:
    """Delete the buckets not used since C{idle_since}: full again, they are the same as none."""
    db.execute("DELETE FROM limit_buckets WHERE updated_at < ?", (idle_since,))


__all__ = ["TOTAL", "keep_slots", "prune_buckets", "release_slots", "slots_in_use", "take_slot", "take_token"]
