"""
The recorder and retention (L{bridgeproxy.recording}) on a fake clock with
a fake store that fails and recovers: what reaches the store and when,
batching, back-off timing, spool overflow and replay, idempotence, and
what a stop leaves behind.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from bridgeproxy.metrics import Metrics
from bridgeproxy.recording import Recorder, Retention, from_json, to_json
from bridgeproxy.types import Interception, ToolCall


def rec(n: int, **kw) -> Interception:
    fields = dict(id=f"id-{n}", started_at=1000.0 + n, ended_at=1001.0 + n, provider="openai",
                  route="chat.completions", intercepted=True, method="POST", model="gpt", streamed=False,
                  client="Codex", client_session_id=None, user_agent="ua", initiator_id="u", initiator_username="n",
                  credential_user_id="u", credential_kind="centralized", credential_hint="bp_...x",
                  upstream_status=200)
    fields.update(kw)
    return Interception(**fields)


class Store:
    """Keeps rows by id (idempotent, as the real store); can fail, or hold its answer until told."""

    def __init__(self):
        self.rows: dict[str, Interception] = {}
        self.batches: list[list[str]] = []
        self.down = False
        self.hold = False
        self.pending: list = []

    def insert_interceptions(self, records):
        self.batches.append([r.id for r in records])
        for r in records:
            self.rows.setdefault(r.id, r)
        return len(records)

    def run(self, work):
        if self.hold:
            d = Deferred()
            self.pending.append((d, work))
            return d
        if self.down:
            return fail(ConnectionError("could not connect to server: Connection refused\nIs it running?"))
        return succeed(work(self))

    def release(self, ok=True):
        pending, self.pending = self.pending, []
        for d, work in pending:
            if ok:
                d.callback(work(self))
            else:
                d.errback(ConnectionError("lost"))

    def prune(self, before):
        return 0


def config(tmp_path, **kw):
    values = dict(enabled=True, batch_size=3, flush_interval=1.0, queue_max=10,
                  spool_path=str(tmp_path / "spool.jsonl"))
    values.update(kw)
    return SimpleNamespace(**values)


def recorder(tmp_path, store=None, **kw):
    store = store or Store()
    clock = Clock()
    metrics = Metrics()
    r = Recorder(store, clock, config(tmp_path, **kw), metrics)
    return r, store, clock, metrics


def spooled_ids(tmp_path, name="spool.jsonl"):
    path = tmp_path / name
    if not path.exists():
        return []
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


# -- serialisation ----------------------------------------------------------------------------


def test_spool_lines_round_trip():
    """A spooled record reads back equal, tool calls included."""
    record = rec(1, tool_calls=(ToolCall("bash", '{"c":1}', "t1"), ToolCall("x")), prompt="hé", error="e")
    line = to_json(record)
    assert "\n" not in line and ": " not in line
    assert from_json(line) == record
    assert from_json(to_json(rec(2))) == rec(2)
    for line in ("[1]", "null", "3"):
        with pytest.raises(ValueError, match="^a spool line must be a JSON object$"):
            from_json(line)


# -- the timer and batches ---------------------------------------------------------------------------


def test_flush_timer(tmp_path):
    """Records below a batch wait for the flush interval, then reach the store in order, counted as recorded."""
    r, store, clock, metrics = recorder(tmp_path)
    r.start()
    r.record(rec(1))
    r.record(rec(2))
    clock.advance(0.999)
    assert store.batches == []
    clock.advance(0.001)
    assert store.batches == [["id-1", "id-2"]]
    assert metrics.get("recorded") == 2
    r.record(rec(3))
    clock.advance(1)
    assert store.batches == [["id-1", "id-2"], ["id-3"]]
    assert metrics.get("recorded") == 3


def test_a_full_batch_is_written_at_once(tmp_path):
    """Reaching the batch size writes without waiting for the timer; the next timer tick still comes."""
    r, store, clock, _ = recorder(tmp_path)
    r.start()
    for n in range(3):
        r.record(rec(n))
    clock.advance(0)
    assert store.batches == [["id-0", "id-1", "id-2"]]
    r.record(rec(3))
    clock.advance(0.5)
    assert len(store.batches) == 1
    clock.advance(0.5)
    assert store.batches[-1] == ["id-3"]


def test_batches_are_at_most_batch_size_and_the_rest_follows_at_once(tmp_path):
    """A long queue is written in batches of the batch size, one after the other without waiting."""
    r, store, clock, _ = recorder(tmp_path, batch_size=2)
    for n in range(5):
        r.record(rec(n))
    r.start()
    clock.advance(0)
    assert store.batches == [["id-0", "id-1"], ["id-2", "id-3"]]
    clock.advance(1)
    assert store.batches[-1] == ["id-4"]


def test_not_started_writes_only_on_a_full_batch(tmp_path):
    """Before start no timer runs; a full batch still triggers a write."""
    r, store, clock, _ = recorder(tmp_path)
    r.record(rec(1))
    clock.advance(100)
    assert store.batches == []
    r.record(rec(2))
    r.record(rec(3))
    clock.advance(0)
    assert store.batches == [["id-1", "id-2", "id-3"]]


def test_disabled_recording_records_nothing(tmp_path):
    """With recording off nothing is queued or written."""
    r, store, clock, _ = recorder(tmp_path, enabled=False)
    r.start()
    for n in range(5):
        r.record(rec(n))
    clock.advance(5)
    assert store.batches == [] and len(r.queue) == 0


def test_flush_while_flushing_is_the_same_write(tmp_path):
    """Asking to flush while a batch is on its way waits for that batch rather than sending another."""
    r, store, clock, _ = recorder(tmp_path)
    store.hold = True
    r.record(rec(1))
    first = r.flush()
    r.record(rec(2))
    assert r.flush() is first
    assert len(store.pending) == 1
    store.release()
    assert store.batches == [["id-1"]]


def test_flush_of_nothing_fires_at_once(tmp_path):
    """Flushing an empty queue does nothing and is done at once."""
    r, store, _, _ = recorder(tmp_path)
    done = []
    r.flush().addCallback(done.append)
    assert done == [None] and store.batches == []


# -- failures and back-off ----------------------------------------------------------------------------


def test_failed_batch_goes_back_in_order_and_backs_off(tmp_path, logged):
    """A failed write puts the batch back at the front, in order; retries wait 0.5, 1, 2 ... seconds; logged."""
    r, store, clock, metrics = recorder(tmp_path)
    r.start()
    store.down = True
    r.record(rec(1))
    r.record(rec(2))
    clock.advance(1)  # first attempt fails
    assert [x.id for x in r.queue] == ["id-1", "id-2"]
    assert metrics.get("store_errors") == 1
    r.record(rec(3))  # a full batch does not hurry a retry during back-off
    clock.advance(0)
    assert metrics.get("store_errors") == 1
    clock.advance(0.499)
    assert metrics.get("store_errors") == 1
    clock.advance(0.001)  # 0.5 s
    assert metrics.get("store_errors") == 2
    clock.advance(0.999)
    assert metrics.get("store_errors") == 2
    clock.advance(0.001)  # 1 s
    assert metrics.get("store_errors") == 3
    store.down = False
    clock.advance(2)  # 2 s
    assert store.batches == [["id-1", "id-2", "id-3"]]
    assert metrics.get("recorded") == 3
    warnings = [e for e in logged if "Recording store unavailable" in e.get("log_format", "")]
    assert [w["delay"] for w in warnings] == [0.5, 1.0, 2.0]
    assert warnings[0]["error"] == "could not connect to server: Connection refused"
    assert warnings[0]["queued"] == 2


def test_back_off_is_capped_at_thirty_seconds(tmp_path):
    """However long the outage, retries come at least every 30 seconds."""
    r, store, clock, metrics = recorder(tmp_path)
    r.start()
    store.down = True
    r.record(rec(1))
    clock.advance(1)
    for _ in range(12):
        clock.advance(30)
    errors = metrics.get("store_errors")
    clock.advance(30)
    assert metrics.get("store_errors") == errors + 1
    clock.advance(29.9)
    assert metrics.get("store_errors") == errors + 1


def test_success_resets_the_back_off(tmp_path):
    """After the store answers again, writes follow the normal interval, and a full batch goes at once."""
    r, store, clock, metrics = recorder(tmp_path)
    r.start()
    store.down = True
    r.record(rec(1))
    clock.advance(1)
    clock.advance(0.5)
    store.down = False
    clock.advance(1)  # the 1 s retry succeeds
    assert store.batches == [["id-1"]]
    for n in range(2, 5):
        r.record(rec(n))
    clock.advance(0)
    assert store.batches[-1] == ["id-2", "id-3", "id-4"]


def test_retry_after_a_lost_answer_does_not_store_twice(tmp_path):
    """A write whose answer was lost is retried; the store keeps each record once."""
    r, store, clock, _ = recorder(tmp_path)
    store.hold = True
    r.record(rec(1))
    r.flush()
    store.pending[0][1](store)  # the rows reached the store ...
    store.pending[0][0].errback(ConnectionError("... but the answer was lost"))
    store.pending = []
    store.hold = False
    r.flush()  # a retry now would be early, but flush is explicit
    assert list(store.rows) == ["id-1"]
    assert store.batches == [["id-1"], ["id-1"]]


def test_error_without_text_is_logged_by_type(tmp_path, logged):
    """A store error without a message is logged by its exception type."""
    class Silent(Store):
        def run(self, work):
            return fail(TimeoutError())
    r, _, _, _ = recorder(tmp_path, store=Silent())
    r.record(rec(1))
    r.flush()
    assert [e["error"] for e in logged if "Recording store unavailable" in e.get("log_format", "")] == [
        "TimeoutError"]


# -- the spool ----------------------------------------------------------------------------------------


def test_overflow_spools_the_oldest_records(tmp_path, logged):
    """Past queue_max the oldest records (the excess plus a batch) go to the spool file; counted and logged."""
    r, store, clock, metrics = recorder(tmp_path, batch_size=2, queue_max=4)
    store.down = True
    r.record(rec(0))
    r.flush()  # fails: back-off, so no write is hurried
    for n in range(1, 4):
        r.record(rec(n))
    assert spooled_ids(tmp_path) == []
    r.record(rec(4))  # 5 queued > 4: 5 - 4 + 2 = 3 oldest spooled
    assert spooled_ids(tmp_path) == ["id-0", "id-1", "id-2"]
    assert [x.id for x in r.queue] == ["id-3", "id-4"]
    assert metrics.get("spooled") == 3
    assert any("Spooled {count}" in e.get("log_format", "") and e["count"] == 3 for e in logged)


def test_failed_batch_that_overflows_is_spooled(tmp_path):
    """A failed batch put back on a full queue makes it overflow: the oldest are spooled."""
    r, store, clock, metrics = recorder(tmp_path, batch_size=2, queue_max=3)
    store.hold = True
    r.record(rec(0))
    r.record(rec(1))
    r.flush()  # id-0, id-1 on their way
    r.record(rec(2))
    r.record(rec(3))
    assert spooled_ids(tmp_path) == []
    store.release(ok=False)  # 4 queued > 3: 4 - 3 + 2 = 3 spooled
    assert spooled_ids(tmp_path) == ["id-0", "id-1", "id-2"]
    assert [x.id for x in r.queue] == ["id-3"]


def test_exactly_queue_max_is_not_spooled(tmp_path):
    """A queue exactly at queue_max is kept in memory."""
    r, store, clock, _ = recorder(tmp_path, batch_size=100, queue_max=5)
    for n in range(5):
        r.record(rec(n))
    assert spooled_ids(tmp_path) == [] and len(r.queue) == 5


def test_spool_appends(tmp_path):
    """Each overflow appends to the spool; nothing spooled earlier is lost."""
    r, store, clock, _ = recorder(tmp_path, batch_size=100, queue_max=1)
    for n in range(4):
        r.record(rec(n))
    assert sorted(spooled_ids(tmp_path)) == sorted({"id-0", "id-1", "id-2", "id-3"} - {x.id for x in r.queue})
    assert len(spooled_ids(tmp_path)) + len(r.queue) == 4


def test_unwritable_spool_loses_records_loudly(tmp_path, logged):
    """When the spool cannot be written the records are counted and logged as lost."""
    r, store, clock, metrics = recorder(tmp_path, batch_size=1, queue_max=1,
                                        spool_path=str(tmp_path / "missing" / "spool.jsonl"))
    store.down = True
    r.record(rec(0))
    r.flush()
    r.record(rec(1))  # 2 > 1: 2 - 1 + 1 = 2 to spool, which fails
    assert metrics.get("records_lost") == 2 and metrics.get("spooled") == 0
    assert len(r.queue) == 0
    errors = [e for e in logged if "Cannot spool" in e.get("log_format", "")]
    assert len(errors) == 1 and errors[0]["count"] == 2


def test_start_replays_the_spool_first(tmp_path, logged):
    """At start, spooled records go to the front of the queue (in order) and the spool file is removed."""
    (tmp_path / "spool.jsonl").write_text(to_json(rec(1)) + "\n\n" + to_json(rec(2)) + "\n")
    r, store, clock, metrics = recorder(tmp_path)
    r.record(rec(3))
    r.start()
    assert not (tmp_path / "spool.jsonl").exists()
    assert not (tmp_path / "spool.jsonl.replay").exists()
    clock.advance(1)
    assert store.batches == [["id-1", "id-2", "id-3"]]
    assert any("Replaying" in e.get("log_format", "") and e["count"] == 2 for e in logged)


def test_corrupt_spool_lines_are_counted_and_skipped(tmp_path):
    """Lines that are not records are skipped and counted; the good ones are replayed."""
    (tmp_path / "spool.jsonl").write_text(
        "not json\n" + json.dumps({"id": "x"}) + "\n" + to_json(rec(1)) + "\n" + '{"id": "y", "tool_calls": [1]}\n'
        + to_json(rec(2))[:40] + "\n")
    r, store, clock, metrics = recorder(tmp_path)
    r.start()
    clock.advance(1)
    assert store.batches == [["id-1"]]
    assert metrics.get("spool_corrupt") == 4


def test_spool_lines_that_are_json_but_not_records_are_counted_and_skipped(tmp_path):
    """A spool line that is valid JSON but not an object is corrupt like any other: counted, skipped, the rest replayed."""
    (tmp_path / "spool.jsonl").write_text("[1]\nnull\n" + to_json(rec(1)) + "\n")
    r, store, clock, metrics = recorder(tmp_path)
    r.start()
    clock.advance(1)
    assert store.batches == [["id-1"]]
    assert metrics.get("spool_corrupt") == 2


def test_spool_is_replayed_when_the_store_is_back_and_the_queue_empty(tmp_path):
    """Records spooled during an outage reach the store once it answers and the queue has drained."""
    r, store, clock, metrics = recorder(tmp_path, batch_size=2, queue_max=2)
    r.start()
    store.down = True
    for n in range(3):
        r.record(rec(n))  # the third overflows: 3 - 2 + 2 = 3 spooled
    assert spooled_ids(tmp_path) == ["id-0", "id-1", "id-2"]
    store.down = False
    clock.advance(1)
    clock.advance(0)
    clock.advance(1)
    assert set(store.rows) == {"id-0", "id-1", "id-2"}
    assert not (tmp_path / "spool.jsonl").exists()


def test_spool_is_not_replayed_during_back_off(tmp_path):
    """While the store is failing, the spool stays on disk (replaying it would only grow the queue)."""
    r, store, clock, _ = recorder(tmp_path)
    store.down = True
    r.record(rec(0))
    r.flush()
    r.flush()  # queue still has id-0: not empty
    (tmp_path / "spool.jsonl").write_text(to_json(rec(9)) + "\n")
    r.queue.clear()
    r.flush()
    assert (tmp_path / "spool.jsonl").exists()


def test_unreadable_spool_is_left_alone(tmp_path, logged):
    """A spool that cannot be read is reported and left; the recorder keeps running."""
    (tmp_path / "spool.jsonl").mkdir()
    r, store, clock, _ = recorder(tmp_path)
    r.start()
    r.record(rec(1))
    clock.advance(1)
    assert store.batches == [["id-1"]]
    assert any("Cannot replay spool" in e.get("log_format", "") for e in logged)


# -- flush_all and stop ----------------------------------------------------------------------------------


def test_flush_all_writes_everything_including_a_batch_on_its_way(tmp_path):
    """flush_all waits for the batch on its way and writes the rest, batch after batch."""
    r, store, clock, _ = recorder(tmp_path, batch_size=2)
    store.hold = True
    for n in range(5):
        r.record(rec(n))
    r.flush()
    done = []
    r.flush_all().addCallback(done.append)
    store.hold = False
    store.release()
    assert done and store.batches == [["id-0", "id-1"], ["id-2", "id-3"], ["id-4"]]


def test_flush_all_stops_when_the_store_fails(tmp_path):
    """flush_all gives up at the first failure (the timer retries later); nothing is lost."""
    r, store, clock, _ = recorder(tmp_path, batch_size=2)
    store.down = True
    for n in range(5):
        r.record(rec(n))
    done = []
    r.flush_all().addCallback(done.append)
    assert done and len(r.queue) == 5


def test_stop_writes_what_it_can_and_stops_the_timer(tmp_path):
    """Stopping writes the queue and leaves no timer behind."""
    r, store, clock, _ = recorder(tmp_path, batch_size=2)
    r.start()
    for n in range(3):
        r.record(rec(n))
    done = []
    r.stop().addCallback(done.append)
    assert done and set(store.rows) == {"id-0", "id-1", "id-2"}
    assert clock.getDelayedCalls() == []
    r.record(rec(9))
    clock.advance(10)
    assert "id-9" not in store.rows


def test_stop_during_an_outage_spools_the_queue(tmp_path):
    """Stopping while the store is down spools everything queued, so nothing is lost at shutdown."""
    r, store, clock, metrics = recorder(tmp_path)
    r.start()
    store.down = True
    r.record(rec(1))
    r.record(rec(2))
    clock.advance(1)
    done = []
    r.stop().addCallback(done.append)
    assert done and spooled_ids(tmp_path) == ["id-1", "id-2"]
    assert clock.getDelayedCalls() == []


def test_stop_waits_for_the_batch_on_its_way(tmp_path):
    """Stopping while a batch is on its way waits for it; if it fails, it and the rest are spooled."""
    r, store, clock, _ = recorder(tmp_path)
    store.hold = True
    r.record(rec(1))
    r.flush()
    r.record(rec(2))
    done = []
    r.stop().addCallback(done.append)
    assert not done
    store.release(ok=False)
    assert done and spooled_ids(tmp_path) == ["id-1", "id-2"]


def test_stop_with_the_store_up_drains_after_the_batch_on_its_way(tmp_path):
    """Stopping while a batch is on its way and the store answers: everything reaches the store."""
    r, store, clock, _ = recorder(tmp_path)
    store.hold = True
    r.record(rec(1))
    r.flush()
    r.record(rec(2))
    done = []
    r.stop().addCallback(done.append)
    store.hold = False
    store.release()
    assert done and store.batches == [["id-1"], ["id-2"]] and spooled_ids(tmp_path) == []


def test_records_after_stop_go_to_the_spool_and_come_back_at_the_next_start(tmp_path):
    """A request that ends after the recorder stopped (cut at shutdown) is spooled, and replayed at the next start."""
    r, store, clock, _ = recorder(tmp_path)
    r.start()
    r.stop()
    r.record(rec(7))
    assert spooled_ids(tmp_path) == ["id-7"] and len(r.queue) == 0
    again, store2, clock2, _ = recorder(tmp_path)
    again.start()
    clock2.advance(1)
    assert store2.batches == [["id-7"]]


def test_a_sooner_flush_replaces_a_later_timer(tmp_path):
    """A full batch arriving while the timer is far off is written now, and the timer resumes after."""
    r, store, clock, _ = recorder(tmp_path, flush_interval=10.0)
    r.start()
    for n in range(3):
        r.record(rec(n))
    clock.advance(0)
    assert store.batches == [["id-0", "id-1", "id-2"]]
    assert [round(c.getTime(), 3) for c in clock.getDelayedCalls()] == [10.0]


# -- retention ------------------------------------------------------------------------------------------


class PruningStore:
    def __init__(self, counts=(), down=False):
        self.cutoffs = []
        self.counts = list(counts)
        self.down = down

    def run(self, work):
        if self.down:
            return fail(ConnectionError("db gone"))
        return succeed(work(self))

    def prune(self, before):
        self.cutoffs.append(before)
        return self.counts.pop(0) if self.counts else 0


def test_retention_prunes_at_start_and_every_interval(tmp_path, logged):
    """Interceptions older than C{days} are deleted at start, then every interval; deletions are logged."""
    store = PruningStore(counts=[5, 0])
    clock = Clock()
    clock.advance(10 * 86400)
    retention = Retention(store, clock, days=2, interval=100)
    retention.start()
    assert store.cutoffs == []
    clock.advance(0)
    assert store.cutoffs == [8 * 86400]
    clock.advance(99)
    assert len(store.cutoffs) == 1
    clock.advance(1)
    assert store.cutoffs == [8 * 86400, 8 * 86400 + 100]
    pruned = [e for e in logged if "Pruned" in e.get("log_format", "")]
    assert [(e["count"], e["days"]) for e in pruned] == [(5, 2)]
    retention.stop()
    assert clock.getDelayedCalls() == []
    clock.advance(1000)
    assert len(store.cutoffs) == 2


def test_retention_zero_days_keeps_everything():
    """With C{days = 0} nothing is ever pruned."""
    store = PruningStore()
    clock = Clock()
    retention = Retention(store, clock, days=0)
    retention.start()
    clock.advance(100000)
    assert store.cutoffs == [] and clock.getDelayedCalls() == []
    retention.stop()


def test_retention_failure_is_logged_and_retried(logged):
    """A failed prune is logged and tried again at the next interval."""
    store = PruningStore(down=True)
    clock = Clock()
    retention = Retention(store, clock, days=1)
    retention.start()
    clock.advance(0)
    assert [e["error"] for e in logged if "Pruning failed" in e.get("log_format", "")] == ["db gone"]
    assert [round(c.getTime()) for c in clock.getDelayedCalls()] == [3600]
    retention.stop()


# -- what the operator reads, and more timing ----------------------------------------------------------


def lines(logged) -> list[str]:
    from twisted.logger import formatEvent
    return [formatEvent(e) for e in logged if e.get("log_namespace", "").startswith("bridgeproxy.recording")]


def test_log_lines_of_an_outage(tmp_path, logged):
    """An outage is told in full sentences: the store error, what waits and when it is retried; what is spooled."""
    r, store, clock, _ = recorder(tmp_path, batch_size=1, queue_max=1)
    store.down = True
    r.record(rec(0))
    r.flush()
    r.record(rec(1))
    path = tmp_path / "spool.jsonl"
    assert lines(logged) == [
        "Recording store unavailable (could not connect to server: Connection refused); 1 records wait, "
        "retry in 0.5s",
        f"Spooled 2 records to {path} while the store is unavailable",
    ]


def test_log_lines_of_a_lost_spool_and_a_replay(tmp_path, logged):
    """A spool that cannot be written or read is an error line naming the file and the reason; a replay is told."""
    missing = tmp_path / "missing" / "spool.jsonl"
    r, store, clock, _ = recorder(tmp_path, batch_size=1, queue_max=1, spool_path=str(missing))
    store.down = True
    r.record(rec(0))
    r.flush()
    del logged[:]
    r.record(rec(1))
    assert lines(logged) == [f"Cannot spool 2 records to {missing}: No such file or directory; they are lost"]
    del logged[:]
    (tmp_path / "dir.jsonl").mkdir()
    r2, _, _, _ = recorder(tmp_path, spool_path=str(tmp_path / "dir.jsonl"))
    r2.start()
    assert lines(logged) == [f"Cannot replay spool {tmp_path / 'dir.jsonl'}: Is a directory"]
    del logged[:]
    (tmp_path / "spool.jsonl").write_text(to_json(rec(5)) + "\n")
    r3, _, _, _ = recorder(tmp_path)
    r3.start()
    assert lines(logged) == ["Replaying 1 spooled records"]


def test_long_store_errors_are_cut_to_200_characters(tmp_path, logged):
    """A store error's first line is logged, at most 200 characters of it."""
    class Verbose(Store):
        def run(self, work):
            return fail(ConnectionError("x" * 300 + "\nmore"))
    r, _, _, _ = recorder(tmp_path, store=Verbose())
    r.record(rec(1))
    r.flush()
    (event,) = [e for e in logged if "Recording store unavailable" in e.get("log_format", "")]
    assert event["error"] == "x" * 200


def test_retention_log_lines(logged):
    """Pruning says how many interceptions went and how old; a failure says why."""
    clock = Clock()
    clock.advance(86400 * 3)
    retention = Retention(PruningStore(counts=[4]), clock, days=1)
    retention.start()
    clock.advance(0)
    failing = Retention(PruningStore(down=True), clock, days=1)
    failing.start()
    clock.advance(0)
    assert lines(logged) == ["Pruned 4 interceptions older than 1 days", "Pruning failed: db gone"]
    retention.stop()
    failing.stop()


def test_stopping_twice_is_harmless(tmp_path):
    """stop() may be called again (a second signal, a reload after a stop) without failing."""
    r, store, clock, _ = recorder(tmp_path)
    r.start()
    r.stop()
    r.stop()
    retention = Retention(PruningStore(), clock, days=1)
    retention.start()
    retention.stop()
    retention.stop()


def test_not_started_recorder_has_no_timer_after_a_full_batch(tmp_path):
    """Before start, a full batch is written, and no periodic timer is left running after it."""
    r, store, clock, _ = recorder(tmp_path)
    for n in range(3):
        r.record(rec(n))
    clock.advance(0)
    assert clock.getDelayedCalls() == []
    r.record(rec(3))
    clock.advance(60)
    assert store.batches == [["id-0", "id-1", "id-2"]]


def test_no_timer_is_left_after_stop_when_a_batch_was_on_its_way(tmp_path):
    """A batch that completes after stop does not restart the timer."""
    r, store, clock, _ = recorder(tmp_path)
    r.start()
    store.hold = True
    for n in range(3):
        r.record(rec(n))
    clock.advance(0)  # on its way
    r.stop()
    store.hold = False
    store.release()
    assert clock.getDelayedCalls() == []


def test_stop_with_only_a_batch_on_its_way_waits_and_spools_it_if_it_fails(tmp_path):
    """Stopping with an empty queue but a batch on its way waits for it; a failed batch is spooled, not lost."""
    r, store, clock, _ = recorder(tmp_path)
    store.hold = True
    r.record(rec(1))
    r.flush()
    done = []
    r.stop().addCallback(done.append)
    assert not done
    store.release(ok=False)
    assert done and spooled_ids(tmp_path) == ["id-1"]


def test_exactly_a_batch_left_is_written_at_once(tmp_path):
    """After a write, exactly one more batch waiting is written at once, not at the next tick."""
    r, store, clock, _ = recorder(tmp_path, batch_size=2)
    for n in range(4):
        r.record(rec(n))
    r.start()
    clock.advance(0)
    assert store.batches == [["id-0", "id-1"], ["id-2", "id-3"]]


def test_starting_later_keeps_a_sooner_write(tmp_path):
    """A write already due sooner than the flush interval is not pushed back by start()."""
    r, store, clock, _ = recorder(tmp_path, flush_interval=5.0)
    clock.advance(100)
    for n in range(3):
        r.record(rec(n))  # a full batch: due now
    r.start()
    clock.advance(0)
    assert store.batches == [["id-0", "id-1", "id-2"]]
