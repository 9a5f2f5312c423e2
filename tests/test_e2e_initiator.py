"""
Who initiated a request (SPEC sections 4, 5 and 7), as recorded after real
requests: the Coder Agents owner override and its trust gate, and the
client and session detected.
"""

import pytest_twisted

from tests import fakes
from tests.http import call

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "what is 2+2?"}]}
AGENTS_UA = "coder-agents/v2.24.0 (linux/amd64)"


@pytest_twisted.inlineCallbacks
def test_delegator_may_name_the_owner(tmp_path, agent, captured_log):
    """A configured delegator's token with X-Coder-Owner-Id from Coder Agents records the owner as initiator."""
    running = yield fakes.start_bridge(tmp_path, {"initiator": {"delegators": [fakes.DELEGATOR_ID]}})
    try:
        token = running.create_key("agents-sa", fakes.DELEGATOR_ID)
        running.create_key("dana", fakes.OWNER_ID)
        response, _ = yield call(agent, "POST", running.url + "/openai/v1/chat/completions", CHAT, {
            "Authorization": f"Bearer {token}", "User-Agent": AGENTS_UA,
            "X-Coder-Owner-Id": fakes.OWNER_ID, "X-Coder-Chat-Id": "chat-42"})
        assert response.code == 200
        assert "x-coder-owner-id" not in running.upstream.requests[-1].headers
        yield running.flush()
        row = running.rows()[0]
        assert row["initiator_id"] == fakes.OWNER_ID
        assert row["initiator_username"] == "dana"
        assert row["credential_user_id"] == fakes.DELEGATOR_ID
        assert row["client"] == "Coder Agents"
        assert row["client_session_id"] == "chat-42"
        assert running.app.metrics.get("delegation_accepted") == 1
        text = captured_log.text()
        assert "Initiator override" in text and fakes.DELEGATOR_ID in text and fakes.OWNER_ID in text
    finally:
        yield running.stop()


@pytest_twisted.inlineCallbacks
def test_non_delegator_cannot_name_another_user(bridge, agent):
    """Anyone else forging Coder Agents' User-Agent and the header stays the initiator; refused, logged, counted."""
    token = bridge.create_key("mallory")
    response, _ = yield call(agent, "POST", bridge.url + "/openai/v1/chat/completions", CHAT, {
        "Authorization": f"Bearer {token}", "User-Agent": AGENTS_UA, "X-Coder-Owner-Id": fakes.OWNER_ID})
    assert response.code == 200
    yield bridge.flush()
    row = bridge.rows()[0]
    assert row["initiator_username"] == "mallory"
    assert row["initiator_id"] == row["credential_user_id"]
    assert bridge.app.metrics.get("delegation_refused") == 1
    assert "Refused X-Coder-Owner-Id override" in bridge.log.text()


@pytest_twisted.inlineCallbacks
def test_invalid_owner_id_is_ignored(tmp_path, agent, captured_log):
    """An owner id that is not a canonical UUIDv4 is ignored and logged without its value; the token's user stays."""
    running = yield fakes.start_bridge(tmp_path, {"initiator": {"delegators": [fakes.DELEGATOR_ID]}})
    try:
        token = running.create_key("agents-sa", fakes.DELEGATOR_ID)
        hostile = "<script>alert(1)</script>"
        for value in (hostile, fakes.OWNER_ID.upper(), "1a2b3c4d-5e6f-1a7b-8c9d-0e1f2a3b4c5d"):
            yield call(agent, "POST", running.url + "/openai/v1/chat/completions", CHAT, {
                "Authorization": f"Bearer {token}", "User-Agent": AGENTS_UA, "X-Coder-Owner-Id": value})
        yield running.flush()
        assert {r["initiator_id"] for r in running.rows()} == {fakes.DELEGATOR_ID}
        assert running.app.metrics.get("delegation_invalid") == 3
        assert hostile not in captured_log.text()
    finally:
        yield running.stop()


@pytest_twisted.inlineCallbacks
def test_owner_header_ignored_for_other_clients(tmp_path, agent, captured_log):
    """X-Coder-Owner-Id from a client that is not Coder Agents changes nothing, even for a delegator."""
    running = yield fakes.start_bridge(tmp_path, {"initiator": {"delegators": [fakes.DELEGATOR_ID]}})
    try:
        token = running.create_key("agents-sa", fakes.DELEGATOR_ID)
        yield call(agent, "POST", running.url + "/openai/v1/chat/completions", CHAT, {
            "Authorization": f"Bearer {token}", "User-Agent": "curl/8", "X-Coder-Owner-Id": fakes.OWNER_ID})
        yield running.flush()
        assert running.rows()[0]["initiator_id"] == fakes.DELEGATOR_ID
    finally:
        yield running.stop()


@pytest_twisted.inlineCallbacks
def test_client_and_session_recorded(bridge, agent):
    """The detected client, its session id, the user agent, model and last prompt are recorded."""
    token = bridge.create_key("alice")
    body = {"model": "claude-sonnet-4-5", "max_tokens": 5,
            "metadata": {"user_id": '{"device_id":"d","session_id":"sess-from-body"}'},
            "messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
                         {"role": "user", "content": [{"type": "text", "text": "fix the bug"}]}]}
    yield call(agent, "POST", bridge.url + "/anthropic/v1/messages", body,
               {"X-Api-Key": token, "User-Agent": "claude-cli/2.1.197 (external, sdk-cli)"})
    yield call(agent, "POST", bridge.url + "/openai/v1/responses", {"model": "gpt-5", "input": "hello"}, {
        "Authorization": f"Bearer {token}", "User-Agent": "codex_exec/0.169.0 (Debian 12.0.0; x86_64)",
        "session_id": "codex-sess"})
    yield bridge.flush()
    rows = {r["client"]: r for r in bridge.rows()}
    assert rows["Claude Code"]["client_session_id"] == "sess-from-body"
    assert rows["Claude Code"]["prompt"] == "fix the bug"
    assert rows["Claude Code"]["model"] == "claude-sonnet-4-5"
    assert rows["Claude Code"]["user_agent"].startswith("claude-cli/")
    assert rows["Codex"]["client_session_id"] == "codex-sess"
    assert rows["Codex"]["prompt"] == "hello"
    assert all(r["initiator_username"] == "alice" for r in rows.values())
