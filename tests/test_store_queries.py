"""
The store's queries and migrations (L{bridgeproxy.store.database}) against
a SQLite file in a temporary directory: users and keys, what a token
resolves to, interceptions written and read back, totals, and pruning.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time

import pytest

from bridgeproxy.errors import ConfigError
from bridgeproxy.store import database as database_module
from bridgeproxy.store.database import Database, StoreError, hash_token, interception_row
from bridgeproxy.store.schema import INTERCEPTION_COLUMNS, LATEST
from bridgeproxy.types import Interception, ToolCall

ALICE_ID = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:{tmp_path / 'store.db'}")
    database.migrate()
    yield database
    database.close()


def rec(n: int, **kw) -> Interception:
    fields = dict(id=f"id-{n:04d}", started_at=1000.0 + n, ended_at=1000.25 + n, provider="anthropic",
                  route="messages", intercepted=True, method="POST", model="claude", streamed=True,
                  client="Claude Code", client_session_id="s", user_agent="ua", initiator_id="u1",
                  initiator_username="alice", credential_user_id="u1", credential_kind="centralized",
                  credential_hint="bp_...x", upstream_status=200, http_status=200, input_tokens=10,
                  output_tokens=5, cache_read_tokens=1, cache_write_tokens=2, prompt="hi",
                  tool_calls=(ToolCall("bash", '{"c":1}', "t1"),), stop_reason="end_turn", error=None,
                  status="ok")
    fields.update(kw)
    return Interception(**fields)


# -- opening and the schema -----------------------------------------------------------------------


def test_hash_token_is_sha256_hex():
    """Only a token's SHA-256 (hex) is stored; odd characters hash too."""
    assert hash_token("bp_x") == hashlib.sha256(b"bp_x").hexdigest()
    assert hash_token("caf\udce9") == hashlib.sha256(b"caf\xe9").hexdigest()


@pytest.mark.parametrize("url", ["mysql://h/db", "sqlite", "/tmp/x.db", ""])
def test_unknown_database_urls_are_configuration_errors(url):
    """Only sqlite: and postgresql:// URLs are stores."""
    with pytest.raises(ConfigError) as caught:
        Database(url)
    assert str(caught.value) == "database must be 'sqlite:PATH' or 'postgresql://...'"


def test_sqlite_without_a_path_is_in_memory():
    """C{sqlite:} alone is a private in-memory store."""
    memory = Database("sqlite:")
    assert memory.dialect == "sqlite"
    assert memory.migrate() == list(range(1, LATEST + 1))
    memory.close()
    memory.close()  # closing twice is harmless


def test_sqlite_connection_settings(tmp_path):
    """The SQLite store runs in WAL mode with foreign keys enforced and a busy timeout (shared with the CLI)."""
    db = Database(f"sqlite:{tmp_path / 's.db'}")
    assert db.execute("PRAGMA journal_mode") == [("wal",)]
    assert db.execute("PRAGMA foreign_keys") == [(1,)]
    assert db.execute("PRAGMA synchronous") == [(1,)]
    assert db.execute("PRAGMA busy_timeout") == [(5000,)]
    assert db.ping() is True
    db.migrate()
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        db.execute("INSERT INTO api_keys (id, user_id, key_hash, hint, created_at) VALUES ('k', 'nobody', 'h', "
                   "'h', 0)")


def test_two_connections_see_each_others_writes(tmp_path):
    """The proxy and the command line open the same file: what one writes the other reads."""
    path = tmp_path / "shared.db"
    a, b = Database(f"sqlite:{path}"), Database(f"sqlite:{path}")
    a.migrate()
    assert b.migrate() == []
    _, token = a.create_key("alice")
    assert b.identify(token).username == "alice"


def test_fresh_store_is_version_zero_and_migrates_to_latest(tmp_path):
    """An empty store is at version 0; migrating applies every migration once, in order."""
    db = Database(f"sqlite:{tmp_path / 'new.db'}")
    assert db.version() == 0
    assert db.migrate() == list(range(1, LATEST + 1))
    assert db.version() == LATEST
    assert db.migrate() == []
    assert db.execute("SELECT COUNT(*) FROM schema_version") == [(1,)]


def test_an_older_store_is_upgraded_from_where_it_is(tmp_path, monkeypatch):
    """A store at an older version gets only the migrations after it."""
    db = Database(f"sqlite:{tmp_path / 'old.db'}")
    monkeypatch.setattr(database_module, "LATEST", 1)
    assert db.migrate() == [1]
    assert db.version() == 1
    monkeypatch.setattr(database_module, "LATEST", LATEST)
    assert db.migrate() == list(range(2, LATEST + 1))
    assert "http_status" in {row[1] for row in db.execute("PRAGMA table_info(interceptions)")}


def test_a_schema_version_table_without_a_row_is_repaired(tmp_path):
    """A schema_version table left empty (an interrupted first start) counts as version 0 and is filled."""
    db = Database(f"sqlite:{tmp_path / 'odd.db'}")
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version (version) VALUES (0)")
    assert db.migrate() == list(range(1, LATEST + 1))
    assert db.execute("SELECT version FROM schema_version") == [(LATEST,)]


def test_a_failed_migration_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    """A migration that fails half-way is rolled back whole, and the version is not bumped."""
    db = Database(f"sqlite:{tmp_path / 'fail.db'}")
    broken = [["CREATE TABLE half (x INTEGER)", "THIS IS NOT SQL"]]
    monkeypatch.setattr(database_module, "MIGRATIONS", broken)
    monkeypatch.setattr(database_module, "LATEST", 1)
    with pytest.raises(sqlite3.OperationalError):
        db.migrate()
    assert db.version() == 0
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'half'") == []


def test_transaction_commits_or_rolls_back(db):
    """Work in a transaction is kept when it succeeds and undone when it raises (the error goes on)."""
    db.transaction(lambda d: d.execute("INSERT INTO users (id, username, created_at) VALUES ('a', 'a', 0)"))

    def failing(d):
        d.execute("INSERT INTO users (id, username, created_at) VALUES ('b', 'b', 0)")
        raise KeyError("stop")
    with pytest.raises(KeyError):
        db.transaction(failing)
    assert db.execute("SELECT id FROM users ORDER BY id") == [("a",)]
    assert db.transaction(lambda d: 42) == 42


def test_execute_returns_rows_or_nothing(db):
    """Statements without rows give an empty list; queries their rows as tuples."""
    assert db.execute("UPDATE users SET admin = 0") == []
    assert db.execute("SELECT ?, ?", (1, "x")) == [(1, "x")]


# -- users and keys --------------------------------------------------------------------------------


def test_ensure_user_creates_once(db):
    """A new user is created (with the given id or a fresh one); asking again returns the same user."""
    alice = db.ensure_user("alice", ALICE_ID)
    assert (alice.user_id, alice.username, alice.disabled, alice.admin) == (ALICE_ID, "alice", False, False)
    assert db.ensure_user("alice") == alice
    assert db.ensure_user("alice", ALICE_ID) == alice
    bob = db.ensure_user("bob")
    assert len(bob.user_id) == 36 and bob.user_id != ALICE_ID


def test_ensure_user_refuses_conflicting_ids(db):
    """A username with another id, or an id that belongs to another user, is refused."""
    db.ensure_user("alice", ALICE_ID)
    with pytest.raises(StoreError, match="exists with another id"):
        db.ensure_user("alice", "3f6c2a1e-9b8d-4c7e-a5f4-0d1e2c3b4a59")
    with pytest.raises(StoreError, match=f"user id {ALICE_ID} already belongs to another user"):
        db.ensure_user("mallory", ALICE_ID)


def test_ensure_user_can_make_an_admin_but_never_unmakes_one(db):
    """Asking for an admin upgrades an existing user; asking without does not downgrade."""
    assert db.ensure_user("alice").admin is False
    assert db.ensure_user("alice", admin=True).admin is True
    assert db.ensure_user("alice").admin is True
    assert db.lookup_user(db.ensure_user("alice").user_id).admin is True
    assert db.ensure_user("root", admin=True).admin is True


def test_create_key_stores_only_hash_and_hint(db):
    """A key is C{bp_} plus random text, shown once; the store keeps its hash and a masked hint."""
    key_id, token = db.create_key("alice")
    assert token.startswith("bp_") and len(token) > 40
    assert len(key_id) == 16
    rows = db.execute("SELECT id, key_hash, hint FROM api_keys")
    assert rows == [(key_id, hash_token(token), token[:4] + "..." + token[-3:])]
    _, other = db.create_key("alice")
    assert other != token


def test_identify_a_key(db):
    """A key identifies its user and key; unknown tokens identify nobody."""
    key_id, token = db.create_key("alice", ALICE_ID, admin=True)
    identity = db.identify(token)
    assert (identity.user_id, identity.username, identity.key_id, identity.disabled, identity.admin) == (
        ALICE_ID, "alice", key_id, False, True)
    assert db.identify(token + "x") is None


def test_expiry_is_exclusive(db):
    """A key works until its expiry time, not at it."""
    _, token = db.create_key("alice", expires_at=2000.0)
    assert db.identify(token, now=1999.9) is not None
    assert db.identify(token, now=2000.0) is None
    _, forever = db.create_key("alice")
    assert db.identify(forever, now=1e12) is not None


def test_revoke(db):
    """Revoking works once; the key stops working; unknown keys cannot be revoked."""
    key_id, token = db.create_key("alice")
    assert db.revoke_key(key_id) is True
    assert db.identify(token) is None
    assert db.revoke_key(key_id) is False
    assert db.revoke_key("nope") is False


def test_disable_and_enable_by_name_or_id(db):
    """A user is disabled or enabled by username or id; their key reports it; unknown users are refused."""
    _, token = db.create_key("alice", ALICE_ID)
    assert db.set_user_disabled("alice", True) is True
    assert db.identify(token).disabled is True
    assert db.lookup_user(ALICE_ID).disabled is True
    assert db.set_user_disabled(ALICE_ID, False) is True
    assert db.identify(token).disabled is False
    assert db.set_user_disabled("nobody", True) is False


def test_lookup_user(db):
    """A user is found by id, not by name."""
    db.ensure_user("alice", ALICE_ID)
    assert db.lookup_user(ALICE_ID).username == "alice"
    assert db.lookup_user("alice") is None


def test_list_keys(db):
    """Keys are listed oldest first with their user, hint, times and state fields."""
    before = time.time()
    first, _ = db.create_key("alice", ALICE_ID, expires_at=5000.0)
    second, _ = db.create_key("bob", admin=True)
    db.revoke_key(second)
    db.set_user_disabled("alice", True)
    rows = db.list_keys()
    assert [r["key_id"] for r in rows] == [first, second]
    a, b = rows
    assert set(a) == {"key_id", "username", "user_id", "hint", "created_at", "expires_at", "revoked_at",
                      "user_disabled", "admin"}
    assert (a["username"], a["user_id"], a["expires_at"], a["revoked_at"], a["user_disabled"], a["admin"]) == (
        "alice", ALICE_ID, 5000.0, None, 1, 0)
    assert a["hint"].startswith("bp_") and "..." in a["hint"]
    assert before <= a["created_at"] <= time.time()
    assert (b["username"], b["admin"], b["user_disabled"]) == ("bob", 1, 0)
    assert b["revoked_at"] is not None


# -- interceptions ------------------------------------------------------------------------------------


def test_row_follows_the_column_order():
    """An interception becomes a row in the schema's column order; tool calls as JSON."""
    row = dict(zip(INTERCEPTION_COLUMNS, interception_row(rec(1))))
    assert row["id"] == "id-0001" and row["duration_ms"] == 250
    assert row["intercepted"] == 1 and row["streamed"] == 1
    assert row["tool_calls"] == '[{"name": "bash", "arguments": "{\\"c\\":1}", "id": "t1"}]'
    assert dict(zip(INTERCEPTION_COLUMNS, interception_row(rec(2, tool_calls=()))))["tool_calls"] == "[]"
    assert len(interception_row(rec(1))) == len(INTERCEPTION_COLUMNS)


def test_interceptions_read_back_as_written(db):
    """What was recorded reads back field by field, booleans and tool calls decoded."""
    assert db.insert_interceptions([rec(1), rec(2, intercepted=False, streamed=False, tool_calls=(), model=None,
                                                http_status=404, upstream_status=None)]) == 2
    newest, older = db.interceptions()
    assert newest["id"] == "id-0002"
    assert (newest["intercepted"], newest["streamed"], newest["tool_calls"], newest["model"]) == (
        False, False, [], None)
    assert (newest["http_status"], newest["upstream_status"]) == (404, None)
    assert older["tool_calls"] == [{"name": "bash", "arguments": '{"c":1}', "id": "t1"}]
    expected = dict(zip(INTERCEPTION_COLUMNS, interception_row(rec(1))))
    expected.update(intercepted=True, streamed=True, tool_calls=older["tool_calls"])
    assert older == expected


def test_inserts_are_idempotent(db):
    """Writing a record again (a retry) does not store it twice, nor change it."""
    db.insert_interceptions([rec(1)])
    db.insert_interceptions([rec(1, model="changed"), rec(2)])
    rows = db.interceptions()
    assert [r["id"] for r in rows] == ["id-0002", "id-0001"]
    assert rows[1]["model"] == "claude"


def test_nothing_to_insert(db):
    """Inserting no records writes nothing and says zero."""
    assert db.insert_interceptions([]) == 0
    assert db.insert_interceptions(iter(())) == 0


def test_big_batches_are_written_whole(db):
    """A batch bigger than one statement's rows is written whole (several statements, one transaction)."""
    records = [rec(n) for n in range(620)]
    assert db.insert_interceptions(records) == 620
    assert db.execute("SELECT COUNT(*) FROM interceptions") == [(620,)]
    assert db.insert_interceptions(records[:250] + [rec(700)]) == 251
    assert db.execute("SELECT COUNT(*) FROM interceptions") == [(621,)]


def test_a_bad_batch_is_written_not_at_all(db):
    """When one record of a batch cannot be stored, none of the batch is."""
    bad = rec(2, provider=None)  # NOT NULL
    with pytest.raises(sqlite3.IntegrityError):
        db.insert_interceptions([rec(1), bad])
    assert db.interceptions() == []


def test_interceptions_filters_order_limit_offset(db):
    """Filters by initiator (id or name), client and start time combine; newest first; limit and offset page."""
    db.insert_interceptions([
        rec(1), rec(2, client="Codex"), rec(3, initiator_id="u2", initiator_username="bob"),
        rec(4, initiator_id="u2", initiator_username=None, client="Codex"), rec(5, started_at=1004.0),
    ])
    ids = lambda **kw: [r["id"] for r in db.interceptions(**kw)]  # noqa: E731
    assert ids() == ["id-0004", "id-0005", "id-0003", "id-0002", "id-0001"]  # same start: by id
    assert ids(initiator="alice") == ["id-0005", "id-0002", "id-0001"]
    assert ids(initiator="u2") == ["id-0004", "id-0003"]
    assert ids(initiator="bob") == ["id-0003"]
    assert ids(client="Codex") == ["id-0004", "id-0002"]
    assert ids(initiator="u2", client="Codex") == ["id-0004"]
    assert ids(since=1003.0) == ["id-0004", "id-0005", "id-0003"]
    assert ids(since=1003.0, client="Codex", initiator="u2") == ["id-0004"]
    assert ids(limit=2) == ["id-0004", "id-0005"]
    assert ids(limit=2, offset=2) == ["id-0003", "id-0002"]
    assert ids(initiator="", client="") == ids()
    assert ids(since=0.0) == ids()


def test_usage_totals(db):
    """Totals group requests and tokens by initiator (name, else id), client or model; biggest first."""
    db.insert_interceptions([
        rec(1), rec(2), rec(3, initiator_id="u2", initiator_username=None, client="Codex", model="gpt",
                            input_tokens=100, output_tokens=0, cache_read_tokens=0, cache_write_tokens=0),
    ])
    assert db.usage() == [
        {"initiator": "alice", "requests": 2, "input_tokens": 20, "output_tokens": 10, "cache_read_tokens": 2,
         "cache_write_tokens": 4, "cost_micros": 0, "unpriced_requests": 2},
        {"initiator": "u2", "requests": 1, "input_tokens": 100, "output_tokens": 0, "cache_read_tokens": 0,
         "cache_write_tokens": 0, "cost_micros": 0, "unpriced_requests": 1},
    ]
    assert [(r["client"], r["requests"]) for r in db.usage(by="client")] == [("Claude Code", 2), ("Codex", 1)]
    assert [(r["model"], r["input_tokens"]) for r in db.usage(by="model")] == [("claude", 20), ("gpt", 100)]
    assert [r["requests"] for r in db.usage(by="client", client="Codex")] == [1]
    assert [r["initiator"] for r in db.usage(initiator="u2")] == ["u2"]
    assert [r["requests"] for r in db.usage(since=1002.0)] == [1, 1]
    assert db.usage(since=5000.0) == []
    assert all(type(v) is int for r in db.usage() for k, v in r.items() if k != "initiator")


def test_usage_by_something_else_is_refused(db):
    """Grouping by anything but initiator, client, model or day is an error (never SQL built from input)."""
    with pytest.raises(StoreError, match="usage can be grouped by initiator, client, model or day"):
        db.usage(by="id; DROP TABLE users")


def test_prune(db):
    """Pruning deletes interceptions that started strictly before the cutoff and says how many."""
    db.insert_interceptions([rec(1), rec(2), rec(3)])
    assert db.prune(1002.0) == 1
    assert [r["id"] for r in db.interceptions()] == ["id-0003", "id-0002"]
    assert db.prune(0) == 0
    assert db.prune(1e9) == 2
    assert db.interceptions() == []


def test_in_memory_store_leaves_no_file(tmp_path, monkeypatch):
    """C{sqlite:} without a path writes nothing to the current directory."""
    monkeypatch.chdir(tmp_path)
    db = Database("sqlite:")
    db.migrate()
    db.create_key("alice")
    assert list(tmp_path.iterdir()) == []


def test_the_store_is_used_from_another_thread(tmp_path):
    """The proxy opens the store on one thread and queries it from the store's own thread."""
    import threading
    db = Database(f"sqlite:{tmp_path / 's.db'}")
    db.migrate()
    results = []
    worker = threading.Thread(target=lambda: results.append(db.create_key("alice")))
    worker.start()
    worker.join()
    assert len(results) == 1 and db.identify(results[0][1]).username == "alice"


def test_keys_carry_256_random_bits(db):
    """A key is bp_ and 32 random bytes, URL-safe base64 (43 characters)."""
    _, token = db.create_key("alice")
    assert len(token) == 3 + 43


def test_identify_uses_the_current_time_by_default(db):
    """Without an explicit time, a key expiring in the future works and one in the past does not."""
    _, future = db.create_key("alice", expires_at=time.time() + 3600)
    _, past = db.create_key("alice", expires_at=time.time() - 1)
    assert db.identify(future).username == "alice"
    assert db.identify(past) is None


def test_ensure_user_reports_a_disabled_user(db):
    """Asking for an existing disabled user says so."""
    db.ensure_user("alice", ALICE_ID)
    db.set_user_disabled("alice", True)
    assert db.ensure_user("alice").disabled is True
    assert db.ensure_user("alice", admin=True).disabled is True


def test_lookup_user_gives_the_whole_identity(db):
    """A user looked up by id comes with their id, name and flags."""
    db.ensure_user("alice", ALICE_ID, admin=True)
    identity = db.lookup_user(ALICE_ID)
    assert (identity.user_id, identity.username, identity.disabled, identity.admin) == (ALICE_ID, "alice", False,
                                                                                       True)


def test_interceptions_default_to_the_newest_hundred(db):
    """Without a limit the newest 100 interceptions are returned."""
    db.insert_interceptions([rec(n) for n in range(101)])
    rows = db.interceptions()
    assert len(rows) == 100 and rows[-1]["id"] == "id-0001"


def test_usage_error_message(db):
    """The refusal says exactly what may be grouped by."""
    with pytest.raises(StoreError) as caught:
        db.usage(by="week")
    assert str(caught.value) == ("usage can be grouped by initiator, client, model or day "
                                 "(or several, comma-separated)")


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_both_postgresql_schemes_are_postgresql(scheme):
    """postgresql:// and postgres:// URLs both name a PostgreSQL server (here, one that is not there)."""
    import psycopg
    with pytest.raises(psycopg.OperationalError):
        Database(f"{scheme}://u@127.0.0.1:1/x")


# -- the PostgreSQL dialect, on a fake driver --------------------------------------------------------------
#
# A real server is exercised by tests/test_store.py when BRIDGEPROXY_TEST_POSTGRES is set.  Here a fake
# psycopg connection speaks PostgreSQL's placeholder style (%s; a '?' is a syntax error there) and records
# the statements, over an in-memory SQLite that stands in for the tables.


class FakePostgres:
    def __init__(self):
        self.sqlite = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self.statements: list[str] = []
        self.closed = False

    def cursor(self):
        return FakeCursor(self)

    def close(self):
        self.closed = True


class FakeCursor:
    def __init__(self, conn):
        self.conn = conn
        self.inner = conn.sqlite.cursor()
        self.description = None

    def execute(self, statement, params=()):
        self.conn.statements.append(statement)
        if "?" in statement:
            raise sqlite3.OperationalError("syntax error at or near '?' (PostgreSQL placeholders are %s)")
        if "sqlite_master" in statement or "PRAGMA" in statement:
            raise sqlite3.OperationalError("relation does not exist (PostgreSQL has no sqlite_master)")
        if "pg_advisory" in statement:
            self.description, self._rows = (("lock",),), [("",)]
            return
        if statement.startswith(("CREATE OR REPLACE FUNCTION", "CREATE TRIGGER")):
            # PL/pgSQL and statement triggers (the dashboard's rollups): SQLite stands in for the tables only.
            self.description, self._rows = None, []
            return
        if "to_regclass" in statement:
            statement = "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        self.inner.execute(statement.replace("%s", "?"), params)
        self.description, self._rows = self.inner.description, None

    def fetchall(self):
        return self._rows if self._rows is not None else self.inner.fetchall()

    def close(self):
        self.inner.close()


@pytest.fixture
def pg(monkeypatch):
    import psycopg
    server = FakePostgres()
    opened = []

    def connect(url, **options):
        opened.append((url, options))
        return server
    monkeypatch.setattr(psycopg, "connect", connect)
    db = Database("postgresql://u:pw@db.example/bridge")
    db.server, db.opened = server, opened
    return db


def test_postgresql_connection(pg):
    """A postgresql:// store is opened with autocommit and a connect timeout, as the PostgreSQL dialect."""
    assert pg.dialect == "postgresql"
    assert pg.opened == [("postgresql://u:pw@db.example/bridge", {"autocommit": True, "connect_timeout": 5})]
    pg.close()
    assert pg.server.closed


def test_postgresql_migrations_run_under_an_advisory_lock(pg):
    """Several instances starting at once migrate one at a time: the whole migration holds an advisory lock."""
    assert pg.version() == 0
    statements = pg.server.statements
    del statements[:]
    assert pg.migrate() == list(range(1, LATEST + 1))
    assert statements[0] == "SELECT pg_advisory_lock(724311)"
    assert statements[-1] == "SELECT pg_advisory_unlock(724311)"
    assert statements.count("SELECT pg_advisory_lock(724311)") == 1
    assert pg.version() == LATEST
    del statements[:]
    assert pg.migrate() == []
    assert statements[0] == "SELECT pg_advisory_lock(724311)" and statements[-1] == "SELECT pg_advisory_unlock(724311)"


def test_postgresql_lock_is_released_when_a_migration_fails(pg, monkeypatch):
    """A failing migration still releases the lock (other instances are not blocked for ever)."""
    monkeypatch.setattr(database_module, "MIGRATIONS", [["NOT SQL AT ALL"]])
    monkeypatch.setattr(database_module, "LATEST", 1)
    with pytest.raises(sqlite3.OperationalError):
        pg.migrate()
    assert pg.server.statements[-1] == "SELECT pg_advisory_unlock(724311)"


def test_postgresql_queries_use_its_placeholders(pg):
    """Every query works with PostgreSQL's %s placeholders: keys, identities, interceptions, totals, pruning."""
    pg.migrate()
    key_id, token = pg.create_key("alice", ALICE_ID)
    assert pg.identify(token).user_id == ALICE_ID
    assert pg.lookup_user(ALICE_ID).username == "alice"
    assert pg.set_user_disabled("alice", True) is True
    assert [k["key_id"] for k in pg.list_keys()] == [key_id]
    assert pg.revoke_key(key_id) is True
    assert pg.insert_interceptions([rec(1), rec(2)]) == 2
    assert [r["id"] for r in pg.interceptions(initiator="alice", since=0.0, limit=5)] == ["id-0002", "id-0001"]
    assert pg.usage(by="model")[0]["requests"] == 2
    assert pg.prune(1001.5) == 1
    assert not any("?" in s for s in pg.server.statements)
