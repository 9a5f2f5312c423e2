# -*- test-case-name: tests.test_workers -*-
"""
Several reactor processes on one port (C{workers = N}).

The twistd process becomes a supervisor: it starts N worker processes and
starts a new one when one dies.  Each worker binds its own C{SO_REUSEPORT}
socket on the configured address, adopts it with C{adoptStreamPort}, and
runs the whole bridge; the kernel spreads new connections across them.  On
SIGTERM the supervisor passes it on and waits for every worker to drain and
exit.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any, Optional

from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from bridgeproxy.errors import ConfigError

log = Logger()


def tcp_address(listen: str) -> tuple[str, int, int]:
    """
    C{(interface, port, backlog)} of a C{tcp:PORT[:interface=X][:backlog=N]}
    endpoint; workers need a fixed TCP port to share.
    """
    parts = listen.split(":")
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
    return options.get("interface", "0.0.0.0"), port, int(options.get("backlog", "1024"))


def reuseport_socket(interface: str, port: int, backlog: int) -> socket.socket:
    """A listening, non-blocking socket that other processes may bind too."""
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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


class _Worker(ProcessProtocol):
    transport: Any

    def __init__(self, supervisor: "Supervisor", index: int):
        self.supervisor = supervisor
        self.index = index
        self.ended: Deferred = Deferred()

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)
        self.supervisor.ended(self, reason)


class Supervisor(service.Service):
    """Keeps C{count} worker processes running."""

    restart_delay = 1.0

    def __init__(self, reactor: Any, config_path: Optional[str], count: int, listen: str,
                 log_format: str = "text"):
        self.reactor = reactor
        self.config_path = config_path
        self.count = count
        self.listen = listen
        self.log_format = log_format
        self.workers: dict[int, _Worker] = {}
        self.restarts = 0

    def startService(self) -> None:
        super().startService()
        for index in range(self.count):
            self.spawn(index)

    def spawn(self, index: int) -> None:
        if not self.running:
            return
        argv = [sys.executable, "-m", "bridgeproxy.workers", "--listen", self.listen, "--index", str(index),
                "--log-format", self.log_format]
        if self.config_path:
            argv += ["--config", self.config_path]
        worker = _Worker(self, index)
        self.workers[index] = worker
        self.reactor.spawnProcess(worker, sys.executable, argv, env=dict(os.environ),
                                  childFDs={0: "w", 1: 1, 2: 2})
        log.info("Started worker {index} (pid {pid})", index=index, pid=worker.transport.pid)

    def ended(self, worker: _Worker, reason: Any) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if self.running:
            self.restarts += 1
            log.warn("Worker {index} exited ({reason}); restarting it", index=worker.index,
                     reason=reason.getErrorMessage())
            self.reactor.callLater(self.restart_delay, self.spawn, worker.index)

    def stopService(self) -> Deferred:
        super().stopService()
        waiting = []
        for worker in list(self.workers.values()):
            try:
                worker.transport.signalProcess("TERM")
            except Exception:  # noqa: BLE001 - already gone
                continue
            waiting.append(worker.ended)
        return DeferredList(waiting) if waiting else succeed(None)


def main(argv: Optional[list[str]] = None) -> None:
    """A worker: the whole bridge on an SO_REUSEPORT socket of its own."""
    parser = argparse.ArgumentParser(prog="bridgeproxy-worker")
    parser.add_argument("--config")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--log-format", choices=("json", "text"), default="text")
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    from bridgeproxy.logs import observer

    from bridgeproxy.config import load, override, parse
    from bridgeproxy.tap import BridgeService, build

    globalLogBeginner.beginLoggingTo([observer(args.log_format)], redirectStandardIO=False)
    config = load(args.config) if args.config else parse({})
    config = override(config, listen=args.listen)
    if config.recording.spool_path:
        # Each worker spools to a file of its own.
        recording = config.recording.__class__(**{**config.recording.__dict__,
                                                 "spool_path": f"{config.recording.spool_path}.{args.index}"})
        config = override(config, recording=recording)
    interface, port, backlog = tcp_address(args.listen)
    app = build(config, reactor)
    top = BridgeService(app, AdoptedPort(reactor, reuseport_socket(interface, port, backlog), app.site))
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    log.info("Worker {index} (pid {pid}) serving on {listen}", index=args.index, pid=os.getpid(), listen=args.listen)
    reactor.run()


if __name__ == "__main__":
    main()
