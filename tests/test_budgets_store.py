"""
Budgets in the store, the same on SQLite and on a real PostgreSQL server
(BRIDGEPROXY_TEST_POSTGRES): budgets set and removed, holds taken only
when they fit (also by many connections at once), settled, renewed and
expired, and users found by name or id.
"""

from __future__ import annotations

import threading

import pytest

from bridgeproxy.budgets import report
from bridgeproxy.store import Database
from bridgeproxy.store.budgets import (
    Budget, Settlement, budget_user_ids, day_number, exclusive, find_user, hold, keep, own_budget, own_budgets,
    remove_budget, set_budget, settle, standing, user_lock,
)
from bridgeproxy.types import Interception
from tests.pg import drop_pg_schema, pg_schema

NOW = 1_795_514_400.0  # 2026-11-24T10:00:00Z
ALICE = "3f6c2a1e-9b8d-4c7e-a5f4-0d1e2c3b4a59"
BOB = "8f3e1c7a-2b4d-4e6f-8a9b-0c1d2e3f4a5b"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:{tmp_path / 'store.db'}"
        return
    url, schema = pg_schema()
    yield url
    drop_pg_schema(schema)


@pytest.fixture
def db(url):
    database = Database(url)
    database.migrate()
    yield database
    database.close()


def take(db, user_id, cost, hold_id, *, default=None, holder="p1", now=NOW, ttl=60.0):
    return exclusive(db, [user_lock(user_id)], lambda db: hold(
        db, user_id=user_id, default=default, cost_micros=cost, hold_id=hold_id, holder=holder, now=now,
        expires_at=now + ttl))


def test_budgets_are_set_replaced_listed_and_removed(db):
    """A user has at most one budget of their own; setting it again replaces it; removing it twice fails."""
    set_budget(db, ALICE, 5_000_000, "month", "alice")
    set_budget(db, BOB, 1_000_000, "day", "bob")
    set_budget(db, ALICE, 7_000_000, "week", "alice")
    assert own_budget(db, ALICE) == Budget(ALICE, 7_000_000, "week", "alice")
    assert own_budgets(db) == [Budget(ALICE, 7_000_000, "week", "alice"), Budget(BOB, 1_000_000, "day", "bob")]
    assert budget_user_ids(db) == {ALICE, BOB}
    assert remove_budget(db, ALICE) is True
    assert remove_budget(db, ALICE) is False
    assert own_budget(db, ALICE) is None and budget_user_ids(db) == {BOB}
    with pytest.raises(ValueError):
        set_budget(db, ALICE, 1, "year")


def test_a_hold_is_taken_only_when_it_fits(db):
    """Holds add up against the budget with what was spent; one that would pass the amount is refused."""
    set_budget(db, ALICE, 1000, "month")
    assert take(db, ALICE, 400, "a").held
    assert take(db, ALICE, 400, "b").held
    refused = take(db, ALICE, 201, "c")
    assert not refused.held and (refused.standing.spent_micros, refused.standing.held_micros) == (0, 800)
    assert take(db, ALICE, 200, "d").held
    exclusive(db, [], lambda db: settle(db, [Settlement("a", ALICE, "alice", day_number(NOW), 100)]))
    now = standing(db, own_budget(db, ALICE), NOW)
    assert (now.spent_micros, now.held_micros, now.left_micros) == (100, 600, 300)
    # At the amount, even a request of no known cost is refused; below it, it goes and holds nothing.
    assert take(db, ALICE, 0, "e").held
    assert take(db, ALICE, 300, "f").held
    assert not take(db, ALICE, 0, "g").held
    assert db.execute("SELECT COUNT(*) FROM budget_holds WHERE id IN ('e', 'g')")[0][0] == 0


def test_no_budget_no_hold_and_the_default_applies_to_everyone_else(db):
    """A user with no budget and no default is let through untouched; with a default, it is theirs."""
    assert take(db, ALICE, 10**12, "a").standing is None
    assert db.execute("SELECT COUNT(*) FROM budget_holds")[0][0] == 0
    default = Budget("", 500, "day", own=False)
    held = take(db, ALICE, 500, "b", default=default)
    assert held.held and held.standing.budget == Budget(ALICE, 500, "day", own=False)
    assert not take(db, ALICE, 1, "c", default=default).held
    set_budget(db, BOB, 10, "day")
    assert not take(db, BOB, 11, "d", default=default).held  # their own, not the default


def test_holds_expire_unless_their_holder_renews_them(db):
    """Another holder's holds stop counting at their expiry and are then deleted; renewed ones stay."""
    set_budget(db, ALICE, 1000, "month")
    assert take(db, ALICE, 600, "mine", holder="p1").held
    assert take(db, ALICE, 400, "theirs", holder="p2").held
    assert not take(db, ALICE, 1, "x", now=NOW + 30).held
    exclusive(db, [], lambda db: keep(db, "p1", NOW + 50, NOW + 110))
    assert take(db, ALICE, 400, "y", now=NOW + 61).held  # p2's hold expired at NOW + 60
    exclusive(db, [], lambda db: keep(db, "p1", NOW + 100, NOW + 160))
    assert sorted(r[0] for r in db.execute("SELECT id FROM budget_holds")) == ["mine", "y"]


def test_settling_drops_the_hold_and_spends_per_user_and_day(db):
    """Costs add up per user and admission day; a cost of 0 only releases; usernames are kept."""
    set_budget(db, ALICE, 10**6, "month")
    take(db, ALICE, 50, "a")
    take(db, ALICE, 50, "b")
    day = day_number(NOW)
    exclusive(db, [], lambda db: settle(db, [Settlement("a", ALICE, "alice", day, 30),
                                             Settlement("b", ALICE, None, day, 0),
                                             Settlement("c", ALICE, None, day - 1, 7)]))
    assert db.execute("SELECT COUNT(*) FROM budget_holds")[0][0] == 0
    assert sorted(db.execute("SELECT day, username, spent_micros FROM budget_spend")) == [
        (day - 1, None, 7), (day, "alice", 30)]


def test_a_transaction_that_fails_leaves_nothing(db):
    """exclusive() rolls back what its work did before it failed."""
    set_budget(db, ALICE, 1000, "month")

    def work(db):
        hold(db, user_id=ALICE, default=None, cost_micros=5, hold_id="a", holder="p", now=NOW, expires_at=NOW + 9)
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        exclusive(db, [user_lock(ALICE)], work)
    assert db.execute("SELECT COUNT(*) FROM budget_holds")[0][0] == 0


def test_many_connections_at_once_never_hold_more_than_the_budget(url):
    """
    Forty connections, each in its own thread, try to hold 100 of a
    budget of 1000 for the same user at the same moment: exactly ten get
    it, whatever the interleaving.
    """
    setup = Database(url)
    setup.migrate()
    set_budget(setup, ALICE, 1000, "month")
    connections = [Database(url) for _ in range(40)]
    start = threading.Barrier(len(connections))
    outcomes = []

    def one(db, i):
        start.wait()
        outcomes.append(take(db, ALICE, 100, f"h{i}").held)
    threads = [threading.Thread(target=one, args=(db, i)) for i, db in enumerate(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes).count(True) == 10 and len(outcomes) == 40
    assert setup.execute("SELECT SUM(amount_micros) FROM budget_holds")[0][0] == 1000
    for db in connections + [setup]:
        db.close()


def test_users_are_found_by_name_or_id_in_the_keystore_records_and_budgets(db):
    """find_user: key store users first, then recorded initiators (Coder users), then budgets' users."""
    db.ensure_user("alice", ALICE)
    assert find_user(db, "alice") == (ALICE, "alice") and find_user(db, ALICE) == (ALICE, "alice")
    record = Interception(
        id="i1", started_at=NOW, ended_at=NOW, provider="openai", route="chat", intercepted=True, method="POST",
        model=None, streamed=False, client="x", client_session_id=None, user_agent=None, initiator_id=BOB,
        initiator_username="bob", credential_user_id=None, credential_kind=None, credential_hint=None,
        upstream_status=200)
    db.insert_interceptions([record])
    assert find_user(db, "bob") == (BOB, "bob") and find_user(db, BOB) == (BOB, "bob")
    set_budget(db, "u-9", 1, "day", "carol")
    assert find_user(db, "carol") == ("u-9", "carol")
    assert find_user(db, "nobody") is None


def test_the_report_lists_own_budgets_then_default_spenders(db):
    """Own budgets come first; under a default, those who spent in its period follow, each with their standing."""
    set_budget(db, ALICE, 1000, "month", "alice")
    day = day_number(NOW)
    exclusive(db, [], lambda db: settle(db, [Settlement("x", BOB, "bob", day, 30),
                                             Settlement("y", ALICE, "alice", day, 20),
                                             Settlement("z", "u-old", "old", day - 40, 5)]))
    rows = report(db, Budget("", 100, "month", own=False), NOW)
    assert [(r["username"], r["source"], r["amount_micros"], r["spent_micros"], r["left_micros"]) for r in rows] == [
        ("alice", "own", 1000, 20, 980), ("bob", "default", 100, 30, 70)]
    assert rows[0]["period_start"] == "2026-11-01T00:00:00Z" and rows[0]["period_end"] == "2026-12-01T00:00:00Z"
    assert report(db, None, NOW) == rows[:1]
    assert report(db, None, NOW, (BOB, "bob"))[0]["source"] is None
