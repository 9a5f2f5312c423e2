"""
Refusals and failures as a client sees them (SPEC sections 2 and 6): the
status, the provider's own error shape, and an upstream left untouched.
"""

import json

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol

from tests import fakes
from tests.conftest import assert_no_secrets
from tests.http import call

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


def openai_shape(body: bytes) -> dict:
    error = json.loads(body)["error"]
    assert set(error) >= {"message", "type", "code"}
    return error


def anthropic_shape(body: bytes) -> dict:
    parsed = json.loads(body)
    assert parsed["type"] == "error"
    assert set(parsed["error"]) == {"type", "message"}
    return parsed["error"]


@pytest_twisted.inlineCallbacks
def test_no_credential_is_401_in_each_providers_shape(bridge, agent):
    """No credential: 401, OpenAI's shape on OpenAI routes and Anthropic's on Anthropic routes; upstream untouched."""
    response, body = yield call(agent, "POST", bridge.url + "/openai/v1/chat/completions", CHAT)
    assert response.code == 401
    assert openai_shape(body)["code"] == "invalid_api_key"
    response, body = yield call(agent, "POST", bridge.url + "/anthropic/v1/messages", MESSAGES,
                                {"X-Api-Key": "   ", "Authorization": "Bearer"})
    assert response.code == 401
    assert anthropic_shape(body)["type"] == "authentication_error"
    assert bridge.upstream.requests == []


@pytest_twisted.inlineCallbacks
def test_unknown_revoked_and_disabled(bridge, agent):
    """Unknown and revoked keys are 401, a disabled user's key is 403; the body never echoes the key."""
    unknown = "bp_this-key-does-not-exist-0123456789"
    response, body = yield call(agent, "POST", bridge.url + "/anthropic/v1/messages", MESSAGES, {"X-Api-Key": unknown})
    assert response.code == 401
    assert unknown not in body.decode()

    token = bridge.create_key("bob")
    db = bridge.db()
    key_id = db.list_keys()[0]["key_id"]
    db.revoke_key(key_id)
    response, body = yield call(agent, "POST", bridge.url + "/anthropic/v1/messages", MESSAGES, {"X-Api-Key": token})
    assert response.code == 401
    assert token not in body.decode()

    token = bridge.create_key("carol")
    db.set_user_disabled("carol", True)
    db.close()
    response, body = yield call(agent, "POST", bridge.url + "/openai/v1/chat/completions", CHAT,
                                {"Authorization": f"Bearer {token}"})
    assert response.code == 403
    assert openai_shape(body)["type"] == "permission_error"
    assert bridge.upstream.requests == []
    assert_no_secrets(bridge.log.text(), unknown, token)


@pytest_twisted.inlineCallbacks
def test_conflicting_duplicate_credential_header_is_400(bridge, agent):
    """A credential header sent twice with different values is ambiguous: 400, never a guess."""
    token = bridge.create_key("alice")
    response, body = yield call(agent, "POST", bridge.url + "/openai/v1/chat/completions", CHAT,
                                {"X-Coder-Token": [token, "bp_forged-second-value-0123456789"]})
    assert response.code == 400
    assert openai_shape(body)["type"] == "invalid_request_error"
    assert token not in body.decode()
    assert bridge.upstream.requests == []
    # The same value twice is not ambiguous.
    response, _ = yield call(agent, "POST", bridge.url + "/openai/v1/chat/completions", CHAT,
                             {"X-Coder-Token": [token, token]})
    assert response.code == 200


@pytest_twisted.inlineCallbacks
def test_invalid_json_is_400(bridge, agent):
    """An intercepted route with a body that is not a JSON object is refused with 400 in the provider's shape."""
    token = bridge.create_key("alice")
    for body in (b"{not json", b"[1, 2]"):
        response, answer = yield call(agent, "POST", bridge.url + "/anthropic/v1/messages", body, {"X-Api-Key": token})
        assert response.code == 400
        assert anthropic_shape(answer)["type"] == "invalid_request_error"
    assert bridge.upstream.requests == []


@pytest_twisted.inlineCallbacks
def test_oversized_body_is_413(tmp_path, agent, captured_log):
    """A body over max_body_bytes is refused with 413 before anything is sent upstream."""
    running = yield fakes.start_bridge(tmp_path, {"max_body_bytes": 1024})
    try:
        token = running.create_key("alice")
        big = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 5000}]}
        response, body = yield call(agent, "POST", running.url + "/openai/v1/chat/completions", big,
                                    {"Authorization": f"Bearer {token}"})
        assert response.code == 413
        assert openai_shape(body)["code"] == "request_too_large"
        assert running.upstream.requests == []
        response, _ = yield call(agent, "POST", running.url + "/openai/v1/chat/completions", CHAT,
                                 {"Authorization": f"Bearer {token}"})
        assert response.code == 200
    finally:
        yield running.stop()


@pytest_twisted.inlineCallbacks
def test_unknown_routes_are_404(bridge, agent):
    """Paths outside the provider routes are 404: in the provider's shape under its prefix, OpenAI's elsewhere."""
    token = bridge.create_key("alice")
    response, body = yield call(agent, "POST", bridge.url + "/anthropic/v2/other", MESSAGES, {"X-Api-Key": token})
    assert response.code == 404
    assert anthropic_shape(body)["type"] == "not_found_error"
    response, body = yield call(agent, "GET", bridge.url + "/nothing/here?key=secret")
    assert response.code == 404
    assert openai_shape(body)
    assert b"secret" not in body
    assert bridge.upstream.requests == []


@pytest_twisted.inlineCallbacks
def test_keys_in_a_refused_path_are_masked_in_the_answer_the_record_and_the_log(bridge, agent, captured_log):
    """Another provider's key, or a client's own key of any provider, pasted into a path: the 404 the client
    gets, the row recorded and the log never show it in full."""
    token = bridge.create_key("alice")
    own = "sk-proj-ClientOwnKey0123456789abcdef"
    for secret in (fakes.ANTHROPIC_KEY, own):
        response, body = yield call(agent, "GET", f"{bridge.url}/openai/v1/files/{secret}", None,
                                    {"Authorization": f"Bearer {token}"})
        assert response.code == 404
        assert secret.encode() not in body and openai_shape(body)["message"].endswith("...def")
    yield bridge.flush()
    rows = bridge.rows()
    assert len(rows) == 2
    assert all(row["route"].endswith("...def") and row["error"].endswith("...def") for row in rows)
    assert_no_secrets(json.dumps(rows) + captured_log.text(), fakes.ANTHROPIC_KEY, own, token)
    assert bridge.upstream.requests == []


@pytest_twisted.inlineCallbacks
def test_head_probe_answers_without_credential_or_upstream(bridge, agent):
    """HEAD on a provider's base path is 200 with no credential and no upstream request (Claude Code's probe)."""
    for path in ("/anthropic", "/anthropic/", "/openai/v1", "/api/v2/aibridge/anthropic"):
        response, _ = yield call(agent, "HEAD", bridge.url + path)
        assert response.code == 200, path
    assert bridge.upstream.requests == []


@pytest_twisted.inlineCallbacks
def test_websocket_attempt_is_refused_at_once(bridge, agent):
    """A WebSocket upgrade (Codex, Copilot) gets a clear non-101 answer at once, without touching the upstream."""
    token = bridge.create_key("alice")
    response, body = yield call(agent, "GET", bridge.url + "/openai/v1/responses", None, {
        "Authorization": f"Bearer {token}", "Upgrade": "websocket", "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"})
    assert response.code == 426
    assert "WebSocket" in openai_shape(body)["message"]
    assert bridge.upstream.requests == []


@pytest_twisted.inlineCallbacks
def test_upstream_errors_are_relayed(bridge, agent):
    """
    An upstream error keeps its status and body (here a 429 whose Retry-After
    is longer than the retries wait for, so it is not retried), and is recorded.
    """
    token = bridge.create_key("alice")
    error = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    bridge.upstream.handler = fakes.json_answer(429, error, {"retry-after": "70"})
    response, body = yield call(agent, "POST", bridge.url + "/anthropic/v1/messages", MESSAGES, {"X-Api-Key": token})
    assert response.code == 429
    assert json.loads(body) == error
    assert response.headers.getRawHeaders(b"retry-after") == [b"70"]
    assert len(bridge.upstream.requests) == 1
    yield bridge.flush()
    row = bridge.rows()[0]
    assert row["upstream_status"] == 429
    assert row["error"] == "slow down"


@pytest_twisted.inlineCallbacks
def test_unreachable_upstream_is_502(tmp_path, agent, captured_log):
    """An upstream that refuses connections is a 502 in the provider's shape, recorded."""
    closed = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    port = closed.getHost().port
    yield closed.stopListening()
    running = yield fakes.start_bridge(tmp_path, {"providers": {
        "openai": {"base_url": f"http://127.0.0.1:{port}/v1", "key_env": "T_OPENAI_KEY"}}})
    try:
        token = running.create_key("alice")
        response, body = yield call(agent, "POST", running.url + "/openai/v1/chat/completions", CHAT,
                                    {"Authorization": f"Bearer {token}"})
        assert response.code == 502
        assert openai_shape(body)["type"] == "server_error"
        yield running.flush()
        row = running.rows()[0]
        # Nothing answered: no upstream status is made up for it.
        assert (row["status"], row["upstream_status"], row["http_status"]) == ("upstream_unreachable", None, 502)
        assert_no_secrets(captured_log.text(), token, fakes.OPENAI_KEY)
    finally:
        yield running.stop()


@pytest_twisted.inlineCallbacks
def test_stalled_upstream_is_504(tmp_path, agent, captured_log):
    """An upstream that never answers is a 504 after the configured timeout, and its request is cancelled."""
    running = yield fakes.start_bridge(tmp_path, {"upstream": {"timeout": 0.3}})
    running.upstream.handler = fakes.never_answer
    try:
        token = running.create_key("alice")
        response, body = yield call(agent, "POST", running.url + "/anthropic/v1/messages", MESSAGES,
                                    {"X-Api-Key": token})
        assert response.code == 504
        assert anthropic_shape(body)["type"] == "timeout_error"
        d = defer.Deferred()
        reactor.callLater(0.1, d.callback, None)
        yield d
        assert len(running.upstream.lost) == 1
    finally:
        yield running.stop()


@pytest_twisted.inlineCallbacks
def test_nothing_left_in_flight(bridge, agent):
    """After probes, refusals, errors and successes, no request is left counted as in flight (shutdown waits on it)."""
    token = bridge.create_key("alice")
    yield call(agent, "HEAD", bridge.url + "/anthropic")
    yield call(agent, "POST", bridge.url + "/openai/v1/chat/completions", CHAT)
    yield call(agent, "POST", bridge.url + "/nothing")
    yield call(agent, "POST", bridge.url + "/openai/v1/chat/completions", CHAT, {"Authorization": f"Bearer {token}"})
    yield call(agent, "GET", bridge.url + "/healthz")
    assert bridge.app.bridge.in_flight == set()


@pytest_twisted.inlineCallbacks
def test_error_body_that_never_ends_times_out(tmp_path, agent, captured_log):
    """An upstream error whose body never ends is cut at the stall timeout; the upstream connection is closed."""
    def stuck_error(request, received):
        request.setResponseCode(500)
        request.setHeader(b"content-type", b"application/json")
        request.write(b'{"error": {"message": "partial')
        return fakes.server.NOT_DONE_YET
    running = yield fakes.start_bridge(tmp_path, {"upstream": {"timeout": 0.3}})
    running.upstream.handler = stuck_error
    try:
        token = running.create_key("alice")
        response, body = yield call(agent, "POST", running.url + "/openai/v1/chat/completions", CHAT,
                                    {"Authorization": f"Bearer {token}"})
        assert response.code == 500
        assert body.startswith(b'{"error": {"message": "partial')
        d = defer.Deferred()
        reactor.callLater(0.1, d.callback, None)
        yield d
        assert len(running.upstream.lost) == 1
        assert running.app.bridge.in_flight == set()
    finally:
        yield running.stop()
