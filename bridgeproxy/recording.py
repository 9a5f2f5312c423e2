# -*- test-case-name: tests.test_recording -*-
"""
Recording interceptions without slowing the request that made them.

C{record} only appends to an in-memory queue.  A timer flushes the queue
in batches on the store's thread.  When the store fails, the batch goes
back to the front of the queue and is retried with a growing delay; when
the queue is over C{queue_max}, the oldest records are spooled to a local
file (JSON lines) and replayed once the store answers again.  Inserts are
idempotent by interception id, so a retry never stores a row twice.
"""

from __future__ import annotations

import json
import os
from collections import deque
from typing import Any, Optional

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.logger import Logger

from bridgeproxy.config import RecordingConfig
from bridgeproxy.metrics import Metrics
from bridgeproxy.types import Interception, record_dict, record_from_dict

_MAX_BACKOFF = 30.0


def to_json(record: Interception) -> str:
    """A spool line: the record as data (L{bridgeproxy.types.record_dict})."""
    return json.dumps(record_dict(record), separators=(",", ":"))


def from_json(line: str) -> Interception:
    """
    A spooled record.

    @raise ValueError: for a line that is not one (not JSON, or JSON that is not a record).
    """
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("a spool line must be a JSON object")
    return record_from_dict(data)


class Recorder:
    """
    The queue between the pipeline and the store.

    @param store: an L{bridgeproxy.store.AsyncStore} (or anything with its C{run}).
    @param clock: an L{IReactorTime}.
    """

    log = Logger()

    def __init__(self, store: Any, clock: Any, config: RecordingConfig,
                 metrics: Optional[Metrics] = None):
        self._store = store
        self._clock = clock
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.queue: deque[Interception] = deque()
        self._flushing: Optional[Deferred] = None
        self._timer = None
        self._backoff = 0.0
        self._running = False
        self._stopped = False

    # -- the hot path --------------------------------------------------------

    def record(self, record: Interception) -> None:
        """Queue a record; never blocks, never raises."""
        if not self.config.enabled:
            return
        self.queue.append(record)
        if self._stopped:
            # A request that ended after the last flush (cut at shutdown):
            # straight to the spool, replayed at the next start.
            self._spool(len(self.queue))
        elif len(self.queue) > self.config.queue_max:
            self._spool_overflow()
        elif len(self.queue) >= self.config.batch_size and self._flushing is None and not self._backoff:
            self._schedule(0)

    # -- flushing --------------------------------------------------------------

    def start(self) -> None:
        self._running = True
        self._replay_spool()
        self._schedule(self.config.flush_interval)

    def _schedule(self, delay: float) -> None:
        if self._timer is not None and self._timer.active():
            if delay >= self._timer.getTime() - self._clock.seconds():
                return
            self._timer.cancel()
        self._timer = self._clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        d = self.flush()
        d.addBoth(self._reschedule)

    def _reschedule(self, result: Any) -> None:
        if self._running:
            self._schedule(self._backoff or self.config.flush_interval)

    def flush(self) -> Deferred:
        """Write one batch; fires when done (success or not)."""
        if self._flushing is not None:
            return self._flushing
        if not self.queue:
            if self._backoff == 0 and self._spooled():
                self._replay_spool()
            if not self.queue:
                return succeed(None)
        batch = [self.queue.popleft() for _ in range(min(len(self.queue), self.config.batch_size))]
        d = self._store.run(lambda db: db.insert_interceptions(batch))
        self._flushing = d

        def done(count: int) -> None:
            self._flushing = None
            self._backoff = 0.0
            self.metrics.inc("recorded", len(batch))
            if len(self.queue) >= self.config.batch_size:
                self._schedule(0)

        def failed(failure: Any) -> None:
            self._flushing = None
            self.queue.extendleft(reversed(batch))
            self._backoff = min(_MAX_BACKOFF, max(0.5, self._backoff * 2))
            self.metrics.inc("store_errors")
            # The exception text of a database driver names the server and the
            # table, never a bridge token: tokens never reach the store.
            self.log.warn("Recording store unavailable ({error}); {queued} records wait, retry in {delay}s",
                          error=failure.getErrorMessage().splitlines()[0][:200] if failure.getErrorMessage() else
                          failure.type.__name__, queued=len(self.queue), delay=self._backoff)
            if len(self.queue) > self.config.queue_max:
                self._spool_overflow()

        d.addCallbacks(done, failed)
        return d

    @inlineCallbacks
    def flush_all(self):
        """
        Write everything queued now, including a batch already on its way;
        stops early when the store fails (the timer retries later).
        """
        while self._flushing is not None or self.queue:
            yield self.flush()
            if self._backoff:
                break

    def stop(self) -> Deferred:
        """Flush what can be flushed; spool the rest (and anything recorded later) to the local file."""
        self._running = False
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

        def drain(_: Any = None) -> Any:
            if self.queue and self._backoff == 0:
                return self.flush().addCallback(drain)
            if self.queue:
                self._spool(len(self.queue))
            return None
        pending = self._flushing if self._flushing is not None else succeed(None)
        return pending.addCallback(drain)

    # -- the spool ---------------------------------------------------------------

    def _spool_overflow(self) -> None:
        self._spool(len(self.queue) - self.config.queue_max + self.config.batch_size)

    def _spool(self, count: int) -> None:
        count = min(count, len(self.queue))
        if count <= 0:
            return
        lines = [to_json(self.queue.popleft()) for _ in range(count)]
        try:
            with open(self.config.spool_path, "a", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
        except OSError as e:
            self.log.error("Cannot spool {count} records to {path}: {error}; they are lost",
                           count=count, path=self.config.spool_path, error=e.strerror)
            self.metrics.inc("records_lost", count)
            return
        self.metrics.inc("spooled", count)
        self.log.warn("Spooled {count} records to {path} while the store is unavailable",
                      count=count, path=self.config.spool_path)

    def _spooled(self) -> bool:
        """Whether records wait in the spool (or in a replay a process died in the middle of)."""
        path = self.config.spool_path
        return os.path.exists(path) or os.path.exists(path + ".replay")

    def _replay_spool(self) -> None:
        path = self.config.spool_path
        replaying = path + ".replay"
        try:
            # A .replay file is a replay that a process died in the middle of:
            # it is read first (and never overwritten); the spool comes next time.
            if not os.path.exists(replaying):
                if not os.path.exists(path):
                    return
                os.replace(path, replaying)
            with open(replaying, encoding="utf-8") as f:
                records = []
                for line in f:
                    line = line.strip()
                    if line:
                        try:
                            records.append(from_json(line))
                        except (ValueError, TypeError):
                            self.metrics.inc("spool_corrupt")
            os.remove(replaying)
        except OSError as e:
            self.log.error("Cannot replay spool {path}: {error}", path=path, error=e.strerror)
            return
        self.queue.extendleft(reversed(records))
        self.log.info("Replaying {count} spooled records", count=len(records))


class Retention:
    """
    Deletes interceptions older than C{days}, at start and then every
    C{interval} seconds, on the store's thread.  C{days = 0} keeps all.
    """

    log = Logger()

    def __init__(self, store: Any, clock: Any, days: int, interval: float = 3600.0):
        self._store = store
        self._clock = clock
        self.days = days
        self.interval = interval
        self._call = None

    def start(self) -> None:
        if self.days > 0:
            self._call = self._clock.callLater(0, self._run)

    def _run(self) -> None:
        cutoff = self._clock.seconds() - self.days * 86400
        d = self._store.run(lambda db: db.prune(cutoff))
        d.addCallback(self._pruned)
        d.addErrback(lambda f: self.log.warn("Pruning failed: {error}", error=f.getErrorMessage()))
        self._call = self._clock.callLater(self.interval, self._run)

    def _pruned(self, count: int) -> None:
        if count:
            self.log.info("Pruned {count} interceptions older than {days} days", count=count, days=self.days)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
