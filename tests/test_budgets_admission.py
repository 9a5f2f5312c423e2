"""
Admission (proxy/admission.py) seen by the operator: what it logs and
counts when the store fails, how often it renews and refreshes, what a
stop does, and how long admitting took; through the gateway in memory on a
Clock, over a SQLite store in memory that answers at once (or fails, or
waits).
"""

from __future__ import annotations

import calendar
import json
import sqlite3

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web import server

from bridgeproxy.proxy.admission import Admission, Ticket
from bridgeproxy.proxy.limits import Limits
from bridgeproxy.store.budgets import day_number, set_budget
from bridgeproxy.types import Identity
from tests.memory import TOKEN, USER_ID, Identities, gateway, json_answer
from tests.syncstore import SyncStore

AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = float(calendar.timegm((2026, 11, 24, 10, 0, 0)))
CHAT = {"model": "gpt-4o", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
ANSWER = json_answer(200, {"id": "c", "object": "chat.completion", "model": "gpt-4o", "choices": [],
                           "usage": {"prompt_tokens": 20, "completion_tokens": 50, "total_tokens": 70}})


@pytest.fixture
def logged():
    lines: list[str] = []

    def observe(event):
        if event.get("log_namespace", "").startswith("bridgeproxy.proxy.admission"):
            lines.append(formatEvent(event))
    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


class PlainStore(SyncStore):
    """A store that has no describe(): failures are told by their own message."""

    describe = None  # type: ignore[assignment]


class TellingStore(SyncStore):
    """A store that tells its failures in words of its own (as the real one hides a password in a URL)."""

    def describe(self, error):
        return f"the store said: {error}"


class WaitingStore(SyncStore):
    """A store whose calls wait until released, as a busy store thread does."""

    def __init__(self):
        super().__init__()
        self.waiting: list = []

    def run(self, work):
        d: Deferred = Deferred()
        self.calls += 1
        self.waiting.append((work, d))
        return d

    def release(self):
        waiting, self.waiting = self.waiting, []
        for work, d in waiting:
            if self.failing is not None:
                d.errback(self.failing)
            else:
                d.callback(work(self.db))


def budgeted(extra=None, store=None, budget=(10**9, "month"), holder="this", start=True):
    g = gateway(extra)
    store = store if store is not None else SyncStore()
    if budget is not None:
        set_budget(store.db, USER_ID, budget[0], budget[1], "alice", now=NOW)
    g.clock.advance(NOW)
    admission = Admission(store, g.clock, g.bridge.config, g.bridge.prices, g.bridge.metrics, holder=holder)
    g.bridge.admission = admission
    if start:
        admission.start()
    g.upstream.handler = ANSWER
    return g, store, admission


def chat(g, body=CHAT):
    return g.send("POST", "/openai/v1/chat/completions", body, AUTH)


def holds(store):
    return store.db.execute("SELECT holder, expires_at FROM budget_holds")


# -- the store failing ----------------------------------------------------------------------------------------


def test_a_budget_not_checked_is_logged_with_the_user_and_the_request(logged):
    """Failing closed: each refused request's user, the store's reason and the request id are logged."""
    g, store, _ = budgeted()
    store.failing = sqlite3.OperationalError("database is locked")
    assert chat(g).status == 503
    assert chat(g).status == 503
    ids = [r.id for r in g.records]
    assert logged == [f"Budget of {USER_ID} not checked, the store failed (database is locked); refusing {i}"
                      for i in ids]
    assert g.bridge.metrics.get("budget_unchecked") == 0 and g.bridge.metrics.get("admission_unchecked") == 0


def test_failing_open_logs_the_outage_once_and_counts_each_request(logged):
    """With fail_open: one line per outage (again after the store answered in between), each request counted."""
    g, store, _ = budgeted({"budgets": {"fail_open": True}})
    store.failing = sqlite3.OperationalError("database is locked")
    assert [chat(g).status for _ in range(2)] == [200, 200]
    first = g.records[0].id
    store.failing = None
    assert chat(g).status == 200
    store.failing = sqlite3.OperationalError("disk I/O error")
    assert chat(g).status == 200
    last = g.records[-1].id
    outage = [line for line in logged if line.startswith("Store failed")]
    assert outage == [
        f"Store failed (database is locked) admitting {first}: until it answers, limits are counted in this process "
        "and budgets are not checked",
        f"Store failed (disk I/O error) admitting {last}: until it answers, limits are counted in this process and "
        "budgets are not checked"]
    assert g.bridge.metrics.get("admission_unchecked") == 3 and g.bridge.metrics.get("budget_unchecked") == 3


def test_the_store_tells_its_own_failures(logged):
    """The reason logged is the store's own account of the failure, when it gives one."""
    g, store, _ = budgeted(store=TellingStore())
    store.failing = sqlite3.OperationalError("database is locked")
    assert chat(g).status == 503
    assert logged == [f"Budget of {USER_ID} not checked, the store failed (the store said: database is locked); "
                      f"refusing {g.records[0].id}"]


def test_a_store_without_describe_is_told_by_the_failures_message(logged):
    g, store, _ = budgeted(store=PlainStore())
    store.failing = sqlite3.OperationalError("database is locked")
    assert chat(g).status == 503
    assert logged == [f"Budget of {USER_ID} not checked, the store failed (database is locked); refusing "
                      f"{g.records[0].id}"]


def test_a_settlement_that_fails_is_logged_and_retried_at_the_renewal(logged):
    """The failed settlement says how many wait and when they are retried; the renewal writes them."""
    g, store, admission = budgeted()
    g.upstream.handler = lambda request: server.NOT_DONE_YET
    _, transport = g.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    store.failing = sqlite3.OperationalError("disk I/O error")
    request = g.upstream.requests[0]
    request.setHeader(b"content-type", b"application/json")
    request.write(json.dumps({"id": "c", "object": "chat.completion", "model": "gpt-4o", "choices": [],
                              "usage": {"prompt_tokens": 20, "completion_tokens": 50}}).encode())
    request.finish()
    g.pump()
    assert logged == ["Cannot settle 1 admissions (disk I/O error); retrying in 5 s"]
    store.failing = None
    g.clock.advance(4.9)
    assert len(holds(store)) == 1
    g.clock.advance(0.1)
    assert holds(store) == [] and store.db.execute("SELECT spent_micros FROM budget_spend") == [(550,)]


def test_a_renewal_that_fails_is_logged(logged):
    g, store, _ = budgeted()
    store.failing = sqlite3.OperationalError("disk I/O error")
    g.clock.advance(5)
    assert logged == ["Cannot renew this process's budget holds and slots (disk I/O error)"]
    store.failing = None
    g.clock.advance(5)
    assert len(logged) == 1


def test_a_failure_that_is_a_refusal_is_not_the_stores(logged):
    """A refusal raised while admitting (here: the budget) is the client's answer, not a store failure."""
    g, store, _ = budgeted(budget=(0, "day"))
    assert chat(g).status == 429
    assert logged == [] and g.bridge.metrics.get("admission_unchecked") == 0


# -- renewals, refreshes, stopping --------------------------------------------------------------------------------


def test_every_five_seconds_holds_are_renewed_and_new_budgets_read():
    """A hold's expiry is pushed forward every 5 s; a budget given meanwhile applies from the next refresh."""
    g, store, _ = budgeted({"budgets": {"hold_seconds": 60}}, budget=None)
    g.upstream.handler = lambda request: server.NOT_DONE_YET
    set_budget(store.db, USER_ID, 0, "day", now=NOW)
    g.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    assert len(g.upstream.requests) == 1  # not yet known to have a budget: not asked
    g.clock.advance(4.9)
    g.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    assert len(g.upstream.requests) == 2
    g.clock.advance(0.1)
    assert chat(g).status == 429


def test_holds_expire_after_hold_seconds_and_are_renewed_by_their_holder():
    g, store, _ = budgeted({"budgets": {"hold_seconds": 60}})
    g.upstream.handler = lambda request: server.NOT_DONE_YET
    g.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    assert holds(store) == [("this", NOW + 60)]
    g.clock.advance(5)
    assert holds(store) == [("this", NOW + 65)]


def test_each_process_has_a_name_of_its_own():
    """Without a holder given, each admission makes up a different one, and its holds carry it."""
    store = SyncStore()
    set_budget(store.db, USER_ID, 10**9, "month", now=NOW)
    names = []
    for _ in range(2):
        g, _, admission = budgeted(store=store, budget=None, holder=None)
        g.upstream.handler = lambda request: server.NOT_DONE_YET
        g.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)
        names.append(admission.holder)
    assert len(set(names)) == 2 and all(len(name) == 32 for name in names)
    assert sorted(h[0] for h in holds(store)) == sorted(names)


def test_stop_ends_the_renewals_and_waits_for_the_call_under_way():
    """After stop, the clock renews nothing; a call under way is waited for, then what is queued is written."""
    store = WaitingStore()
    g, _, admission = budgeted(store=store, start=False)
    admission.start()
    admission.start()  # once is enough
    store.release()
    g.upstream.handler = lambda request: server.NOT_DONE_YET
    g.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    assert len(store.waiting) == 1
    stopped = []
    admission.stop().addCallback(stopped.append)
    assert stopped == []
    store.release()
    assert len(g.upstream.requests) == 1 and stopped == [None]
    calls = store.calls
    g.clock.advance(20)
    assert store.calls == calls
    assert admission.stop().result is None


def test_stop_swallows_a_last_failure(logged):
    """Settlements the store refuses at the stop are lost, and the stop still ends cleanly."""
    g, store, admission = budgeted()
    g.upstream.handler = lambda request: server.NOT_DONE_YET
    g.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    store.failing = sqlite3.OperationalError("disk I/O error")
    [ex] = list(g.bridge.in_flight)
    admission.finish(ex, 10)
    assert logged == ["Cannot settle 1 admissions (disk I/O error); retrying in 5 s"]
    done = []
    admission.stop().addBoth(done.append)
    assert done == [None] and len(logged) == 2


def test_the_admission_time_is_measured_from_the_request_to_the_stores_answer():
    """bridgeproxy_admission_seconds: from asking to the store's answer, on the clock."""
    store = WaitingStore()
    g, _, admission = budgeted(store=store)
    store.release()
    g.upstream.handler = lambda request: server.NOT_DONE_YET
    g.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    g.clock.advance(0.25)
    store.release()
    exposition = g.bridge.metrics.exposition()
    assert b"bridgeproxy_admission_seconds_count 1.0" in exposition
    assert b"bridgeproxy_admission_seconds_sum 0.25" in exposition


def test_an_admitted_request_carries_its_ticket_until_it_ends():
    """The ticket names the hold, the user and the day; after the answer it is gone and the cost spent."""
    g, store, admission = budgeted()
    g.upstream.handler = lambda request: server.NOT_DONE_YET
    g.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    [ex] = list(g.bridge.in_flight)
    assert ex.admitted == Ticket(ex.id, USER_ID, ex.initiator.username, day_number(NOW), False)
    assert store.db.execute("SELECT id FROM budget_holds") == [(ex.id,)]
    admission.finish(ex, None)
    assert ex.admitted is None and holds(store) == []
    assert store.db.execute("SELECT COUNT(*) FROM budget_spend") == [(0,)]
    admission.finish(ex, 999)  # twice: nothing more
    assert store.db.execute("SELECT COUNT(*) FROM budget_spend") == [(0,)]


def test_a_model_without_a_price_is_counted_by_provider_and_model():
    g, store, _ = budgeted()
    assert chat(g, {**CHAT, "model": "gpt-99"}).status == 200
    exposition = g.bridge.metrics.exposition()
    assert b'bridgeproxy_budget_unpriced_requests_total{model="gpt-99",provider="openai"} 1.0' in exposition


# -- who is named, and the limits counted in the store ---------------------------------------------------------

BOB_TOKEN = "bp_memory-bob-token-0123456789abcdefXYZ"


def two_users(extra=None, store=None):
    """A gateway in memory that knows alice (TOKEN) and bob (BOB_TOKEN), its limits counted in the store."""
    identities = Identities({TOKEN: Identity(USER_ID, "alice"), BOB_TOKEN: Identity("u-bob", "bob")})
    g = gateway({"upstream": {"timeout": 600}, **(extra or {})}, identities=identities)
    g.clock.advance(NOW)
    store = store if store is not None else SyncStore()
    bridge = g.bridge
    bridge.admission = Admission(store, g.clock, bridge.config, bridge.prices, bridge.metrics, holder="this")
    bridge.limits = Limits(bridge.config.limits, g.clock, in_store=bridge.config.limits.counted_in_store(bridge.config))
    bridge.admission.reconfigure(bridge.config, bridge.prices, bridge.limits)
    bridge.admission.start()
    g.upstream.handler = ANSWER
    return g, store, bridge.admission


def test_the_refusal_and_the_spend_name_the_user_as_the_request_did():
    """The name the request's user has now, not the one the budget was set with, is in the message and the spend."""
    g, store, admission = budgeted(budget=None, start=False)
    set_budget(store.db, USER_ID, 10**9, "month", "alice-then", now=NOW)
    admission.start()
    assert chat(g).status == 200
    assert store.db.execute("SELECT username FROM budget_spend") == [("alice",)]
    set_budget(store.db, USER_ID, 0, "month", "alice-then", now=NOW)
    answer = chat(g)
    assert answer.status == 429 and " for alice is used up" in answer.json()["error"]["message"]


def test_the_rate_counted_here_while_the_store_is_down_is_each_users_own():
    """The store down, each user still has a bucket of their own in this process."""
    g, store, _ = two_users({"limits": {"per_initiator_rps": 0.001, "per_initiator_burst": 1, "shared": "store"}})
    store.failing = sqlite3.OperationalError("database is locked")
    assert chat(g).status == 200
    assert g.send("POST", "/openai/v1/chat/completions", CHAT, {"Authorization": f"Bearer {BOB_TOKEN}"}).status == 200
    assert chat(g).status == 429


def test_slots_given_back_together_are_all_given_back():
    """Requests that end while the store is busy give their slots back in one call, every one of them."""
    store = WaitingStore()
    g, _, admission = two_users({"limits": {"max_concurrency": 5, "shared": "store"}}, store=store)
    store.release()
    g.upstream.handler = lambda request: server.NOT_DONE_YET
    for _ in range(3):
        g.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)
        store.release()
    assert store.db.execute("SELECT in_flight FROM limit_slots WHERE holder = ''") == [(3,)]
    g.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)  # the store is busy admitting this one
    admitted = [ex for ex in g.bridge.in_flight if ex.admitted is not None]
    assert len(admitted) == 3
    for ex in admitted:
        admission.finish(ex, None)
    store.release()
    store.release()
    assert store.db.execute("SELECT in_flight FROM limit_slots WHERE holder = ''") == [(1,)]


def test_idle_buckets_are_pruned_once_they_would_be_full_again():
    """A bucket (rate 1, burst 2) unused for 2 s plus a renewal's 5 s is deleted at the next renewal, not before."""
    g, store, _ = two_users({"limits": {"per_initiator_rps": 1, "per_initiator_burst": 2, "shared": "store"}})
    assert chat(g).status == 200
    g.clock.advance(5)
    assert [r[0] for r in store.db.execute("SELECT key FROM limit_buckets")] == [USER_ID]
    g.clock.advance(5)
    assert store.db.execute("SELECT key FROM limit_buckets") == []


def test_a_model_that_is_not_a_name_is_unpriced():
    """A model field that is no string has no price: the request goes, counted as unpriced without a model."""
    g, store, _ = budgeted()
    answer = chat(g, {**CHAT, "model": 7})
    exposition = g.bridge.metrics.exposition().decode()
    unpriced = [line for line in exposition.splitlines() if line.startswith("bridgeproxy_budget_unpriced_requests_total{")]
    assert answer.status == 200
    assert unpriced == ['bridgeproxy_budget_unpriced_requests_total{model="unknown",provider="openai"} 1.0']


def test_an_idle_bucket_is_kept_until_it_would_be_full():
    """Rate 2, burst 12: a bucket is full again 6 s after its last use; it goes at the first renewal after 11 s."""
    g, store, _ = two_users({"limits": {"per_initiator_rps": 2, "per_initiator_burst": 12, "shared": "store"}})
    assert chat(g).status == 200
    g.clock.advance(10)
    assert [r[0] for r in store.db.execute("SELECT key FROM limit_buckets")] == [USER_ID]
    g.clock.advance(5)
    assert store.db.execute("SELECT key FROM limit_buckets") == []


def test_this_processs_slots_are_renewed_while_its_requests_run():
    """A request running longer than hold_seconds keeps its slot: the gateway stays full."""
    g, store, _ = two_users({"limits": {"max_concurrency": 1, "shared": "store"}, "budgets": {"hold_seconds": 10}})
    g.upstream.handler = lambda request: server.NOT_DONE_YET
    g.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    g.clock.advance(15)
    assert store.db.execute("SELECT in_flight FROM limit_slots WHERE holder = ''") == [(1,)]
    assert chat(g).status == 503
