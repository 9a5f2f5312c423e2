"""
Budgets over loopback: enforced by a running bridge and read back over
C{/api/v1/budgets}; then the issue's concurrency test, with real
processes: 200 requests at once from one user whose budget allows 50
requests' worth, through two bridge processes on one PostgreSQL, and
through C{workers = 2} on one SQLite file.
"""

from __future__ import annotations

import io
import json
import math
import signal

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads
from twisted.web import server

from bridgeproxy import cli
from bridgeproxy.budgets import money, worst_case
from bridgeproxy.prices import SHIPPED
from bridgeproxy.store import Database
from bridgeproxy.store.budgets import set_budget
from tests import fakes
from tests.http import call
from tests.pg import drop_pg_schema, pg_schema
from tests.procs import free_port, spawn_twistd, wait_for_port

GPT_4O = SHIPPED["openai"]["gpt-4o"]
#: The request every test sends, byte for byte: its worst case is known exactly.
BODY = b'{"model":"gpt-4o","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}'
#: Its worst case: the body as prompt tokens at the input price, 100 output tokens at the output price.
WORST = worst_case(GPT_4O, len(BODY), json.loads(BODY), 4096)


def costs_its_worst_case(request, received):
    """A chat completion whose usage costs exactly what the bridge held for it (the body's tokens and max_tokens)."""
    request.setHeader(b"content-type", b"application/json")
    return json.dumps({"id": "c", "object": "chat.completion", "model": "gpt-4o", "choices": [], "usage": {
        "prompt_tokens": math.ceil(len(received.body) / 3), "completion_tokens": 100}}).encode()


@pytest_twisted.inlineCallbacks
def test_budgets_are_enforced_and_read_back_over_the_api(tmp_path, agent, captured_log):
    """
    A user with a budget of one request's worth gets one answer, then 429;
    a user under a default of 0 is refused at once.  /api/v1/budgets shows
    a user their own standing, an admin anyone's, and refuses a user
    asking for another's.
    """
    running = yield fakes.start_bridge(tmp_path, {"budgets": {"default_amount": 0, "default_period": "day"}})
    running.upstream.handler = costs_its_worst_case
    try:
        admin, alice, bob = running.create_key("root", admin=True), running.create_key("alice"), \
            running.create_key("bob")
        db = running.db()
        alice_id = db.identify(alice).user_id
        set_budget(db, alice_id, WORST, "month", "alice")
        db.close()
        url = running.url + "/openai/v1/chat/completions"
        codes = []
        for _ in range(2):
            response, body = yield call(agent, "POST", url, BODY, {"Authorization": f"Bearer {alice}"})
            codes.append(response.code)
        assert codes == [200, 429]
        assert json.loads(body)["error"]["code"] == "insufficient_quota"
        response, body = yield call(agent, "POST", url, BODY, {"Authorization": f"Bearer {bob}"})
        assert response.code == 429
        assert json.loads(body)["error"]["message"].startswith(
            "Budget exceeded: the daily budget of 0.000000 for bob is used up (0.000000 spent).")
        assert len(running.upstream.requests) == 1

        response, body = yield call(agent, "GET", running.url + "/api/v1/budgets", None,
                                    {"Authorization": f"Bearer {alice}"})
        [mine] = json.loads(body)["data"]
        assert response.code == 200 and (mine["username"], mine["source"], mine["amount_micros"],
                                         mine["spent_micros"], mine["held_micros"], mine["left_micros"]) == (
            "alice", "own", WORST, WORST, 0, 0)
        response, body = yield call(agent, "GET", running.url + "/api/v1/budgets?initiator=bob", None,
                                    {"Authorization": f"Bearer {alice}"})
        assert response.code == 403
        response, body = yield call(agent, "GET", running.url + "/api/v1/budgets", None,
                                    {"Authorization": f"Bearer {admin}"})
        assert [(r["username"], r["source"]) for r in json.loads(body)["data"]] == [("alice", "own")]
        response, body = yield call(agent, "GET", running.url + "/api/v1/budgets?initiator=bob", None,
                                    {"Authorization": f"Bearer {admin}"})
        [theirs] = json.loads(body)["data"]
        assert (theirs["username"], theirs["source"], theirs["period"], theirs["amount_micros"]) == (
            "bob", "default", "day", 0)

        yield running.flush()
        rows = running.rows()
        assert sorted((r["initiator_username"], r["status"], r["http_status"]) for r in rows) == [
            ("alice", "ok", 200), ("alice", "refused", 429), ("bob", "refused", 429)]
        [refusal] = [r for r in rows if r["initiator_username"] == "bob"]
        assert refusal["error"].startswith("Budget exceeded: the daily budget of 0.000000 for bob")
        [spent] = [r for r in rows if r["status"] == "ok"]
        assert spent["cost_micros"] == WORST
        assert b'bridgeproxy_budget_refusals_total{period="day"} 1.0' in running.app.metrics.exposition()
    finally:
        yield running.stop()
    assert alice not in captured_log.text() and bob not in captured_log.text()


# -- the test: many requests at once, several processes ---------------------------------------

REQUESTS = 200
WORTH = 50


def bridge_config(tmp_path, name: str, port: int, database: str, upstream_url: str, extra: str = "") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""
listen = "tcp:{port}:interface=127.0.0.1"
database = "{database}"
{extra}
[providers.openai]
base_url = "{upstream_url}/v1"
key_env = "T_OPENAI_KEY"
[recording]
spool_path = "{tmp_path / (name + '-spool.jsonl')}"
flush_interval = 0.05
[upstream]
timeout = 60
""")
    return str(path)


def sleep(seconds):
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


@defer.inlineCallbacks
def many_at_once(agent, ports, token):
    """REQUESTS requests at once, spread over C{ports}: their statuses and bodies."""
    pending = [call(agent, "POST", f"http://127.0.0.1:{ports[i % len(ports)]}/openai/v1/chat/completions", BODY,
                    {"Authorization": f"Bearer {token}"}) for i in range(REQUESTS)]
    results = yield defer.gatherResults(pending)
    return [(response.code, body) for response, body in results]


@defer.inlineCallbacks
def run_bridges(tmp_path, agent, database: str, processes: int, workers: int):
    """
    Start C{processes} twistd bridges (each with C{workers}) on C{database}
    in front of a fake provider; send the burst; stop them (which writes
    every record); return the answers, the store's recorded costs and its
    budget ledger.
    """
    upstream = fakes.FakeUpstream()
    upstream.handler = costs_its_worst_case
    site = server.Site(upstream)
    site.log = lambda request: None
    up_port = reactor.listenTCP(0, site, interface="127.0.0.1", backlog=1024)
    up_url = f"http://127.0.0.1:{up_port.getHost().port}"
    ports = [free_port() for _ in range(processes)]
    configs = [bridge_config(tmp_path, f"bridge{i}", port, database, up_url,
                             f"workers = {workers}" if workers > 1 else "") for i, port in enumerate(ports)]
    out = io.StringIO()
    assert cli.main(["keys", "create", "--config", configs[0], "--username", "alice"], out) == 0
    token = out.getvalue().strip()
    db = Database(database)
    user_id = db.identify(token).user_id
    set_budget(db, user_id, WORTH * WORST, "day", "alice")
    db.close()
    procs = [spawn_twistd(config, ["--logfile", str(tmp_path / f"twistd{i}.log"), "bridgeproxy", "--config", config])
             for i, config in enumerate(configs)]
    try:
        for port, proc in zip(ports, procs):
            yield threads.deferToThread(wait_for_port, port, proc)
        if workers > 1:
            yield sleep(2.0)  # every worker serving, not only the first to bind
        answers = yield many_at_once(agent, ports, token)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            yield threads.deferToThread(proc.wait, 60)
        yield up_port.stopListening()
    db = Database(database)
    try:
        costs = [r["cost_micros"] for r in db.interceptions(limit=1000) if r["status"] == "ok"]
        refused = [r for r in db.interceptions(limit=1000) if r["status"] == "refused"]
        ledger = db.execute("SELECT COALESCE(SUM(spent_micros), 0) FROM budget_spend WHERE user_id = ?",
                            (user_id,))[0][0]
        holds = db.execute("SELECT COUNT(*) FROM budget_holds")[0][0]
    finally:
        db.close()
    logs = "".join((tmp_path / f"twistd{i}.log").read_text() for i in range(processes))
    assert token not in logs and "Traceback" not in logs
    return answers, costs, refused, int(ledger), holds, len(upstream.requests)


def check_burst(answers, costs, refused, ledger, holds, forwarded, processes):
    codes = [code for code, _ in answers]
    ok = codes.count(200)
    assert WORTH <= ok <= WORTH + processes, codes
    assert codes.count(429) == REQUESTS - ok
    assert forwarded == ok
    for code, body in answers:
        if code == 429:
            assert json.loads(body)["error"]["type"] == "insufficient_quota"
    assert len(costs) == ok and len(refused) == REQUESTS - ok
    assert ledger == sum(costs) == ok * WORST
    assert ledger <= (WORTH + processes) * WORST
    assert holds == 0
    assert all(money(WORTH * WORST) in r["error"] for r in refused)


@pytest.mark.postgres
@pytest_twisted.inlineCallbacks
def test_two_processes_on_one_postgresql_do_not_overshoot_the_budget(tmp_path, agent):
    """
    Two bridge processes on one PostgreSQL, 200 requests at once from one
    user whose budget allows 50 requests' worth: 50 (at most 52) are
    answered, the rest get 429, and the budget's ledger equals the sum of
    the recorded costs.
    """
    url, schema = pg_schema()
    try:
        result = yield run_bridges(tmp_path, agent, url, processes=2, workers=1)
    finally:
        drop_pg_schema(schema)
    check_burst(*result, processes=2)


@pytest_twisted.inlineCallbacks
def test_two_workers_on_one_sqlite_file_do_not_overshoot_the_budget(tmp_path, agent):
    """The same burst through one bridge with workers = 2 sharing one SQLite file."""
    result = yield run_bridges(tmp_path, agent, f"sqlite:{tmp_path / 'bridge.db'}", processes=1, workers=2)
    check_burst(*result, processes=2)


def test_the_worst_case_of_the_burst_request_is_what_its_answer_costs():
    """The fake provider's usage costs exactly the hold, so 'one request's worth' is one request."""
    prompt = math.ceil(len(BODY) / 3)
    assert WORST == GPT_4O.cost(prompt, 100)
