"""
The supervisor's share of /metrics with workers: one directory for every
worker's series, handed to each in its environment, a worker's live gauges
dropped when it exits, and the directory removed once all have (a fake
reactor; the real thing is tests/test_e2e_shared_limits.py).
"""

from __future__ import annotations

import os

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from bridgeproxy.metrics import MULTIPROCESS_DIR
from bridgeproxy.workers import Supervisor


class FakeProcess:
    pid = 4000

    def __init__(self):
        FakeProcess.pid += 1
        self.pid = FakeProcess.pid
        self.signals = []

    def signalProcess(self, name):
        self.signals.append(name)


class FakeReactor:
    def __init__(self):
        self.clock = Clock()
        self.callLater = self.clock.callLater
        self.seconds = self.clock.seconds
        self.started = []

    def spawnProcess(self, protocol, executable, argv, env=None, childFDs=None):
        process = FakeProcess()
        protocol.makeConnection(process)
        self.started.append((protocol, env))
        return process


def test_workers_share_one_metrics_directory_that_goes_when_they_do():
    """Every worker (a restarted one too) gets the same directory; an exited worker's live gauges go, its counters stay; the directory goes once all workers ended."""
    reactor = FakeReactor()
    supervisor = Supervisor(reactor, None, 2, "tcp:8999", share_metrics=True)
    supervisor.startService()
    (first, env1), (second, env2) = reactor.started
    directory = env1[MULTIPROCESS_DIR]
    assert env2[MULTIPROCESS_DIR] == directory and os.path.isdir(directory)
    for worker in (first, second):
        for kind in ("gauge_livesum", "counter"):
            open(os.path.join(directory, f"{kind}_{worker.pid}.db"), "wb").close()

    first.processEnded(Failure(ProcessTerminated(exitCode=1)))
    left = sorted(os.listdir(directory))
    assert left == sorted([f"counter_{first.pid}.db", f"counter_{second.pid}.db", f"gauge_livesum_{second.pid}.db"])
    reactor.clock.advance(supervisor.restart_delay)
    third, env3 = reactor.started[2]
    assert env3[MULTIPROCESS_DIR] == directory

    stopped = supervisor.stopService()
    assert os.path.isdir(directory)  # the workers still drain and write
    for worker in (second, third):
        worker.processEnded(Failure(ProcessDone(0)))
    assert stopped.called and not os.path.exists(directory)
