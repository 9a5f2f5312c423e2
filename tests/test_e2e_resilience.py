"""
Retries and the circuit breaker over loopback, seen by the official OpenAI
SDK with its own retries off (C{max_retries=0}): what it gets is the
bridge's doing.
"""

import openai
import pytest
import pytest_twisted
from twisted.internet import threads

from tests import fakes
from tests.payloads import CHAT_JSON

UNAVAILABLE = {"error": {"message": "The server is overloaded", "type": "server_error", "code": None}}


def in_turn(*handlers):
    """The first request gets the first handler, the next the next; the last one repeats."""
    queue = list(handlers)

    def handler(request, received):
        return (queue.pop(0) if len(queue) > 1 else queue[0])(request, received)
    return handler


def client(running, token):
    return openai.OpenAI(base_url=running.url + "/openai/v1", api_key=token, max_retries=0, timeout=10)


@pytest_twisted.inlineCallbacks
def test_the_sdk_gets_one_clean_answer_after_a_503(tmp_path, captured_log):
    """The provider's first answer is 503: the bridge sends the request again, the SDK sees only the 200."""
    running = yield fakes.start_bridge(tmp_path, {"retries": {"max": 2, "backoff": 0.05}})
    try:
        token = running.create_key("alice")
        running.upstream.handler = in_turn(fakes.json_answer(503, UNAVAILABLE), fakes.json_answer(200, CHAT_JSON))
        messages = [{"role": "user", "content": "weather in Paris?"}]
        result = yield threads.deferToThread(client(running, token).chat.completions.create,
                                             model="gpt-4o", messages=messages)
        assert result.choices[0].message.tool_calls[0].function.name == "get_weather"
        first, second = running.upstream.requests
        assert first.body == second.body and first.json()["messages"] == messages
        assert first.headers["authorization"] == second.headers["authorization"] == [f"Bearer {fakes.OPENAI_KEY}"]
        yield running.flush()
        [row] = running.rows()
        assert (row["status"], row["upstream_status"], row["http_status"], row["attempts"]) == ("ok", 200, 200, 2)
        assert row["cost_micros"] == 190
        metrics = running.app.bridge.metrics.exposition()
        assert b'bridgeproxy_upstream_retries_total{provider="openai",reason="503"} 1.0' in metrics
    finally:
        yield running.stop()


@pytest_twisted.inlineCallbacks
def test_the_sdk_gets_the_breakers_503_once_the_provider_kept_failing(tmp_path, captured_log):
    """Two failures open a breaker set to 2: the third call gets the bridge's 503 and the provider sees nothing."""
    running = yield fakes.start_bridge(tmp_path, {"retries": {"max": 0}, "breaker": {"failures": 2}})
    try:
        token = running.create_key("alice")
        running.upstream.handler = fakes.json_answer(503, UNAVAILABLE)
        sdk = client(running, token)
        errors = []
        for _ in range(3):
            with pytest.raises(openai.InternalServerError) as caught:
                yield threads.deferToThread(sdk.chat.completions.create, model="gpt-4o", messages=[])
            errors.append(caught.value)
        assert [e.status_code for e in errors] == [503, 503, 503]
        assert errors[0].message.endswith("The server is overloaded")
        assert "openai is failing" in errors[2].message
        assert errors[2].body["code"] == "overloaded"
        assert errors[2].response.headers["retry-after"] == "30"
        assert len(running.upstream.requests) == 2
        yield running.flush()
        assert sorted(r["status"] for r in running.rows()) == ["ok", "ok", "refused"]
        assert "Circuit breaker of openai opened (was closed)" in captured_log.text()
    finally:
        yield running.stop()
