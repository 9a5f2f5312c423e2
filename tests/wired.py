"""
The bridge as C{tap.build} wires it, in memory: the real plugins, the real
resource tree and the bridge's own endpoints, with a store that answers at
once (no thread), a reactor that is a L{MemoryReactorClock} (nothing binds,
nothing spawns, time is a clock) and the upstream reached through
L{treq.testing.RequestTraversalAgent}.
"""

from __future__ import annotations

import contextlib
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock

from bridgeproxy import tap
from bridgeproxy.config import parse
from bridgeproxy.store import Database, describe_error
from tests.memory import OPENAI_KEY, ANTHROPIC_KEY, UPSTREAM, Gateway, Upstream


class Reactor(MemoryReactorClock):
    """A memory reactor whose "other threads" are this one (for L{InlinePool}), and that spawns fakes."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, str, list[str], dict, dict]] = []
        self.pids = iter(range(1001, 10**6))

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)

    def getThreadPool(self) -> "InlinePool":
        return InlinePool()

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], env: Optional[dict] = None,
                     childFDs: Optional[dict] = None, **kwargs: Any) -> "Process":
        self.spawned.append((protocol, executable, args, env or {}, childFDs or {}))
        process = Process(protocol, next(self.pids))
        protocol.makeConnection(process)
        return process


class Process:
    """A spawned process's transport: records signals; L{end} is its exit."""

    def __init__(self, protocol: Any, pid: int):
        self.protocol = protocol
        self.pid = pid
        self.signals: list[str] = []
        self.gone = False

    def signalProcess(self, name: str) -> None:
        if self.gone:
            from twisted.internet.error import ProcessExitedAlready
            raise ProcessExitedAlready()
        self.signals.append(name)

    def say(self, fd: int, data: bytes) -> None:
        """The process writes C{data} on its descriptor C{fd}."""
        self.protocol.childDataReceived(fd, data)

    def end(self, status: int = 0) -> None:
        """The process exits with C{status} (0: done; else an error)."""
        from twisted.internet.error import ProcessDone, ProcessTerminated
        from twisted.python.failure import Failure
        self.gone = True
        self.pid = None
        self.protocol.processEnded(Failure(ProcessDone(0) if status == 0 else ProcessTerminated(status)))


class InlinePool:
    """A thread pool whose work runs at once, in the calling thread (for L{bridgeproxy.store.AsyncStore})."""

    def __init__(self) -> None:
        self.started = self.stopped = 0
        self.calls = 0

    def start(self) -> None:
        self.started += 1

    def stop(self) -> None:
        self.stopped += 1

    def callInThreadWithCallback(self, onResult: Callable[[bool, Any], None], f: Callable[..., Any],
                                 *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        try:
            result = f(*args, **kwargs)
        except BaseException:
            from twisted.python.failure import Failure
            onResult(False, Failure())
        else:
            onResult(True, result)


class SyncStore:
    """
    L{bridgeproxy.store.AsyncStore}'s face over one SQLite database in
    memory, answering at once.  While C{down} is set, every call fails with
    it (a store that does not answer).
    """

    def __init__(self, url: str = "sqlite::memory:", reactor: Any = None) -> None:
        self.url = url
        self.db = Database("sqlite::memory:")
        self.db.migrate()
        self.down: Optional[BaseException] = None
        self.started = self.stopped = 0
        self.calls = 0

    def start(self) -> None:
        self.started += 1

    def stop(self) -> Deferred:
        self.stopped += 1
        return succeed(None)

    def describe(self, error: BaseException) -> str:
        return describe_error(error, self.url)

    def run(self, work: Callable[[Database], Any]) -> Deferred:
        self.calls += 1
        if self.down is not None:
            return fail(self.down)
        try:
            return succeed(work(self.db))
        except Exception:
            return fail()


def config_data(extra: Optional[dict] = None) -> dict:
    """The memory gateway's configuration (both providers on the fake upstream) plus C{extra}."""
    data: dict[str, Any] = {
        "providers": {"openai": {"base_url": UPSTREAM + "/v1", "key_env": "K_OPENAI"},
                      "anthropic": {"base_url": UPSTREAM, "key_env": "K_ANTHROPIC"}},
        "auth": {"cache_seconds": 0},
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


ENVIRON = {"K_OPENAI": OPENAI_KEY, "K_ANTHROPIC": ANTHROPIC_KEY}


def built(extra: Optional[dict] = None, store: Optional[SyncStore] = None,
          environ: Optional[dict] = None) -> tuple[Any, Gateway, SyncStore]:
    """C{tap.build} of the memory configuration plus C{extra}: C{(app, gateway, store)}."""
    config = parse(config_data(extra), environ=ENVIRON if environ is None else environ)
    store = store or SyncStore()
    reactor = Reactor()
    upstream = Upstream()
    agent = RequestTraversalAgent(upstream)
    app = tap.build(config, reactor, agent=agent, store=store)
    gateway = Gateway(bridge=app.bridge, site=app.site, clock=reactor, upstream=upstream, upstream_agent=agent)
    return app, gateway, store


@contextlib.contextmanager
def plugin_package(root: Path, name: str, source: str) -> Iterator[Any]:
    """A third party's plugin package C{name} (one module, C{source}) importable while in the block."""
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text("")
    (root / name / "plugins.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(root))
    try:
        yield __import__(name)
    finally:
        sys.path.remove(str(root))
        for module in (name, f"{name}.plugins"):
            sys.modules.pop(module, None)


def logged(captured: Any) -> list[str]:
    """The lines a captured log shows, one per event (a failure's traceback aside)."""
    from twisted.logger import formatEvent
    return [formatEvent(event) for event in captured.events]
