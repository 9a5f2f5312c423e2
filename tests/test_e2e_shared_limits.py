"""
[limits] and /metrics with several processes, run as an operator runs
them: with C{workers = 2} on SQLite, the rate an initiator gets is the
configured one (not twice it), requests in flight are capped for the whole
gateway, and every scrape of /metrics, whichever worker answers it,
reports the whole gateway; with two instances on one PostgreSQL, the rate
is the configured one too.
"""

from __future__ import annotations

import json
import math
import re
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.web import server

from tests import gateways
from tests.http import call
from tests.pg import drop_pg_schema, pg_schema

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
ANSWER = json.dumps({"id": "c", "object": "chat.completion", "model": "gpt-4o", "choices": [],
                     "usage": {"prompt_tokens": 3, "completion_tokens": 1}}).encode()
#: Slow enough that the refill during a burst of 30 requests is at most a token or two.
RATE, BURST = 0.5, 4


class Gate:
    """A provider that holds every request until opened; then answers them all, and the next at once."""

    def __init__(self):
        self.waiting = []
        self.open = False

    def __call__(self, request, received):
        request.setHeader(b"content-type", b"application/json")
        if self.open:
            return ANSWER
        self.waiting.append(request)
        return server.NOT_DONE_YET

    def release(self):
        self.open = True
        for request in self.waiting:
            if not request.finished:
                request.write(ANSWER)
                request.finish()


def answer(request, received):
    request.setHeader(b"content-type", b"application/json")
    return ANSWER


def sleep(seconds):
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def ok_total(metrics: str) -> float:
    """The requests /metrics counts as answered ok, over every label."""
    return sum(float(value) for value in re.findall(r'^bridgeproxy_requests_total\{[^}]*status="ok"[^}]*\} (\S+)$',
                                                     metrics, re.M))


@defer.inlineCallbacks
def rate_burst(agent, gateway, token, count=30):
    """C{count} requests at once; the number answered, and the seconds the burst took."""
    started = time.monotonic()
    answers = yield gateways.at_once(agent, gateway, count, CHAT, token)
    elapsed = time.monotonic() - started
    codes = [code for code, _ in answers]
    assert set(codes) <= {200, 429}, codes
    for code, body in answers:
        if code == 429:
            assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"
    return codes.count(200), elapsed


@pytest_twisted.inlineCallbacks
def test_with_two_workers_the_rate_and_the_metrics_are_the_gateways(tmp_path, agent):
    """
    workers = 2 on SQLite, per_initiator_rps = 0.5 with a burst of 4: of 30
    requests at once from one initiator, spread over both workers, about 4
    are answered (the burst, plus one every 2 s while they run), not the 8
    two separate workers would allow; and ten scrapes of /metrics, on
    fresh connections (so on either worker), each count every request
    answered, by both workers.
    """
    gateway = yield gateways.start(
        tmp_path, f"sqlite:{tmp_path / 'bridge.db'}", answer, workers=2,
        extra=f"[limits]\nper_initiator_rps = {RATE}\nper_initiator_burst = {BURST}\n")
    try:
        alice = gateway.key("alice")
        ok, elapsed = yield rate_burst(agent, gateway, alice)
        assert BURST <= ok <= BURST + math.floor(RATE * elapsed) + 1, (ok, elapsed)
        assert ok < 2 * BURST, (ok, elapsed)
        totals = []
        for _ in range(10):
            response, body = yield call(agent, "GET", gateway.url(0, "/metrics"))
            assert response.code == 200
            totals.append(ok_total(body.decode()))
        assert totals == [ok] * 10
        assert len(gateway.upstream.requests) == ok
    finally:
        yield gateway.stop()
    log = gateway.log_text()
    assert "Traceback" not in log and alice not in log


@pytest_twisted.inlineCallbacks
def test_with_two_workers_requests_in_flight_are_capped_for_the_gateway(tmp_path, agent):
    """
    workers = 2 on SQLite, max_concurrency = 2: of 6 requests at once while
    the provider holds them, 2 reach it and 4 get 503 in the provider's
    shape; the 2 complete once it answers.
    """
    gate = Gate()
    gateway = yield gateways.start(tmp_path, f"sqlite:{tmp_path / 'bridge.db'}", gate, workers=2,
                                   extra="[limits]\nmax_concurrency = 2\n")
    try:
        bob = gateway.key("bob")
        pending = [call(agent, "POST", gateway.url(0), CHAT, {"Authorization": f"Bearer {bob}"}) for _ in range(6)]
        for _ in range(200):
            if len(gate.waiting) >= 2 and sum(d.called for d in pending) >= 4:
                break
            yield sleep(0.05)
        yield sleep(0.3)  # anything else that would get through would have by now
        assert len(gate.waiting) == 2
        gate.release()
        results = yield defer.gatherResults(pending)
    finally:
        yield gateway.stop()
    assert sorted(response.code for response, _ in results) == [200, 200, 503, 503, 503, 503]
    for response, body in results:
        if response.code == 503:
            assert json.loads(body)["error"]["code"] == "overloaded"
    assert "Traceback" not in gateway.log_text()


@pytest.mark.postgres
@pytest_twisted.inlineCallbacks
def test_two_instances_on_one_postgresql_share_the_rate(tmp_path, agent):
    """Two bridge processes on one PostgreSQL: 30 requests at once over both get the rate of one gateway."""
    url, schema = pg_schema()
    try:
        gateway = yield gateways.start(
            tmp_path, url, answer, processes=2,
            extra=f"[limits]\nper_initiator_rps = {RATE}\nper_initiator_burst = {BURST}\n")
        try:
            ok, elapsed = yield rate_burst(agent, gateway, gateway.key("alice"))
        finally:
            yield gateway.stop()
    finally:
        drop_pg_schema(schema)
    assert BURST <= ok <= BURST + math.floor(RATE * elapsed) + 1, (ok, elapsed)
    assert ok < 2 * BURST, (ok, elapsed)
