"""
SIGHUP reloads the configuration file of a running `twistd bridgeproxy`,
as an operator coming from nginx expects: no connection is dropped, a new
setting applies to the next request, a broken file changes nothing.
"""

import signal

import pytest_twisted
from twisted.internet import defer, reactor, threads
from twisted.web import server

from bridgeproxy import tap
from bridgeproxy.proxy.headers import ACTOR_USERNAME
from bridgeproxy.store import Database
from tests import fakes
from tests.http import call
from tests.procs import free_port, spawn_twistd, start_upstream_and_key, wait_for_log, wait_for_port
from tests.streams import ANTHROPIC_EVENTS, STREAM_MESSAGES, Collector, open_stream

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
CHAT_ANSWER = {"id": "c", "model": "gpt-4o", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
NEW_OPENAI_KEY = "sk-reloaded-openai-KEY-fedcba9876543210"


@pytest_twisted.inlineCallbacks
def test_hup_reloads_without_dropping_a_stream(tmp_path, agent):
    """
    SIGHUP with a stream in flight: the stream completes with every event and
    is recorded ok; the process keeps serving, now with the file's new
    provider base_url and key (seen at the new upstream); a changed `listen`
    is logged as ignored; a broken file (bad TOML, unknown plugin) keeps the
    running configuration and logs one error line each.
    """
    gate = defer.Deferred()
    port, up_port, upstream, config, token = start_upstream_and_key(
        tmp_path, fakes.sse_answer(ANTHROPIC_EVENTS, gate=gate, gate_after=1))
    second = fakes.FakeUpstream()
    second.handler = fakes.json_answer(200, CHAT_ANSWER)
    second_port = reactor.listenTCP(0, server.Site(second), interface="127.0.0.1")
    log_path = tmp_path / "twistd.log"
    proc = spawn_twistd(config, ["--logfile", str(log_path), "bridgeproxy", "--config", config])
    try:
        yield threads.deferToThread(wait_for_port, port, proc)
        collector = Collector()
        yield open_stream(agent, f"http://127.0.0.1:{port}/anthropic/v1/messages", STREAM_MESSAGES,
                          {"X-Api-Key": token}, collector)
        yield collector.first

        key_file = tmp_path / "openai.key"
        key_file.write_text(NEW_OPENAI_KEY + "\n")
        text = open(config).read()
        old_openai = f'base_url = "http://127.0.0.1:{up_port.getHost().port}/v1"\nkey_env = "T_OPENAI_KEY"'
        assert old_openai in text
        text = text.replace(old_openai, f'base_url = "http://127.0.0.1:{second_port.getHost().port}/v1"\n'
                                         f'key_file = "{key_file}"')
        text = text.replace(f'"tcp:{port}:', f'"tcp:{free_port()}:')
        open(config, "w").write(text)
        proc.send_signal(signal.SIGHUP)
        yield threads.deferToThread(wait_for_log, log_path, "Reloaded configuration", proc)

        gate.callback(None)
        body = yield collector.done
        assert body == b"".join(ANTHROPIC_EVENTS)
        response, _ = yield call(agent, "POST", f"http://127.0.0.1:{port}/openai/v1/chat/completions", CHAT,
                                 {"Authorization": f"Bearer {token}"})
        assert response.code == 200
        assert [r.header("authorization") for r in second.requests] == [f"Bearer {NEW_OPENAI_KEY}"]
        assert len(upstream.requests) == 1  # only the stream
        assert "Reload: listen changed but need a restart; ignored" in log_path.read_text()

        open(config, "w").write(text + "\n[auth\n")
        proc.send_signal(signal.SIGHUP)
        yield threads.deferToThread(wait_for_log, log_path, "Reload failed", proc)
        open(config, "w").write(text + '\n[auth]\nextractors = ["no-such-extractor"]\n')
        proc.send_signal(signal.SIGHUP)
        log_text = yield threads.deferToThread(wait_for_log, log_path, "Reload failed", proc, count=2)
        failures = [line for line in log_text.splitlines() if "Reload failed" in line]
        assert "not valid TOML" in failures[0]
        assert "auth.extractors: no IAuthExtractor plugin is called 'no-such-extractor'" in failures[1]
        assert log_text.count("Reloaded configuration") == 1

        response, _ = yield call(agent, "POST", f"http://127.0.0.1:{port}/openai/v1/chat/completions", CHAT,
                                 {"Authorization": f"Bearer {token}"})
        assert response.code == 200 and len(second.requests) == 2
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        code = yield threads.deferToThread(proc.wait, 30)
        yield up_port.stopListening()
        yield second_port.stopListening()
    assert code in (0, -signal.SIGTERM)
    rows = Database(f"sqlite:{tmp_path / 'bridge.db'}").interceptions()
    by_provider = {r["provider"]: r for r in rows}
    assert (by_provider["anthropic"]["status"], by_provider["anthropic"]["output_tokens"]) == ("ok", 12)
    assert len(rows) == 3
    log_text = log_path.read_text()
    assert "Traceback" not in log_text
    for secret in (token, fakes.OPENAI_KEY, fakes.ANTHROPIC_KEY, NEW_OPENAI_KEY):
        assert secret not in log_text


@pytest_twisted.inlineCallbacks
def test_reload_applies_limits_logs_and_auth(bridge, agent, tmp_path, monkeypatch):
    """
    A reload applies [limits] (the second request in a second gets 429),
    the log switches (no interception line, an access-log line instead),
    [auth] and [upstream] settings to the next requests, and names the
    restart-only settings it leaves as they are.
    """
    monkeypatch.setenv("T_OPENAI_KEY", fakes.OPENAI_KEY)
    monkeypatch.setenv("T_ANTHROPIC_KEY", fakes.ANTHROPIC_KEY)
    token = bridge.create_key("alice")
    bridge.upstream.handler = fakes.json_answer(200, CHAT_ANSWER)
    path = tmp_path / "reloaded.toml"
    path.write_text(f"""
database = "{bridge.app.config.database}"
log_interceptions = false
access_log = true
[providers.openai]
base_url = "{bridge.upstream_url}/v1"
key_env = "T_OPENAI_KEY"
[auth]
cache_seconds = 60
allow_byok = false
[limits]
per_initiator_rps = 0.01
per_initiator_burst = 1
[upstream]
send_actor_headers = true
timeout = 7
connect_timeout = 3
[recording]
batch_size = 7
flush_interval = 0.05
spool_path = "{bridge.app.config.recording.spool_path}"
""")
    assert tap.reload(bridge.app, str(path))
    config = bridge.app.bridge.config
    assert (config.auth.cache_seconds, config.upstream.timeout, bridge.app.bridge.timeout) == (60, 7, 7)
    assert config.upstream.connect_timeout == 10 and config.recording.batch_size == 200  # as they run
    assert bridge.app.bridge.api.identity is bridge.app.identity
    url = bridge.url + "/openai/v1/chat/completions"
    first, _ = yield call(agent, "POST", url, CHAT, {"Authorization": f"Bearer {token}"})
    second, _ = yield call(agent, "POST", url, CHAT, {"Authorization": f"Bearer {token}"})
    assert (first.code, second.code) == (200, 429)
    assert bridge.upstream.requests[0].header(ACTOR_USERNAME.decode()) == "alice"
    gone, _ = yield call(agent, "GET", bridge.url + "/anthropic/v1/models",
                         None, {"Authorization": f"Bearer {token}"})
    assert gone.code == 404  # anthropic is no longer configured
    yield bridge.flush()
    text = bridge.log.text()
    assert "Reload: database" not in text
    assert "Reload: recording.batch_size, upstream.connect_timeout changed but need a restart; ignored" in text
    assert "interception " not in text
    assert '"POST /openai/v1/chat/completions HTTP/1.1" 200' in text
    assert token not in text and fakes.OPENAI_KEY not in text
