# -*- test-case-name: tests.test_workers_memory,tests.test_workers,tests.test_startup,tests.test_workers_metrics -*-
"""
Several reactor processes on one port (C{workers = N}).

The twistd process becomes a supervisor: it starts N worker processes and
starts a new one when one dies.  Each worker binds its own C{SO_REUSEPORT}
socket on the configured address, adopts it with C{adoptStreamPort}, and
runs the whole bridge; the kernel spreads new connections across them.  On
SIGTERM the supervisor passes it on and waits for every worker to drain and
exit.  On SIGHUP it replaces the workers one at a time with new ones that
read the configuration file again (a rolling reload).

The workers share a directory for their Prometheus series
(C{PROMETHEUS_MULTIPROC_DIR}, L{bridgeproxy.metrics}), so that C{/metrics}
on any of them reports them all; the supervisor makes it, tells
prometheus_client when a worker exited, and removes it once all have.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from typing import Any, Optional

from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from bridgeproxy.errors import ConfigError
from bridgeproxy.metrics import MULTIPROCESS_DIR

log = Logger()


def listen_backlog() -> int:
    """
    The listen backlog for the bridge's own sockets: 1024, or the system's
    C{net.core.somaxconn} when that is larger (Twisted's default is 50).
    """
    try:
        with open("/proc/sys/net/core/somaxconn", "rb") as f:
            return max(1024, int(f.read()))
    except (OSError, ValueError):
        return 1024


def tcp_address(listen: str) -> tuple[str, int, int]:
    """
    C{(interface, port, backlog)} of a C{tcp:PORT[:interface=X][:backlog=N]}
    endpoint (backlog: L{listen_backlog} unless given); workers need a
    fixed TCP port to share.
    """
    # A colon inside a value is escaped with a backslash (an IPv6 interface: interface=\:\:1).
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", listen)]
    if len(parts) < 2 or parts[0] != "tcp":
        raise ConfigError(f"workers need a 'tcp:PORT:interface=ADDR' listen endpoint, got {listen!r}")
    try:
        port = int(parts[1])
    except ValueError:
        raise ConfigError(f"listen: not a port number in {listen!r}") from None
    options = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
    unknown = set(options) - {"interface", "backlog"}
    if port == 0 or unknown:
        raise ConfigError(f"workers need a fixed port and only interface/backlog options, got {listen!r}")
    try:
        backlog = int(options["backlog"]) if "backlog" in options else listen_backlog()
    except ValueError:
        raise ConfigError(f"listen: backlog must be a whole number in {listen!r}") from None
    return options.get("interface", "0.0.0.0"), port, backlog


def reuseport_socket(interface: str, port: int, backlog: int) -> socket.socket:
    """A listening, non-blocking socket that other processes may bind too."""
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, True)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, True)
    sock.bind((interface, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class AdoptedPort(service.Service):
    """Listens on an already-bound socket (the worker's SO_REUSEPORT one)."""

    def __init__(self, reactor: Any, sock: socket.socket, factory: Any):
        self.reactor = reactor
        self.sock = sock
        self.factory = factory
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        self.port = self.reactor.adoptStreamPort(self.sock.fileno(), self.sock.family, self.factory)
        self.sock.close()  # the port holds its own copy of the descriptor

    def stopService(self) -> Optional[Deferred]:
        super().stopService()
        return self.port.stopListening() if self.port is not None else None


class WorkerNotReady(Exception):
    """A worker exited, or took too long, before it was serving."""


class _Worker(ProcessProtocol):
    transport: Any

    def __init__(self, supervisor: "Supervisor", index: int):
        self.supervisor = supervisor
        self.index = index
        #: Fires once the worker serves on its socket (it says so on fd 3).
        self.ready: Deferred = Deferred()
        self.ended: Deferred = Deferred()
        #: Replaced by a newer worker and told to drain: not to be restarted.
        self.retired = False
        self.pid: Optional[int] = None

    def makeConnection(self, transport: Any) -> None:
        self.pid = transport.pid  # kept for the log lines after it exits
        super().makeConnection(transport)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == READY_FD and b"ready" in data and not self.ready.called:
            self.ready.callback(None)

    def processEnded(self, reason: Any) -> None:
        if not self.ready.called:
            self.ready.errback(WorkerNotReady(f"it exited: {reason.getErrorMessage()}"))
        self.ended.callback(None)
        self.supervisor.ended(self, reason)

    def terminate(self) -> None:
        try:
            self.transport.signalProcess("TERM")
        except Exception:  # noqa: BLE001 - already gone
            pass


#: The descriptor on which a worker tells the supervisor that it serves.
READY_FD = 3


class Supervisor(service.Service):
    """
    Keeps C{count} worker processes running; L{reload} (SIGHUP) replaces
    them one by one with workers that read the configuration file again.
    """

    restart_delay = 1.0
    #: How long a new worker may take to serve before a reload gives up on it.
    ready_timeout = 30.0

    def __init__(self, reactor: Any, config_path: Optional[str], count: int, listen: str,
                 log_format: str = "text", overrides: Optional[dict[str, Any]] = None, share_metrics: bool = False):
        self.reactor = reactor
        self.config_path = config_path
        self.count = count
        self.listen = listen
        self.log_format = log_format
        self.overrides = dict(overrides or {})
        self.workers: dict[int, _Worker] = {}
        #: Workers started by a reload and not serving yet.
        self.starting: set[_Worker] = set()
        #: Workers a reload replaced, draining their requests.
        self.retiring: set[_Worker] = set()
        self.restarts = 0
        self._reloading = False
        self._reload_again = False
        #: Give the workers one directory for their Prometheus series (made at start, removed at the end).
        self.share_metrics = share_metrics
        self.metrics_dir: Optional[str] = None

    def startService(self) -> None:
        super().startService()
        if self.share_metrics and self.metrics_dir is None:
            self.metrics_dir = tempfile.mkdtemp(prefix="bridgeproxy-metrics-")
        for index in range(self.count):
            self.spawn(index)

    def _start(self, index: int) -> _Worker:
        argv = [sys.executable, "-m", "bridgeproxy.workers", "--listen", self.listen, "--index", str(index),
                "--log-format", self.log_format, "--ready-fd", str(READY_FD)]
        if self.config_path:
            argv += ["--config", self.config_path]
        worker = _Worker(self, index)
        env = dict(os.environ)
        if self.metrics_dir is not None:
            env[MULTIPROCESS_DIR] = self.metrics_dir
        self.reactor.spawnProcess(worker, sys.executable, argv, env=env,
                                  childFDs={0: "w", 1: 1, 2: 2, READY_FD: "r"})
        return worker

    def spawn(self, index: int) -> None:
        if not self.running or index in self.workers:
            # Stopping; or a reload's new worker took this place meanwhile.
            return
        worker = self._start(index)
        worker.ready.addErrback(lambda failure: None)  # its exit is logged by ended()
        self.workers[index] = worker
        log.info("Started worker {index} (pid {pid})", index=index, pid=worker.pid)

    def ended(self, worker: _Worker, reason: Any) -> None:
        self.starting.discard(worker)
        if self.metrics_dir is not None and worker.pid is not None:
            # Its gauges stop counting; its counters stay in the totals.
            from prometheus_client.multiprocess import mark_process_dead
            mark_process_dead(worker.pid, self.metrics_dir)
        if worker.retired:
            self.retiring.discard(worker)
            log.info("Worker {index} (pid {pid}) replaced by a reload has exited", index=worker.index,
                     pid=worker.pid)
            return
        if self.workers.get(worker.index) is not worker:
            return  # a reload's new worker that never served; the reload logs it
        del self.workers[worker.index]
        if self.running:
            self.restarts += 1
            log.warn("Worker {index} exited ({reason}); restarting it", index=worker.index,
                     reason=reason.getErrorMessage())
            self.reactor.callLater(self.restart_delay, self.spawn, worker.index)

    # -- reload ----------------------------------------------------------------

    def reload(self) -> None:
        """
        Check the configuration file; if it is valid, replace the workers one
        at a time: start the new one, wait until it serves, then SIGTERM the
        old one (which drains its requests in flight).  A file that is not
        valid changes nothing; the error is logged.
        """
        if not self.running:
            return
        if self._reloading:
            self._reload_again = True
            log.info("Reload already under way; another follows it")
            return
        from bridgeproxy.tap import check, read_config
        try:
            config = read_config(self.config_path, self.overrides)
            check(config, self.reactor)
        except ConfigError as e:
            log.error("Reload failed, workers keep the previous configuration: {error}", error=str(e))
            return
        except Exception:
            log.failure("Reload failed, workers keep the previous configuration")
            return
        ignored = [name for name, now, then in (("listen", self.listen, config.listen),
                                                ("workers", self.count, config.workers)) if now != then]
        if ignored:
            log.warn("Reload: {settings} changed but need a restart; ignored", settings=", ".join(ignored))
        self._reloading = True
        d = self._replace_all()

        def done(_: Any) -> None:
            self._reloading = False
            if self._reload_again:
                self._reload_again = False
                self.reload()
        d.addBoth(done)

    @inlineCallbacks
    def _replace_all(self) -> Any:
        for index in range(self.count):
            if not self.running:
                return
            new = self._start(index)
            self.starting.add(new)
            log.info("Reload: started worker {index} (pid {pid}) to replace pid {old}", index=index,
                     pid=new.pid, old=self.workers[index].pid if index in self.workers else None)
            try:
                yield new.ready.addTimeout(self.ready_timeout, self.reactor)
            except Exception as e:  # noqa: BLE001 - exited, or timed out
                self.starting.discard(new)
                new.terminate()
                if not self.running:
                    return  # stopping: stopService ended it
                reason = str(e) if isinstance(e, WorkerNotReady) else f"not serving after {self.ready_timeout:g}s"
                log.error("Reload stopped: the new worker {index} did not start ({reason}); the running "
                          "workers are kept", index=index, reason=reason)
                return
            self.starting.discard(new)
            if not self.running:
                new.terminate()
                return
            old = self.workers.get(index)
            self.workers[index] = new
            if old is not None:
                old.retired = True
                self.retiring.add(old)
                old.terminate()
        log.info("Reloaded configuration from {path}: {count} workers replaced",
                 path=self.config_path or "(defaults)", count=self.count)

    def stopService(self) -> Deferred:
        super().stopService()
        waiting = []
        for worker in [*self.workers.values(), *self.starting, *self.retiring]:
            worker.terminate()
            waiting.append(worker.ended)
        done = DeferredList(waiting) if waiting else succeed(None)
        return done.addCallback(self._remove_metrics)

    def _remove_metrics(self, result: Any) -> Any:
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            self.metrics_dir = None
        return result


def main(argv: Optional[list[str]] = None) -> None:
    """A worker: the whole bridge on an SO_REUSEPORT socket of its own."""
    parser = argparse.ArgumentParser(prog="bridgeproxy-worker")
    parser.add_argument("--config")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--log-format", choices=("json", "text"), default="text")
    parser.add_argument("--ready-fd", type=int, default=None,
                        help="descriptor to write 'ready' to once serving (the supervisor's pipe)")
    args = parser.parse_args(argv)
    # The supervisor handles SIGHUP (by replacing the workers); one sent to
    # the whole process group must not stop a worker.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    from bridgeproxy.logs import observer

    from bridgeproxy.config import load, override, parse
    from bridgeproxy.tap import BridgeService, build

    globalLogBeginner.beginLoggingTo([observer(args.log_format)], redirectStandardIO=False)
    try:
        config = load(args.config) if args.config else parse({})
        config = override(config, listen=args.listen)
        if config.recording.spool_path:
            # Each worker spools to a file of its own.
            recording = config.recording.__class__(**{**config.recording.__dict__,
                                                     "spool_path": f"{config.recording.spool_path}.{args.index}"})
            config = override(config, recording=recording)
        interface, port, backlog = tcp_address(args.listen)
        app = build(config, reactor)
        sock = reuseport_socket(interface, port, backlog)
    except ConfigError as e:
        raise SystemExit(f"bridgeproxy worker {args.index}: {e}") from None
    except OSError as e:
        raise SystemExit(f"bridgeproxy worker {args.index}: cannot listen on {args.listen}: {e.strerror}") from None
    top = BridgeService(app, AdoptedPort(reactor, sock, app.site))
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)

    def serving() -> None:
        log.info("Worker {index} (pid {pid}) serving on {listen}", index=args.index, pid=os.getpid(),
                 listen=args.listen)
        if args.ready_fd is not None:
            try:
                os.write(args.ready_fd, b"ready\n")
                os.close(args.ready_fd)
            except OSError:
                pass  # no supervisor listening
    reactor.callWhenRunning(serving)
    reactor.run()


if __name__ == "__main__":
    main()
