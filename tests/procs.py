"""
Helpers for tests that run bridgeproxy as an operator does: a configuration
file, `twistd -n bridgeproxy` as a subprocess, a fake upstream and a key.
"""

from __future__ import annotations

import io
import os
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


def free_port() -> int:
    """A TCP port on loopback that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
