"""
The circuit breaker per provider: on its own on a Clock, then through the
whole pipeline in memory (what the provider sees, what clients get, what is
recorded, logged and exported).
"""

from __future__ import annotations

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.web import server

from bridgeproxy.config import BreakerConfig
from bridgeproxy.errors import CircuitOpen
from bridgeproxy.proxy.breaker import CLOSED, HALF_OPEN, OPEN, Breaker, Breakers
from tests.memory import TOKEN, gateway, json_answer, parse_answer

AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
DOWN = json_answer(503, {"error": {"message": "upstream down", "type": "server_error"}})
UP = json_answer(200, {"id": "c", "object": "chat.completion", "model": "gpt-4o", "choices": []})


# -- the breaker on its own --------------------------------------------------------------------


def breaker(**settings):
    clock = Clock()
    changes = []
    b = Breaker("openai", BreakerConfig(**settings), clock, lambda name, old, new: changes.append((old, new)))
    return b, clock, changes


def fail_times(b, clock, n, every=0.0):
    for _ in range(n):
        b.failed(b.admit())
        clock.advance(every)


def test_five_failures_in_a_row_open_it():
    """Four failures leave it closed; the fifth opens it, and then it refuses with the time left to wait."""
    b, clock, changes = breaker()
    fail_times(b, clock, 4, every=1)
    assert b.state == CLOSED
    fail_times(b, clock, 1)
    assert b.state == OPEN and changes == [(CLOSED, OPEN)]
    clock.advance(12.2)
    with pytest.raises(CircuitOpen) as caught:
        b.admit()
    assert caught.value.status == 503 and caught.value.headers == {"Retry-After": "18"}
    assert "openai" in caught.value.message


def test_a_success_ends_the_run():
    """Failures must be in a row: a success in between starts the count again."""
    b, clock, _ = breaker()
    fail_times(b, clock, 4)
    b.succeeded(b.admit())
    fail_times(b, clock, 4)
    assert b.state == CLOSED
    fail_times(b, clock, 1)
    assert b.state == OPEN


def test_failures_spread_over_more_than_the_window_do_not_open_it():
    """One failure every 3 s never makes 5 within 10 s; one every 2 s does."""
    b, clock, _ = breaker()
    fail_times(b, clock, 20, every=3)
    assert b.state == CLOSED
    b, clock, _ = breaker()
    fail_times(b, clock, 5, every=2)
    assert b.state == OPEN


def test_a_failure_exactly_window_seconds_after_the_first_still_counts():
    """"Within window seconds" includes the edge: failures at 0 s and 10 s are one run."""
    b, clock, _ = breaker()
    fail_times(b, clock, 1, every=10)
    fail_times(b, clock, 4)
    assert b.state == OPEN
    b, clock, _ = breaker()
    fail_times(b, clock, 1, every=10.001)
    fail_times(b, clock, 4)
    assert b.state == CLOSED


def test_half_open_lets_the_probes_through_and_closes_when_they_succeed():
    """After open_seconds, 3 probes go through (a 4th is refused, Retry-After 1); 3 successes close it."""
    b, clock, changes = breaker()
    fail_times(b, clock, 5)
    clock.advance(29.9)
    with pytest.raises(CircuitOpen):
        b.admit()
    clock.advance(0.1)
    tickets = [b.admit() for _ in range(3)]
    assert b.state == HALF_OPEN
    with pytest.raises(CircuitOpen) as caught:
        b.admit()
    assert caught.value.headers == {"Retry-After": "1"}
    for ticket in tickets[:2]:
        b.succeeded(ticket)
    assert b.state == HALF_OPEN
    b.succeeded(tickets[2])
    assert b.state == CLOSED
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    fail_times(b, clock, 4)
    assert b.state == CLOSED  # a fresh run


def test_a_failed_probe_opens_it_again_for_a_full_period():
    """One failing probe reopens it at once, for open_seconds from then."""
    b, clock, changes = breaker()
    fail_times(b, clock, 5)
    clock.advance(30)
    first, second = b.admit(), b.admit()
    b.failed(first)
    assert b.state == OPEN
    b.succeeded(second)  # a probe of the half-open period that ended: no say
    assert b.state == OPEN
    clock.advance(29)
    with pytest.raises(CircuitOpen):
        b.admit()
    clock.advance(1)
    b.admit()
    assert changes[-2:] == [(HALF_OPEN, OPEN), (OPEN, HALF_OPEN)]


def test_answers_from_before_a_change_have_no_say():
    """A slow request let through while closed cannot close (or reopen) a breaker that changed since."""
    b, clock, _ = breaker()
    slow = b.admit()
    fail_times(b, clock, 5)
    b.succeeded(slow)
    assert b.state == OPEN
    clock.advance(30)
    probe = b.admit()
    b.failed(slow)
    assert b.state == HALF_OPEN
    b.succeeded(probe)
    assert b.state == HALF_OPEN


def test_a_probe_without_a_verdict_frees_its_place():
    """A probe whose client left (no verdict) lets another probe through."""
    b, clock, _ = breaker(probes=1)
    fail_times(b, clock, 5)
    clock.advance(30)
    gone = b.admit()
    with pytest.raises(CircuitOpen):
        b.admit()
    b.released(gone)
    b.succeeded(b.admit())
    assert b.state == CLOSED


def test_a_freed_probe_place_is_one_place():
    """Two probes out, one released: one more probe goes through, not two."""
    b, clock, _ = breaker(probes=2)
    fail_times(b, clock, 5)
    clock.advance(30)
    gone, _ = b.admit(), b.admit()
    b.released(gone)
    b.admit()
    with pytest.raises(CircuitOpen):
        b.admit()


def test_a_request_from_before_the_opening_frees_no_probe_place():
    """A slow request let through while closed, whose client leaves while half-open, holds no probe place."""
    b, clock, _ = breaker(probes=1)
    slow = b.admit()
    fail_times(b, clock, 5)
    clock.advance(30)
    b.admit()
    b.released(slow)
    with pytest.raises(CircuitOpen):
        b.admit()


def test_a_probe_of_an_earlier_half_open_period_has_no_say():
    """A probe admitted in one half-open period cannot count as a success in the next one."""
    b, clock, _ = breaker(probes=2)
    fail_times(b, clock, 5)
    clock.advance(30)
    first, late = b.admit(), b.admit()
    b.failed(first)
    clock.advance(30)
    probe = b.admit()
    b.succeeded(late)
    b.succeeded(probe)
    assert b.state == HALF_OPEN
    b.succeeded(b.admit())
    assert b.state == CLOSED


def test_settings_are_the_configured_ones():
    """failures, window, open_seconds and probes come from [breaker]."""
    b, clock, _ = breaker(failures=2, window=1, open_seconds=5, probes=1)
    fail_times(b, clock, 2)
    assert b.state == OPEN
    clock.advance(5)
    b.succeeded(b.admit())
    assert b.state == CLOSED


def test_breakers_can_be_turned_off():
    """[breaker] failures = 0: no breaker at all."""
    assert Breakers(BreakerConfig(failures=0), Clock()).get("openai") is None
    breakers = Breakers(BreakerConfig(), Clock())
    assert breakers.get("openai") is breakers.get("openai") is not breakers.get("anthropic")
    assert breakers.states() == {"openai": CLOSED, "anthropic": CLOSED}


# -- through the pipeline ----------------------------------------------------------------------


def breaking(extra=None):
    """A gateway with the default breaker on (and retries off, so that every request is one send)."""
    return gateway({"breaker": {"failures": 5}, **(extra or {})})


def test_a_provider_failing_every_request_sees_at_most_5_plus_3_per_cycle():
    """Three open/half-open cycles, a request every second: the provider sees 5, then 1 per cycle (<= 5 + 3)."""
    g = breaking()
    g.upstream.handler = DOWN
    seen_per_cycle, codes = [], []
    for _cycle in range(3):
        before = len(g.upstream.seen)
        for _ in range(31):
            codes.append(g.send("POST", "/openai/v1/chat/completions", CHAT, AUTH).status)
            g.clock.advance(1)
        seen_per_cycle.append(len(g.upstream.seen) - before)
    assert seen_per_cycle[0] == 5 and all(n <= 5 + 3 for n in seen_per_cycle)
    assert seen_per_cycle[1:] == [1, 1]
    assert set(codes) == {503}


def test_concurrent_probes_are_at_most_three():
    """Half-open, requests that arrive together: 3 reach the provider, the rest are refused at once."""
    g = breaking()
    g.upstream.handler = DOWN
    for _ in range(5):
        g.send("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    g.clock.advance(30)
    g.upstream.handler = lambda request: server.NOT_DONE_YET  # the probes hang
    before = len(g.upstream.seen)
    transports = [g.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)[1] for _ in range(6)]
    assert len(g.upstream.seen) - before == 3
    refused = [parse_answer(t.value()) for t in transports[3:]]
    assert [(a.status, a.headers["retry-after"]) for a in refused] == [(503, [b"1"])] * 3


def test_recovery_closes_it():
    """When the provider is back, the probes succeed, the breaker closes, and requests flow again."""
    g = breaking()
    g.upstream.handler = DOWN
    for _ in range(5):
        g.send("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    assert g.send("POST", "/openai/v1/chat/completions", CHAT, AUTH).status == 503
    assert len(g.upstream.seen) == 5
    g.upstream.handler = UP
    g.clock.advance(30)
    codes = [g.send("POST", "/openai/v1/chat/completions", CHAT, AUTH).status for _ in range(10)]
    assert codes == [200] * 10 and len(g.upstream.seen) == 15
    assert g.bridge.breakers.states()["openai"] == CLOSED


def test_an_open_breaker_answers_503_in_the_providers_shape_and_records_the_refusal():
    """The refusal: 503, Retry-After, the provider's error JSON, a recorded 'refused' row, a counted reason."""
    g = breaking()
    g.upstream.handler = json_answer(529, {"type": "error", "error": {"type": "overloaded_error", "message": "x"}})
    for _ in range(5):
        assert g.send("POST", "/anthropic/v1/messages", MESSAGES, {"X-Api-Key": TOKEN}).status == 529
    g.clock.advance(10)
    answer = g.send("POST", "/anthropic/v1/messages", MESSAGES, {"X-Api-Key": TOKEN})
    assert (answer.status, answer.headers["retry-after"]) == (503, [b"20"])
    body = answer.json()
    assert body["type"] == "error" and body["error"]["type"] == "overloaded_error"
    assert "anthropic" in body["error"]["message"]
    record = g.records[-1]
    assert (record.status, record.http_status, record.upstream_status, record.attempts) == ("refused", 503, None, 0)
    assert record.error == body["error"]["message"]
    assert g.bridge.metrics.get("refused:503:circuit_open") == 1
    assert len(g.upstream.seen) == 5


def test_providers_have_breakers_of_their_own():
    """OpenAI failing opens OpenAI's breaker only; Anthropic's requests still go through."""
    g = breaking()
    g.upstream.handler = DOWN
    for _ in range(6):
        g.send("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    g.upstream.handler = json_answer(200, {"type": "message", "content": []})
    assert g.send("POST", "/anthropic/v1/messages", MESSAGES, {"X-Api-Key": TOKEN}).status == 200


@pytest.mark.parametrize("status, opens", [(500, True), (502, True), (503, True), (504, True), (529, True),
                                           (429, True), (400, False), (401, False), (404, False)])
def test_what_counts_as_a_failure(status, opens):
    """5xx and 429 (to the gateway's own key) count; a client's mistake (4xx) says the provider is up."""
    g = breaking()
    g.upstream.handler = json_answer(status, {"error": {"message": "no", "type": "x"}})
    for _ in range(6):
        g.send("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    assert (len(g.upstream.seen) == 5) is opens
    assert g.bridge.breakers.states()["openai"] == (OPEN if opens else CLOSED)


def test_a_429_to_a_clients_own_key_does_not_count():
    """A 429 answered to a client's own key (BYOK) is that client's limit, not the provider's health."""
    g = breaking()
    g.upstream.handler = json_answer(429, {"error": {"message": "slow down", "type": "rate_limit"}})
    byok = {"X-Coder-Token": TOKEN, "Authorization": "Bearer sk-the-clients-own-key-0123456789"}
    for _ in range(8):
        assert g.send("POST", "/openai/v1/chat/completions", CHAT, byok).status == 429
    assert len(g.upstream.seen) == 8 and g.bridge.breakers.states()["openai"] == CLOSED


def test_connect_failures_count():
    """An unreachable provider opens the breaker: 502 five times, then 503 without trying."""
    g = breaking()
    agent = g.unreachable(100)
    codes = [g.send("POST", "/openai/v1/chat/completions", CHAT, AUTH).status for _ in range(7)]
    assert codes == [502] * 5 + [503] * 2 and agent.attempts == 5


def test_timeouts_count():
    """A provider that does not answer within [upstream] timeout counts as failing."""
    g = breaking({"upstream": {"timeout": 2}})
    g.upstream.handler = lambda request: server.NOT_DONE_YET
    for _ in range(5):
        _, transport = g.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)
        g.clock.advance(2)
        g.pump()
        assert parse_answer(transport.value()).status == 504
    assert g.bridge.breakers.states()["openai"] == OPEN


def test_a_probe_whose_client_left_frees_its_place():
    """Half-open with one probe: its client leaves before the answer, and the next request is the probe."""
    g = breaking({"breaker": {"failures": 5, "probes": 1}})
    g.upstream.handler = DOWN
    for _ in range(5):
        g.send("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    g.clock.advance(30)
    g.upstream.handler = lambda request: server.NOT_DONE_YET
    protocol, _ = g.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    protocol.connectionLost(Failure(ConnectionDone()))
    g.pump()
    g.upstream.handler = UP
    assert g.send("POST", "/openai/v1/chat/completions", CHAT, AUTH).status == 200
    assert g.bridge.breakers.states()["openai"] == CLOSED


def test_state_changes_are_logged_and_exported():
    """Each change is a log line and a metric: the state gauge and a counter of changes."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        g = breaking()
        g.upstream.handler = DOWN
        metrics = g.bridge.metrics
        assert b'bridgeproxy_breaker_state{provider="openai"} 0.0' in metrics.exposition()
        for _ in range(5):
            g.send("POST", "/openai/v1/chat/completions", CHAT, AUTH)
        assert b'bridgeproxy_breaker_state{provider="openai"} 2.0' in metrics.exposition()
        g.clock.advance(30)
        g.upstream.handler = UP
        for _ in range(3):
            g.send("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    finally:
        globalLogPublisher.removeObserver(events.append)
    text = metrics.exposition()
    assert b'bridgeproxy_breaker_state{provider="openai"} 0.0' in text
    for state in ("open", "half_open", "closed"):
        assert f'bridgeproxy_breaker_transitions_total{{provider="openai",state="{state}"}} 1.0'.encode() in text
    lines = [e["log_format"].format(**e) for e in events if "Circuit breaker" in e.get("log_format", "")]
    assert lines == [
        "Circuit breaker of openai opened (was closed): requests get 503 for 30 s",
        "Circuit breaker of openai is half_open (was open)",
        "Circuit breaker of openai is closed (was half_open)"]


def test_a_reload_keeps_the_breakers_unless_their_settings_changed():
    """SIGHUP with the same [breaker] keeps an open breaker open; new settings start afresh."""
    g = breaking()
    g.upstream.handler = DOWN
    for _ in range(5):
        g.send("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    bridge = g.bridge

    def reload(config):
        bridge.reconfigure(config, providers={n.decode(): e for n, e in bridge.providers.items()},
                           extractors=bridge.extractors, resolvers=bridge.resolvers, detectors=bridge.detectors)
    reload(bridge.config)
    assert bridge.breakers.states()["openai"] == OPEN
    from dataclasses import replace
    reload(replace(bridge.config, breaker=BreakerConfig(failures=6)))
    assert g.send("POST", "/openai/v1/chat/completions", CHAT, AUTH).status == 503
    assert len(g.upstream.seen) == 6 and bridge.breakers.states()["openai"] == CLOSED
