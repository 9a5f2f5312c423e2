"""
Whole gateways of several processes, run as an operator runs them: one or
more C{twistd bridgeproxy} processes (each with C{workers} worker
processes) on one store, in front of a fake provider in the test's reactor.
"""

from __future__ import annotations

import io
import json
import signal
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet import defer, reactor, threads
from twisted.web import server

from bridgeproxy import cli
from bridgeproxy.store import Database
from tests import fakes
from tests.http import call
from tests.procs import free_port, spawn_twistd, wait_for_port


def bridge_config(tmp_path, name: str, port: int, database: str, upstream_url: str, extra: str = "") -> str:
    """A configuration file for one bridge process C{name} on C{port}; C{extra} is more TOML (top-level first)."""
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""
listen = "tcp:{port}:interface=127.0.0.1"
database = "{database}"
{extra}
[providers.openai]
base_url = "{upstream_url}/v1"
key_env = "T_OPENAI_KEY"
[recording]
spool_path = "{tmp_path / (name + '-spool.jsonl')}"
flush_interval = 0.05
[upstream]
timeout = 60
""")
    return str(path)


def healthz_pids(port: int, tries: int = 20) -> set:
    """The worker pids that answered C{tries} fresh connections to /healthz."""
    pids = set()
    for _ in range(tries):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                pids.add(json.loads(r.read())["pid"])
        except OSError:
            time.sleep(0.05)
    return pids


def wait_for_workers(port: int, count: int, seconds: float = 30.0) -> None:
    """Wait until C{count} different workers answer on C{port}."""
    deadline = time.monotonic() + seconds
    seen: set = set()
    while time.monotonic() < deadline:
        seen |= healthz_pids(port)
        if len(seen) >= count:
            return
    raise AssertionError(f"only workers {seen} answered")


@dataclass
class Gateway:
    """The processes, their ports, the fake provider and the store's URL."""

    ports: list
    procs: list
    logs: list
    upstream: Any
    up_port: Any
    database: str
    configs: list = field(default_factory=list)

    def key(self, username: str) -> str:
        """A bridge key for C{username} (created with the command line)."""
        out = io.StringIO()
        assert cli.main(["keys", "create", "--config", self.configs[0], "--username", username], out) == 0
        return out.getvalue().strip()

    def user_id(self, token: str) -> str:
        db = Database(self.database)
        try:
            return db.identify(token).user_id
        finally:
            db.close()

    def url(self, i: int, path: str = "/openai/v1/chat/completions") -> str:
        """The URL of C{path} on the process C{i} (modulo their number)."""
        return f"http://127.0.0.1:{self.ports[i % len(self.ports)]}{path}"

    @defer.inlineCallbacks
    def stop(self):
        """SIGTERM every process (they drain and write their records), then stop the provider."""
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            yield threads.deferToThread(proc.wait, 60)
        yield self.up_port.stopListening()

    def log_text(self) -> str:
        return "".join(path.read_text() for path in self.logs)


@defer.inlineCallbacks
def start(tmp_path, database: str, handler: Callable, processes: int = 1, workers: int = 1, extra: str = "",
          before: Callable[["Gateway"], Any] = lambda gateway: None):
    """
    A fake provider answering with C{handler}, and C{processes} bridges
    (with C{workers} each) on C{database}; C{before(gateway)} runs once the
    configuration exists, before any process starts (keys, budgets).
    """
    upstream = fakes.FakeUpstream()
    upstream.handler = handler
    site = server.Site(upstream)
    site.log = lambda request: None
    up_port = reactor.listenTCP(0, site, interface="127.0.0.1", backlog=1024)
    up_url = f"http://127.0.0.1:{up_port.getHost().port}"
    ports = [free_port() for _ in range(processes)]
    top = (f"workers = {workers}\n" if workers > 1 else "") + extra
    configs = [bridge_config(tmp_path, f"bridge{i}", port, database, up_url, top) for i, port in enumerate(ports)]
    logs = [tmp_path / f"twistd{i}.log" for i in range(processes)]
    gateway = Gateway(ports=ports, procs=[], logs=logs, upstream=upstream, up_port=up_port, database=database,
                      configs=configs)
    before(gateway)
    for config, log in zip(configs, logs):
        gateway.procs.append(spawn_twistd(config, ["--logfile", str(log), "bridgeproxy", "--config", config]))
    try:
        for port, proc in zip(ports, gateway.procs):
            yield threads.deferToThread(wait_for_port, port, proc)
            if workers > 1:
                yield threads.deferToThread(wait_for_workers, port, workers)
    except BaseException:
        yield gateway.stop()
        raise
    return gateway


@defer.inlineCallbacks
def at_once(agent, gateway: Gateway, count: int, body: Any, token: str):
    """C{count} requests at once, spread over the processes: C{[(status, body)]} in order."""
    pending = [call(agent, "POST", gateway.url(i), body, {"Authorization": f"Bearer {token}"})
               for i in range(count)]
    results = yield defer.gatherResults(pending)
    return [(response.code, content) for response, content in results]
