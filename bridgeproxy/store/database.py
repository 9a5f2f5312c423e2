# -*- test-case-name: tests.test_store,tests.test_store_queries -*-
"""
Synchronous access to the store, the same for SQLite and PostgreSQL.

Everything here blocks: the proxy calls it only from the store's own
thread (L{bridgeproxy.store.AsyncStore}); the command line calls it
directly.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
import uuid
from typing import Any, Callable, Iterable, Optional, Sequence, TypeVar

from bridgeproxy.errors import ConfigError
from bridgeproxy.store.schema import INTERCEPTION_COLUMNS, LATEST, MIGRATIONS, statements
from bridgeproxy.types import Identity, Interception, mask_secret, record_row, row_dict

T = TypeVar("T")

TOKEN_PREFIX = "bp_"
#: Rows per INSERT statement (31 columns each; SQLite allows 32766 parameters).
_ROWS_PER_STATEMENT = 250


def hash_token(token: str) -> str:
    """The stored form of a bridge token: only its SHA-256 is kept."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class StoreError(Exception):
    """The store refused an operation (unknown user, duplicate name, ...)."""



def in_transaction(db: Any, work: Callable[[Any], T], begin: str = "BEGIN") -> T:
    """
    Run C{work(db)} in one transaction opened with C{begin} (SQLite's
    C{BEGIN IMMEDIATE}, say); commit, or roll back and re-raise.  C{db} is
    anything with C{execute}: a L{Database}, or a stand-in for one.
    """
    db.execute(begin)
    try:
        result = work(db)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result

class Database:
    """
    One connection to the store and the queries bridgeproxy makes.

    @ivar dialect: C{"sqlite"} or C{"postgresql"}.
    """

    def __init__(self, url: str):
        self.url = url
        self._statements: dict[int, str] = {}
        self._conn: Any
        if url.startswith("sqlite:"):
            self.dialect = "sqlite"
            path = url[len("sqlite:"):] or ":memory:"
            self._conn = sqlite3.connect(path, timeout=5.0, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.execute("PRAGMA foreign_keys=ON")
        elif url.startswith(("postgresql://", "postgres://")):
            self.dialect = "postgresql"
            try:
                import psycopg
            except ImportError:  # pragma: no cover - psycopg is a dependency
                raise ConfigError("database: PostgreSQL needs the 'psycopg' package") from None
            self._conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
        else:
            raise ConfigError("database must be 'sqlite:PATH' or 'postgresql://...'")

    # -- plumbing ------------------------------------------------------------

    def _sql(self, statement: str) -> str:
        if self.dialect == "postgresql":
            return statement.replace("?", "%s")
        return statement

    def execute(self, statement: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Run one statement; return its rows (empty for statements without)."""
        cur = self._conn.cursor()
        try:
            cur.execute(self._sql(statement), tuple(params))
            if cur.description is None:
                return []
            return list(cur.fetchall())
        finally:
            cur.close()

    def transaction(self, work):
        """Run C{work(self)} in one transaction; commit, or roll back and re-raise."""
        return in_transaction(self, work)

    def close(self) -> None:
        try:
            self._conn.close()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass

    def ping(self) -> bool:
        """Whether the store answers."""
        self.execute("SELECT 1")
        return True

    # -- schema ----------------------------------------------------------------

    def version(self) -> int:
        """The number of the last migration applied (0 for an empty store)."""
        rows = self.execute(
            # The table the bridge's unqualified statements would read (by the
            # search_path), not one of the same name in any schema of the
            # database: another bridge (or a test) may keep its own elsewhere.
            "SELECT to_regclass('schema_version') IS NOT NULL"
            if self.dialect == "postgresql"
            else "SELECT COUNT(*) FROM sqlite_master WHERE type='table' AND name='schema_version'"
        )
        if not rows[0][0]:
            return 0
        return int(self.execute("SELECT version FROM schema_version")[0][0])

    def migrate(self) -> list[int]:
        """
        Apply every migration not applied yet.  Safe to run from several
        instances at once on PostgreSQL (an advisory lock serialises them).

        @return: the numbers of the migrations applied now.
        """
        applied = []
        if self.dialect == "postgresql":
            self.execute("SELECT pg_advisory_lock(724311)")
        try:
            if self.version() == 0:
                self.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                if not self.execute("SELECT version FROM schema_version"):
                    self.execute("INSERT INTO schema_version (version) VALUES (0)")
            current = self.version()
            for number in range(current + 1, LATEST + 1):
                def step(db, number=number):
                    for statement in statements(MIGRATIONS[number - 1], db.dialect):
                        db.execute(statement)
                    db.execute("UPDATE schema_version SET version = ?", (number,))
                self.transaction(step)
                applied.append(number)
        finally:
            if self.dialect == "postgresql":
                self.execute("SELECT pg_advisory_unlock(724311)")
        return applied

    # -- users and keys ----------------------------------------------------------

    def ensure_user(self, username: str, user_id: Optional[str] = None, admin: bool = False) -> Identity:
        """The user named C{username}, created (with C{user_id}) if new."""
        rows = self.execute("SELECT id, username, disabled, admin FROM users WHERE username = ?", (username,))
        if rows:
            uid, name, disabled, is_admin = rows[0]
            if user_id is not None and user_id != uid:
                raise StoreError(f"user {username!r} exists with another id ({uid})")
            if admin and not is_admin:
                self.execute("UPDATE users SET admin = 1 WHERE id = ?", (uid,))
                is_admin = 1
            return Identity(user_id=uid, username=name, disabled=bool(disabled), admin=bool(is_admin))
        uid = user_id or str(uuid.uuid4())
        if self.execute("SELECT 1 FROM users WHERE id = ?", (uid,)):
            raise StoreError(f"user id {uid} already belongs to another user")
        self.execute(
            "INSERT INTO users (id, username, disabled, admin, created_at) VALUES (?, ?, 0, ?, ?)",
            (uid, username, int(admin), time.time()),
        )
        return Identity(user_id=uid, username=username, admin=admin)

    def create_key(self, username: str, user_id: Optional[str] = None, admin: bool = False,
                   expires_at: Optional[float] = None) -> tuple[str, str]:
        """
        Create a key for a user (created if new).

        @return: C{(key_id, token)}; the token is shown once and only its
            hash is kept.
        """
        def work(db):
            user = db.ensure_user(username, user_id, admin)
            token = TOKEN_PREFIX + secrets.token_urlsafe(32)
            key_id = uuid.uuid4().hex[:16]
            db.execute(
                "INSERT INTO api_keys (id, user_id, key_hash, hint, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (key_id, user.user_id, hash_token(token), mask_secret(token), time.time(), expires_at),
            )
            return key_id, token
        return self.transaction(work)

    def list_keys(self) -> list[dict[str, Any]]:
        rows = self.execute(
            "SELECT k.id, u.username, u.id, k.hint, k.created_at, k.expires_at, k.revoked_at, "
            "u.disabled, u.admin FROM api_keys k JOIN users u ON u.id = k.user_id "
            "ORDER BY k.created_at"
        )
        names = ("key_id", "username", "user_id", "hint", "created_at", "expires_at",
                 "revoked_at", "user_disabled", "admin")
        return [dict(zip(names, row)) for row in rows]

    def revoke_key(self, key_id: str) -> bool:
        """Revoke a key; C{False} when there is no such key that is not revoked."""
        found = self.execute("SELECT 1 FROM api_keys WHERE id = ? AND revoked_at IS NULL", (key_id,))
        if not found:
            return False
        self.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (time.time(), key_id))
        return True

    def set_user_disabled(self, username_or_id: str, disabled: bool) -> bool:
        found = self.execute("SELECT id FROM users WHERE username = ? OR id = ?",
                             (username_or_id, username_or_id))
        if not found:
            return False
        self.execute("UPDATE users SET disabled = ? WHERE id = ?", (int(disabled), found[0][0]))
        return True

    def identify(self, token: str, now: Optional[float] = None) -> Optional[Identity]:
        """The identity a token belongs to, or L{None} if unknown, expired or revoked."""
        now = time.time() if now is None else now
        rows = self.execute(
            "SELECT u.id, u.username, k.id, u.disabled, u.admin FROM api_keys k "
            "JOIN users u ON u.id = k.user_id WHERE k.key_hash = ? AND k.revoked_at IS NULL "
            "AND (k.expires_at IS NULL OR k.expires_at > ?)",
            (hash_token(token), now),
        )
        if not rows:
            return None
        uid, name, key_id, disabled, admin = rows[0]
        return Identity(user_id=uid, username=name, key_id=key_id,
                        disabled=bool(disabled), admin=bool(admin))

    def lookup_user(self, user_id: str) -> Optional[Identity]:
        rows = self.execute("SELECT id, username, disabled, admin FROM users WHERE id = ?", (user_id,))
        if not rows:
            return None
        uid, name, disabled, admin = rows[0]
        return Identity(user_id=uid, username=name, disabled=bool(disabled), admin=bool(admin))

    # -- interceptions --------------------------------------------------------------

    def insert_interceptions(self, records: Iterable[Interception]) -> int:
        """
        Insert records in one transaction.  Idempotent by id: a record
        already stored (a retry after a lost answer) is not stored twice.
        """
        rows = [interception_row(r) for r in records]
        if not rows:
            return 0

        def work(db):
            # One multi-row INSERT per chunk rather than executemany: one
            # statement step instead of one per row, so the store's thread
            # hands the GIL back and forth with the reactor far less often.
            cur = db._conn.cursor()
            try:
                for start in range(0, len(rows), _ROWS_PER_STATEMENT):
                    chunk = rows[start:start + _ROWS_PER_STATEMENT]
                    cur.execute(self._insert_statement(len(chunk)), [v for row in chunk for v in row])
            finally:
                cur.close()
            return len(rows)
        return self.transaction(work)

    def _insert_statement(self, count: int) -> str:
        statement = self._statements.get(count)
        if statement is None:
            one = "(" + ", ".join("?" for _ in INTERCEPTION_COLUMNS) + ")"
            statement = self._statements[count] = self._sql(
                f"INSERT INTO interceptions ({', '.join(INTERCEPTION_COLUMNS)}) VALUES "
                + ", ".join([one] * count) + " ON CONFLICT (id) DO NOTHING")
        return statement

    def interceptions(self, *, initiator: Optional[str] = None, client: Optional[str] = None,
                      since: Optional[float] = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Recorded interceptions, newest first, filtered."""
        where, params = self._filters(initiator, client, since)
        rows = self.execute(
            f"SELECT {', '.join(INTERCEPTION_COLUMNS)} FROM interceptions{where} "
            f"ORDER BY started_at DESC, id LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [row_dict(row) for row in rows]

    def usage(self, *, by: str = "initiator", initiator: Optional[str] = None,
              client: Optional[str] = None, since: Optional[float] = None) -> list[dict[str, Any]]:
        """
        Request counts, token totals and cost grouped by C{by}: one of
        C{initiator}, C{client}, C{model} and C{day} (UTC), or several joined
        by commas (C{"initiator,day"}).  C{cost_micros} sums the priced
        requests; C{unpriced_requests} counts those with tokens but no price.
        """
        groups = by_columns(by)
        columns = [self._group_column(name) for name in groups]
        where, params = self._filters(initiator, client, since)
        keys = ", ".join(f"{column} AS k{i}" for i, column in enumerate(columns))
        order = "".join(f"k{i} DESC, " for i, name in enumerate(groups) if name == "day")
        rows = self.execute(
            f"SELECT {keys}, COUNT(*), SUM(input_tokens), SUM(output_tokens), "
            f"SUM(cache_read_tokens), SUM(cache_write_tokens), SUM(cost_micros), "
            f"SUM(CASE WHEN cost_micros IS NULL AND input_tokens + output_tokens + cache_read_tokens "
            f"+ cache_write_tokens > 0 THEN 1 ELSE 0 END) FROM interceptions{where} "
            f"GROUP BY {', '.join(columns)} ORDER BY {order}{len(columns) + 1} DESC",
            params,
        )
        names = (*groups, "requests", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                 "cost_micros", "unpriced_requests")
        n = len(groups)
        return [dict(zip(names, (*r[:n], *(int(v or 0) for v in r[n:])))) for r in rows]

    def _group_column(self, name: str) -> str:
        if name == "day":
            if self.dialect == "postgresql":
                return "to_char(to_timestamp(started_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
            return "strftime('%Y-%m-%d', started_at, 'unixepoch')"
        return _GROUPS[name]

    def prune(self, before: float) -> int:
        """Delete interceptions that started before C{before}; return how many."""
        count = self.execute("SELECT COUNT(*) FROM interceptions WHERE started_at < ?", (before,))[0][0]
        self.execute("DELETE FROM interceptions WHERE started_at < ?", (before,))
        return int(count)

    @staticmethod
    def _filters(initiator, client, since) -> tuple[str, tuple]:
        clauses, params = [], []
        if initiator:
            clauses.append("(initiator_id = ? OR initiator_username = ?)")
            params += [initiator, initiator]
        if client:
            clauses.append("client = ?")
            params.append(client)
        if since is not None:
            clauses.append("started_at >= ?")
            params.append(since)
        return ((" WHERE " + " AND ".join(clauses)) if clauses else ""), tuple(params)


#: What usage can be grouped by, and the column of each (C{day} depends on the dialect).
_GROUPS = {"initiator": "COALESCE(initiator_username, initiator_id)", "client": "client", "model": "model",
           "day": ""}


def by_columns(by: str) -> tuple[str, ...]:
    """
    The groups C{by} names (C{"initiator,day"} -> C{("initiator", "day")}).

    @raise StoreError: when it names something usage cannot be grouped by,
        or the same thing twice.
    """
    groups = tuple(name.strip() for name in by.split(","))
    if not groups or any(name not in _GROUPS for name in groups) or len(set(groups)) != len(groups):
        raise StoreError("usage can be grouped by initiator, client, model or day (or several, comma-separated)")
    return groups


def interception_row(r: Interception) -> tuple:
    """An interception as a row in C{INTERCEPTION_COLUMNS} order."""
    return record_row(r)
