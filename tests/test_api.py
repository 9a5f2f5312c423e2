"""
The bridge's own endpoints as a client or an operator's probe gets them:
/api/v1/interceptions and /api/v1/usage (a bridge key; admins see every
row, others their own), /healthz, /readyz and /metrics.  In memory: the
bridge as tap.build wires it, on a store that answers at once.
"""

import json
import os

import pytest
from twisted.internet.defer import succeed
from twisted.internet.testing import StringTransport
from twisted.web.server import Site

from bridgeproxy.api import BridgeAPI, MetricsResource
from bridgeproxy.errors import BadRequest
from bridgeproxy.store import StoreError
from bridgeproxy.types import Identity, Interception
from tests import memory
from tests.wired import logged, built

ALICE_ID = "3f6c2a1e-9b8d-4c7e-a5f4-0d1e2c3b4a59"
BOB_ID = "0b5e2d7c-1a3f-4e6b-9c8d-7f6e5d4c3b2a"


def row(i, initiator_id=ALICE_ID, username="alice", client="Claude Code", model="claude", **kw):
    base = dict(id=f"id-{i}", started_at=1704067200.0 + i * 3600, ended_at=1704067200.5 + i * 3600,
                provider="anthropic", route="messages", intercepted=True, method="POST", model=model,
                streamed=False, client=client, client_session_id=None, user_agent=None,
                initiator_id=initiator_id, initiator_username=username, credential_user_id=initiator_id,
                credential_kind="centralized", credential_hint=None, upstream_status=200,
                input_tokens=10 * (i + 1), output_tokens=i + 1, status="ok")
    base.update(kw)
    return Interception(**base)


@pytest.fixture
def bridge():
    """The bridge in memory with three keys (alice, bob, admin root) and five rows."""
    app, gateway, store = built()
    db = store.db
    gateway.tokens = {
        "alice": db.create_key("alice", ALICE_ID)[1], "bob": db.create_key("bob", BOB_ID)[1],
        "root": db.create_key("root", admin=True)[1]}
    db.insert_interceptions([
        row(0), row(1, client="Codex", model="gpt-4o"), row(2),
        row(3, BOB_ID, "bob", model="gpt-4o"), row(4, BOB_ID, "bob", client="Codex")])
    gateway.app, gateway.store = app, store
    return gateway


def get(gateway, path, who=None, method="GET"):
    headers = {"Authorization": f"Bearer {gateway.tokens[who]}"} if who else {}
    return gateway.send(method, path, headers=headers)


def ids(answer):
    return [r["id"] for r in answer.json()["data"]]


def error(answer):
    return answer.status, answer.json()["error"]["message"]


# -- /api/v1/interceptions --------------------------------------------------------------


def test_an_answer_is_compact_json_never_cached(bridge):
    """An API answer is compact JSON with its exact length, marked not to be cached (it holds who asked what)."""
    answer = get(bridge, "/api/v1/interceptions?limit=1", "alice")
    assert answer.status == 200
    assert answer.headers["content-type"] == [b"application/json"]
    assert answer.headers["cache-control"] == [b"no-store"]
    assert answer.headers["content-length"] == [str(len(answer.body)).encode()]
    assert answer.body.startswith(b'{"data":[{"id":"id-2",') and b", " not in answer.body
    assert b'],"next_offset":1,' in answer.body and answer.body.endswith(b"}")


def test_a_user_reads_their_own_rows_newest_first(bridge):
    """A user's key reads that user's rows only, newest first, naming themselves by id or name or not at all."""
    assert ids(get(bridge, "/api/v1/interceptions", "alice")) == ["id-2", "id-1", "id-0"]
    assert ids(get(bridge, "/api/v1/interceptions", "bob")) == ["id-4", "id-3"]
    # Naming themselves, by id or by name, is the same.
    assert ids(get(bridge, f"/api/v1/interceptions?initiator={ALICE_ID}", "alice")) == ["id-2", "id-1", "id-0"]
    assert ids(get(bridge, "/api/v1/interceptions?initiator=alice", "alice")) == ["id-2", "id-1", "id-0"]


@pytest.mark.parametrize("initiator", ["bob", BOB_ID, "root"])
def test_a_user_may_not_read_anyone_else(bridge, initiator):
    """A user naming anyone else, by name or id, is refused 403, for rows and usage alike."""
    assert error(get(bridge, f"/api/v1/interceptions?initiator={initiator}", "alice")) == (
        403, "Only admins can read other users' interceptions.")
    assert error(get(bridge, f"/api/v1/usage?initiator={initiator}", "alice")) == (
        403, "Only admins can read other users' interceptions.")


def test_an_admin_reads_every_row_or_one_initiators(bridge):
    """An admin reads every row, or one initiator's (the value trimmed, the first of two, an empty one no filter)."""
    assert ids(get(bridge, "/api/v1/interceptions", "root")) == ["id-4", "id-3", "id-2", "id-1", "id-0"]
    assert ids(get(bridge, "/api/v1/interceptions?initiator=bob", "root")) == ["id-4", "id-3"]
    assert ids(get(bridge, f"/api/v1/interceptions?initiator=%20{ALICE_ID}%20", "root")) == [
        "id-2", "id-1", "id-0"]
    # A value that is not UTF-8 filters on what it says, not an error.
    answer = get(bridge, "/api/v1/interceptions?client=Codex%FF", "root")
    assert answer.status == 200 and ids(answer) == []
    assert ids(get(bridge, "/api/v1/interceptions?initiator=bob%FF", "root")) == []
    # An empty parameter is no filter; the first of two is the one used.
    assert len(ids(get(bridge, "/api/v1/interceptions?initiator=", "root"))) == 5
    assert ids(get(bridge, "/api/v1/interceptions?initiator=bob&initiator=alice", "root")) == ["id-4", "id-3"]


def test_pages(bridge):
    """limit and offset page through the rows; next_offset says where the next page starts, null at the end."""
    page = get(bridge, "/api/v1/interceptions?limit=2", "root").json()
    assert [r["id"] for r in page["data"]] == ["id-4", "id-3"] and page["next_offset"] == 2
    page = get(bridge, "/api/v1/interceptions?limit=2&offset=2", "root").json()
    assert [r["id"] for r in page["data"]] == ["id-2", "id-1"] and page["next_offset"] == 4
    page = get(bridge, "/api/v1/interceptions?limit=2&offset=4", "root").json()
    assert [r["id"] for r in page["data"]] == ["id-0"] and page["next_offset"] is None
    page = get(bridge, "/api/v1/interceptions?limit=5", "root").json()
    assert len(page["data"]) == 5 and page["next_offset"] is None
    page = get(bridge, "/api/v1/interceptions?limit=4", "root").json()
    assert len(page["data"]) == 4 and page["next_offset"] == 4
    page = get(bridge, "/api/v1/interceptions?limit=1&offset=1", "root").json()
    assert [r["id"] for r in page["data"]] == ["id-3"] and page["next_offset"] == 2
    assert ids(get(bridge, "/api/v1/interceptions?limit=500&offset=1000000000", "root")) == []


def test_the_default_page_is_100_rows(bridge):
    """Without limit, a page is 100 rows; 500 is the most one page may hold."""
    bridge.store.db.insert_interceptions([row(10 + i) for i in range(101)])
    page = get(bridge, "/api/v1/interceptions", "root").json()
    assert len(page["data"]) == 100 and page["next_offset"] == 100
    assert get(bridge, "/api/v1/interceptions?limit=500", "root").json()["next_offset"] is None


def test_filters(bridge):
    """client= and since= narrow the rows; since is UTC unless it says otherwise."""
    assert ids(get(bridge, "/api/v1/interceptions?client=Codex", "root")) == ["id-4", "id-1"]
    assert ids(get(bridge, "/api/v1/interceptions?since=2024-01-01T03:00:00", "root")) == ["id-4", "id-3"]
    assert ids(get(bridge, "/api/v1/interceptions?since=2024-01-01T03:00:00%2B01:00", "root")) == [
        "id-4", "id-3", "id-2"]
    assert ids(get(bridge, "/api/v1/interceptions?since=2024-01-01T01:00:00&client=Claude%20Code", "alice")) == [
        "id-2"]


@pytest.mark.parametrize("query,message", [
    ("limit=0", "limit must be between 1 and 500"),
    ("limit=501", "limit must be between 1 and 500"),
    ("limit=ten", "limit must be a whole number"),
    ("limit=1.5", "limit must be a whole number"),
    ("offset=-1", "offset must be between 0 and 1000000000"),
    ("offset=1000000001", "offset must be between 0 and 1000000000"),
    ("since=yesterday", "since must be an ISO 8601 date or time"),
])
def test_bad_parameters_are_400(bridge, query, message):
    """A bad limit, offset or since is 400 with a message naming the parameter and what it must be."""
    assert error(get(bridge, f"/api/v1/interceptions?{query}", "root")) == (400, message)


def test_bounds_are_inclusive(bridge):
    """limit 1 and 500 and offset 0 are accepted: the bounds are inclusive."""
    assert len(ids(get(bridge, "/api/v1/interceptions?limit=1", "root"))) == 1
    assert get(bridge, "/api/v1/interceptions?limit=500&offset=0", "root").status == 200


# -- /api/v1/usage ----------------------------------------------------------------------


def test_usage_by_initiator_client_or_model(bridge):
    """Usage sums requests and tokens by initiator (the default), client or model, filtered like the rows."""
    usage = get(bridge, "/api/v1/usage", "root").json()
    assert usage["by"] == "initiator"
    assert {u["initiator"]: (u["requests"], u["input_tokens"], u["output_tokens"]) for u in usage["data"]} == {
        "alice": (3, 60, 6), "bob": (2, 90, 9)}
    usage = get(bridge, "/api/v1/usage?by=client", "root").json()
    assert usage["by"] == "client"
    assert {u["client"]: u["requests"] for u in usage["data"]} == {"Claude Code": 3, "Codex": 2}
    usage = get(bridge, "/api/v1/usage?by=model&client=Codex", "root").json()
    assert usage["by"] == "model"
    fields = ("model", "requests", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
    assert {u["model"]: {k: u[k] for k in fields} for u in usage["data"]} == {
        "claude": {"model": "claude", "requests": 1, "input_tokens": 50, "output_tokens": 5,
                   "cache_read_tokens": 0, "cache_write_tokens": 0},
        "gpt-4o": {"model": "gpt-4o", "requests": 1, "input_tokens": 20, "output_tokens": 2,
                   "cache_read_tokens": 0, "cache_write_tokens": 0}}


def test_usage_of_a_user_is_their_own(bridge):
    """A user's usage is their own, whatever they group by; an admin may ask for one initiator's."""
    usage = get(bridge, "/api/v1/usage?by=model", "bob").json()
    assert {u["model"]: u["requests"] for u in usage["data"]} == {"gpt-4o": 1, "claude": 1}
    usage = get(bridge, "/api/v1/usage?by=client&since=2024-01-01T02:00:00", "alice").json()
    assert {u["client"]: u["requests"] for u in usage["data"]} == {"Claude Code": 1}
    usage = get(bridge, "/api/v1/usage?initiator=bob", "root").json()
    assert [(u["initiator"], u["requests"]) for u in usage["data"]] == [("bob", 2)]


@pytest.mark.parametrize("query,message", [
    ("by=user", "by must be initiator, client, model or day, or several of them comma-separated (initiator,day)"),
    ("since=last%20week", "since must be an ISO 8601 date or time"),
])
def test_bad_usage_parameters_are_400(bridge, query, message):
    """An unknown grouping or a bad since is 400 naming the parameter."""
    assert error(get(bridge, f"/api/v1/usage?{query}", "root")) == (400, message)


# -- refusals ---------------------------------------------------------------------------


def test_who_may_read(bridge):
    """No key is 401, an unknown key 401, a disabled user 403; X-Api-Key is a key like Authorization."""
    assert error(get(bridge, "/api/v1/usage")) == (401, "No API key provided.")
    bridge.tokens["stranger"] = "bp_not-a-key-0123456789abcdef"
    assert error(get(bridge, "/api/v1/interceptions", "stranger")) == (401, "Invalid, expired or revoked API key.")
    bridge.store.db.set_user_disabled("alice", True)
    assert error(get(bridge, "/api/v1/interceptions", "alice")) == (403, "This user is disabled.")
    # x-api-key is one of the configured extractors too.
    answer = bridge.send("GET", "/api/v1/interceptions", headers={"X-Api-Key": bridge.tokens["bob"]})
    assert answer.status == 200 and ids(answer) == ["id-4", "id-3"]


@pytest.mark.parametrize("path", ["/api/v1/other", "/api/v1", "/api/v1/", "/api/v1/usage/x",
                                  "/api/v1/interceptions/id-0/x"])
def test_unknown_api_paths_are_404(bridge, path):
    """Anything under /api/v1 that is not a view is 404, never the pipeline's answer."""
    answer = get(bridge, path, "root")
    assert answer.status == 404
    assert answer.json()["error"]["message"] in ("Unknown API path.", "Unknown path.")


def test_unknown_paths_say_which(bridge):
    """An unknown view, or a path below a view, says 'Unknown API path.'; below an endpoint, 'Unknown path.'."""
    assert error(get(bridge, "/api/v1/other", "root")) == (404, "Unknown API path.")
    assert error(get(bridge, "/api/v1", "root")) == (404, "Unknown API path.")
    assert error(get(bridge, "/api/v1/usage/x", "root")) == (404, "Unknown API path.")
    assert error(get(bridge, "/healthz/x")) == (404, "Unknown path.")


def test_only_get_and_head(bridge):
    """Only GET reads the API (400 otherwise); HEAD gets GET's headers without the body."""
    assert error(get(bridge, "/api/v1/usage", "root", method="POST")) == (400, "Only GET is supported here.")
    assert error(get(bridge, "/api/v1/usage", "root", method="DELETE")) == (400, "Only GET is supported here.")
    head = get(bridge, "/api/v1/usage", "root", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert int(head.headers["content-length"][0]) == len(get(bridge, "/api/v1/usage", "root").body)


def test_a_store_error_is_the_stores_answer_and_anything_else_a_logged_500(bridge, captured_log):
    """A refusal raised by the store keeps its status; an unexpected failure is logged and answered 500,
    without its text (it may hold a password)."""
    # (The key check goes through the store too: here it answers from memory, so that only the query fails.)
    bridge.app.bridge.api.identity = memory.Identities({bridge.tokens["root"]: Identity("root-id", "root", admin=True)})
    bridge.store.down = BadRequest("Too many rows asked for.")
    assert error(get(bridge, "/api/v1/usage", "root")) == (400, "Too many rows asked for.")
    assert "API request failed" not in captured_log.text()
    bridge.store.down = StoreError("connection to postgresql://u:hunter2@db failed")
    status, message = error(get(bridge, "/api/v1/usage", "root"))
    assert (status, message) == (500, "The store could not answer.")
    assert "API request failed" in logged(captured_log)
    assert "hunter2" not in message


# -- health and metrics -----------------------------------------------------------------


def test_healthz(bridge):
    """/healthz answers at once without a key, naming the process, and never reaches an upstream."""
    answer = get(bridge, "/healthz")
    assert answer.status == 200
    assert answer.body == b'{"status":"ok","pid":%d}' % os.getpid()
    assert answer.headers["content-type"] == [b"application/json"]
    assert answer.headers["cache-control"] == [b"no-store"]
    assert bridge.upstream.seen == []


def test_readyz(bridge):
    """Ready when the store answers and providers are configured: which have a key, the recording queue."""
    answer = get(bridge, "/readyz")
    assert answer.status == 200
    assert answer.json() == {"status": "ready", "store": "ok", "providers_with_key": {"openai": True,
                             "anthropic": True}, "recording_queue": 0}
    bridge.app.recorder.queue.append(memory_record())
    assert get(bridge, "/readyz").json()["recording_queue"] == 1


def memory_record():
    return row(99)


def test_readyz_without_a_key_is_still_ready():
    """A provider without a key is shown as such; the bridge is still ready (clients may bring their own)."""
    app, gateway, _ = built(environ={"K_OPENAI": "sk-only-openai-0123456789"})
    answer = gateway.send("GET", "/readyz")
    assert answer.status == 200
    assert answer.json()["providers_with_key"] == {"openai": True, "anthropic": False}


def test_readyz_with_the_store_down_says_why_without_the_password():
    """With the store down, /readyz is 503 and says why in one line, the password masked."""
    _, gateway, store = built()
    store.url = "postgresql://bridge:hunter2-0123@db.internal/bridge"
    store.down = OSError("could not connect as bridge:hunter2-0123 to db.internal\nDETAIL: refused")
    answer = gateway.send("GET", "/readyz")
    assert answer.status == 503
    assert answer.json() == {"status": "not ready", "store": "unavailable", "providers_with_key": {
        "openai": True, "anthropic": True}, "recording_queue": 0,
        "reason": "could not connect as bridge:*** to db.internal"}


def test_readyz_with_no_provider_is_not_ready():
    """(A bridge serving no provider is not ready, however its store is.)"""
    class Store:
        def run(self, work):
            class DB:
                def ping(self):
                    return True
            return succeed(work(DB()))

    class Recorder:
        queue = []
    api = BridgeAPI(extractors=[], identity=None, store=Store(), recorder=Recorder(), providers={})
    request = answer_of(api.ready)
    assert request.responseCode == 503
    assert json.loads(b"".join(request.written)) == {"status": "not ready", "store": "ok",
                                                     "providers_with_key": {}, "recording_queue": 0}


def answer_of(render, path=b"/readyz"):
    from twisted.web.test.requesthelper import DummyRequest
    request = DummyRequest([])
    request.path = path
    render(request)
    return request


def test_metrics_on_the_main_listener(bridge):
    """Without metrics_listen, /metrics is the Prometheus exposition; with it, /metrics here is 404."""
    answer = get(bridge, "/metrics")
    assert answer.status == 200
    assert answer.headers["content-type"] == [b"text/plain; version=0.0.4; charset=utf-8"]
    assert answer.headers["content-length"] == [str(len(answer.body)).encode()]
    assert b"bridgeproxy_recording_queue_depth" in answer.body
    _, elsewhere, _ = built({"metrics_listen": "tcp:9090"})
    assert error(elsewhere.send("GET", "/metrics")) == (404, "Metrics are served on the metrics listener.")


def test_the_metrics_listener_serves_only_metrics():
    """The separate metrics listener serves /metrics and refuses every other path with 404."""
    app, _, _ = built({"metrics_listen": "tcp:9090"})
    site = Site(MetricsResource(app.metrics))

    def fetch(path):
        protocol = site.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return memory.parse_answer(transport.value())
    answer = fetch(b"/metrics")
    assert answer.status == 200 and b"bridgeproxy_recording_queue_depth" in answer.body
    assert answer.headers["content-type"] == [b"text/plain; version=0.0.4; charset=utf-8"]
    assert answer.headers["content-length"] == [str(len(answer.body)).encode()]
    answer = fetch(b"/healthz")
    assert (answer.status, answer.json()["error"]["message"]) == (404, "Only /metrics is served here.")
