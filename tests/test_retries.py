"""
Retries where they are safe, in memory on a Clock: a connect failure or a
429/502/503 answer is sent again after a jittered backoff (or the provider's
Retry-After, up to a cap), never once a byte of the answer reached the
client.
"""

from __future__ import annotations

import email.utils

import pytest
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, DNSLookupError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http_headers import Headers

from bridgeproxy.config import RetriesConfig
from bridgeproxy.proxy.http1 import ResponseNeverReceived
from bridgeproxy.proxy.retries import Retries, connect_failure, retry_after
from tests import payloads
from tests.memory import TOKEN, gateway, in_turn, json_answer, parse_answer, sse_answer

AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
UNAVAILABLE = json_answer(503, {"error": {"message": "try later", "type": "server_error"}})
OK = json_answer(200, payloads.CHAT_JSON)


def retrying(extra=None, jitter=0.0):
    """A gateway with retries on (max 2, backoff 0.5 s) and the breaker off; the jitter fixed."""
    g = gateway({"retries": {"max": 2, "backoff": 0.5}, **(extra or {})})
    g.bridge.retries.random = lambda: jitter
    return g


def post(g, path="/openai/v1/chat/completions", body=CHAT, headers=AUTH):
    """Send a request and leave it open: its connection's transport, to read what the client got."""
    return g.open("POST", path, body, headers)[1]


def later(g, seconds):
    g.clock.advance(seconds)
    g.pump()


def settle(g, seconds=30):
    """Let C{seconds} pass, a tenth of a second at a time (timers set meanwhile run too)."""
    for _ in range(int(seconds * 10)):
        later(g, 0.1)


# -- the policy on its own ---------------------------------------------------------------------


def headers(**values):
    return Headers({name.replace("_", "-").encode(): [value.encode()] for name, value in values.items()})


@pytest.mark.parametrize("given, wait", [
    ({}, None),
    ({"retry_after": "7"}, 7.0),
    ({"retry_after": " 2.5 "}, 2.5),
    ({"retry_after": "0"}, 0.0),
    ({"retry_after_ms": "1500"}, 1.5),
    ({"retry_after_ms": "250", "retry_after": "9"}, 0.25),  # OpenAI's, finer, first
    ({"retry_after_ms": "soon", "retry_after": "9"}, 9.0),
    ({"retry_after_ms": "0"}, 0.0),  # "now", not unreadable
    ({"retry_after_ms": "0.5"}, 0.0005),
    ({"retry_after_ms": "inf", "retry_after": "9"}, 9.0),
    ({"retry_after_ms": "-1", "retry_after": "9"}, 9.0),
    ({"retry_after": "-3"}, None),
    ({"retry_after": "nan"}, None),
    ({"retry_after": "inf"}, None),
    ({"retry_after": "tomorrow"}, None),
    ({"retry_after": email.utils.formatdate(1_000_030, usegmt=True)}, 30.0),
    ({"retry_after": email.utils.formatdate(999_000, usegmt=True)}, 0.0),  # a date past: now
])
def test_retry_after_reads_seconds_milliseconds_and_dates(given, wait):
    """Retry-After in seconds or as an HTTP date (against the clock), retry-after-ms; nonsense is no wait."""
    assert retry_after(headers(**given), now=1_000_000.0) == wait


@pytest.mark.parametrize("failure, connect", [
    (ConnectionRefusedError(), True), (DNSLookupError("no such host"), True), (OSError("no address"), True),
    (ResponseNeverReceived(Failure(ConnectionDone())), False), (ValueError("x"), False),
])
def test_only_connect_failures_are_retried(failure, connect):
    """A refused connection or an unknown name: nothing was sent. A connection lost after sending: maybe."""
    assert connect_failure(Failure(failure)) is connect


def test_backoff_doubles_jittered_and_capped():
    """Half to all of backoff * 2^(n-1), never over max_backoff."""
    policy = Retries(RetriesConfig(max=10, backoff=0.5, max_backoff=3), Clock(), random=lambda: 0.0)
    assert [policy.backoff(n) for n in (1, 2, 3, 4, 5)] == [0.25, 0.5, 1.0, 1.5, 1.5]
    policy.random = lambda: 0.999999
    assert [round(policy.backoff(n), 3) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]
    assert policy.backoff(1000) == pytest.approx(3.0)


def test_backoff_stops_doubling_after_30_doublings():
    """However many attempts, the wait is a number (never an overflow): at most backoff * 2^30 before the cap."""
    policy = Retries(RetriesConfig(max=100_000, backoff=1, max_backoff=1e12), Clock(), random=lambda: 0.0)
    assert policy.backoff(31) == policy.backoff(32) == policy.backoff(100_000) == 2 ** 30 / 2


def test_a_retry_after_date_is_read_against_the_clock():
    """Retry-After as an HTTP date: the wait is from the injected clock's now."""
    clock = Clock()
    clock.advance(1_000_000)
    policy = Retries(RetriesConfig(max=2, retry_after_cap=10), clock)
    asked = headers(retry_after=email.utils.formatdate(1_000_004, usegmt=True))
    assert policy.after_answer(1, 503, asked) == 4.0
    clock.advance(3)
    assert policy.after_answer(1, 503, asked) == 1.0


def test_only_429_502_503_are_retried_and_only_max_times():
    """Other statuses are answers; after max retries the last answer stands."""
    policy = Retries(RetriesConfig(max=2, backoff=1), Clock(), random=lambda: 1.0)
    assert [policy.after_answer(1, code, Headers()) for code in (200, 400, 429, 500, 502, 503, 504)] == [
        None, None, 1.0, None, 1.0, 1.0, None]
    assert (policy.after_answer(2, 503, Headers()), policy.after_answer(3, 503, Headers())) == (2.0, None)
    assert policy.after_failure(3, Failure(ConnectionRefusedError())) is None


# -- through the pipeline ----------------------------------------------------------------------


def test_a_503_is_retried_and_the_client_sees_one_clean_answer():
    """The first send gets 503, the retry 200: the client gets the 200 alone, recorded once, 2 attempts."""
    g = retrying()
    g.upstream.handler = in_turn(UNAVAILABLE, OK)
    transport = post(g)
    assert len(g.upstream.seen) == 1 and transport.value() == b""
    later(g, 0.249)
    assert len(g.upstream.seen) == 1  # not before the backoff (0.5 s, jittered to half)
    later(g, 0.001)
    answer = parse_answer(transport.value())
    assert answer.status == 200 and answer.json() == payloads.CHAT_JSON
    assert answer.raw.count(b"HTTP/1.1") == 1
    first, second = g.upstream.seen
    assert (second.method, second.uri, second.body, second.headers) == (first.method, first.uri, first.body,
                                                                       first.headers)
    [record] = g.records
    assert (record.status, record.upstream_status, record.http_status, record.attempts) == ("ok", 200, 200, 2)
    assert record.input_tokens == 30 and record.cost_micros == 190
    assert g.bridge.metrics.retries.labels("openai", "503")._value.get() == 1


def test_a_connect_failure_is_retried():
    """The provider refuses the first connection: the request is sent again and answered."""
    g = retrying()
    g.upstream.handler = OK
    agent = g.unreachable(1)
    transport = post(g)
    later(g, 0.25)
    assert parse_answer(transport.value()).status == 200 and agent.attempts == 2
    assert [r.attempts for r in g.records] == [2]
    assert g.bridge.metrics.retries.labels("openai", "connect")._value.get() == 1


def test_retries_stop_after_max_and_the_last_answer_is_relayed():
    """Always 503: 1 + 2 sends (after 0.5 s then 1 s with full jitter); the client gets the provider's 503."""
    g = retrying(jitter=0.999999)
    g.upstream.handler = UNAVAILABLE
    transport = post(g)
    later(g, 0.49)
    assert len(g.upstream.seen) == 1
    later(g, 0.01)
    assert len(g.upstream.seen) == 2
    later(g, 0.99)
    assert len(g.upstream.seen) == 2
    later(g, 0.01)
    answer = parse_answer(transport.value())
    assert len(g.upstream.seen) == 3 and answer.status == 503
    assert answer.json()["error"]["message"] == "try later"
    settle(g, 60)
    assert len(g.upstream.seen) == 3
    assert [(r.status, r.upstream_status, r.attempts) for r in g.records] == [("ok", 503, 3)]


def test_an_unreachable_provider_is_502_after_the_retries():
    """Every connection refused: 3 tries, then 502 as before."""
    g = retrying()
    agent = g.unreachable(100)
    transport = post(g)
    settle(g)
    assert parse_answer(transport.value()).status == 502 and agent.attempts == 3
    [record] = g.records
    assert (record.status, record.upstream_status, record.attempts) == ("upstream_unreachable", None, 3)


@pytest.mark.parametrize("status", [400, 401, 404, 413, 500, 504, 529])
def test_other_answers_are_not_retried(status):
    """A client's mistake or a provider's own error (500, 504, 529) is the answer: sent once, relayed."""
    g = retrying()
    g.upstream.handler = json_answer(status, {"error": {"message": "no", "type": "x"}})
    transport = post(g)
    settle(g)
    assert parse_answer(transport.value()).status == status and len(g.upstream.seen) == 1


def test_a_stream_that_failed_after_its_first_event_is_not_retried():
    """Bytes reached the client: the bridge never sends again, the stream ends with its error tail."""
    g = retrying()
    g.upstream.handler = in_turn(sse_answer(payloads.CHAT_CHUNKS[:1], end="abort"), OK)
    body = {**CHAT, "stream": True}
    transport = post(g, body=body)
    settle(g)
    answer = parse_answer(transport.value())
    assert answer.status == 200 and payloads.CHAT_CHUNKS[0] in answer.body
    assert len(g.upstream.seen) == 1
    [record] = g.records
    assert record.status == "incomplete" and record.attempts == 1


def test_a_503_stream_before_any_event_is_retried():
    """A 503 is an answer the client has not seen a byte of, streamed request or not."""
    g = retrying()
    g.upstream.handler = in_turn(UNAVAILABLE, sse_answer(payloads.CHAT_CHUNKS))
    transport = post(g, body={**CHAT, "stream": True})
    later(g, 0.25)
    answer = parse_answer(transport.value())
    assert answer.status == 200 and answer.body == b"".join(payloads.CHAT_CHUNKS)
    assert len(g.upstream.seen) == 2 and g.records[0].status == "ok"


def test_retry_after_is_honoured():
    """A 429 saying Retry-After: 3 is sent again after 3 s exactly, not at the backoff's time."""
    g = retrying()
    g.upstream.handler = in_turn(json_answer(429, {"error": {"message": "slow", "type": "rate_limit_error"}},
                                             {"Retry-After": "3"}), OK)
    transport = post(g)
    later(g, 2.99)
    assert len(g.upstream.seen) == 1
    later(g, 0.01)
    assert len(g.upstream.seen) == 2 and parse_answer(transport.value()).status == 200


def test_retry_after_ms_is_honoured():
    """OpenAI's retry-after-ms is the finer wait."""
    g = retrying()
    g.upstream.handler = in_turn(json_answer(429, {"error": {"message": "slow", "type": "x"}},
                                             {"retry-after-ms": "1200", "Retry-After": "2"}), OK)
    post(g)
    later(g, 1.19)
    assert len(g.upstream.seen) == 1
    later(g, 0.01)
    assert len(g.upstream.seen) == 2


def test_a_retry_after_over_the_cap_is_not_waited():
    """Retry-After: 120 with a 10 s cap: no retry; the client gets the 429 with its Retry-After at once."""
    g = retrying({"retries": {"max": 2, "retry_after_cap": 10}})
    g.upstream.handler = json_answer(429, {"error": {"message": "slow", "type": "x"}}, {"Retry-After": "120"})
    transport = post(g)
    answer = parse_answer(transport.value())
    assert answer.status == 429 and answer.headers["retry-after"] == [b"120"]
    settle(g, 200)
    assert len(g.upstream.seen) == 1


def test_a_retry_after_at_the_cap_is_waited():
    """Up to the cap, the provider's wait is the wait."""
    g = retrying({"retries": {"max": 2, "retry_after_cap": 10}})
    g.upstream.handler = in_turn(json_answer(503, {"error": {"message": "x", "type": "x"}},
                                             {"Retry-After": "10"}), OK)
    transport = post(g)
    later(g, 9.9)
    assert transport.value() == b""
    later(g, 0.1)
    assert parse_answer(transport.value()).status == 200


def test_retries_can_be_turned_off():
    """[retries] max = 0: a 503 goes to the client as it came."""
    g = gateway({"retries": {"max": 0}})
    g.upstream.handler = in_turn(UNAVAILABLE, OK)
    assert g.send("POST", "/openai/v1/chat/completions", CHAT, AUTH).status == 503
    g.clock.advance(10)
    assert len(g.upstream.seen) == 1


def test_a_client_that_leaves_during_the_wait_is_not_retried_for():
    """The client left before the retry: nothing more is sent; the request is recorded as disconnected."""
    g = retrying()
    g.upstream.handler = UNAVAILABLE
    protocol, _ = g.open("POST", "/openai/v1/chat/completions", CHAT, AUTH)
    protocol.connectionLost(Failure(ConnectionDone()))
    settle(g)
    assert len(g.upstream.seen) == 1
    assert [(r.status, r.attempts) for r in g.records] == [("client_disconnected", 1)]
    assert not g.bridge.in_flight


def test_a_shutdown_during_the_wait_answers_503():
    """The grace period ends while a retry waits: the client gets the gateway's 503, nothing more is sent."""
    g = retrying({"retries": {"max": 2, "backoff": 5}})
    g.upstream.handler = UNAVAILABLE
    transport = post(g)
    drained = g.bridge.drain(1.0)
    later(g, 1.0)
    answer = parse_answer(transport.value())
    assert answer.status == 503 and "shutting down" in answer.json()["error"]["message"]
    assert len(g.upstream.seen) == 1 and drained.called
    assert [r.status for r in g.records] == ["shutdown"]


def test_a_timeout_is_not_retried():
    """A provider that did not answer in time may be working on it: 504, sent once."""
    g = retrying({"upstream": {"timeout": 2}})
    g.upstream.handler = lambda request: server.NOT_DONE_YET
    transport = post(g)
    later(g, 2)
    settle(g)
    assert parse_answer(transport.value()).status == 504 and len(g.upstream.seen) == 1


def test_retries_stop_when_the_breaker_opens():
    """Each send counts for the breaker: once it opens, the retry is refused (503 with Retry-After)."""
    g = retrying({"breaker": {"failures": 5}})
    g.upstream.handler = UNAVAILABLE
    answers = []
    for _ in range(3):
        transport = post(g)
        settle(g, 5)  # less than the 30 s the breaker stays open
        answers.append(parse_answer(transport.value()))
    assert len(g.upstream.seen) == 5
    assert [a.status for a in answers] == [503, 503, 503]
    assert answers[0].json()["error"]["message"] == "try later"  # the provider's, after 3 sends
    assert "openai" in answers[1].json()["error"]["message"]  # the breaker's, after 2 more
    assert "retry-after" in answers[2].headers
    assert [(r.status, r.attempts) for r in g.records] == [("ok", 3), ("refused", 2), ("refused", 0)]


def test_retries_are_logged():
    """Each retry says which request, where, after what, and how long it waits."""
    from twisted.logger import globalLogPublisher
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        g = retrying()
        g.upstream.handler = in_turn(UNAVAILABLE, OK)
        post(g)
        later(g, 1)
    finally:
        globalLogPublisher.removeObserver(events.append)
    [line] = [e["log_format"].format(**e) for e in events if e.get("log_format", "").startswith("Retrying")]
    assert line == f"Retrying {g.records[0].id} at openai in 0.25 s (attempt 1 got 503)"
