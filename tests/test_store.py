"""
The store, the same behaviour on SQLite and on a real PostgreSQL server
(BRIDGEPROXY_TEST_POSTGRES, started by .ci/run), and the recorder's queue.
"""

import json
import threading
import time

import pytest
import pytest_twisted
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock

from bridgeproxy.config import RecordingConfig
from bridgeproxy.recording import Recorder
from bridgeproxy.errors import ConfigError
from bridgeproxy.store import AsyncStore, Database, StoreError, check_sqlite, describe_error, safe_url
from bridgeproxy.store.schema import LATEST
from bridgeproxy.types import Interception, ToolCall
from tests.pg import drop_pg_schema, pg_schema
from tests.wired import InlinePool, Reactor


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


@pytest.mark.postgres
def test_bridges_in_two_schemas_of_one_database_each_migrate_their_own():
    """A schema_version table in another schema of the database (another bridge's) is not taken for this one's."""
    first_url, first_schema = pg_schema()
    second_url, second_schema = pg_schema()
    first, second = Database(first_url), Database(second_url)
    try:
        applied = first.migrate()
        assert applied and second.version() == 0
        assert second.migrate() == applied and second.version() == first.version()
    finally:
        first.close()
        second.close()
        drop_pg_schema(first_schema)
        drop_pg_schema(second_schema)


@pytest.mark.postgres
def test_a_store_found_later_on_the_search_path_is_the_one_used():
    """Tables in a schema after an empty one on the search_path (say "$user", public) are found, not made again."""
    made_url, made_schema = pg_schema()
    _, empty_schema = pg_schema()
    made = Database(made_url)
    both = Database(made_url.replace(f"search_path%3D{made_schema}", f"search_path%3D{empty_schema}%2C{made_schema}"))
    try:
        made.migrate()
        assert both.version() == made.version() > 0
        assert both.migrate() == []
    finally:
        made.close()
        both.close()
        drop_pg_schema(made_schema)
        drop_pg_schema(empty_schema)


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


# -- the store's face: one thread of its own, URLs and errors without passwords ----------------------


def test_a_sqlite_store_is_made_usable_at_start(tmp_path, monkeypatch):
    """check_sqlite creates and migrates the file now, so that a path that cannot be used stops the start."""
    check_sqlite(f"sqlite:{tmp_path / 'b.db'}")
    assert Database(f"sqlite:{tmp_path / 'b.db'}").version() == LATEST
    monkeypatch.chdir(tmp_path)
    check_sqlite("sqlite:relative.db")
    assert (tmp_path / "relative.db").exists()


@pytest.mark.parametrize("url", ["sqlite:", "sqlite::memory:", "postgresql://u:pw@db.invalid/bridge"])
def test_other_stores_are_left_alone_at_start(tmp_path, monkeypatch, url):
    """In-memory SQLite and PostgreSQL are not checked on disk."""
    monkeypatch.chdir(tmp_path)
    check_sqlite(url)
    assert list(tmp_path.iterdir()) == []


def test_a_sqlite_path_that_cannot_be_used_is_one_line(tmp_path):
    """A missing directory, a directory or a file that is not a database is one line naming the URL."""
    with pytest.raises(ConfigError) as caught:
        check_sqlite(f"sqlite:{tmp_path / 'missing' / 'b.db'}")
    assert str(caught.value) == (f"database: cannot use sqlite:{tmp_path / 'missing' / 'b.db'}: "
                                 f"the directory {tmp_path / 'missing'} does not exist")
    with pytest.raises(ConfigError) as caught:
        check_sqlite(f"sqlite:{tmp_path}")
    assert str(caught.value) == f"database: cannot use sqlite:{tmp_path}: it is a directory"
    (tmp_path / "text.db").write_bytes(b"this is not a database, it is a text file of some length" * 20)
    with pytest.raises(ConfigError) as caught:
        check_sqlite(f"sqlite:{tmp_path / 'text.db'}")
    assert str(caught.value) == f"database: cannot use sqlite:{tmp_path / 'text.db'}: file is not a database"


def inline_store(url="sqlite::memory:", **kw):
    pool = InlinePool()
    return AsyncStore(url, Reactor(), pool=pool, **kw), pool


def result(d):
    results = []
    d.addBoth(results.append)
    assert results, "the store did not answer at once"
    return results[0]


def test_calls_share_one_migrated_connection():
    """Calls share one connection, migrated when it is opened (unless asked not to)."""
    store, pool = inline_store()
    assert result(store.run(lambda db: db.version())) == LATEST
    result(store.run(lambda db: db.execute("CREATE TEMP TABLE t (x)")))
    assert result(store.run(lambda db: db.execute("SELECT COUNT(*) FROM t"))) == [(0,)]
    assert pool.started == 1 and pool.calls == 3
    bare, _ = inline_store(migrate=False)
    assert result(bare.run(lambda db: db.version())) == 0


def test_a_broken_connection_is_dropped_and_opened_again():
    """A call that fails (a server restart) closes the connection; the next call opens a new one."""
    store, _ = inline_store()
    result(store.run(lambda db: db.execute("CREATE TEMP TABLE t (x)")))

    def broken(db):
        raise ConnectionError("server closed the connection unexpectedly")
    assert result(store.run(broken)).check(ConnectionError)
    failure = result(store.run(lambda db: db.execute("SELECT COUNT(*) FROM t")))
    assert "no such table: t" in str(failure.value)   # a new connection (the old one's table is gone)


def test_a_refusal_of_the_store_keeps_the_connection():
    """A StoreError (a refusal, not a broken connection) keeps the connection."""
    store, _ = inline_store()
    result(store.run(lambda db: db.execute("CREATE TEMP TABLE t (x)")))
    assert result(store.run(lambda db: db.ensure_user("alice", "u1"))).username == "alice"
    refused = result(store.run(lambda db: db.ensure_user("alice", "u2")))
    assert refused.check(StoreError)
    assert result(store.run(lambda db: db.execute("SELECT COUNT(*) FROM t"))) == [(0,)]


def test_stopping_closes_the_connection_and_the_thread():
    """Stopping closes the connection and the thread; a store used again starts again."""
    store, pool = inline_store()
    assert result(store.stop()) is None and pool.stopped == 0   # never started: nothing to stop
    result(store.run(lambda db: db.execute("CREATE TEMP TABLE t (x)")))
    assert result(store.stop()) is None and pool.stopped == 1
    # Used again, it starts again, on a new connection.
    assert "no such table" in str(result(store.run(lambda db: db.execute("SELECT * FROM t"))).value)
    assert pool.started == 2
    store.start()
    assert pool.started == 2


def test_a_store_describes_its_errors_without_the_password():
    """A store describes an error in one line, without its URL's password."""
    store, _ = inline_store("postgresql://bridge:hunter2-0123@db/bridge")
    assert store.describe(OSError("password hunter2-0123 refused\nDETAIL")) == "password *** refused"


@pytest_twisted.inlineCallbacks
def test_the_store_has_a_thread_of_its_own():
    """Calls run off the reactor's thread, on the store's own named thread."""
    from twisted.internet import reactor
    store = AsyncStore("sqlite::memory:", reactor)
    try:
        names = yield store.run(lambda db: threading.current_thread().name)
        assert names != threading.current_thread().name
        assert names.startswith("PoolThread-bridgeproxy-store-")
    finally:
        yield store.stop()


def test_urls_shown_never_hold_a_password():
    """A URL shown hides the user part (a password with '@' included) and password= values."""
    assert safe_url("postgresql://bridge:p@ss@db:5432/bridge?sslrootcert=http://ca/x") == (
        "postgresql://***@db:5432/bridge?sslrootcert=http://ca/x")
    assert safe_url("sqlite:/var/lib/b@ckup/bridge.db") == "sqlite:/var/lib/b@ckup/bridge.db"
    assert safe_url("postgresql://db/bridge?user=u&password=pw&x=1") == "postgresql://db/bridge?user=u&password=***&x=1"


def test_store_errors_are_short_single_lines():
    """An error is its first line, at most 200 characters, its type's name when it has no text."""
    url = "postgresql://u:pw-0123@db/bridge?password=&x=1"
    assert describe_error(OSError(), url) == "OSError"
    assert describe_error(ConnectionError("   "), url) == "ConnectionError"
    assert describe_error(OSError("x" * 300), url) == "x" * 200
    assert describe_error(OSError("  refused for pw-0123  \n  more"), url) == "refused for ***"
