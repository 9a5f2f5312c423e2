"""
Budgets: the worst-case arithmetic and the calendar on their own, then the
whole pipeline in memory on a Clock, over a real store (SQLite in memory,
answering at once): what clients get, what the provider sees, what is
recorded and spent, and what the store holds while requests run.
"""

from __future__ import annotations

import calendar
import json
import sqlite3

import pytest
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.web import server

from bridgeproxy.budgets import asked_tokens, money, parse_amount, worst_case
from bridgeproxy.prices import SHIPPED, price
from bridgeproxy.proxy.admission import KEEP_EVERY, Admission
from bridgeproxy.store.budgets import (
    Budget, Settlement, day_number, exclusive, hold, period_days, set_budget, settle, standing,
)
from tests.memory import TOKEN, USER_ID, gateway, json_answer
from tests.syncstore import SyncStore

AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: 2026-11-24T10:00:00Z, a Tuesday.
NOW = float(calendar.timegm((2026, 11, 24, 10, 0, 0)))
MONTH_END = calendar.timegm((2026, 12, 1, 0, 0, 0))
GPT_4O = SHIPPED["openai"]["gpt-4o"]  # 2.50 in, 10.00 out per million tokens


def chat_body(max_tokens: int = 50, model: str = "gpt-4o") -> dict:
    return {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]}


def chat_answer(prompt: int = 20, completion: int = 50, model: str = "gpt-4o"):
    """A chat completion whose usage costs C{prompt} x 2.5 + C{completion} x 10 micro-USD at gpt-4o's price."""
    return json_answer(200, {"id": "c", "object": "chat.completion", "model": model, "choices": [],
                             "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                       "total_tokens": prompt + completion}})


#: What one chat_answer() costs: 20 x 2.5 + 50 x 10 micro-USD.
REAL = 550


def worst(body: dict) -> int:
    """The worst case the bridge holds for C{body} sent as the memory harness sends it."""
    return worst_case(GPT_4O, len(json.dumps(body).encode()), body, 4096)


def budgeted(extra=None, budgets=None, store=None):
    """A gateway in memory with budgets over a store answering at once; the clock at L{NOW}."""
    g = gateway(extra)
    store = store or SyncStore()
    for user_id, (amount, period) in (budgets or {}).items():
        set_budget(store.db, user_id, amount, period, "alice")
    g.clock.advance(NOW)
    admission = Admission(store, g.clock, g.bridge.config, g.bridge.prices, g.bridge.metrics, holder="this")
    g.bridge.admission = admission
    admission.start()
    return g, store, admission


def holds(store):
    return store.db.execute("SELECT user_id, amount_micros, holder FROM budget_holds ORDER BY id")


def spent(store, user_id=USER_ID):
    return store.db.execute("SELECT COALESCE(SUM(spent_micros), 0) FROM budget_spend WHERE user_id = ?",
                            (user_id,))[0][0]


# -- the arithmetic and the calendar ---------------------------------------------------------------


def test_worst_case_is_the_body_as_prompt_plus_the_asked_output():
    """300 bytes are 100 prompt tokens at the dearest input price, plus max_tokens at the output price, rounded up."""
    assert worst_case(price(2.50, 10.00), 300, {"max_tokens": 100}, 4096) == 100 * 2.5 + 100 * 10
    # Anthropic's cache writes cost 1.25 x input: the prompt is held at that price.
    assert worst_case(SHIPPED["anthropic"]["claude-sonnet-4-5"], 300, {"max_tokens": 10}, 4096) == 375 + 150
    # A prompt of one byte is one token; 2.5 micro-units round up to 3.
    assert worst_case(price(2.50, 0), 1, {"max_tokens": 1}, 4096) == 3
    assert worst_case(price(1.0, 2.0), 0, None, 4096) == 4096 * 2


@pytest.mark.parametrize("body, asked", [
    ({"max_tokens": 7}, 7), ({"max_output_tokens": 8}, 8), ({"max_completion_tokens": 9}, 9),
    ({}, 4096), ({"max_tokens": 0}, 4096), ({"max_tokens": -5}, 4096), ({"max_tokens": True}, 4096),
    ({"max_tokens": "100"}, 4096), ({"max_tokens": 10**15}, 10_000_000),
])
def test_the_asked_output_is_the_requests_cap_or_the_assumed_one(body, asked):
    """A positive whole cap counts (any of the three providers' fields); anything else is the assumed cap."""
    assert asked_tokens(body, 4096) == asked


@pytest.mark.parametrize("when, period, first, end", [
    ((2026, 11, 24, 10, 0, 0), "day", (2026, 11, 24), (2026, 11, 25)),
    ((2026, 11, 24, 23, 59, 59), "day", (2026, 11, 24), (2026, 11, 25)),
    ((2026, 11, 24, 10, 0, 0), "week", (2026, 11, 23), (2026, 11, 30)),  # Tuesday: from Monday
    ((2026, 11, 29, 23, 59, 59), "week", (2026, 11, 23), (2026, 11, 30)),  # Sunday night: the same week
    ((2026, 11, 30, 0, 0, 0), "week", (2026, 11, 30), (2026, 12, 7)),  # Monday: a new one
    ((2026, 11, 24, 10, 0, 0), "month", (2026, 11, 1), (2026, 12, 1)),
    ((2026, 12, 31, 23, 0, 0), "month", (2026, 12, 1), (2027, 1, 1)),
    ((2028, 2, 29, 12, 0, 0), "month", (2028, 2, 1), (2028, 3, 1)),
    ((1970, 1, 1, 0, 0, 0), "week", (1969, 12, 29), (1970, 1, 5)),
])
def test_periods_are_utc_calendar_days_weeks_and_months(when, period, first, end):
    """A period runs from its first UTC midnight to the next period's: weeks from Monday, months from the 1st."""
    start_day, end_day = period_days(period, calendar.timegm(when))
    assert start_day * 86400 == calendar.timegm((*first, 0, 0, 0))
    assert end_day * 86400 == calendar.timegm((*end, 0, 0, 0))


def test_period_names_are_checked():
    """A period other than day, week or month is an error naming the three."""
    with pytest.raises(ValueError, match="day, week or month"):
        period_days("year", NOW)


@pytest.mark.parametrize("text, micros", [
    ("25", 25_000_000), ("12.50", 12_500_000), ("0.000001", 1), (" 0 ", 0), ("1000000000", 10**15),
])
def test_amounts_are_exact_micro_units(text, micros):
    """Plain amounts become micro-units exactly, to the sixth decimal."""
    assert parse_amount(text) == micros


@pytest.mark.parametrize("text", ["1e3", "-1", "NaN", "inf", "0.0000001", "1000000000.01", "", "12,50", "$5"])
def test_amounts_that_are_not_plain_are_refused(text):
    """Exponents, signs, NaN, a seventh decimal, more than a billion and words are refused."""
    with pytest.raises(ValueError):
        parse_amount(text)


def test_money_shows_six_decimals():
    """Micro-units print as the currency to six decimals, a sign only when negative."""
    assert (money(0), money(1), money(12_500_000), money(-1_500_000)) == ("0.000000", "0.000001", "12.500000",
                                                                           "-1.500000")


# -- through the pipeline ------------------------------------------------------------------------------


def test_a_request_without_a_max_is_held_for_a_long_answer():
    """
    A request that sets no max_tokens is assumed to ask for 32768 output
    tokens (a long reasoning answer): a budget that would cover 4096 of
    them refuses it, and admits the same request with a max it covers.
    """
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    assert worst_case(GPT_4O, 1, body, 32768) > 32768 * 10
    g, store, _ = budgeted(budgets={USER_ID: (32768 * 10 - 1, "month")})
    g.upstream.handler = chat_answer()
    answer = g.send("POST", "/openai/v1/chat/completions", body, AUTH)
    assert answer.status == 429 and "less than this request may cost" in answer.json()["error"]["message"]
    assert g.send("POST", "/openai/v1/chat/completions", {**body, "max_tokens": 4096}, AUTH).status == 200


def test_requests_go_until_the_budget_cannot_cover_the_next():
    """
    Each request holds its worst case and spends its real cost; the first
    whose worst case does not fit in what is left gets 429 in the OpenAI
    shape (insufficient_quota), with Retry-After at the end of the month,
    is recorded as refused, and never reaches the provider.
    """
    body = chat_body()
    w = worst(body)
    g, store, _ = budgeted(budgets={USER_ID: (2 * REAL + w - 1, "month")})
    g.upstream.handler = chat_answer()
    assert [g.send("POST", "/openai/v1/chat/completions", body, AUTH).status for _ in range(2)] == [200, 200]
    answer = g.send("POST", "/openai/v1/chat/completions", body, AUTH)

    assert answer.status == 429
    assert answer.headers["retry-after"] == [str(int(MONTH_END - NOW)).encode()]
    error = answer.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert error["message"] == (
        f"Budget exceeded: the monthly budget of {money(2 * REAL + w - 1)} for alice has {money(w - 1)} left, "
        f"less than this request may cost ({money(w)}; {money(2 * REAL)} spent). It renews at 2026-12-01T00:00:00Z.")
    assert len(g.upstream.seen) == 2
    assert [(r.status, r.http_status, r.cost_micros) for r in g.records] == [
        ("ok", 200, REAL), ("ok", 200, REAL), ("refused", 429, None)]
    assert g.records[2].error == error["message"]
    assert spent(store) == sum(r.cost_micros or 0 for r in g.records) == 2 * REAL
    assert holds(store) == []
    assert g.bridge.metrics.get("refused:429:budget") == 1
    assert b'bridgeproxy_budget_refusals_total{period="month"} 1.0' in g.bridge.metrics.exposition()


def test_a_smaller_request_still_fits_what_is_left():
    """What is left is not refused outright: a request with a smaller worst case goes."""
    big, small = chat_body(max_tokens=1000), chat_body(max_tokens=10)
    g, store, _ = budgeted(budgets={USER_ID: (worst(big) - 1, "month")})
    g.upstream.handler = chat_answer(prompt=5, completion=10)
    assert g.send("POST", "/openai/v1/chat/completions", big, AUTH).status == 429
    assert g.send("POST", "/openai/v1/chat/completions", small, AUTH).status == 200
    assert spent(store) == 5 * 2.5 + 10 * 10 + 0.5  # 112.5 rounds half up


def test_a_user_at_the_budget_gets_the_anthropic_shape_and_the_message_says_used_up():
    """Over the Anthropic API the refusal is a rate_limit_error; a budget spent to the last micro-unit is used up."""
    g, store, _ = budgeted(budgets={USER_ID: (1000, "week")})
    store.db.execute("INSERT INTO budget_spend (user_id, day, spent_micros) VALUES (?, ?, 1000)",
                     (USER_ID, day_number(NOW)))
    answer = g.send("POST", "/anthropic/v1/messages", {"model": "claude-haiku-4-5", "max_tokens": 5,
                                                        "messages": [{"role": "user", "content": "hi"}]},
                    {"X-Api-Key": TOKEN})
    assert answer.status == 429
    assert answer.json() == {"type": "error", "error": {
        "type": "rate_limit_error",
        "message": "Budget exceeded: the weekly budget of 0.001000 for alice is used up (0.001000 spent). "
                   "It renews at 2026-11-30T00:00:00Z."}}
    assert answer.headers["retry-after"] == [str(calendar.timegm((2026, 11, 30, 0, 0, 0)) - int(NOW)).encode()]
    assert g.upstream.seen == []


def test_what_was_spent_before_the_period_does_not_count():
    """Spend of the day before a daily budget's day is not counted; the next day the user may spend again."""
    body = chat_body()
    g, store, _ = budgeted(budgets={USER_ID: (worst(body), "day")})
    g.upstream.handler = chat_answer()
    assert g.send("POST", "/openai/v1/chat/completions", body, AUTH).status == 200
    answer = g.send("POST", "/openai/v1/chat/completions", body, AUTH)
    assert answer.status == 429
    assert answer.headers["retry-after"] == [b"50400"]  # 14 hours to midnight UTC
    g.clock.advance(50400)
    assert g.send("POST", "/openai/v1/chat/completions", body, AUTH).status == 200
    assert spent(store) == 2 * REAL


def test_requests_in_flight_hold_their_worst_case_until_they_end():
    """
    While two requests wait for the provider, their worst cases are held:
    a third that would not fit is refused at once.  When they end, their
    holds become their real (smaller) costs, and a fourth fits again.
    """
    body = chat_body()
    w = worst(body)
    g, store, _ = budgeted(budgets={USER_ID: (3 * w - 1, "month")})
    g.upstream.handler = lambda request: server.NOT_DONE_YET
    first = g.open("POST", "/openai/v1/chat/completions", body, AUTH)
    second = g.open("POST", "/openai/v1/chat/completions", body, AUTH)
    assert holds(store) == [(USER_ID, w, "this"), (USER_ID, w, "this")]
    assert g.send("POST", "/openai/v1/chat/completions", body, AUTH).status == 429
    assert len(g.upstream.requests) == 2

    for request in g.upstream.requests:
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        request.write(json.dumps({"id": "c", "object": "chat.completion", "model": "gpt-4o", "choices": [],
                                  "usage": {"prompt_tokens": 20, "completion_tokens": 50}}).encode())
        request.finish()
    g.pump()
    for _, transport in (first, second):
        assert transport.value().startswith(b"HTTP/1.1 200")
    assert holds(store) == [] and spent(store) == 2 * REAL
    g.upstream.handler = chat_answer()
    assert g.send("POST", "/openai/v1/chat/completions", body, AUTH).status == 200


def test_a_client_that_leaves_frees_its_hold_and_spends_nothing():
    """A request whose client leaves before the answer releases its hold without spending."""
    body = chat_body()
    g, store, _ = budgeted(budgets={USER_ID: (worst(body), "month")})
    g.upstream.handler = lambda request: server.NOT_DONE_YET
    protocol, _ = g.open("POST", "/openai/v1/chat/completions", body, AUTH)
    assert len(holds(store)) == 1
    protocol.connectionLost(Failure(ConnectionDone()))
    g.pump()
    assert holds(store) == [] and spent(store) == 0
    assert [r.status for r in g.records] == ["client_disconnected"]


def test_the_default_budget_applies_to_users_without_their_own():
    """[budgets] default_amount limits a user with no budget of their own."""
    body = chat_body()
    g, store, _ = budgeted({"budgets": {"default_amount": worst(body) / 1e6, "default_period": "day"}})
    g.upstream.handler = chat_answer()
    assert g.send("POST", "/openai/v1/chat/completions", body, AUTH).status == 200
    answer = g.send("POST", "/openai/v1/chat/completions", body, AUTH)
    assert answer.status == 429 and "daily budget" in answer.json()["error"]["message"]


def test_a_budget_of_their_own_beats_the_default():
    """A user's own budget applies instead of a default of 0 that would block them."""
    body = chat_body()
    g, _, _ = budgeted({"budgets": {"default_amount": 0}}, budgets={USER_ID: (10**9, "month")})
    g.upstream.handler = chat_answer()
    assert g.send("POST", "/openai/v1/chat/completions", body, AUTH).status == 200


def test_users_without_a_budget_cost_no_store_round_trip_and_new_budgets_apply_at_the_next_refresh():
    """
    With no default, a user with no budget of their own is forwarded
    without asking the store; a budget set for them applies once the
    bridge has read who has one (within KEEP_EVERY seconds).
    """
    body = chat_body()
    g, store, _ = budgeted()
    g.upstream.handler = chat_answer()
    calls = store.calls
    assert g.send("POST", "/openai/v1/chat/completions", body, AUTH).status == 200
    assert store.calls == calls
    set_budget(store.db, USER_ID, 0, "month")
    assert g.send("POST", "/openai/v1/chat/completions", body, AUTH).status == 200
    g.clock.advance(KEEP_EVERY)
    assert g.send("POST", "/openai/v1/chat/completions", body, AUTH).status == 429


def test_a_removed_budget_stops_applying_at_once():
    """A user whose budget is removed is not limited from the next request (the store says so)."""
    body = chat_body()
    g, store, _ = budgeted(budgets={USER_ID: (0, "month")})
    g.upstream.handler = chat_answer()
    assert g.send("POST", "/openai/v1/chat/completions", body, AUTH).status == 429
    store.db.execute("DELETE FROM budgets")
    assert g.send("POST", "/openai/v1/chat/completions", body, AUTH).status == 200


def test_passthrough_and_the_clients_own_key_are_not_budgeted():
    """A budget of 0 refuses the gateway's key; a passthrough request, or one sent with the client's own key, goes."""
    body = chat_body()
    g, store, _ = budgeted(budgets={USER_ID: (0, "month")})
    g.upstream.handler = chat_answer()
    assert g.send("GET", "/openai/v1/models", None, AUTH).status == 200
    byok = {"X-Coder-Token": TOKEN, "Authorization": "Bearer sk-the-clients-own-key-0123456789"}
    assert g.send("POST", "/openai/v1/chat/completions", body, byok).status == 200
    assert g.send("POST", "/openai/v1/chat/completions", body, AUTH).status == 429
    assert len(g.upstream.seen) == 2 and spent(store) == 0


def test_a_model_without_a_price_goes_without_a_hold_until_the_user_is_at_the_budget():
    """
    An unpriced model has no worst case: it goes, holds nothing and spends
    nothing known, and is counted; once the user is at the budget it is
    refused like any other.
    """
    body = chat_body(model="gpt-99")
    g, store, _ = budgeted(budgets={USER_ID: (1000, "month")})
    g.upstream.handler = lambda request: server.NOT_DONE_YET
    g.open("POST", "/openai/v1/chat/completions", body, AUTH)
    assert holds(store) == []
    assert b'bridgeproxy_budget_unpriced_requests_total{model="gpt-99",provider="openai"} 1.0' in (
        g.bridge.metrics.exposition())
    store.db.execute("INSERT INTO budget_spend (user_id, day, spent_micros) VALUES (?, ?, 1000)",
                     (USER_ID, day_number(NOW)))
    answer = g.send("POST", "/openai/v1/chat/completions", body, AUTH)
    assert answer.status == 429 and "is used up" in answer.json()["error"]["message"]


def test_a_store_that_fails_refuses_budgeted_requests_with_503():
    """When the store cannot be asked, a budgeted request gets 503 with Retry-After and is recorded as refused."""
    g, store, _ = budgeted(budgets={USER_ID: (10**9, "month")})
    store.failing = sqlite3.OperationalError("database is locked")
    answer = g.send("POST", "/openai/v1/chat/completions", chat_body(), AUTH)
    assert answer.status == 503 and answer.headers["retry-after"] == [b"5"]
    assert answer.json()["error"]["message"] == "The gateway cannot check this user's budget right now; retry shortly."
    assert g.upstream.seen == [] and [r.status for r in g.records] == ["refused"]
    assert g.bridge.metrics.get("refused:503:budget_unavailable") == 1


def test_fail_open_forwards_when_the_store_fails():
    """With fail_open, a budgeted request is forwarded unchecked while the store fails, and counted."""
    g, store, _ = budgeted({"budgets": {"fail_open": True}}, budgets={USER_ID: (0, "month")})
    g.upstream.handler = chat_answer()
    store.failing = sqlite3.OperationalError("database is locked")
    assert g.send("POST", "/openai/v1/chat/completions", chat_body(), AUTH).status == 200
    assert g.bridge.metrics.get("budget_unchecked") == 1


def test_a_settlement_the_store_refused_is_written_at_the_next_renewal():
    """The real cost of a request that ended while the store was down is spent once it answers again."""
    g, store, _ = budgeted(budgets={USER_ID: (10**9, "month")})
    g.upstream.handler = lambda request: server.NOT_DONE_YET
    _, transport = g.open("POST", "/openai/v1/chat/completions", chat_body(), AUTH)
    store.failing = sqlite3.OperationalError("disk I/O error")
    request = g.upstream.requests[0]
    request.setHeader(b"content-type", b"application/json")
    request.write(json.dumps({"id": "c", "object": "chat.completion", "model": "gpt-4o", "choices": [],
                              "usage": {"prompt_tokens": 20, "completion_tokens": 50}}).encode())
    request.finish()
    g.pump()
    assert transport.value().startswith(b"HTTP/1.1 200")
    store.failing = None
    assert spent(store) == 0 and len(holds(store)) == 1
    g.clock.advance(KEEP_EVERY)
    assert spent(store) == REAL and holds(store) == []


def test_holds_of_a_process_that_died_stop_counting_and_ours_are_renewed():
    """
    A hold left by another process that stopped renewing it counts until
    hold_seconds have passed; this process's own holds are renewed while
    their requests run.
    """
    body = chat_body()
    w = worst(body)
    g, store, _ = budgeted({"upstream": {"timeout": 600}}, budgets={USER_ID: (2 * w, "month")})
    exclusive(store.db, [], lambda db: hold(db, user_id=USER_ID, default=None, cost_micros=w, hold_id="dead-1",
                                             holder="dead", now=NOW, expires_at=NOW + 60))
    g.upstream.handler = lambda request: server.NOT_DONE_YET
    g.open("POST", "/openai/v1/chat/completions", body, AUTH)  # ours: 2w held now
    assert g.send("POST", "/openai/v1/chat/completions", body, AUTH).status == 429
    g.clock.pump([KEEP_EVERY] * 12)  # a minute: the dead process's hold expires, ours is renewed
    assert [h[2] for h in holds(store)] == ["this"]
    g.clock.pump([KEEP_EVERY] * 24)
    assert [h[2] for h in holds(store)] == ["this"]
    assert len(g.upstream.requests) == 1
    g.open("POST", "/openai/v1/chat/completions", body, AUTH)
    assert len(g.upstream.requests) == 2


def test_stop_writes_the_settlements_still_queued():
    """Stopping the admission writes what it still had to settle, then no longer renews."""
    g, store, admission = budgeted(budgets={USER_ID: (10**9, "month")})
    exclusive(store.db, [], lambda db: hold(db, user_id=USER_ID, default=None, cost_micros=5, hold_id="h",
                                             holder="this", now=NOW, expires_at=NOW + 60))
    admission._failing = True  # as after a failed write: settlements wait
    admission._queue.append(Settlement("h", USER_ID, "alice", day_number(NOW), 3))
    admission.stop()
    assert holds(store) == [] and spent(store) == 3
    calls = store.calls
    g.clock.advance(60)
    assert store.calls == calls


def test_settle_adds_to_the_day_the_request_was_admitted():
    """A request admitted before midnight spends on that day: the next day's daily budget does not see it."""
    store = SyncStore()
    budget = Budget(USER_ID, 1000, "day")
    exclusive(store.db, [], lambda db: settle(db, [Settlement("x", USER_ID, None, day_number(NOW) - 1, 700)]))
    assert standing(store.db, budget, NOW).spent_micros == 0
    assert standing(store.db, budget, NOW - 86400).spent_micros == 700
    assert standing(store.db, Budget(USER_ID, 1000, "week"), NOW).spent_micros == 700


def test_standing_reads_spend_and_holds_in_one_statement():
    """
    The spend and the live holds are read in one statement (one snapshot on
    PostgreSQL, where a settlement committing between two reads would take
    its hold away before its spend is seen): the sums are those of the rows.
    """
    store = SyncStore()
    budget = Budget(USER_ID, 10_000, "month")

    def setup(db):
        settle(db, [Settlement("x", USER_ID, None, day_number(NOW), 700)])
        hold(db, user_id=USER_ID, default=budget, cost_micros=300, hold_id="h", holder="this", now=NOW,
             expires_at=NOW + 60)
        hold(db, user_id=USER_ID, default=budget, cost_micros=50, hold_id="old", holder="this", now=NOW,
             expires_at=NOW - 1)  # expired: not counted
    exclusive(store.db, [], setup)
    statements = []

    class Counting:
        dialect = store.db.dialect

        def execute(self, statement, args=()):
            statements.append(statement)
            return store.db.execute(statement, args)
    now_standing = standing(Counting(), budget, NOW)
    assert (now_standing.spent_micros, now_standing.held_micros) == (700, 300)
    assert len(statements) == 1
