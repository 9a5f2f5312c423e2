"""
The limits counted in the store (store/limits.py) at their edges, on SQLite
in memory; and the PostgreSQL dialect of the token bucket and of the
renewal on a stand-in: SQLite with PostgreSQL's LEAST and GREATEST, which
records the statements (a real server runs them in test_shared_limits.py
when BRIDGEPROXY_TEST_POSTGRES is set).
"""

from __future__ import annotations

import pytest

from bridgeproxy.store.budgets import exclusive
from bridgeproxy.store.limits import keep_slots, prune_buckets, release_slots, slots_in_use, take_slot, take_token
from tests.syncstore import SyncStore

NOW = 1_795_514_400.0


class PostgresOverSQLite:
    """The PostgreSQL dialect as far as the token bucket and the renewal go: LEAST, GREATEST, LOCK TABLE."""

    dialect = "postgresql"

    def __init__(self):
        self.db = SyncStore().db
        self.db._conn.create_function("LEAST", -1, min)
        self.db._conn.create_function("GREATEST", -1, max)
        self.statements: list[str] = []

    def execute(self, statement, params=()):
        self.statements.append(statement)
        if statement.startswith("LOCK TABLE"):
            return []
        assert "MIN(" not in statement and "MAX(" not in statement, "SQLite's functions sent to PostgreSQL"
        return self.db.execute(statement, params)


@pytest.fixture(params=["sqlite", "postgresql"])
def bucket_db(request):
    return SyncStore().db if request.param == "sqlite" else PostgresOverSQLite()


def test_a_bucket_on_either_dialect(bucket_db):
    """The same bucket on both dialects: the burst first, then the rate; a refusal says how long."""
    db = bucket_db
    assert [take_token(db, "u", 2.0, 2, NOW) for _ in range(2)] == [0, 0]
    assert take_token(db, "u", 2.0, 2, NOW) == pytest.approx(0.5)
    assert take_token(db, "u", 2.0, 2, NOW + 0.5) == 0
    assert take_token(db, "u", 2.0, 2, NOW + 0.5) == pytest.approx(0.5)
    assert take_token(db, "u", 2.0, 2, NOW + 60) == 0
    assert take_token(db, "u", 2.0, 2, NOW + 60) == 0
    assert take_token(db, "u", 2.0, 2, NOW + 60) == pytest.approx(0.5)
    assert take_token(db, "u", 2.0, 2, NOW + 59) == pytest.approx(0.5)  # a clock behind: no tokens


def test_a_burst_of_one_token_a_second(bucket_db):
    assert take_token(bucket_db, "k", 1.0, 1, NOW) == 0
    assert take_token(bucket_db, "k", 1.0, 1, NOW + 0.25) == pytest.approx(0.75)
    assert take_token(bucket_db, "k", 1.0, 1, NOW + 1) == 0


def test_renewal_on_postgresql_locks_the_table_first():
    """Every other writer waits while the total is set again (PostgreSQL's LOCK TABLE), then the rows are kept."""
    db = PostgresOverSQLite()
    take_slot(db.db, "a", 10, NOW + 60)
    take_slot(db.db, "b", 10, NOW + 30)
    keep_slots(db, "a", NOW + 30, NOW + 90)
    assert db.statements[0] == "LOCK TABLE limit_slots IN SHARE ROW EXCLUSIVE MODE"
    assert len(db.statements) == 4
    assert db.db.execute("SELECT holder, in_flight, expires_at FROM limit_slots ORDER BY holder") == [
        ("", 1, 1e18), ("a", 1, NOW + 90)]


def test_edges_of_slots_and_buckets():
    """A slot taken again by its holder counts twice and renews its expiry; pruning keeps a bucket used at the cutoff."""
    db = SyncStore().db
    assert take_slot(db, "a", 2, NOW + 10) and take_slot(db, "a", 2, NOW + 20) and not take_slot(db, "a", 2, NOW + 30)
    assert db.execute("SELECT in_flight, expires_at FROM limit_slots WHERE holder = 'a'") == [(2, NOW + 20)]
    exclusive(db, [], lambda db: keep_slots(db, "a", NOW + 20, NOW + 50))
    assert slots_in_use(db) == 2
    exclusive(db, [], lambda db: keep_slots(db, "other", NOW + 50, NOW + 80))
    assert slots_in_use(db) == 0
    release_slots(db, "a", 1)
    assert slots_in_use(db) == 0
    take_token(db, "edge", 1.0, 1, NOW)
    prune_buckets(db, NOW)
    assert db.execute("SELECT key FROM limit_buckets") == [("edge",)]
    prune_buckets(db, NOW + 0.001)
    assert db.execute("SELECT key FROM limit_buckets") == []
