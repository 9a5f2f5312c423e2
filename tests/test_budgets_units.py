"""
Budgets piece by piece, on a SQLite store in memory: the message a refused
user reads, the report the command line and C{/api/v1/budgets} show, the
default budget read from the configuration, amounts, and the store's
queries at their edges (the last day of a period, a hold that expires this
second, the order users are listed in).  The advisory locks PostgreSQL
takes are checked on a fake connection that records the statements.
"""

from __future__ import annotations

import calendar
import hashlib
from types import SimpleNamespace

import pytest

from bridgeproxy.budgets import (
    BudgetExceeded, BudgetUnavailable, asked_tokens, default_budget, describe, iso_day, money, parse_amount, refusal,
    report, worst_case,
)
from bridgeproxy.prices import price
from bridgeproxy.store.budgets import (
    Budget, Settlement, Standing, budget_user_ids, day_number, effective, exclusive, find_user, hold, keep, lock_key,
    own_budget, own_budgets, period_days, remove_budget, set_budget, settle, spenders, standing, user_lock,
)
from bridgeproxy.types import Interception
from tests.syncstore import SyncStore

NOW = float(calendar.timegm((2026, 11, 24, 10, 0, 0)))  # a Tuesday
DAY = day_number(NOW)
ALICE = "3f6c2a1e-9b8d-4c7e-a5f4-0d1e2c3b4a59"
BOB = "8f3e1c7a-2b4d-4e6f-8a9b-0c1d2e3f4a5b"


@pytest.fixture
def db():
    return SyncStore().db


def spend(db, user_id, day, micros, username=None):
    db.execute("INSERT INTO budget_spend (user_id, day, username, spent_micros) VALUES (?, ?, ?, ?)",
               (user_id, day, username, micros))


def put_hold(db, hold_id, user_id, micros, expires_at, day=DAY, holder="p"):
    db.execute("INSERT INTO budget_holds (id, user_id, day, amount_micros, holder, expires_at) "
               "VALUES (?, ?, ?, ?, ?, ?)", (hold_id, user_id, day, micros, holder, expires_at))


# -- the refusal ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("period, spent, held, cost, who, message, wait", [
    ("month", 25_000_000, 0, 1_000, "alice",
     "Budget exceeded: the monthly budget of 25.000000 for alice is used up (25.000000 spent). "
     "It renews at 2026-12-01T00:00:00Z.", 6 * 86400 + 14 * 3600),
    ("week", 3_000_000, 2_000_000, 100, None,
     "Budget exceeded: the weekly budget of 5.000000 for bob is used up (3.000000 spent, 2.000000 held by requests "
     "in flight). It renews at 2026-11-30T00:00:00Z.", 5 * 86400 + 14 * 3600),
    ("day", 1_000_000, 500_000, 4_000_000, "carol",
     "Budget exceeded: the daily budget of 5.000000 for carol has 3.500000 left, less than this request may cost "
     "(4.000000; 1.000000 spent, 0.500000 held by requests in flight). It renews at 2026-11-25T00:00:00Z.",
     14 * 3600),
    ("day", 0, 0, 6_000_000, "", "Budget exceeded: the daily budget of 5.000000 for bob has 5.000000 left, less than "
     "this request may cost (6.000000; 0.000000 spent). It renews at 2026-11-25T00:00:00Z.", 14 * 3600),
])
def test_the_refusal_says_what_is_spent_held_left_and_when_it_renews(period, spent, held, cost, who, message, wait):
    """The 429's message and Retry-After: the seconds to the period's end."""
    amount = 25_000_000 if period == "month" else 5_000_000
    start, end = period_days(period, NOW)
    found = refusal(Standing(Budget(BOB, amount, period, "bob"), start, end, spent, held), cost, NOW, who)
    assert isinstance(found, BudgetExceeded) and found.status == 429 and found.kind == "budget"
    assert found.message == message
    assert found.headers == {"Retry-After": str(wait)}


def test_the_refusal_names_the_user_by_id_when_nothing_else_is_known():
    """Without a username anywhere, the user id; a second before the renewal, Retry-After is 1 (never 0)."""
    start, end = period_days("day", NOW)
    found = refusal(Standing(Budget(BOB, 10, "day"), start, end, 10, 0), 1, end * 86400 - 0.5)
    assert f"for {BOB} is used up" in found.message and found.headers["Retry-After"] == "1"
    assert refusal(Standing(Budget(BOB, 10, "day"), start, end, 10, 0), 1, end * 86400 + 30).headers == {
        "Retry-After": "1"}


def test_the_errors_are_recorded_as_refusals():
    """A budget refusal and an unchecked budget are both 'refused' in the record, each with its reason."""
    assert (BudgetExceeded.status, BudgetExceeded.record_status, BudgetExceeded.reason) == (429, "refused", "budget")
    assert (BudgetUnavailable.status, BudgetUnavailable.kind, BudgetUnavailable.record_status,
            BudgetUnavailable.reason) == (503, "api_error", "refused", "budget_unavailable")


# -- amounts ----------------------------------------------------------------------------------------------


def test_worst_case_rounds_up_and_takes_the_dearest_input_price():
    """The dearest of input, cache read and cache write prices; a fraction of a micro-unit is one more."""
    assert worst_case(price(1.0, 0.0, cache_read=3.0), 3, {"max_tokens": 1}, 10) == 3
    assert worst_case(price(1.0, 0.0, cache_write=2.0), 4, {"max_tokens": 1}, 10) == 4
    assert worst_case(price(0.0, 1.5), 0, {"max_tokens": 3}, 10) == 5
    assert worst_case(price(0.0, 1.0), 0, {"max_tokens": 2_000_000}, 10) == 2_000_000
    assert worst_case(price(1.0, 0.0), 7, None, 10) == 3


def test_the_first_output_cap_counts():
    """max_tokens first, then max_output_tokens, then max_completion_tokens; a body that is no object: the assumed."""
    assert asked_tokens({"max_tokens": 5, "max_output_tokens": 6, "max_completion_tokens": 7}, 9) == 5
    assert asked_tokens({"max_tokens": None, "max_output_tokens": 6, "max_completion_tokens": 7}, 9) == 6
    assert asked_tokens({"max_completion_tokens": 1}, 9) == 1
    assert asked_tokens({"max_tokens": 10_000_000}, 9) == 10_000_000
    assert asked_tokens({"max_tokens": 10_000_001}, 9) == 10_000_000
    assert asked_tokens(None, 9) == 9


@pytest.mark.parametrize("text, message", [
    ("1e3", "must be a plain amount of 0 or more (25, 12.50), got '1e3'"),
    ("0.0000001", "at most six decimals (a micro-unit), got '0.0000001'"),
    ("1000000000.000001", "at most 1000000000, got '1000000000.000001'"),
])
def test_amounts_refused_say_why(text, message):
    with pytest.raises(ValueError) as raised:
        parse_amount(text)
    assert str(raised.value) == message


def test_amounts_up_to_a_billion_with_six_decimals():
    """The largest amount and the smallest step are taken; spaces around are fine, inside not."""
    assert parse_amount("1000000000.000000") == 10**15
    assert parse_amount(" 12.345678\n") == 12_345_678
    with pytest.raises(ValueError):
        parse_amount("1 2")
    with pytest.raises(ValueError):
        parse_amount("12.")


def test_money_and_days():
    """Large sums keep every digit; a day number is its UTC midnight."""
    assert money(1_234_567_890_123) == "1234567.890123" and money(-1) == "-0.000001"
    assert iso_day(0) == "1970-01-01T00:00:00Z" and iso_day(DAY) == "2026-11-24T00:00:00Z"


@pytest.mark.parametrize("amount, period, expected", [
    (None, "month", None),
    (0, "day", Budget("", 0, "day", own=False)),
    (2.5, "week", Budget("", 2_500_000, "week", own=False)),
    (0.0000015, "month", Budget("", 2, "month", own=False)),
    (0.29, "month", Budget("", 290_000, "month", own=False)),
])
def test_the_default_budget_comes_from_the_configuration(amount, period, expected):
    """[budgets] default_amount in units, to the nearest micro-unit; no amount is no default."""
    assert default_budget(SimpleNamespace(default_amount=amount, default_period=period)) == expected


# -- the report ---------------------------------------------------------------------------------------------


def test_describe_without_a_budget_is_all_empty():
    assert describe(BOB, "bob", None) == {
        "user_id": BOB, "username": "bob", "source": None, "amount_micros": None, "period": None,
        "period_start": None, "period_end": None, "spent_micros": None, "held_micros": None, "left_micros": None}


def test_describe_a_default_budget_overspent():
    """The username falls back to the budget's; what is left never goes below 0."""
    start, end = period_days("week", NOW)
    found = describe(BOB, None, Standing(Budget(BOB, 100, "week", "bobby", own=False), start, end, 90, 30))
    assert found == {"user_id": BOB, "username": "bobby", "source": "default", "amount_micros": 100,
                     "period": "week", "period_start": "2026-11-23T00:00:00Z", "period_end": "2026-11-30T00:00:00Z",
                     "spent_micros": 90, "held_micros": 30, "left_micros": 0}


def test_the_report_of_one_user_and_of_everyone(db):
    """Own budgets by name; then the default's spenders of this period only, not the owners again."""
    set_budget(db, BOB, 1000, "day", "bob", now=NOW)
    set_budget(db, ALICE, 2000, "week", "alice", now=NOW)
    spend(db, ALICE, DAY, 300, "alice")
    spend(db, BOB, DAY - 1, 50, "bob")
    spend(db, "u-carol", DAY - 1, 40, "carol")  # Monday: this week
    spend(db, "u-dave", DAY - 2, 30, "dave")  # Sunday: last week
    put_hold(db, "h", ALICE, 25, NOW + 60)
    default = Budget("", 500, "week", own=False)
    rows = report(db, default, NOW)
    assert [(r["username"], r["source"], r["spent_micros"], r["held_micros"], r["left_micros"]) for r in rows] == [
        ("alice", "own", 300, 25, 1675), ("bob", "own", 0, 0, 1000), ("carol", "default", 40, 0, 460)]
    assert report(db, default, NOW, ("u-dave", "dave")) == [describe("u-dave", "dave", standing(
        db, Budget("u-dave", 500, "week", own=False), NOW))]
    assert report(db, None, NOW, ("u-dave", "dave"))[0]["source"] is None
    assert report(db, None, NOW, (ALICE, None))[0]["username"] == "alice"


# -- the store's queries --------------------------------------------------------------------------------------


def test_budgets_are_listed_by_name_then_id(db):
    """Users without a name are listed by their id among the names."""
    set_budget(db, "u-2", 1, "day", None, now=NOW)
    set_budget(db, "u-1", 1, "day", "zed", now=NOW)
    set_budget(db, "a-1", 1, "day", "m", now=NOW)
    set_budget(db, "a-0", 1, "day", "m", now=NOW)
    assert [b.user_id for b in own_budgets(db)] == ["a-0", "a-1", "u-2", "u-1"]
    assert own_budgets(db)[0] == Budget("a-0", 1, "day", "m")
    assert budget_user_ids(db) == frozenset({"u-2", "u-1", "a-1", "a-0"})
    assert db.execute("SELECT updated_at FROM budgets WHERE user_id = 'a-0'") == [(NOW,)]


def test_setting_a_budget_again_replaces_every_field(db):
    set_budget(db, ALICE, 5, "day", "alice", now=NOW)
    set_budget(db, ALICE, 7, "month", "al", now=NOW + 1)
    assert db.execute("SELECT user_id, username, amount_micros, period, updated_at FROM budgets") == [
        (ALICE, "al", 7, "month", NOW + 1)]
    with pytest.raises(ValueError) as raised:
        set_budget(db, ALICE, 7, "fortnight")
    assert str(raised.value) == "a budget's period is day, week or month, not 'fortnight'"
    with pytest.raises(ValueError) as raised:
        period_days("hour", NOW)
    assert str(raised.value) == "a budget's period is day, week or month, not 'hour'"


def test_effective_budgets(db):
    """A user's own budget, else the default made theirs (with no name), else none."""
    set_budget(db, ALICE, 5, "day", "alice", now=NOW)
    assert effective(db, ALICE, Budget("", 9, "week", own=False)) == Budget(ALICE, 5, "day", "alice")
    assert effective(db, BOB, Budget("", 9, "week", own=False)) == Budget(BOB, 9, "week", None, own=False)
    assert effective(db, BOB, None) is None
    assert own_budget(db, BOB) is None and remove_budget(db, BOB) is False


def test_standing_counts_this_period_and_live_holds_only(db):
    """Spend of the period's first and last day counts, not the day after; holds count until their expiry."""
    start, end = period_days("week", NOW)
    for day, micros in ((start - 1, 1), (start, 10), (end - 1, 100), (end, 1000)):
        spend(db, ALICE, day, micros)
    put_hold(db, "live", ALICE, 20, NOW + 0.5)
    put_hold(db, "expired", ALICE, 200, NOW)
    put_hold(db, "next-week", ALICE, 2000, NOW + 60, day=end)
    put_hold(db, "other", BOB, 5, NOW + 60)
    found = standing(db, Budget(ALICE, 1000, "week"), NOW)
    assert (found.start_day, found.end_day, found.spent_micros, found.held_micros) == (start, end, 110, 20)
    assert found.left_micros == 870 and found.ends_at == end * 86400.0
    assert isinstance(found.ends_at, float)


def test_a_hold_that_exactly_fills_the_budget_is_taken(db):
    """Spent + held + the new hold may equal the amount, not pass it."""
    set_budget(db, ALICE, 100, "day", now=NOW)
    spend(db, ALICE, DAY, 40)
    put_hold(db, "h0", ALICE, 10, NOW + 60)
    assert hold(db, user_id=ALICE, default=None, cost_micros=51, hold_id="h1", holder="me", now=NOW,
                expires_at=NOW + 60).held is False
    taken = hold(db, user_id=ALICE, default=None, cost_micros=50, hold_id="h1", holder="me", now=NOW,
                 expires_at=NOW + 99)
    assert taken.held and (taken.standing.spent_micros, taken.standing.held_micros) == (40, 10)
    assert db.execute("SELECT id, user_id, day, amount_micros, holder, expires_at FROM budget_holds WHERE id = 'h1'"
                      ) == [("h1", ALICE, DAY, 50, "me", NOW + 99)]


def test_settling_keeps_a_known_username(db):
    """A settlement without a username does not erase the one already recorded for the day."""
    settle(db, [Settlement("x", ALICE, "alice", DAY, 5), Settlement("y", ALICE, None, DAY, 6)])
    assert db.execute("SELECT username, spent_micros FROM budget_spend") == [("alice", 11)]


def test_keep_renews_only_the_holders_holds_and_drops_the_expired(db):
    put_hold(db, "mine", ALICE, 1, NOW + 1, holder="me")
    put_hold(db, "theirs", ALICE, 1, NOW + 1, holder="them")
    put_hold(db, "gone", ALICE, 1, NOW, holder="them")
    keep(db, "me", NOW, NOW + 30)
    assert sorted(db.execute("SELECT id, expires_at FROM budget_holds")) == [("mine", NOW + 30), ("theirs", NOW + 1)]


def test_spenders_since_a_day_by_name(db):
    """Everyone who spent on or after the day, by their latest known name (or id)."""
    spend(db, "u-b", DAY, 1, "bob")
    spend(db, "u-a", DAY - 1, 1, None)
    spend(db, "u-c", DAY, 1, None)
    spend(db, "u-z", DAY - 2, 1, "aaa")
    assert spenders(db, DAY - 1) == [("u-b", "bob"), ("u-a", None), ("u-c", None)]


def test_find_user_prefers_a_name_to_an_id_and_the_latest_record(db):
    """A key store user named like another's id is found by name first; among records, the latest."""
    db.ensure_user("u-2", "u-1")
    db.ensure_user("x", "u-2")
    assert find_user(db, "u-2") == ("u-1", "u-2")
    base = dict(started_at=NOW, ended_at=NOW, provider="openai", route="chat", intercepted=True, method="POST",
                model=None, streamed=False, client="x", client_session_id=None, user_agent=None,
                credential_user_id=None, credential_kind=None, credential_hint=None, upstream_status=200)
    db.insert_interceptions([
        Interception(id="1", initiator_id="c-old", initiator_username="carol", **{**base, "started_at": NOW - 9}),
        Interception(id="2", initiator_id="c-new", initiator_username="carol", **base),
        Interception(id="3", initiator_id="carol", initiator_username=None, **base),
        Interception(id="4", initiator_id=None, initiator_username="dan", **base)])
    assert find_user(db, "carol") == ("c-new", "carol")
    assert find_user(db, "dan") is None
    set_budget(db, "b-2", 1, "day", "b-1", now=NOW)
    set_budget(db, "b-1", 1, "day", "eve", now=NOW)
    assert find_user(db, "b-1") == ("b-2", "b-1")


# -- transactions ---------------------------------------------------------------------------------------------


class Recording:
    """A PostgreSQL connection as far as L{exclusive} can tell: it records the statements."""

    dialect = "postgresql"

    def __init__(self):
        self.statements: list = []

    def execute(self, statement, params=()):
        self.statements.append((statement, tuple(params)))
        return []


def test_postgresql_takes_each_lock_once_in_order_then_commits():
    """Advisory locks by sorted name (two transactions never wait on each other), each once."""
    db = Recording()
    assert exclusive(db, ["budget:b", "budget:a", "budget:b"], lambda db: "done") == "done"
    assert db.statements == [("BEGIN", ()), ("SELECT pg_advisory_xact_lock(?)", (lock_key("budget:a"),)),
                             ("SELECT pg_advisory_xact_lock(?)", (lock_key("budget:b"),)), ("COMMIT", ())]


def test_postgresql_rolls_back_a_failed_transaction():
    db = Recording()

    def work(db):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        exclusive(db, [user_lock("u")], work)
    assert db.statements == [("BEGIN", ()), ("SELECT pg_advisory_xact_lock(?)", (lock_key("budget:u"),)),
                             ("ROLLBACK", ())]


def test_sqlite_takes_the_write_lock_at_the_start(db):
    """BEGIN IMMEDIATE: the transaction is open (and writing) while the work runs, committed after."""
    seen = []
    exclusive(db, ["ignored"], lambda d: seen.append(d.execute("SELECT 1")))
    assert seen == [[(1,)]]
    assert db.execute("BEGIN IMMEDIATE") == [] and db.execute("ROLLBACK") == []


def test_lock_keys_are_the_same_in_every_process():
    """The first eight bytes of the name's SHA-256, as a signed 64-bit number: any process computes the same."""
    for name in ("budget:alice", "budget:\udcff", "budget:\u00e9"):
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()
        assert lock_key(name) == int.from_bytes(digest[:8], "big", signed=True)
    assert lock_key("budget:alice") == -3934307117678535200
    assert any(lock_key(f"budget:{i}") < 0 for i in range(8))
    assert user_lock("u-1") == "budget:u-1"


def test_worst_case_when_the_plain_input_is_the_dearest():
    """Cache prices below the input price: the prompt is held at the input price."""
    assert worst_case(price(4.0, 0.0, cache_read=1.0, cache_write=2.0), 3, {"max_tokens": 1}, 10) == 4


def test_periods_and_days_are_utc_whatever_the_servers_zone(monkeypatch):
    """A server in another time zone renews budgets at UTC midnight all the same."""
    import time
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert iso_day(DAY) == "2026-11-24T00:00:00Z"
        start, end = period_days("week", NOW)
        found = refusal(Standing(Budget(BOB, 1, "week", "bob"), start, end, 1, 0), 1, NOW)
        assert found.message.endswith("It renews at 2026-11-30T00:00:00Z.")
    finally:
        monkeypatch.undo()
        time.tzset()


def test_days_are_floored(db):
    """Epoch day numbers round down, also before 1970."""
    assert (day_number(-1), day_number(0), day_number(86399.9), day_number(86400)) == (-1, 0, 0, 1)


def test_the_last_micro_unit_lets_one_unpriced_request_through(db):
    """One micro-unit left is room enough for a request of no known cost; a cost of one micro-unit is held."""
    set_budget(db, ALICE, 100, "day", now=NOW)
    spend(db, ALICE, DAY, 98)
    assert hold(db, user_id=ALICE, default=None, cost_micros=1, hold_id="one", holder="me", now=NOW,
                expires_at=NOW + 60).held
    assert db.execute("SELECT amount_micros FROM budget_holds WHERE id = 'one'") == [(1,)]
    db.execute("DELETE FROM budget_holds")
    db.execute("UPDATE budget_spend SET spent_micros = 99 WHERE day = ?", (DAY,))
    assert hold(db, user_id=ALICE, default=None, cost_micros=0, hold_id="free", holder="me", now=NOW,
                expires_at=NOW + 60).held
