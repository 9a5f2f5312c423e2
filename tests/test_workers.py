"""
Several worker processes on one port, supervised (`workers = N`), as an
operator runs them with twistd.
"""

import io
import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads
from twisted.web import server

from bridgeproxy import cli
from bridgeproxy.store import Database
from tests import fakes
from tests.procs import ROOT, TWISTD, free_port, spawn_twistd, wait_for_log, wait_for_port, write_config
from tests.streams import ANTHROPIC_EVENTS, STREAM_MESSAGES, Collector, open_stream


def healthz_pids(port, tries):
    pids = set()
    for _ in range(tries):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                pids.add(json.loads(r.read())["pid"])
        except OSError:
            time.sleep(0.05)
    return pids


def test_workers_share_the_port_and_are_restarted(tmp_path):
    """`workers = 2` serves from two processes on one port; a killed worker is replaced; SIGTERM stops all."""
    port = free_port()
    config = write_config(tmp_path, port=port, extra="")
    text = open(config).read().replace('listen = "', 'workers = 2\nlisten = "', 1)
    open(config, "w").write(text)
    cli.main(["keys", "create", "--config", config, "--username", "alice"], io.StringIO())
    env = dict(os.environ, T_OPENAI_KEY=fakes.OPENAI_KEY, T_ANTHROPIC_KEY=fakes.ANTHROPIC_KEY)
    proc = subprocess.Popen(TWISTD + ["-n", "--pidfile=", "--logfile", str(tmp_path / "twistd.log"),
                                      "bridgeproxy", "--config", config], cwd=ROOT, env=env)
    try:
        wait_for_port(port, proc)
        deadline = time.monotonic() + 20
        pids = set()
        while len(pids) < 2 and time.monotonic() < deadline:
            pids |= healthz_pids(port, 20)
        assert len(pids) == 2 and proc.pid not in pids
        victim = sorted(pids)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        after = set()
        while time.monotonic() < deadline:
            after = healthz_pids(port, 20)
            if len(after - pids) >= 1 and victim not in after:
                break
        assert victim not in after and after - pids
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code in (0, -signal.SIGTERM)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
    assert "restarting it" in (tmp_path / "twistd.log").read_text()


def workers_config(tmp_path, port, upstream_url="http://127.0.0.1:9"):
    config = write_config(tmp_path, upstream_url, port=port)
    text = open(config).read().replace('listen = "', 'workers = 2\nlisten = "', 1)
    open(config, "w").write(text)
    return config


def wait_for_pids(port, wanted, seconds=30.0):
    """Sample /healthz until C{wanted(pids)} holds for the pids seen in one round; return them."""
    deadline = time.monotonic() + seconds
    pids: set = set()
    while time.monotonic() < deadline:
        pids = healthz_pids(port, 20)
        if wanted(pids):
            return pids
    raise AssertionError(f"/healthz pids {pids} never matched")


@pytest_twisted.inlineCallbacks
def test_hup_replaces_workers_one_by_one(tmp_path, agent):
    """
    With `workers = 2`, SIGHUP replaces both workers (new pids on /healthz)
    while a stream started before it completes with every event and is
    recorded ok; a broken file at the next SIGHUP keeps the running workers
    and logs the error.
    """
    gate = defer.Deferred()
    upstream = fakes.FakeUpstream()
    upstream.handler = fakes.sse_answer(ANTHROPIC_EVENTS, gate=gate, gate_after=1)
    up_port = reactor.listenTCP(0, server.Site(upstream), interface="127.0.0.1")
    port = free_port()
    config = workers_config(tmp_path, port, f"http://127.0.0.1:{up_port.getHost().port}")
    out = io.StringIO()
    cli.main(["keys", "create", "--config", config, "--username", "alice"], out)
    token = out.getvalue().strip()
    log_path = tmp_path / "twistd.log"
    proc = spawn_twistd(config, ["--logfile", str(log_path), "bridgeproxy", "--config", config])
    try:
        yield threads.deferToThread(wait_for_port, port, proc)
        old = yield threads.deferToThread(wait_for_pids, port, lambda pids: len(pids) == 2)
        collector = Collector()
        yield open_stream(agent, f"http://127.0.0.1:{port}/anthropic/v1/messages", STREAM_MESSAGES,
                          {"X-Api-Key": token}, collector)
        yield collector.first
        proc.send_signal(signal.SIGHUP)
        new = yield threads.deferToThread(wait_for_pids, port, lambda pids: len(pids) == 2 and not pids & old)
        yield threads.deferToThread(wait_for_log, log_path, "2 workers replaced", proc)
        gate.callback(None)
        body = yield collector.done
        assert body == b"".join(ANTHROPIC_EVENTS)
        # The replaced workers drain and exit.
        yield threads.deferToThread(wait_for_log, log_path, "replaced by a reload has exited", proc, count=2)

        text = open(config).read()
        open(config, "w").write(text + "\n[auth]\nallow_byok = 'yes'\n")
        proc.send_signal(signal.SIGHUP)
        log_text = yield threads.deferToThread(wait_for_log, log_path, "Reload failed", proc)
        assert "auth.allow_byok must be bool, got str" in log_text
        still = yield threads.deferToThread(healthz_pids, port, 20)
        assert still == new and proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        code = yield threads.deferToThread(proc.wait, 30)
        yield up_port.stopListening()
    assert code in (0, -signal.SIGTERM)
    rows = Database(f"sqlite:{tmp_path / 'bridge.db'}").interceptions()
    assert [(r["status"], r["output_tokens"]) for r in rows] == [("ok", 12)]
    log_text = log_path.read_text()
    assert "Traceback" not in log_text and "restarting it" not in log_text
    for secret in (token, fakes.OPENAI_KEY, fakes.ANTHROPIC_KEY):
        assert secret not in log_text


class _Process:
    """A worker process as the supervisor sees it."""

    pids = 100

    def __init__(self):
        _Process.pids += 1
        self.pid = _Process.pids
        self.signals = []

    def signalProcess(self, signal_name):
        self.signals.append(signal_name)


class _Reactor:
    """Starts fake worker processes; time is a Clock."""

    def __init__(self):
        from twisted.internet.task import Clock
        self.clock = Clock()
        self.callLater = self.clock.callLater
        self.seconds = self.clock.seconds
        self.started = []

    def spawnProcess(self, protocol, executable, argv, env=None, childFDs=None):
        process = _Process()
        protocol.makeConnection(process)
        self.started.append(protocol)
        return process


def test_a_crash_during_a_reload_leaves_no_worker_untracked(monkeypatch):
    """An old worker that crashes while the reload's new worker starts is not restarted over it: every
    worker running is one the supervisor knows, and stopping signals them all."""
    from twisted.internet.error import ProcessTerminated
    from twisted.python.failure import Failure

    from bridgeproxy import tap, workers
    monkeypatch.setattr(tap, "check", lambda config, reactor, plugin_package=None: None)
    reactor = _Reactor()
    supervisor = workers.Supervisor(reactor, None, 1, "tcp:8999")
    supervisor.startService()
    old = reactor.started[0]
    old.childDataReceived(3, b"ready\n")
    supervisor.reload()
    new = reactor.started[1]
    old.processEnded(Failure(ProcessTerminated(exitCode=1)))
    new.childDataReceived(3, b"ready\n")
    reactor.clock.advance(supervisor.restart_delay)
    assert len(reactor.started) == 2
    assert list(supervisor.workers.values()) == [new]
    supervisor.stopService()
    assert new.transport.signals == ["TERM"]
