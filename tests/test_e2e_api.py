"""
Reading records back over HTTP (/api/v1/...), health checks, retention, and
the store outage a user would notice: a real PostgreSQL server stopped mid-load.
"""

import json

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from bridgeproxy.recording import Retention
from tests import fakes
from tests.http import call
from tests.pg import OwnServer

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def sleep(seconds):
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


@pytest_twisted.inlineCallbacks
def test_interceptions_api_admin_and_own_rows(bridge, agent):
    """An admin key reads every row (filtered, paginated); a user's key only their own; no key is 401."""
    admin = bridge.create_key("root", admin=True)
    alice = bridge.create_key("alice")
    bob = bridge.create_key("bob")
    for token in (alice, alice, bob):
        yield call(agent, "POST", bridge.url + "/openai/v1/chat/completions", CHAT, {"Authorization": f"Bearer {token}"})
    yield bridge.flush()
    response, body = yield call(agent, "GET", bridge.url + "/api/v1/interceptions?limit=2",
                                None, {"Authorization": f"Bearer {admin}"})
    page = json.loads(body)
    assert response.code == 200 and len(page["data"]) == 2 and page["next_offset"] == 2
    response, body = yield call(agent, "GET", bridge.url + "/api/v1/interceptions?offset=2&limit=2",
                                None, {"Authorization": f"Bearer {admin}"})
    assert len(json.loads(body)["data"]) == 1 and json.loads(body)["next_offset"] is None
    response, body = yield call(agent, "GET", bridge.url + "/api/v1/interceptions?initiator=bob",
                                None, {"Authorization": f"Bearer {admin}"})
    assert [r["initiator_username"] for r in json.loads(body)["data"]] == ["bob"]
    response, body = yield call(agent, "GET", bridge.url + "/api/v1/interceptions", None,
                                {"Authorization": f"Bearer {alice}"})
    assert {r["initiator_username"] for r in json.loads(body)["data"]} == {"alice"}
    response, _ = yield call(agent, "GET", bridge.url + "/api/v1/interceptions?initiator=bob", None,
                             {"Authorization": f"Bearer {alice}"})
    assert response.code == 403
    response, body = yield call(agent, "GET", bridge.url + "/api/v1/usage?by=initiator", None,
                                {"Authorization": f"Bearer {admin}"})
    usage = {u["initiator"]: u for u in json.loads(body)["data"]}
    assert usage["alice"]["requests"] == 2 and usage["bob"]["requests"] == 1
    response, _ = yield call(agent, "GET", bridge.url + "/api/v1/usage")
    assert response.code == 401
    response, body = yield call(agent, "GET", bridge.url + "/api/v1/usage?since=yesterday", None,
                                {"Authorization": f"Bearer {admin}"})
    assert response.code == 400 and "since" in json.loads(body)["error"]["message"]


@pytest_twisted.inlineCallbacks
def test_health_endpoints(bridge, agent):
    """/healthz and /readyz answer without a key and without touching the upstream."""
    response, body = yield call(agent, "GET", bridge.url + "/healthz")
    assert response.code == 200 and json.loads(body)["status"] == "ok"
    response, body = yield call(agent, "GET", bridge.url + "/readyz")
    ready = json.loads(body)
    assert response.code == 200 and ready["store"] == "ok"
    assert ready["providers_with_key"] == {"openai": True, "anthropic": True}
    assert bridge.upstream.requests == []


def test_retention_prunes_on_the_clock():
    """With retention_days set, old interceptions are pruned at start and then every interval."""
    cutoffs = []

    class Store:
        def run(self, work):
            class DB:
                def prune(self, before):
                    cutoffs.append(before)
                    return 0
            return defer.succeed(work(DB()))
    clock = Clock()
    clock.advance(100 * 86400)
    job = Retention(Store(), clock, days=30, interval=3600)
    job.start()
    clock.advance(0)
    assert cutoffs == [70 * 86400]
    clock.advance(3600)
    assert len(cutoffs) == 2
    job.stop()
    clock.advance(7200)
    assert len(cutoffs) == 2
    none = Retention(Store(), clock, days=0)
    none.start()
    clock.advance(10)
    assert len(cutoffs) == 2


@pytest.mark.postgres
@pytest_twisted.inlineCallbacks
def test_postgres_stopped_mid_load_loses_nothing(tmp_path, agent, captured_log):
    """PostgreSQL stopped mid-load: requests keep being served, and every row arrives once it is back, once."""
    # A server of its own: stopping the shared one would fail the other test process's PostgreSQL tests.
    server = OwnServer()
    url = server.url
    running = yield fakes.start_bridge(tmp_path, {"database": url, "auth": {"cache_seconds": 1},
                                                  "recording": {"batch_size": 5, "queue_max": 12}})
    running.db = lambda: __import__("bridgeproxy.store", fromlist=["Database"]).Database(url)
    try:
        token = running.create_key("alice")
        codes = []
        for _ in range(10):
            response, _ = yield call(agent, "POST", running.url + "/openai/v1/chat/completions", CHAT,
                                     {"Authorization": f"Bearer {token}"})
            codes.append(response.code)
        server.stop()
        try:
            for _ in range(30):
                response, _ = yield call(agent, "POST", running.url + "/openai/v1/chat/completions", CHAT,
                                         {"Authorization": f"Bearer {token}"})
                codes.append(response.code)
            yield sleep(1.5)  # the key cache expires; the stale entry must keep alice in
            response, _ = yield call(agent, "POST", running.url + "/openai/v1/chat/completions", CHAT,
                                     {"Authorization": f"Bearer {token}"})
            codes.append(response.code)
            assert running.app.metrics.get("recorded") < 41
        finally:
            server.start()
        assert codes == [200] * 41
        for _ in range(150):
            if running.app.metrics.get("recorded") >= 41 and not running.app.recorder.queue:
                break
            yield sleep(0.1)
        rows = running.rows()
        assert len(rows) == 41
        assert len({r["id"] for r in rows}) == 41
        assert running.app.metrics.get("spooled") > 0
        assert token not in captured_log.text()
    finally:
        yield running.stop()
        server.remove()
