"""
Helpers for tests that run bridgeproxy as an operator does: a configuration
file, `twistd -n bridgeproxy` as a subprocess, a fake upstream and a key.
"""

from __future__ import annotations

import io
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

from twisted.internet import reactor
from twisted.web import server

from bridgeproxy import cli
from tests import fakes

ROOT = Path(__file__).resolve().parent.parent
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]


def write_config(tmp_path, upstream_url="http://127.0.0.1:9", port=0, extra=""):
    """A configuration file in C{tmp_path} for a bridge on C{port} in front of C{upstream_url}."""
    path = tmp_path / "bridge.toml"
    path.write_text(f"""
listen = "tcp:{port}:interface=127.0.0.1"
database = "sqlite:{tmp_path / 'bridge.db'}"
[providers.openai]
base_url = "{upstream_url}/v1"
key_env = "T_OPENAI_KEY"
[providers.anthropic]
base_url = "{upstream_url}"
key_env = "T_ANTHROPIC_KEY"
[recording]
spool_path = "{tmp_path / 'spool.jsonl'}"
flush_interval = 0.05
{extra}
""")
    return str(path)


def spawn_twistd(config: str, args: list, **popen) -> subprocess.Popen:
    """`twistd -n --pidfile= [args...]` with the test provider keys in the environment."""
    env = dict(os.environ, T_OPENAI_KEY=fakes.OPENAI_KEY, T_ANTHROPIC_KEY=fakes.ANTHROPIC_KEY)
    return subprocess.Popen(TWISTD + ["-n", "--pidfile="] + args, cwd=ROOT, env=env, **popen)


def start_upstream_and_key(tmp_path, answer):
    """A fake upstream answering C{answer}, a config for a bridge on a free port, a key: (port, up_port, upstream, config, token)."""
    upstream = fakes.FakeUpstream()
    upstream.handler = answer
    up_port = reactor.listenTCP(0, server.Site(upstream), interface="127.0.0.1")
    port = free_port()
    config = write_config(tmp_path, f"http://127.0.0.1:{up_port.getHost().port}", port)
    out = io.StringIO()
    cli.main(["keys", "create", "--config", config, "--username", "alice"], out)
    return port, up_port, upstream, config, out.getvalue().strip()


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """
    A TCP port on loopback that nothing listens on (now), taken from below
    the kernel's ephemeral range.  A port from C{bind(0)} could be handed
    out again to a later C{listenTCP(0)} in the same test, which would then
    answer in place of the twistd child meant to take it.
    """
    low, high = _ephemeral_range()
    if low >= 11000:
        candidates = list(range(10000, low))
    elif high <= 64000:
        candidates = list(range(high + 1, 65536))
    else:
        raise AssertionError(f"no room outside the ephemeral range {low}-{high} for the tests' ports")
    # Each test process (pytest-xdist's gw0, gw1, …) takes its own share, so
    # that two never pick the same port between the check and the listen.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    candidates = candidates[index % count::count]
    random.SystemRandom().shuffle(candidates)
    for candidate in candidates:
        if candidate in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
        _handed_out.add(candidate)
        return candidate
    raise AssertionError("no free port below the ephemeral range")


def wait_for_port(port: int, proc, seconds: float = 30.0) -> None:
    """Wait until something accepts connections on C{port}; fail if C{proc} exits first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("twistd exited early")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("twistd did not start listening")


def wait_for_log(path, text: str, proc=None, seconds: float = 30.0, count: int = 1) -> str:
    """
    Wait until the log file at C{path} holds C{text} (C{count} times); return
    the whole log.  Fails if C{proc} exits first or the deadline passes.
    """
    deadline = time.monotonic() + seconds
    content = ""
    while time.monotonic() < deadline:
        try:
            content = Path(path).read_text()
        except FileNotFoundError:
            content = ""
        if content.count(text) >= count:
            return content
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"twistd exited before logging {text!r}:\n{content}")
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged within {seconds}s:\n{content}")
