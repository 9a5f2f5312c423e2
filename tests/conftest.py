"""
Shared fixtures: a captured log (every test that runs a bridge checks that
no secret reached it) and a running bridge on loopback.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.client import Agent, HTTPConnectionPool

from tests import fakes


class CapturedLog:
    """Every log event emitted while a test runs, formatted."""

    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)

    def text(self) -> str:
        lines = []
        for event in self.events:
            try:
                lines.append(formatEvent(event))
            except Exception:  # noqa: BLE001
                lines.append(repr(event))
            failure = event.get("log_failure")
            if failure is not None:
                lines.append(failure.getTraceback())
            # Structured fields too: a JSON log format would show them.
            lines.append(json.dumps({k: str(v) for k, v in event.items() if not k.startswith("log_")}))
        return "\n".join(lines)


@pytest.fixture
def captured_log():
    log = CapturedLog()
    globalLogPublisher.addObserver(log)
    yield log
    globalLogPublisher.removeObserver(log)


@pytest.fixture
def bridge(request, tmp_path, captured_log):
    """
    A bridge on loopback in front of a fake upstream; stopped after the test.
    Parametrised indirectly, the parameter names the upstream client
    (C{[upstream] client}).
    """
    client = getattr(request, "param", None)
    extra = {"upstream": {"client": client}} if client else None
    running = pytest_twisted.blockon(fakes.start_bridge(tmp_path, extra))
    running.log = captured_log
    yield running
    pytest_twisted.blockon(running.stop())


@pytest.fixture
def agent():
    """A client agent without connection reuse (nothing left open between tests)."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    return Agent(reactor, pool=pool)


def assert_no_secrets(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, "a secret reached the log"
