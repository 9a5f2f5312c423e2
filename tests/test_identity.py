"""
The keystore identity backend (L{bridgeproxy.identity}) on a fake clock:
what a token resolves to, how long answers are cached, how concurrent
lookups share a store call, and what happens while the store is down.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from bridgeproxy import identity as identity_module
from bridgeproxy.errors import NotConfigured
from bridgeproxy.identity import KeystoreBackend, KeystorePlugin
from bridgeproxy.types import Identity

ALICE = Identity("u-alice", "alice")
BOB = Identity("u-bob", "bob")


class Store:
    """A store whose answers the test decides: at once (a value or an exception) or later (C{pending})."""

    def __init__(self, tokens=None, users=None):
        self.tokens = dict(tokens or {})
        self.users = dict(users or {})
        self.down: Exception | None = None
        self.hold = False
        self.pending: list[Deferred] = []
        self.calls: list = []

    def run(self, work):
        db = SimpleNamespace(identify=self._identify, lookup_user=self._lookup)
        if self.hold:
            d = Deferred()
            self.pending.append((d, work, db))
            return d
        if self.down is not None:
            work(db)
            return fail(self.down)
        return succeed(work(db))

    def _identify(self, token):
        self.calls.append(("identify", token))
        return self.tokens.get(token)

    def _lookup(self, user_id):
        self.calls.append(("lookup_user", user_id))
        return self.users.get(user_id)

    def answer(self):
        for d, work, db in self.pending:
            d.callback(work(db))
        self.pending = []

    def break_pending(self, error):
        for d, _, _ in self.pending:
            d.errback(error)
        self.pending = []


def result_of(d):
    box = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    return box[0]


def backend(store, ttl=5.0):
    clock = Clock()
    return KeystoreBackend(store, clock, cache_seconds=ttl), clock


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_known_and_unknown_tokens():
    """A known token gives its identity; an unknown one None; both are asked of the store with the token."""
    store = Store({"tok-a": ALICE})
    keys, _ = backend(store)
    assert result_of(keys.identify("tok-a")) == ALICE
    assert result_of(keys.identify("nope")) is None
    assert store.calls == [("identify", "tok-a"), ("identify", "nope")]


def test_answers_are_cached_until_the_ttl_passes():
    """Within the TTL the store is not asked again; at the TTL it is (a revocation takes effect)."""
    store = Store({"tok-a": ALICE})
    keys, clock = backend(store, ttl=5)
    result_of(keys.identify("tok-a"))
    clock.advance(4.999)
    assert result_of(keys.identify("tok-a")) == ALICE
    assert len(store.calls) == 1
    del store.tokens["tok-a"]  # revoked
    clock.advance(0.001)
    assert result_of(keys.identify("tok-a")) is None
    assert len(store.calls) == 2


def test_unknown_tokens_are_cached_too():
    """A client hammering with a bad key costs one store call per TTL."""
    store = Store()
    keys, clock = backend(store)
    for _ in range(5):
        assert result_of(keys.identify("bad")) is None
    assert len(store.calls) == 1


def test_zero_ttl_asks_every_time():
    """With a zero TTL every request asks the store."""
    store = Store({"tok-a": ALICE})
    keys, _ = backend(store, ttl=0)
    result_of(keys.identify("tok-a"))
    result_of(keys.identify("tok-a"))
    assert len(store.calls) == 2


def test_tokens_are_cached_apart():
    """Each token has its own cache entry."""
    store = Store({"a": ALICE, "b": BOB})
    keys, _ = backend(store)
    assert (result_of(keys.identify("a")), result_of(keys.identify("b"))) == (ALICE, BOB)
    assert (result_of(keys.identify("a")), result_of(keys.identify("b"))) == (ALICE, BOB)
    assert len(store.calls) == 2


def test_concurrent_lookups_share_one_store_call():
    """Requests with one token arriving before the store answers wait for the same answer."""
    store = Store({"a": ALICE, "b": BOB})
    store.hold = True
    keys, _ = backend(store)
    waiting = [keys.identify("a") for _ in range(3)] + [keys.identify("b")]
    assert len(store.pending) == 2
    store.answer()
    assert [result_of(d) for d in waiting] == [ALICE, ALICE, ALICE, BOB]
    store.hold = False
    assert result_of(keys.identify("a")) == ALICE  # now from the cache
    assert len(store.calls) == 2


def test_a_request_that_leaves_while_its_key_is_checked_does_not_stop_the_others():
    """One of the requests waiting on a key check is cancelled (its client left): the others still get the answer."""
    from twisted.internet.defer import CancelledError
    store = Store({"a": ALICE})
    store.hold = True
    keys, _ = backend(store)
    first, gone, last = keys.identify("a"), keys.identify("a"), keys.identify("a")
    gone.cancel()
    store.answer()
    assert result_of(gone).check(CancelledError)
    assert (result_of(first), result_of(last)) == (ALICE, ALICE)


def test_concurrent_lookups_all_fail_together_when_the_store_fails():
    """When the shared store call fails, every waiting request gets the 503, and the next one asks again."""
    store = Store({"a": ALICE})
    store.hold = True
    keys, _ = backend(store)
    waiting = [keys.identify("a") for _ in range(2)]
    store.break_pending(OSError("connection refused"))
    for d in waiting:
        assert result_of(d).check(NotConfigured)
    store.hold = False
    assert result_of(keys.identify("a")) == ALICE


def test_store_down_for_an_unknown_token_is_503_and_logged(logged):
    """A token never seen while the store is down: 503 (not configured), with the first line of the error logged."""
    store = Store()
    store.down = OSError("server closed the connection\nDETAIL: more")
    keys, _ = backend(store)
    failure = result_of(keys.identify("t"))
    assert failure.check(NotConfigured)
    assert str(failure.value) == "The key store is unavailable; try again shortly."
    warnings = [e for e in logged if "Key store unavailable" in e.get("log_format", "")]
    assert [w["error"] for w in warnings] == ["server closed the connection"]
    assert keys.metrics_stale == 0


def test_store_error_without_a_message_logs_its_type(logged):
    """An exception without text is logged by its type's name."""
    store = Store()
    store.down = TimeoutError()
    keys, _ = backend(store)
    result_of(keys.identify("t"))
    assert [e["error"] for e in logged if "Key store unavailable" in e.get("log_format", "")] == ["TimeoutError"]


def test_long_error_lines_are_cut(logged):
    """A store error's logged line is at most 200 characters."""
    store = Store()
    store.down = OSError("x" * 500)
    keys, _ = backend(store)
    result_of(keys.identify("t"))
    assert [len(e["error"]) for e in logged if "Key store unavailable" in e.get("log_format", "")] == [200]


def test_expired_answer_is_served_while_the_store_is_down():
    """A user known before the outage keeps working (a database restart locks nobody out); counted as stale."""
    store = Store({"a": ALICE})
    keys, clock = backend(store, ttl=5)
    result_of(keys.identify("a"))
    clock.advance(60)
    store.down = OSError("down")
    assert result_of(keys.identify("a")) == ALICE
    assert keys.metrics_stale == 1
    store.down = None
    del store.tokens["a"]
    assert result_of(keys.identify("a")) is None  # the store answers again: its answer wins


def test_a_known_unknown_stays_unknown_while_the_store_is_down():
    """A token the store said was unknown is still refused as unknown (not 503) during an outage."""
    store = Store()
    keys, clock = backend(store, ttl=1)
    result_of(keys.identify("bad"))
    clock.advance(2)
    store.down = OSError("down")
    assert result_of(keys.identify("bad")) is None


def test_lookup_user_is_cached_and_survives_an_outage():
    """Looking a user up by id is cached for the TTL and served stale while the store is down."""
    store = Store(users={"u-alice": ALICE})
    keys, clock = backend(store, ttl=5)
    assert result_of(keys.lookup_user("u-alice")) == ALICE
    assert result_of(keys.lookup_user("u-alice")) == ALICE
    assert store.calls == [("lookup_user", "u-alice")]
    assert result_of(keys.lookup_user("u-nobody")) is None
    clock.advance(5)
    store.down = OSError("down")
    assert result_of(keys.lookup_user("u-alice")) == ALICE
    assert result_of(keys.lookup_user("u-new")).check(NotConfigured)
    store.down = None
    store.users["u-alice"] = Identity("u-alice", "alice2")
    assert result_of(keys.lookup_user("u-alice")) == Identity("u-alice", "alice2")


def test_users_and_tokens_have_separate_caches():
    """A user id that happens to equal a token's hash is not answered from the token cache."""
    store = Store({"t": ALICE}, {"t": BOB})
    keys, _ = backend(store)
    assert result_of(keys.identify("t")) == ALICE
    assert result_of(keys.lookup_user("t")) == BOB


def test_cache_is_bounded(monkeypatch):
    """The cache is emptied when it reaches its bound, so many distinct tokens cannot grow it forever."""
    monkeypatch.setattr(identity_module, "_MAX_CACHE", 3)
    store = Store({"a": ALICE})
    keys, _ = backend(store)
    for token in ("a", "b", "c"):
        result_of(keys.identify(token))
    result_of(keys.identify("a"))
    assert len(store.calls) == 3  # still cached: three entries fit
    result_of(keys.identify("d"))  # the fourth empties the cache first
    result_of(keys.identify("a"))
    assert len(store.calls) == 5


def test_plugin_configures_a_backend_from_the_context():
    """The keystore plugin builds a backend on the context's store and reactor with [auth] cache_seconds."""
    store = Store({"a": ALICE})
    clock = Clock()
    context = SimpleNamespace(store=store, reactor=clock, config=SimpleNamespace(auth=SimpleNamespace(
        cache_seconds=2.0)))
    keys = KeystorePlugin().configure(context)
    assert result_of(keys.identify("a")) == ALICE
    clock.advance(1.9)
    result_of(keys.identify("a"))
    assert len(store.calls) == 1
    clock.advance(0.1)
    result_of(keys.identify("a"))
    assert len(store.calls) == 2
    assert KeystorePlugin.name == "keystore" == keys.name


def test_default_ttl_is_five_seconds():
    """Without a configured TTL answers are cached five seconds."""
    store = Store({"a": ALICE})
    clock = Clock()
    keys = KeystoreBackend(store, clock)
    result_of(keys.identify("a"))
    clock.advance(4.9)
    result_of(keys.identify("a"))
    assert len(store.calls) == 1
    clock.advance(0.1)
    result_of(keys.identify("a"))
    assert len(store.calls) == 2


def test_every_stale_answer_is_counted(logged):
    """Each answer served from an expired entry during an outage is counted; the log says the store is down."""
    from twisted.logger import formatEvent
    store = Store({"a": ALICE})
    keys, clock = backend(store, ttl=1)
    result_of(keys.identify("a"))
    clock.advance(2)
    store.down = OSError("connection refused")
    result_of(keys.identify("a"))
    result_of(keys.identify("a"))
    assert keys.metrics_stale == 2
    result_of(keys.identify("new"))
    assert [formatEvent(e) for e in logged if "Key store" in e.get("log_format", "")] == [
        "Key store unavailable: connection refused"]


def test_the_plugin_itself_must_be_configured_first():
    """The keystore plugin object answers nothing until configured: it says so."""
    plugin = KeystorePlugin()
    with pytest.raises(NotImplementedError, match=r"^configure\(\) first$"):
        plugin.identify("t")
    with pytest.raises(NotImplementedError, match=r"^configure\(\) first$"):
        plugin.lookup_user("u")
