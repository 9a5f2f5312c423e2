"""
Limits an operator sets (docs/configuration.md [limits]): the concurrency cap
and the per-initiator request rate, as a client sees them.
"""

import json

import pytest_twisted
from twisted.internet import defer, reactor

from tests import fakes
from tests.http import call

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def sleep(seconds):
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


@pytest_twisted.inlineCallbacks
def test_max_concurrency_is_503_in_provider_shape(tmp_path, agent, captured_log):
    """Beyond max_concurrency requests in flight, a request gets 503 in the provider's shape with Retry-After."""
    running = yield fakes.start_bridge(tmp_path, {"limits": {"max_concurrency": 1}, "upstream": {"timeout": 1}})
    running.upstream.handler = fakes.never_answer
    try:
        token = running.create_key("alice")
        first = call(agent, "POST", running.url + "/anthropic/v1/messages", MESSAGES, {"X-Api-Key": token})
        for _ in range(50):
            if running.upstream.requests:
                break
            yield sleep(0.02)
        response, body = yield call(agent, "POST", running.url + "/anthropic/v1/messages", MESSAGES,
                                    {"X-Api-Key": token})
        assert response.code == 503
        assert json.loads(body)["error"]["type"] == "overloaded_error"
        assert response.headers.getRawHeaders(b"retry-after") == [b"1"]
        assert len(running.upstream.requests) == 1
        response, _ = yield first
        assert response.code == 504
    finally:
        yield running.stop()


@pytest_twisted.inlineCallbacks
def test_per_initiator_rate_is_429_with_retry_after(tmp_path, agent, captured_log):
    """An initiator over per_initiator_rps gets 429 with Retry-After; another initiator is not affected."""
    running = yield fakes.start_bridge(tmp_path, {"limits": {"per_initiator_rps": 0.5, "per_initiator_burst": 2}})
    try:
        alice, bob = running.create_key("alice"), running.create_key("bob")
        codes = []
        for _ in range(3):
            response, body = yield call(agent, "POST", running.url + "/openai/v1/chat/completions", CHAT,
                                        {"Authorization": f"Bearer {alice}"})
            codes.append(response.code)
        assert codes == [200, 200, 429]
        assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(response.headers.getRawHeaders(b"retry-after")[0]) <= 2
        response, _ = yield call(agent, "POST", running.url + "/openai/v1/chat/completions", CHAT,
                                 {"Authorization": f"Bearer {bob}"})
        assert response.code == 200
        assert len(running.upstream.requests) == 3
    finally:
        yield running.stop()
