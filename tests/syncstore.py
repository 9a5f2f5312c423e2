"""
A store that answers at once: L{bridgeproxy.store.AsyncStore}'s face over
a real L{Database} (SQLite in memory by default), each call run in the
calling thread, so that tests on a L{Clock} can use the store's real
queries without a thread or a wait.  It can be told to fail.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, fail, succeed

from bridgeproxy.store import Database


class SyncStore:
    """
    @ivar calls: how many calls were made (each would be a round trip to the store).
    @ivar failing: when set, every call fails with it (the store is down).
    """

    def __init__(self, url: str = "sqlite::memory:"):
        self.db = Database(url)
        self.db.migrate()
        self.calls = 0
        self.failing: Optional[Exception] = None

    def run(self, work: Callable[[Database], Any]) -> Deferred:
        self.calls += 1
        if self.failing is not None:
            return fail(self.failing)
        try:
            return succeed(work(self.db))
        except Exception as e:  # noqa: BLE001 - handed to the caller, as the thread would
            return fail(e)

    def describe(self, error: BaseException) -> str:
        return str(error)
