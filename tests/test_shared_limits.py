"""
[limits] counted for the whole gateway, in the store: two bridges in memory
(two processes, as far as the store can tell) on one store answering at
once, on Clocks; then the store's queries on SQLite and on a real
PostgreSQL server (BRIDGEPROXY_TEST_POSTGRES).
"""

from __future__ import annotations

import sqlite3

import pytest
from twisted.logger import globalLogPublisher
from twisted.web import server

from bridgeproxy.config import parse
from bridgeproxy.proxy.admission import KEEP_EVERY, Admission
from bridgeproxy.proxy.limits import Limits
from bridgeproxy.store import Database
from bridgeproxy.store.budgets import exclusive
from bridgeproxy.store.limits import keep_slots, prune_buckets, release_slots, slots_in_use, take_slot, take_token
from tests.memory import TOKEN, USER_ID, gateway, json_answer
from tests.pg import drop_pg_schema, pg_schema
from tests.syncstore import SyncStore

AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
NOW = 1_795_514_400.0
UP = json_answer(200, {"id": "c", "object": "chat.completion", "model": "gpt-4o", "choices": []})


def shared_gateway(store, limits, holder, extra=None):
    """A gateway in memory whose [limits] are counted in C{store}, as process C{holder}."""
    g = gateway({"limits": {**limits, "shared": "store"}, "upstream": {"timeout": 600}, **(extra or {})})
    g.clock.advance(NOW)
    bridge = g.bridge
    bridge.admission = Admission(store, g.clock, bridge.config, bridge.prices, bridge.metrics, holder=holder)
    # As tap.build wires it: the pipeline's limits know they are counted in the store.
    bridge.limits = Limits(bridge.config.limits, g.clock, in_store=bridge.config.limits.counted_in_store(bridge.config))
    bridge.admission.reconfigure(bridge.config, bridge.prices, bridge.limits)
    bridge.admission.start()
    g.upstream.handler = UP
    return g


def hang(request):
    return server.NOT_DONE_YET


def answer(g):
    for request in g.upstream.requests:
        if not request.finished:
            request.setHeader(b"content-type", b"application/json")
            request.write(b'{"id":"c","object":"chat.completion","model":"gpt-4o","choices":[]}')
            request.finish()
    g.pump()


def test_the_rate_is_the_gateways_not_each_processes():
    """
    With per_initiator_rps = 1 and a burst of 2 counted in the store, an
    initiator gets 2 requests at once across two processes, not 2 in each;
    a second later, one more, whichever process takes it.
    """
    store = SyncStore()
    one, two = (shared_gateway(store, {"per_initiator_rps": 1, "per_initiator_burst": 2}, name)
                for name in ("one", "two"))
    codes = [g.send("POST", "/openai/v1/chat/completions", CHAT, AUTH).status for g in (one, two, one, two)]
    assert codes == [200, 200, 429, 429]
    last = two.send("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    assert last.json()["error"]["code"] == "rate_limit_exceeded" and last.headers["retry-after"] == [b"1"]
    for g in (one, two):
        g.clock.advance(1)
    assert [g.send("POST", "/openai/v1/chat/completions", CHAT, AUTH).status for g in (two, one)] == [200, 429]
    assert len(one.upstream.seen) + len(two.upstream.seen) == 3


def test_requests_in_flight_are_the_gateways_not_each_processes():
    """
    With max_concurrency = 2 counted in the store, two requests waiting in
    two processes fill the gateway: a third, in either, gets 503; once one
    ends, its slot is free again.
    """
    store = SyncStore()
    one, two = (shared_gateway(store, {"max_concurrency": 2}, name) for name in ("one", "two"))
    for g in (one, two):
        g.upstream.handler = hang
        g.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    _, transport = one.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    refused = transport.value()
    assert refused.startswith(b"HTTP/1.1 503") and b"concurrency limit" in refused
    assert len(one.upstream.requests) == len(two.upstream.requests) == 1
    assert store.db.execute("SELECT holder, in_flight FROM limit_slots ORDER BY holder") == [
        ("", 2), ("one", 1), ("two", 1)]
    answer(two)
    assert store.db.execute("SELECT holder, in_flight FROM limit_slots ORDER BY holder") == [
        ("", 1), ("one", 1), ("two", 0)]
    one.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    assert len(one.upstream.requests) == 2


def test_a_refusal_takes_no_slot_and_a_slot_is_given_back_whatever_the_end():
    """A request refused by the rate takes no slot; one whose client leaves, or that times out, gives its slot back."""
    store = SyncStore()
    g = shared_gateway(store, {"max_concurrency": 5, "per_initiator_rps": 0.001, "per_initiator_burst": 2},
                       "one", {"upstream": {"timeout": 10}})
    g.upstream.handler = hang
    protocol, _ = g.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    g.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    _, transport = g.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    assert transport.value().startswith(b"HTTP/1.1 429")
    assert store.db.execute("SELECT in_flight FROM limit_slots WHERE holder = 'one'") == [(2,)]
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure
    protocol.connectionLost(Failure(ConnectionDone()))
    g.pump()
    assert store.db.execute("SELECT in_flight FROM limit_slots WHERE holder = 'one'") == [(1,)]
    g.clock.advance(10)  # the other times out: 504
    assert store.db.execute("SELECT holder, in_flight FROM limit_slots ORDER BY holder") == [("", 0), ("one", 0)]
    assert sorted(r.status for r in g.records) == ["client_disconnected", "refused", "timeout"]


def test_the_slots_of_a_process_that_died_stop_counting():
    """A process that stopped renewing its row (it died with requests in flight) no longer fills the gateway."""
    store = SyncStore()
    exclusive(store.db, [], lambda db: (take_slot(db, "dead", 10, NOW + 60), take_slot(db, "dead", 10, NOW + 60)))
    g = shared_gateway(store, {"max_concurrency": 2}, "one")
    g.upstream.handler = hang
    _, transport = g.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    assert transport.value().startswith(b"HTTP/1.1 503")
    g.clock.pump([KEEP_EVERY] * 12)
    assert store.db.execute("SELECT holder, in_flight FROM limit_slots") == [("", 0)]  # the dead row is gone
    g.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    assert len(g.upstream.requests) == 1


def test_when_the_store_fails_the_rate_is_counted_in_the_process(captured):
    """The store down: requests still go, limited by this process's own buckets; the outage is logged once."""
    store = SyncStore()
    g = shared_gateway(store, {"per_initiator_rps": 0.001, "per_initiator_burst": 2}, "one")
    store.failing = sqlite3.OperationalError("database is locked")
    codes = [g.send("POST", "/openai/v1/chat/completions", CHAT, AUTH).status for _ in range(3)]
    assert codes == [200, 200, 429]
    assert len([line for line in captured if "until it answers" in line]) == 1
    assert g.bridge.metrics.get("admission_unchecked") == 3


def test_limits_counted_in_the_process_never_ask_the_store():
    """shared = "process": the limits are this process's, and a request without a budget costs no store call."""
    store = SyncStore()
    g = gateway({"limits": {"per_initiator_rps": 1, "max_concurrency": 3, "shared": "process"}})
    bridge = g.bridge
    bridge.admission = Admission(store, g.clock, bridge.config, bridge.prices, bridge.metrics)
    bridge.limits = Limits(bridge.config.limits, g.clock, in_store=bridge.config.limits.counted_in_store(bridge.config))
    bridge.admission.reconfigure(bridge.config, bridge.prices, bridge.limits)
    bridge.admission.start()
    calls = store.calls
    g.upstream.handler = UP
    assert [g.send("POST", "/openai/v1/chat/completions", CHAT, AUTH).status for _ in range(2)] == [200, 429]
    assert store.calls == calls


@pytest.mark.parametrize("settings, expected", [
    ({}, False),
    ({"workers": 2}, True),
    ({"database": "postgresql://db.internal/bridge"}, True),
    ({"limits": {"shared": "process"}, "workers": 4}, False),
    ({"limits": {"shared": "store"}}, True),
])
def test_auto_counts_in_the_store_with_workers_or_postgresql(settings, expected):
    """shared = "auto" counts in the store with several workers or a PostgreSQL store; store/process decide it."""
    config = parse(settings, environ={})
    assert config.limits.counted_in_store(config) is expected


def test_shared_must_be_one_of_three():
    """Any other value of [limits] shared is a configuration error naming the three."""
    from bridgeproxy.errors import ConfigError
    with pytest.raises(ConfigError, match='limits.shared must be "auto", "store" or "process"'):
        parse({"limits": {"shared": "redis"}}, environ={})


def test_the_local_limiter_counts_nothing_when_the_store_does():
    """Counted in the store, the process's buckets refuse nothing, unless told to count here (the store down)."""
    from twisted.internet.task import Clock
    config = parse({"limits": {"per_initiator_rps": 1}}, environ={}).limits
    limits = Limits(config, Clock(), in_store=True)
    for _ in range(5):
        limits.check_rate("u")
    from bridgeproxy.errors import RateLimited
    limits.check_rate("u", here=True)
    with pytest.raises(RateLimited):
        limits.check_rate("u", here=True)


# -- the store's queries, on SQLite and PostgreSQL ------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request, tmp_path):
    if request.param == "sqlite":
        database = Database(f"sqlite:{tmp_path / 'store.db'}")
        database.migrate()
        yield database
        database.close()
        return
    url, schema = pg_schema()
    database = Database(url)
    database.migrate()
    yield database
    database.close()
    drop_pg_schema(schema)


def test_a_bucket_fills_at_its_rate_up_to_its_burst(db):
    """Tokens come back at the rate, never beyond the burst; a refused take writes nothing and says how long."""
    assert [take_token(db, "u", 2.0, 3, NOW) for _ in range(3)] == [0, 0, 0]
    assert take_token(db, "u", 2.0, 3, NOW) == pytest.approx(0.5)
    assert take_token(db, "u", 2.0, 3, NOW + 0.25) == pytest.approx(0.25)
    assert take_token(db, "u", 2.0, 3, NOW + 0.5) == 0
    assert [take_token(db, "u", 2.0, 3, NOW + 100) for _ in range(4)][-1] == pytest.approx(0.5)
    assert take_token(db, "other", 2.0, 3, NOW) == 0


def test_a_clock_behind_makes_no_tokens(db):
    """A process whose clock is behind another's neither gains tokens nor moves the bucket's time back."""
    take_token(db, "u", 1.0, 1, NOW)
    assert take_token(db, "u", 1.0, 1, NOW - 30) == pytest.approx(1.0)
    assert db.execute("SELECT updated_at FROM limit_buckets") == [(NOW,)]


def test_idle_buckets_are_pruned(db):
    """Buckets not used since the cutoff (full again) are deleted; recent ones stay."""
    take_token(db, "old", 1.0, 1, NOW - 100)
    take_token(db, "new", 1.0, 1, NOW)
    prune_buckets(db, NOW - 10)
    assert db.execute("SELECT key FROM limit_buckets") == [("new",)]


def test_slots_are_taken_up_to_the_limit_and_given_back(db):
    """The gateway's total caps every holder's slots together; a release never goes below 0."""
    assert [take_slot(db, holder, 3, NOW + 60) for holder in ("a", "a", "b", "b")] == [True, True, True, False]
    assert slots_in_use(db) == 3
    release_slots(db, "a", 2)
    assert slots_in_use(db) == 1
    assert db.execute("SELECT holder, in_flight FROM limit_slots ORDER BY holder") == [("", 1), ("a", 0), ("b", 1)]
    release_slots(db, "b", 5)
    assert db.execute("SELECT holder, in_flight FROM limit_slots ORDER BY holder") == [("", 0), ("a", 0), ("b", 0)]


def test_renewal_drops_expired_rows_and_heals_the_total(db):
    """keep_slots: expired holders stop counting, and the total is set again to the sum of the live rows."""
    for holder in ("a", "a", "b"):
        take_slot(db, holder, 10, NOW + 60)
    db.execute("UPDATE limit_slots SET in_flight = 7 WHERE holder = ''")  # drift: a process killed mid-way
    exclusive(db, [], lambda db: keep_slots(db, "b", NOW + 59, NOW + 200))
    assert slots_in_use(db) == 3
    exclusive(db, [], lambda db: keep_slots(db, "b", NOW + 100, NOW + 300))
    assert slots_in_use(db) == 1
    assert db.execute("SELECT holder FROM limit_slots ORDER BY holder") == [("",), ("b",)]


def test_many_connections_at_once_never_take_more_slots_than_the_limit(db, tmp_path):
    """Thirty connections in threads race for 7 slots: exactly 7 get one."""
    import threading
    url = db.url
    connections = [Database(url) for _ in range(30)]
    start = threading.Barrier(len(connections))
    outcomes = []

    def one(conn, i):
        start.wait()
        if conn.dialect == "postgresql":
            outcomes.append(take_slot(conn, f"p{i % 3}", 7, NOW + 60))
        else:
            outcomes.append(exclusive(conn, [], lambda c: take_slot(c, f"p{i % 3}", 7, NOW + 60)))
    threads = [threading.Thread(target=one, args=(conn, i)) for i, conn in enumerate(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(True) == 7 and slots_in_use(db) == 7
    assert db.execute("SELECT SUM(in_flight) FROM limit_slots WHERE holder <> ''")[0][0] == 7
    for conn in connections:
        conn.close()


def test_many_connections_at_once_take_only_the_burst(db):
    """Thirty connections in threads race for a bucket of 5 tokens: exactly 5 get one."""
    import threading
    connections = [Database(db.url) for _ in range(30)]
    take_token(db, "u", 0.001, 6, NOW)  # the bucket exists, with 5 left
    start = threading.Barrier(len(connections))
    outcomes = []

    def one(conn):
        start.wait()
        outcomes.append(take_token(conn, "u", 0.001, 6, NOW) == 0)
    threads = [threading.Thread(target=one, args=(conn,)) for conn in connections]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(True) == 5
    for conn in connections:
        conn.close()


@pytest.fixture
def captured():
    lines: list[str] = []

    def observe(event):
        from twisted.logger import formatEvent
        lines.append(formatEvent(event))
    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def test_one_request_is_one_round_trip():
    """Admitting and settling a request under both shared limits takes one store call each."""
    store = SyncStore()
    g = shared_gateway(store, {"per_initiator_rps": 100, "max_concurrency": 10}, "one")
    calls = store.calls
    assert g.send("POST", "/openai/v1/chat/completions", CHAT, AUTH).status == 200
    assert store.calls - calls == 2
    assert b"bridgeproxy_admission_seconds_count 1.0" in g.bridge.metrics.exposition()
    assert USER_ID in {row[0] for row in store.db.execute("SELECT key FROM limit_buckets")}


class HeldStore(SyncStore):
    """A store whose calls wait until released, as a busy store thread does."""

    def __init__(self):
        super().__init__()
        self.waiting = []

    def run(self, work):
        from twisted.internet.defer import Deferred
        d = Deferred()
        self.calls += 1
        self.waiting.append((work, d))
        return d

    def release(self):
        waiting, self.waiting = self.waiting, []
        for work, d in waiting:
            d.callback(work(self.db))


def test_requests_that_arrive_while_the_store_is_busy_go_together():
    """Three requests arriving while the store's thread works for the first are admitted in one more call."""
    store = HeldStore()
    g = shared_gateway(store, {"max_concurrency": 10}, "one")
    store.release()  # the first renewal
    g.upstream.handler = hang
    for _ in range(4):
        g.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    assert store.calls == 2 and g.upstream.requests == []
    store.release()
    assert len(g.upstream.requests) == 1 and store.calls == 3
    store.release()
    assert len(g.upstream.requests) == 4 and store.calls == 3
    assert store.db.execute("SELECT in_flight FROM limit_slots WHERE holder = ''") == [(4,)]
