"""
Prometheus metrics as an operator scrapes them: requests, tokens, latency,
auth failures and delegations, on the main listener.
"""

import pytest_twisted

from tests import fakes
from tests.http import call
from tests.payloads import MESSAGE_JSON


def series(text: str, name: str) -> dict:
    found = {}
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            found[key] = float(value)
    return found


@pytest_twisted.inlineCallbacks
def test_metrics_after_traffic(tmp_path, agent, captured_log):
    """/metrics shows requests by provider/route/client/status, tokens by model, latency, auth failures, delegations."""
    running = yield fakes.start_bridge(tmp_path, {"initiator": {"delegators": [fakes.DELEGATOR_ID]}})
    running.upstream.handler = fakes.json_answer(200, MESSAGE_JSON)
    try:
        token = running.create_key("sa", fakes.DELEGATOR_ID)
        body = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        yield call(agent, "POST", running.url + "/anthropic/v1/messages", body,
                   {"X-Api-Key": token, "User-Agent": "claude-cli/2.1"})
        yield call(agent, "POST", running.url + "/anthropic/v1/messages", body,
                   {"X-Api-Key": token, "User-Agent": "coder-agents/v2.24.0", "X-Coder-Owner-Id": fakes.OWNER_ID})
        yield call(agent, "POST", running.url + "/anthropic/v1/messages", body, {"X-Api-Key": "bp_wrong-0123456789"})
        response, text = yield call(agent, "GET", running.url + "/metrics")
        assert response.code == 200
        text = text.decode()
        requests = series(text, "bridgeproxy_requests_total")
        assert requests['bridgeproxy_requests_total{client="Claude Code",provider="anthropic",route="messages",status="ok"}'] == 1
        assert requests['bridgeproxy_requests_total{client="Coder Agents",provider="anthropic",route="messages",status="ok"}'] == 1
        tokens = series(text, "bridgeproxy_tokens_total")
        m = MESSAGE_JSON["model"]
        assert tokens['bridgeproxy_tokens_total{kind="input",model="%s",provider="anthropic"}' % m] == 80
        assert tokens['bridgeproxy_tokens_total{kind="cache_read",model="%s",provider="anthropic"}' % m] == 600
        assert series(text, "bridgeproxy_auth_failures_total")['bridgeproxy_auth_failures_total{reason="unknown_key"}'] == 1
        assert series(text, "bridgeproxy_delegations_total")['bridgeproxy_delegations_total{outcome="accepted"}'] == 1
        assert series(text, "bridgeproxy_upstream_latency_seconds_count")[
            'bridgeproxy_upstream_latency_seconds_count{provider="anthropic"}'] == 2
        assert "bridgeproxy_recording_queue_depth" in text
        assert token not in text
    finally:
        yield running.stop()


@pytest_twisted.inlineCallbacks
def test_metrics_listen_serves_only_metrics(tmp_path, agent, captured_log):
    """With metrics_listen, /metrics is served on that listener only, and not on the main one."""
    from bridgeproxy.tap import Options, makeService
    from tests.procs import free_port, write_config
    main_port, metrics_port = free_port(), free_port()
    config = write_config(tmp_path, port=main_port)
    text = open(config).read().replace('listen = "', f'metrics_listen = "tcp:{metrics_port}:interface=127.0.0.1"\nlisten = "', 1)
    open(config, "w").write(text)
    options = Options()
    options.parseOptions(["--config", config])
    top = makeService(options)
    top.startService()
    try:
        response, body = yield call(agent, "GET", f"http://127.0.0.1:{metrics_port}/metrics")
        assert response.code == 200 and b"bridgeproxy_requests_total" in body
        response, _ = yield call(agent, "GET", f"http://127.0.0.1:{metrics_port}/healthz")
        assert response.code == 404
        response, _ = yield call(agent, "GET", f"http://127.0.0.1:{main_port}/metrics")
        assert response.code == 404
        response, _ = yield call(agent, "GET", f"http://127.0.0.1:{main_port}/healthz")
        assert response.code == 200
    finally:
        yield top.stopService()
