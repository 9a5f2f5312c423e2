"""
The provider contract, proved with a provider that is not OpenAI or
Anthropic: the built-in `openai-compatible` plugin (any OpenAI-shaped server,
a local vLLM or Ollama) configured under a prefix of its own, end to end over
loopback, and the start-up errors of a provider table.
"""

import json

import pytest
import pytest_twisted
from twisted.internet import reactor

from bridgeproxy.config import parse
from bridgeproxy.errors import ConfigError
from bridgeproxy.tap import build
from tests import fakes
from tests.http import call

CHAT = {"model": "qwen2.5-coder", "messages": [{"role": "user", "content": "hi"}]}
CHAT_STREAM = [
    b'data: {"id":"c","object":"chat.completion.chunk","model":"qwen2.5-coder","choices":[{"index":0,'
    b'"delta":{"content":"Hi"}}]}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","model":"qwen2.5-coder","choices":[],'
    b'"usage":{"prompt_tokens":4,"completion_tokens":1}}\n\n',
    b"data: [DONE]\n\n",
]


def local(upstream_url: str, **more) -> dict:
    """A provider table for an OpenAI-compatible server at the fake upstream, merged beside the defaults."""
    return {"providers": {"local": {"plugin": "openai-compatible", "base_url": upstream_url + "/v1", **more}}}


@pytest_twisted.inlineCallbacks
def test_openai_compatible_server_under_its_own_prefix(tmp_path, agent, captured_log):
    """An OpenAI-shaped server configured as [providers.local] serves /local/v1/...: intercepted and
    recorded as provider 'local', its models passed through, anything else refused, no key sent when
    none is configured, and the bridge token never forwarded."""
    running = yield fakes.start_bridge(tmp_path, extra_for=local)
    upstream = running.upstream
    try:
        token = running.create_key("alice")
        upstream.handler = fakes.sse_answer(CHAT_STREAM)
        response, body = yield call(agent, "POST", running.url + "/local/v1/chat/completions",
                                    {**CHAT, "stream": True}, {"Authorization": f"Bearer {token}"})
        assert response.code == 200 and body == b"".join(CHAT_STREAM)
        sent = upstream.requests[-1]
        assert sent.uri == b"/v1/chat/completions"
        assert "authorization" not in sent.headers and token not in json.dumps(sent.headers)
        upstream.handler = fakes.json_answer(200, {"data": [{"id": "qwen2.5-coder"}]})
        response, _ = yield call(agent, "GET", running.url + "/local/v1/models", None, {"X-Api-Key": token})
        assert response.code == 200 and upstream.requests[-1].uri == b"/v1/models"
        response, body = yield call(agent, "POST", running.url + "/local/v1/embeddings", {}, {"X-Api-Key": token})
        assert response.code == 404 and json.loads(body)["error"]["code"] == "unknown_url"
        assert len(upstream.requests) == 2
        yield running.flush()
        rows = {r["route"]: r for r in running.rows()}
        chat = rows["chat.completions"]
        assert (chat["provider"], chat["status"], chat["input_tokens"], chat["output_tokens"]) == ("local", "ok", 4, 1)
        assert chat["credential_hint"] is None
        assert rows["/v1/models"]["provider"] == "local"
        assert rows["/v1/embeddings"]["status"] == "refused"
    finally:
        yield running.stop()


@pytest_twisted.inlineCallbacks
def test_openai_compatible_with_a_key(tmp_path, agent, captured_log):
    """With key_env set, the compatible server gets that key as a Bearer token, like OpenAI."""
    running = yield fakes.start_bridge(tmp_path, extra_for=lambda url: local(url, key_env="T_LOCAL_KEY"),
                                       environ={"T_LOCAL_KEY": "sk-local-0123456789abcdef"})
    upstream = running.upstream
    try:
        token = running.create_key("alice")
        response, _ = yield call(agent, "POST", running.url + "/local/v1/chat/completions", CHAT,
                                 {"Authorization": f"Bearer {token}"})
        assert response.code == 200
        assert upstream.requests[-1].headers["authorization"] == ["Bearer sk-local-0123456789abcdef"]
    finally:
        yield running.stop()


@pytest.mark.parametrize("providers,message", [
    ({"mistral": {"base_url": "https://api.mistral.ai/v1"}}, "no IProvider plugin is called 'mistral'"),
    ({"local": {"plugin": "openai-compatible"}}, "providers.local.base_url is required"),
    ({"local": {"plugin": "nope", "base_url": "http://x"}}, "openai-compatible"),
])
def test_provider_tables_that_cannot_work_are_startup_errors(providers, message):
    """A provider table naming no plugin that exists, or lacking a base URL its plugin has no default for,
    stops the start with a message that names it (and the plugins that exist)."""
    config = parse({"providers": providers, "database": "sqlite::memory:"}, environ={})
    with pytest.raises(ConfigError) as caught:
        build(config, reactor)
    assert message in str(caught.value)
