"""
The store, the same behaviour on SQLite and on a real PostgreSQL server
(BRIDGEPROXY_TEST_POSTGRES, started by .ci/run), and the recorder's queue.
"""

import json
import time

import pytest
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock

from bridgeproxy.config import RecordingConfig
from bridgeproxy.recording import Recorder
from bridgeproxy.store import Database
from bridgeproxy.types import Interception, ToolCall
from tests.pg import drop_pg_schema, pg_schema


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request, tmp_path):
    if request.param == "sqlite":
        database = Database(f"sqlite:{tmp_path / 'store.db'}")
        yield database
        database.close()
        return
    url, schema = pg_schema()
    database = Database(url)
    yield database
    database.close()
    drop_pg_schema(schema)


def record(i: int = 0, **kw) -> Interception:
    base = dict(
        id=f"id-{i}", started_at=1000.0 + i, ended_at=1000.5 + i, provider="anthropic", route="messages",
        intercepted=True, method="POST", model="claude", streamed=True, client="Claude Code",
        client_session_id="s", user_agent="claude-cli/2", initiator_id="u1", initiator_username="alice",
        credential_user_id="u1", credential_kind="centralized", credential_hint="sk-a...z",
        upstream_status=200, input_tokens=10, output_tokens=5, tool_calls=(ToolCall("bash", '{"c":1}', "t1"),),
    )
    base.update(kw)
    return Interception(**base)


def test_migrations_are_idempotent(db):
    """Migrating twice applies each migration once and leaves the schema at the latest version."""
    first = db.migrate()
    assert first and db.migrate() == []
    assert db.version() == first[-1]


def test_keys_lifecycle(db):
    """A created key identifies its user; only its hash is stored; revoked, expired or disabled keys stop working."""
    db.migrate()
    key_id, token = db.create_key("alice")
    assert db.identify(token).username == "alice"
    stored = json.dumps([list(map(str, r)) for r in db.execute("SELECT * FROM api_keys")])
    assert token not in stored
    db.set_user_disabled("alice", True)
    assert db.identify(token).disabled is True
    db.set_user_disabled("alice", False)
    assert db.revoke_key(key_id) is True
    assert db.identify(token) is None
    _, expiring = db.create_key("alice", expires_at=time.time() - 1)
    assert db.identify(expiring) is None
    assert db.identify("bp_unknown") is None


def test_interceptions_are_idempotent_and_queryable(db):
    """Inserting the same interception twice stores it once; filters and usage totals work."""
    db.migrate()
    db.insert_interceptions([record(1), record(2, client="Codex", initiator_username="bob", initiator_id="u2")])
    db.insert_interceptions([record(1)])
    rows = db.interceptions()
    assert [r["id"] for r in rows] == ["id-2", "id-1"]
    assert rows[1]["tool_calls"] == [{"name": "bash", "arguments": '{"c":1}', "id": "t1"}]
    assert [r["id"] for r in db.interceptions(initiator="alice")] == ["id-1"]
    assert [r["id"] for r in db.interceptions(client="Codex")] == ["id-2"]
    assert [r["id"] for r in db.interceptions(since=1001.5)] == ["id-2"]
    usage = {u["initiator"]: u for u in db.usage(by="initiator")}
    assert usage["alice"]["input_tokens"] == 10 and usage["bob"]["requests"] == 1
    assert db.prune(1001.5) == 1
    assert [r["id"] for r in db.interceptions()] == ["id-2"]


# -- the recorder, over a fake store and a fake clock ---------------------------------


class FlakyStore:
    """A store that fails while C{down}; records what it stored, idempotently."""

    def __init__(self):
        self.down = False
        self.rows = {}
        self.calls = 0

    def run(self, work):
        self.calls += 1
        if self.down:
            return fail(ConnectionError("server closed the connection unexpectedly"))

        class DB:
            def insert_interceptions(db, batch):
                for r in batch:
                    self.rows.setdefault(r.id, r)
                return len(batch)
        return succeed(work(DB()))


def test_recorder_retries_without_loss(tmp_path):
    """Records made while the store is down are kept and written once it is back, each once."""
    store, clock = FlakyStore(), Clock()
    recorder = Recorder(store, clock, RecordingConfig(batch_size=10, flush_interval=0.1,
                                                      spool_path=str(tmp_path / "spool")))
    recorder.start()
    store.down = True
    for i in range(25):
        recorder.record(record(i))
    clock.advance(0.1)
    assert store.rows == {} and len(recorder.queue) == 25
    store.down = False
    for _ in range(20):
        clock.advance(1)
    assert sorted(store.rows) == sorted(f"id-{i}" for i in range(25))
    assert recorder.metrics.get("store_errors") >= 1


def test_recorder_spools_overflow_and_replays(tmp_path):
    """Past queue_max the oldest records go to the spool file, and come back once the store answers."""
    store, clock = FlakyStore(), Clock()
    spool = tmp_path / "spool.jsonl"
    recorder = Recorder(store, clock, RecordingConfig(batch_size=5, flush_interval=0.1, queue_max=20,
                                                      spool_path=str(spool)))
    recorder.start()
    store.down = True
    for i in range(60):
        recorder.record(record(i))
    assert spool.exists() and len(recorder.queue) <= 20
    assert recorder.metrics.get("spooled") > 0
    store.down = False
    for _ in range(200):
        clock.advance(1)
    assert sorted(store.rows) == sorted(f"id-{i}" for i in range(60))
    assert not spool.exists()


def test_recorder_stop_spools_what_it_cannot_write(tmp_path):
    """On stop with the store down, queued records are spooled, not dropped; a new recorder replays them."""
    store, clock = FlakyStore(), Clock()
    spool = tmp_path / "spool.jsonl"
    config = RecordingConfig(batch_size=5, flush_interval=0.1, spool_path=str(spool))
    recorder = Recorder(store, clock, config)
    recorder.start()
    store.down = True
    for i in range(7):
        recorder.record(record(i))
    clock.advance(0.1)
    recorder.stop()
    assert len(spool.read_text().splitlines()) == 7
    store.down = False
    again = Recorder(store, clock, config)
    again.start()
    for _ in range(10):
        clock.advance(1)
    assert sorted(store.rows) == sorted(f"id-{i}" for i in range(7))
