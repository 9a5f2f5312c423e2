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

from bridgeproxy import cli
from tests import fakes
from tests.procs import ROOT, TWISTD, free_port, wait_for_port, write_config


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
