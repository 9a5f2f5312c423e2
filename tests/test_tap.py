"""
The command line and twistd glue, as a user runs them: `bridgeproxy keys`,
`twistd --help`, and `twistd -n bridgeproxy --config` serving real requests.
"""

import io
import json
import signal
import subprocess

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.web import server

from bridgeproxy import cli
from bridgeproxy.store import Database
from bridgeproxy.tap import Options
from tests import fakes
from tests.http import call
from tests.procs import ROOT, TWISTD, spawn_twistd, start_upstream_and_key, wait_for_port, write_config


def test_keys_create_prints_only_the_token(tmp_path, capsys):
    """`bridgeproxy keys create` prints the new token alone on stdout; only its hash is stored."""
    config = write_config(tmp_path)
    out = io.StringIO()
    assert cli.main(["keys", "create", "--config", config, "--username", "alice",
                     "--user-id", fakes.OWNER_ID], out) == 0
    token = out.getvalue()
    assert token.count("\n") == 1 and token.startswith("bp_")
    token = token.strip()
    db = Database(f"sqlite:{tmp_path / 'bridge.db'}")
    assert db.identify(token).user_id == fakes.OWNER_ID
    listing = io.StringIO()
    cli.main(["keys", "list", "--config", config, "--json"], listing)
    keys = json.loads(listing.getvalue())
    assert keys[0]["username"] == "alice" and token not in listing.getvalue()
    assert cli.main(["keys", "revoke", "--config", config, keys[0]["key_id"]], io.StringIO()) == 0
    assert db.identify(token) is None
    assert cli.main(["keys", "revoke", "--config", config, keys[0]["key_id"]], io.StringIO()) == 1


def test_users_disable_and_bad_input(tmp_path, capsys):
    """`bridgeproxy users disable` marks the user; a bad --user-id is refused with a clear message."""
    config = write_config(tmp_path)
    cli.main(["keys", "create", "--config", config, "--username", "bob"], io.StringIO())
    assert cli.main(["users", "disable", "--config", config, "bob"], io.StringIO()) == 0
    assert Database(f"sqlite:{tmp_path / 'bridge.db'}").list_keys()[0]["user_disabled"]
    with pytest.raises(SystemExit) as caught:
        cli.main(["keys", "create", "--config", config, "--username", "x", "--user-id", "nope"], io.StringIO())
    assert "UUIDv4" in str(caught.value)


def test_options_report_config_errors(tmp_path):
    """twistd options turn a bad configuration into a one-line exit naming the key (not a usage error)."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[auth]\nallow_byok = 'yes'\n")
    with pytest.raises(SystemExit) as caught:
        Options().parseOptions(["--config", str(bad)])
    assert str(caught.value) == "bridgeproxy: auth.allow_byok must be bool, got str"
    options = Options()
    options.parseOptions(["--config", write_config(tmp_path), "--listen", "tcp:1234"])
    assert options.config.listen == "tcp:1234"


def test_twistd_lists_the_plugin():
    """`twistd --help` lists bridgeproxy."""
    result = subprocess.run(TWISTD + ["--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert "bridgeproxy" in result.stdout


@pytest_twisted.inlineCallbacks
def test_twistd_serves_and_stops_cleanly(tmp_path, agent):
    """`twistd -n bridgeproxy --config` proxies a real request, records it, and flushes it on SIGTERM."""
    port, up_port, upstream, config, token = start_upstream_and_key(tmp_path, fakes.json_answer(200, {
        "id": "c", "model": "gpt-4o", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}))
    log_path = tmp_path / "twistd.log"
    proc = spawn_twistd(config, ["--logfile", str(log_path), "bridgeproxy", "--config", config])
    try:
        yield threads.deferToThread(wait_for_port, port, proc)
        response, body = yield call(agent, "POST", f"http://127.0.0.1:{port}/openai/v1/chat/completions",
                                    {"model": "gpt-4o", "messages": []}, {"Authorization": f"Bearer {token}"})
        assert response.code == 200
        assert upstream.requests[0].headers["authorization"] == [f"Bearer {fakes.OPENAI_KEY}"]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = yield threads.deferToThread(proc.wait, 30)
        yield up_port.stopListening()
    # twistd re-raises the signal it stopped for, so that a supervisor sees it.
    assert code in (0, -signal.SIGTERM)
    rows = Database(f"sqlite:{tmp_path / 'bridge.db'}").interceptions()
    assert [(r["initiator_username"], r["input_tokens"], r["output_tokens"]) for r in rows] == [("alice", 3, 4)]
    listed = io.StringIO()
    assert cli.main(["interceptions", "list", "--config", config, "--initiator", "alice", "--json"], listed) == 0
    assert [r["model"] for r in json.loads(listed.getvalue())] == ["gpt-4o"]
    none = io.StringIO()
    cli.main(["interceptions", "list", "--config", config, "--client", "Codex", "--json"], none)
    assert json.loads(none.getvalue()) == []
    table = io.StringIO()
    assert cli.main(["usage", "--config", config, "--by", "model", "--since", "2020-01-01"], table) == 0
    header, row = table.getvalue().splitlines()[:2]
    assert header.split()[:4] == ["model", "requests", "input_tokens", "output_tokens"]
    assert row.split()[:4] == ["gpt-4o", "1", "3", "4"]
    log_text = log_path.read_text()
    assert "listening on" in log_text
    assert token not in log_text and fakes.OPENAI_KEY not in log_text


def slow_sse(events, gap):
    """A handler sending C{events} one every C{gap} seconds."""
    def handler(request, received):
        request.setHeader(b"content-type", b"text/event-stream")

        def send(i):
            if request.finished or received.gone:
                return
            if i == len(events):
                request.finish()
                return
            request.write(events[i])
            reactor.callLater(gap, send, i + 1)
        send(0)
        return server.NOT_DONE_YET
    return handler


@pytest_twisted.inlineCallbacks
def test_sigterm_lets_stream_in_progress_finish(tmp_path, agent):
    """A stream in progress at SIGTERM completes (every event delivered) and is recorded before the process exits."""
    from tests.streams import ANTHROPIC_EVENTS, STREAM_MESSAGES, Collector, open_stream
    port, up_port, upstream, config, token = start_upstream_and_key(tmp_path, slow_sse(ANTHROPIC_EVENTS, 0.25))
    proc = spawn_twistd(config, ["--logfile", str(tmp_path / "twistd.log"), "bridgeproxy", "--config", config])
    try:
        yield threads.deferToThread(wait_for_port, port, proc)
        collector = Collector()
        yield open_stream(agent, f"http://127.0.0.1:{port}/anthropic/v1/messages", STREAM_MESSAGES,
                          {"X-Api-Key": token}, collector)
        yield collector.first
        proc.send_signal(signal.SIGTERM)
        body = yield collector.done
        assert body == b"".join(ANTHROPIC_EVENTS)
        code = yield threads.deferToThread(proc.wait, 30)
        assert code in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
        yield up_port.stopListening()
    rows = Database(f"sqlite:{tmp_path / 'bridge.db'}").interceptions()
    assert [(r["status"], r["output_tokens"]) for r in rows] == [("ok", 12)]
