"""
What reaches the upstream (SPEC section 3), over real loopback HTTP: the
credential-source table, bring-your-own-key, the always-stripped headers and
the headers that must arrive unchanged.
"""

import json

import pytest
import pytest_twisted

from tests import fakes
from tests.conftest import assert_no_secrets
from tests.http import call

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


@pytest_twisted.inlineCallbacks
def test_bearer_bridge_token_is_swapped_for_openai_key(bridge, agent):
    """A bridge token in Authorization never reaches OpenAI; the configured key does, as Bearer."""
    token = bridge.create_key("alice")
    response, _ = yield call(agent, "POST", bridge.url + "/openai/v1/chat/completions", CHAT,
                             {"Authorization": f"Bearer {token}"})
    assert response.code == 200
    got = bridge.upstream.requests[-1]
    assert got.uri == b"/v1/chat/completions"
    assert got.headers["authorization"] == [f"Bearer {fakes.OPENAI_KEY}"]
    assert "x-api-key" not in got.headers
    assert token not in json.dumps(got.headers)
    assert_no_secrets(bridge.log.text(), token, fakes.OPENAI_KEY)


@pytest_twisted.inlineCallbacks
def test_x_api_key_bridge_token_is_swapped_for_anthropic_key(bridge, agent):
    """A bridge token in X-Api-Key (a non-Bearer Authorization lets the chain go on) is replaced by the Anthropic key; Authorization is removed."""
    token = bridge.create_key("alice")
    response, _ = yield call(agent, "POST", bridge.url + "/anthropic/v1/messages", MESSAGES,
                             {"X-Api-Key": token, "Authorization": "Basic dXNlcjpwYXNz"})
    assert response.code == 200
    got = bridge.upstream.requests[-1]
    assert got.uri == b"/v1/messages"
    assert got.headers["x-api-key"] == [fakes.ANTHROPIC_KEY]
    assert "authorization" not in got.headers
    assert_no_secrets(bridge.log.text(), token, fakes.ANTHROPIC_KEY)


@pytest_twisted.inlineCallbacks
def test_coder_token_without_client_key_uses_central_key(bridge, agent):
    """X-Coder-Token alone: it is removed and the configured provider key is sent."""
    token = bridge.create_key("alice")
    yield call(agent, "POST", bridge.url + "/openai/v1/chat/completions", CHAT, {"X-Coder-Token": f"  {token} "})
    got = bridge.upstream.requests[-1]
    assert "x-coder-token" not in got.headers
    assert got.headers["authorization"] == [f"Bearer {fakes.OPENAI_KEY}"]
    yield bridge.flush()
    assert bridge.rows()[0]["credential_kind"] == "centralized"


@pytest_twisted.inlineCallbacks
def test_coder_token_with_client_key_is_byok(bridge, agent):
    """Via an AI proxy: the client's own Authorization reaches the upstream unchanged (BYOK), and is recorded masked."""
    token = bridge.create_key("alice")
    own = "sk-proj-clients-own-key-abcdefghijklmnopqrstuvwxyz"
    yield call(agent, "POST", bridge.url + "/openai/v1/chat/completions", CHAT,
               {"X-Coder-Token": token, "Authorization": f"Bearer {own}"})
    got = bridge.upstream.requests[-1]
    assert got.headers["authorization"] == [f"Bearer {own}"]
    assert "x-coder-token" not in got.headers
    assert fakes.OPENAI_KEY not in json.dumps(got.headers)
    yield bridge.flush()
    row = bridge.rows()[0]
    assert row["credential_kind"] == "byok"
    assert own not in row["credential_hint"]
    shown = row["credential_hint"].replace("...", "")
    assert 0 < len(shown) <= len(own) // 4
    assert_no_secrets(bridge.log.text(), token, own)


@pytest_twisted.inlineCallbacks
def test_openai_byok_never_sends_x_api_key(bridge, agent):
    """On OpenAI routes a client's own X-Api-Key is sent as Authorization: Bearer, never as X-Api-Key."""
    token = bridge.create_key("alice")
    own = "sk-proj-own-key-in-x-api-key-0123456789"
    yield call(agent, "POST", bridge.url + "/openai/v1/chat/completions", CHAT,
               {"X-Coder-Token": token, "X-Api-Key": own})
    got = bridge.upstream.requests[-1]
    assert got.headers["authorization"] == [f"Bearer {own}"]
    assert "x-api-key" not in got.headers


@pytest_twisted.inlineCallbacks
def test_anthropic_byok_x_api_key_wins_over_bearer(bridge, agent):
    """On Anthropic routes, a client's X-Api-Key wins over its Bearer token and is the only one sent."""
    token = bridge.create_key("alice")
    yield call(agent, "POST", bridge.url + "/anthropic/v1/messages", MESSAGES,
               {"X-Coder-Token": token, "X-Api-Key": "sk-ant-own-api-key-0123456789",
                "Authorization": "Bearer sk-ant-oat-own-oauth-0123456789"})
    got = bridge.upstream.requests[-1]
    assert got.headers["x-api-key"] == ["sk-ant-own-api-key-0123456789"]
    assert "authorization" not in got.headers


@pytest_twisted.inlineCallbacks
def test_anthropic_byok_bearer_alone_is_sent_as_bearer(bridge, agent):
    """On Anthropic routes, a client's Bearer token alone is sent as Authorization: Bearer (Claude subscriptions)."""
    token = bridge.create_key("alice")
    yield call(agent, "POST", bridge.url + "/anthropic/v1/messages", MESSAGES,
               {"X-Coder-Token": token, "Authorization": "Bearer sk-ant-oat-own-oauth-0123456789"})
    got = bridge.upstream.requests[-1]
    assert got.headers["authorization"] == ["Bearer sk-ant-oat-own-oauth-0123456789"]
    assert "x-api-key" not in got.headers


@pytest_twisted.inlineCallbacks
def test_byok_refused_when_not_allowed(tmp_path, agent, captured_log):
    """With allow_byok = false, a client's own key is refused with 403 in the provider's shape, upstream untouched."""
    running = yield fakes.start_bridge(tmp_path, {"auth": {"allow_byok": False}})
    try:
        token = running.create_key("alice")
        response, body = yield call(agent, "POST", running.url + "/anthropic/v1/messages", MESSAGES,
                                    {"X-Coder-Token": token, "X-Api-Key": "sk-ant-own-0123456789"})
        assert response.code == 403
        assert json.loads(body)["error"]["type"] == "permission_error"
        assert json.loads(body)["type"] == "error"
        assert running.upstream.requests == []
    finally:
        yield running.stop()


@pytest_twisted.inlineCallbacks
def test_stripped_and_kept_headers(bridge, agent):
    """Hop-by-hop, Host, X-Coder-* and Accept-Encoding are removed; client headers like anthropic-beta arrive unchanged."""
    token = bridge.create_key("alice")
    yield call(agent, "POST", bridge.url + "/anthropic/v1/messages?beta=true", MESSAGES, {
        "X-Api-Key": token,
        "anthropic-beta": "prompt-caching-2024-07-31,tools-2024-05-16",
        "anthropic-version": "2023-06-01",
        "User-Agent": "claude-cli/2.1.197 (external, sdk-cli)",
        "X-Stainless-Lang": "python",
        "Connection": "keep-alive, X-Drop-Me",
        "X-Drop-Me": "by connection",
        "Keep-Alive": "timeout=5",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "TE": "trailers",
        "X-Coder-Owner-Id": fakes.OWNER_ID,
        "X-Coder-Chat-Id": "chat-1",
        "X-Coder-Workspace-Id": "ws-1",
        "X-Coder-Anything": "x",
        "Accept-Encoding": "gzip, br",
    })
    got = bridge.upstream.requests[-1]
    assert got.uri == b"/v1/messages?beta=true"
    for gone in ("x-drop-me", "keep-alive", "proxy-authorization", "te", "x-coder-owner-id",
                 "x-coder-chat-id", "x-coder-workspace-id", "x-coder-anything", "accept-encoding"):
        assert gone not in got.headers, gone
    assert got.headers["anthropic-beta"] == ["prompt-caching-2024-07-31,tools-2024-05-16"]
    assert got.headers["anthropic-version"] == ["2023-06-01"]
    assert got.headers["user-agent"] == ["claude-cli/2.1.197 (external, sdk-cli)"]
    assert got.headers["x-stainless-lang"] == ["python"]
    assert got.headers["host"] == [bridge.upstream_url.split("//")[1]]
    assert got.headers["content-length"] == [str(len(got.body))]
    assert got.json() == MESSAGES


@pytest_twisted.inlineCallbacks
def test_passthrough_keeps_accept_encoding_and_adds_forwarded(bridge, agent):
    """Passthrough routes keep Accept-Encoding and query strings and append to X-Forwarded-For/-Proto."""
    token = bridge.create_key("alice")
    response, _ = yield call(agent, "GET", bridge.url + "/openai/v1/models?limit=5", None, {
        "Authorization": f"Bearer {token}", "Accept-Encoding": "gzip",
        "X-Forwarded-For": "203.0.113.7", "openai-organization": "org-123"})
    assert response.code == 200
    got = bridge.upstream.requests[-1]
    assert got.method == b"GET"
    assert got.uri == b"/v1/models?limit=5"
    assert got.headers["accept-encoding"] == ["gzip"]
    assert got.headers["x-forwarded-for"] == ["203.0.113.7, 127.0.0.1"]
    assert got.headers["x-forwarded-proto"] == ["http"]
    assert got.headers["openai-organization"] == ["org-123"]
    assert got.headers["authorization"] == [f"Bearer {fakes.OPENAI_KEY}"]


@pytest_twisted.inlineCallbacks
def test_actor_headers_when_configured(tmp_path, agent, captured_log):
    """With send_actor_headers, the upstream is told the initiator's id and username."""
    running = yield fakes.start_bridge(tmp_path, {"upstream": {"send_actor_headers": True}})
    try:
        token = running.create_key("alice", fakes.OWNER_ID)
        yield call(agent, "POST", running.url + "/openai/v1/chat/completions", CHAT,
                   {"Authorization": f"Bearer {token}"})
        got = running.upstream.requests[-1]
        assert got.headers["x-ai-bridge-actor-id"] == [fakes.OWNER_ID]
        assert got.headers["x-ai-bridge-actor-metadata-username"] == ["alice"]
    finally:
        yield running.stop()


@pytest_twisted.inlineCallbacks
def test_no_actor_headers_by_default(bridge, agent):
    """By default the upstream is not told who the actor is."""
    token = bridge.create_key("alice")
    yield call(agent, "POST", bridge.url + "/openai/v1/chat/completions", CHAT, {"Authorization": f"Bearer {token}"})
    assert "x-ai-bridge-actor-id" not in bridge.upstream.requests[-1].headers


@pytest.mark.parametrize("prefix", ["", "/api/v2/aibridge"])
@pytest_twisted.inlineCallbacks
def test_routes_and_alias(bridge, agent, prefix):
    """Every route of SPEC section 6 maps to its upstream path, also under /api/v2/aibridge."""
    token = bridge.create_key("alice")
    cases = [
        ("/openai/v1/chat/completions", b"/v1/chat/completions", CHAT),
        ("/openai/v1/responses", b"/v1/responses", {"model": "gpt-5", "input": "hi"}),
        ("/anthropic/v1/messages", b"/v1/messages", MESSAGES),
        ("/anthropic/v1/messages/count_tokens", b"/v1/messages/count_tokens", MESSAGES),
    ]
    for path, upstream_path, body in cases:
        response, _ = yield call(agent, "POST", bridge.url + prefix + path, body, {"Authorization": f"Bearer {token}"})
        assert response.code == 200, path
        assert bridge.upstream.requests[-1].uri == upstream_path
    yield bridge.flush()
    routes = sorted(r["route"] for r in bridge.rows())
    assert routes == ["/v1/messages/count_tokens", "chat.completions", "messages", "responses"]
    assert [r["intercepted"] for r in bridge.rows() if r["route"].startswith("/")] == [False]
