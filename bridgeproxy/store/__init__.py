# -*- test-case-name: tests.test_store,tests.test_startup -*-
"""
The store: SQLite (the embedded default) or PostgreSQL (for several
instances), behind one asynchronous face.

L{AsyncStore} owns one thread and one connection; every call runs there,
so the reactor thread never waits on the database.  A connection that
fails is dropped and opened again on the next call, so a PostgreSQL
restart costs the calls made while it was down, not the process.
"""

from __future__ import annotations

import os
import re
import sqlite3
from typing import Any, Callable, Optional, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from bridgeproxy.errors import ConfigError
from bridgeproxy.store.database import Database, StoreError, hash_token

T = TypeVar("T")

__all__ = ["AsyncStore", "Database", "StoreError", "check_sqlite", "describe_error", "hash_token",
           "mask_query_password", "passwords", "safe_url"]


_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")


def mask_query_password(url: str) -> str:
    """C{url} with the value of a C{password=} parameter replaced by C{***}."""
    return _QUERY_PASSWORD.sub(r"\1***", url)


def safe_url(url: str) -> str:
    """A database URL without its user and password (for log lines and messages)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        url = f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return mask_query_password(url)


def passwords(url: str) -> list[str]:
    """Every form of the passwords in C{url} (user part, C{password=}, raw and decoded), longest first."""
    found = []
    match = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#@:]*:([^/?#]*)@", url)
    if match and match.group(1):
        found.append(match.group(1))
    try:
        query = urlsplit(url).query
    except ValueError:
        query = url.partition("?")[2]
    for name, value in parse_qsl(query):   # blank values are left out: no password to hide
        if name.lower() == "password":
            found.append(value)
    for value in re.findall(r"(?i)[?&]password=([^&#]*)", url):
        if value:
            found.append(value)
    forms = {form for p in found for form in (p, unquote(p))}
    return sorted((f for f in forms if f), key=len, reverse=True)


def describe_error(error: BaseException, url: str) -> str:
    """
    A short, one-line reason for a store error, without the password of
    C{url} even if a driver repeated it.
    """
    text = str(error).strip().splitlines()[0].strip() if str(error).strip() else type(error).__name__
    for secret in passwords(url):
        text = text.replace(secret, "***")
    return text[:200]


def check_sqlite(url: str) -> None:
    """
    Open (create) and migrate the SQLite store at C{url} and make sure it
    can be written, so that an unusable path stops the start instead of
    leaving a gateway that answers 503.  Other URLs are left alone.

    @raise ConfigError: saying what is wrong with the path.
    """
    if not url.startswith("sqlite:"):
        return
    path = url[len("sqlite:"):]
    if path in ("", ":memory:"):
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError(f"database: cannot use {url}: the directory {directory} does not exist")
    if os.path.isdir(path):
        raise ConfigError(f"database: cannot use {url}: it is a directory")
    try:
        db = Database(url)
        try:
            db.migrate()
            db.execute("BEGIN IMMEDIATE")  # takes the write lock: fails on a read-only file or directory
            db.execute("ROLLBACK")
        finally:
            db.close()
    except (sqlite3.Error, OSError) as e:
        raise ConfigError(f"database: cannot use {url}: {e}") from None


class AsyncStore:
    """
    Runs L{Database} calls on a dedicated thread.

    @param url: the C{database} setting.
    @param reactor: the reactor whose thread gets the results.
    @param pool: the thread the calls run on (default: a pool of one thread of
        its own); tests pass one that runs them at once.
    """

    def __init__(self, url: str, reactor: Any, migrate: bool = True, pool: Optional[Any] = None):
        self.url = url
        self._reactor = reactor
        self._migrate = migrate
        self._db: Optional[Database] = None
        self._pool = pool if pool is not None else ThreadPool(minthreads=1, maxthreads=1, name="bridgeproxy-store")
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._pool.start()
            self._started = True

    def stop(self) -> Deferred:
        """Close the connection and stop the thread, once pending calls are done."""
        if not self._started:
            from twisted.internet.defer import succeed
            return succeed(None)
        d = self.run(lambda db: db.close())

        def stopped(result):
            self._db = None
            self._pool.stop()
            self._started = False
            return None
        d.addBoth(stopped)
        return d

    def _connection(self) -> Database:
        if self._db is None:
            db = Database(self.url)
            if self._migrate:
                db.migrate()
            self._db = db
        return self._db

    def _call(self, work: Callable[[Database], T]) -> T:
        db = self._connection()
        try:
            return work(db)
        except StoreError:
            raise
        except Exception:
            # The connection may be broken (server restarted): drop it so the
            # next call opens a new one.
            self._db = None
            db.close()
            raise

    def describe(self, error: BaseException) -> str:
        """A short reason for C{error}, without the URL's password."""
        return describe_error(error, self.url)

    def run(self, work: Callable[[Database], T]) -> "Deferred[T]":
        """Run C{work(database)} on the store's thread."""
        self.start()
        return deferToThreadPool(self._reactor, self._pool, self._call, work)
