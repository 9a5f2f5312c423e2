# -*- test-case-name: tests.test_store -*-
"""
The store: SQLite (the embedded default) or PostgreSQL (for several
instances), behind one asynchronous face.

L{AsyncStore} owns one thread and one connection; every call runs there,
so the reactor thread never waits on the database.  A connection that
fails is dropped and opened again on the next call, so a PostgreSQL
restart costs the calls made while it was down, not the process.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from bridgeproxy.store.database import Database, StoreError, hash_token

T = TypeVar("T")

__all__ = ["AsyncStore", "Database", "StoreError", "hash_token"]


class AsyncStore:
    """
    Runs L{Database} calls on a dedicated thread.

    @param url: the C{database} setting.
    @param reactor: the reactor whose thread gets the results.
    """

    def __init__(self, url: str, reactor: Any, migrate: bool = True):
        self.url = url
        self._reactor = reactor
        self._migrate = migrate
        self._db: Optional[Database] = None
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="bridgeproxy-store")
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

    def run(self, work: Callable[[Database], T]) -> "Deferred[T]":
        """Run C{work(database)} on the store's thread."""
        self.start()
        return deferToThreadPool(self._reactor, self._pool, self._call, work)
