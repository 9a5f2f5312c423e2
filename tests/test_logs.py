"""
Logs: no secret reaches any log line, whatever path it travels; one line per
interception; JSON logs from `twistd --logger=bridgeproxy.logs.json`.
"""

import json
import signal
import subprocess

import pytest
import pytest_twisted
from twisted.internet import threads

from tests import fakes
from tests.http import call
from tests.procs import spawn_twistd, start_upstream_and_key, wait_for_port

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def bridge(tmp_path, captured_log):
    """A bridge with the access log on, so that it is checked too."""
    running = pytest_twisted.blockon(fakes.start_bridge(tmp_path, {"access_log": True}))
    running.log = captured_log
    yield running
    pytest_twisted.blockon(running.stop())


@pytest_twisted.inlineCallbacks
def test_secrets_never_reach_the_log(bridge, agent):
    """Secrets in headers, query strings, bodies and upstream errors that echo keys appear in no log output,
    and the gateway's provider key echoed by an upstream error never reaches the client."""
    token = bridge.create_key("alice")
    own = "sk-proj-BYOK-secret-0123456789abcdef"
    wrong = "bp_WRONG-secret-token-0123456789"
    query_secret = "sk-QUERY-secret-0123456789"
    body_secret = "sk-BODY-secret-0123456789"

    def echo(request, received):
        # Like a provider that repeats the key it was sent in its error.
        sent = received.header("authorization") or ""
        return fakes.json_answer(401, {"error": {"message": f"Incorrect API key provided: {sent}",
                                                 "type": "invalid_request_error"}})(request, received)
    bridge.upstream.handler = echo
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": body_secret}]}
    path = "/openai/v1/chat/completions?key=" + query_secret
    response, answer = yield call(agent, "POST", bridge.url + path, body, {"Authorization": f"Bearer {token}"})
    assert response.code == 401 and b"Incorrect API key" in answer
    assert fakes.OPENAI_KEY.encode() not in answer  # the gateway's key never reaches a client
    yield call(agent, "POST", bridge.url + path, body, {"X-Coder-Token": token, "Authorization": f"Bearer {own}"})
    yield call(agent, "POST", bridge.url + path, body, {"X-Api-Key": wrong})
    yield call(agent, "POST", bridge.url + path, body, {"X-Coder-Token": [token, wrong]})
    yield call(agent, "POST", bridge.url + path, b"{broken " + body_secret.encode(), {"Authorization": f"Bearer {token}"})
    yield call(agent, "GET", bridge.url + "/nowhere?token=" + query_secret, None, {"Authorization": f"Bearer {wrong}"})
    yield bridge.flush()
    text = bridge.log.text()
    assert "interception " in text and "Refused" in text
    assert '"POST /openai/v1/chat/completions HTTP/1.1" 401' in text  # the access log, without the query
    for secret in (token, own, wrong, query_secret, body_secret, fakes.OPENAI_KEY):
        assert secret not in text, secret
    errors = [r["error"] or "" for r in bridge.rows()]
    assert any("Incorrect API key" in e for e in errors)
    assert not any(fakes.OPENAI_KEY in e or own in e for e in errors), errors


@pytest_twisted.inlineCallbacks
def test_twistd_json_logs(tmp_path, agent):
    """`twistd bridgeproxy --log-format json` writes one JSON event per line, the interception line with its fields."""
    port, up_port, upstream, config, token = start_upstream_and_key(tmp_path, fakes.json_answer(200, {
        "model": "gpt-4o", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 6}}))
    proc = spawn_twistd(config, ["bridgeproxy", "--log-format", "json", "--config", config], stdout=subprocess.PIPE)
    try:
        yield threads.deferToThread(wait_for_port, port, proc)
        yield call(agent, "POST", f"http://127.0.0.1:{port}/openai/v1/chat/completions", CHAT,
                   {"Authorization": f"Bearer {token}"})
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = yield threads.deferToThread(proc.communicate, None, 30)
        yield up_port.stopListening()
    events = [json.loads(line) for line in output.decode().split("\x1e") if line.strip()]
    lines = [e for e in events if e.get("log_format", "").startswith("interception ")]
    assert len(lines) == 1
    assert (lines[0]["initiator"], lines[0]["tokens_in"], lines[0]["tokens_out"]) == ("alice", 5, 6)
    assert token not in output.decode() and fakes.OPENAI_KEY not in output.decode()
