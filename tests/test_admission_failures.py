"""
Admission when the store fails part way through a call, on a PostgreSQL
store (the dialect whose statements commit on their own outside a
transaction): whatever the call did before the failure is rolled back, so
no slot stays taken by a request that never got its ticket, and the slots
given back are given back exactly once.

The store here is a fake: the limits' statements are replaced by counters
that a transaction's C{ROLLBACK} puts back, as PostgreSQL would.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any, Callable, Optional

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

import bridgeproxy.proxy.admission as admission_module
from bridgeproxy.config import Config
from bridgeproxy.metrics import Metrics
from bridgeproxy.proxy.admission import Admission, Ticket


class FakeDB:
    """A PostgreSQL connection as far as admission can tell: slots counted in C{taken}, transactions honoured."""

    dialect = "postgresql"

    def __init__(self) -> None:
        self.taken = 0
        self._saved: Optional[int] = None
        #: When set, take_token raises it after this many more tokens were taken.
        self.token_failure: Optional[tuple[int, Exception]] = None
        #: When set, take_slot raises it after this many more slots were taken.
        self.slot_failure: Optional[tuple[int, Exception]] = None

    def execute(self, statement: str, args: Any = ()) -> list:
        if statement == "BEGIN":
            self._saved = self.taken
        elif statement == "ROLLBACK":
            assert self._saved is not None
            self.taken, self._saved = self._saved, None
        elif statement == "COMMIT":
            self._saved = None
        elif not statement.startswith("SELECT pg_advisory_xact_lock"):
            raise AssertionError(f"unexpected statement {statement!r}")
        return []


class FakeStore:
    """Runs each call at once, or, while C{paused}, when L{resume} is called."""

    def __init__(self, db: FakeDB) -> None:
        self.db = db
        self.paused = False
        self._waiting: list[tuple[Callable[[Any], Any], Deferred]] = []

    def run(self, work: Callable[[Any], Any]) -> Deferred:
        if self.paused:
            d: Deferred = Deferred()
            self._waiting.append((work, d))
            return d
        return self._do(work)

    def _do(self, work: Callable[[Any], Any]) -> Deferred:
        try:
            return succeed(work(self.db))
        except Exception as e:  # noqa: BLE001 - handed to the caller, as the store's thread would
            return fail(e)

    def resume(self) -> None:
        self.paused = False
        waiting, self._waiting = self._waiting, []
        for work, d in waiting:
            self._do(work).chainDeferred(d)

    def describe(self, error: BaseException) -> str:
        return str(error)


@pytest.fixture
def db(monkeypatch: pytest.MonkeyPatch) -> FakeDB:
    fake = FakeDB()

    def take_slot(db: FakeDB, holder: str, limit: int, expires_at: float) -> bool:
        if db.slot_failure is not None:
            left, failure = db.slot_failure
            db.slot_failure = (left - 1, failure) if left else None
            if not left:
                raise failure
        db.taken += 1
        return True

    def release_slots(db: FakeDB, holder: str, count: int) -> None:
        db.taken = max(0, db.taken - count)

    def take_token(db: FakeDB, key: str, rate: float, burst: float, now: float) -> float:
        if db.token_failure is not None:
            left, failure = db.token_failure
            db.token_failure = (left - 1, failure) if left else None
            if not left:
                raise failure
        return 0.0

    monkeypatch.setattr(admission_module, "take_slot", take_slot)
    monkeypatch.setattr(admission_module, "release_slots", release_slots)
    monkeypatch.setattr(admission_module, "take_token", take_token)
    return fake


def shared(store: FakeStore) -> Admission:
    """Admission counting max_concurrency and the rate in C{store}, with no budget."""
    config = Config()
    config = dataclasses.replace(config, limits=dataclasses.replace(config.limits, max_concurrency=10,
                                                                    per_initiator_rps=5.0))
    limits = SimpleNamespace(in_store=True, burst=5, check_rate=lambda *a, **k: None)
    admission = Admission(store, Clock(), config, None, Metrics(), holder="this")
    admission.reconfigure(config, None, limits)  # type: ignore[arg-type]
    admission.budget_users = frozenset()
    return admission


def exchange(name: str) -> SimpleNamespace:
    """A request with the client's own key: limits apply, no budget."""
    return SimpleNamespace(id=name, route="openai/v1/chat/completions", credential_kind="byok",
                           initiator=SimpleNamespace(user_id="u", username="alice"), admitted=None,
                           entry=SimpleNamespace(name="openai"), parsed=None, body=b"")


def admitted(admission: Admission, ex: SimpleNamespace) -> list:
    verdicts: list = []
    d = admission.admit(ex)
    assert d is not None
    d.addBoth(verdicts.append)
    return verdicts


def test_a_failure_mid_batch_leaves_no_slot_taken(db: FakeDB) -> None:
    """
    Two requests admitted in one call; the store fails at the second's rate
    check, after both took a slot.  Both go on unchecked (the limits are
    counted in the process while the store fails) and no slot stays taken
    in the store.
    """
    store = FakeStore(db)
    admission = shared(store)
    store.paused = True
    first, second, third = exchange("r1"), exchange("r2"), exchange("r3")
    admitted(admission, first)  # the call under way: the next two wait, and go together in the next
    verdicts = [admitted(admission, second), admitted(admission, third)]
    db.token_failure = (2, OSError("connection lost"))  # r1's and r2's tokens, then r3's fails
    store.resume()
    assert isinstance(first.admitted, Ticket)
    assert verdicts == [[None], [None]]  # let through, unchecked
    assert second.admitted is None and third.admitted is None
    assert db.taken == 1  # r1's; r2's and r3's were rolled back
    admission.finish(first, None)  # after a failure, its slot goes back with the next call
    admitted(admission, exchange("r4"))
    assert db.taken == 1  # r4's


def test_a_failed_batch_rolls_back_and_gives_no_slot_back_twice(db: FakeDB) -> None:
    """
    A request ends while another call is under way; its slot goes back in
    the next call, with a new admission that fails.  That call is rolled
    back as a whole; the slot goes back with the next call, once: the
    request still running keeps its slot counted.
    """
    store = FakeStore(db)
    admission = shared(store)
    a, b, c, d = exchange("a"), exchange("b"), exchange("c"), exchange("d")
    admitted(admission, a)
    assert db.taken == 1
    store.paused = True
    admitted(admission, b)  # under way
    admission.finish(a, None)  # a's slot waits for the next call
    db.slot_failure = (1, OSError("connection lost"))  # b's slot, then c's fails
    c_verdicts = admitted(admission, c)
    store.resume()  # b's call takes its slot; then a's slot back and c's admission, which fails
    assert isinstance(b.admitted, Ticket)
    assert c_verdicts == [None] and c.admitted is None  # let through unchecked
    assert db.taken == 2  # rolled back: a's slot is still counted, to go back with the next call
    admitted(admission, d)
    assert db.taken == 2  # b and d
    admission.finish(b, None)
    admission.finish(d, None)
    assert db.taken == 0
