"""
Client detection (L{bridgeproxy.clients}): which client name and session
id a request is recorded with.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from twisted.web.http_headers import Headers

from bridgeproxy.clients import CLIENT_TABLE, ClientRule, TableDetector, claude_code_body_session, detect_client
from bridgeproxy.types import UNKNOWN_CLIENT, ClientInfo


def request(*headers):
    r = SimpleNamespace(requestHeaders=Headers())
    for name, value in headers:
        r.requestHeaders.addRawHeader(name, value)
    return r


def detect(*headers, body=None):
    return TableDetector().detect(request(*headers), body)


@pytest.mark.parametrize("user_agent, name", [
    (b"mux/1.2", "Mux"), (b"xum/0.1", "Mux"), (b"claude-cli/2.0.1 (external, cli)", "Claude Code"),
    (b"codex_cli_rs/0.50.0", "Codex"), (b"Zed/0.200", "Zed"), (b"GitHubCopilotChat/0.30", "GitHub Copilot (VS Code)"),
    (b"copilot/1.0", "GitHub Copilot (CLI)"), (b"Kilo-Code/4.0", "Kilo Code"), (b"Roo-Code/3.0", "Roo Code"),
    (b"coder-agents/1", "Coder Agents"), (b"Charm Crush/0.1", "Charm Crush"), (b"charm-crush/0.2", "Charm Crush"),
    (b"opencode/0.15", "OpenCode"), (b"Junie:1.0", "Junie"),
])
def test_user_agent_prefixes(user_agent, name):
    """Each client is known by its User-Agent prefix, in any case; no session header means no session."""
    assert detect((b"User-Agent", user_agent)) == ClientInfo(name)


@pytest.mark.parametrize("user_agent", [b"curl/8.0", b"python-httpx/0.27", b"my-mux/1", b"xzed/1"])
def test_unknown_user_agents(user_agent):
    """A User-Agent that does not start with a known prefix is not recognised."""
    assert detect((b"User-Agent", user_agent)) is None


def test_nothing_to_go_on_is_unknown():
    """A request without User-Agent or any marker is not recognised; the chain calls it Unknown."""
    assert detect() is None
    assert detect_client([TableDetector()], request(), None) == UNKNOWN_CLIENT


@pytest.mark.parametrize("originator, name", [(b"kilo-code", "Kilo Code"), (b"Roo-Code", "Roo Code")])
def test_originator_header(originator, name):
    """Kilo Code and Roo Code are also known by their Originator header (any case)."""
    assert detect((b"User-Agent", b"node"), (b"Originator", originator)) == ClientInfo(name)


def test_originator_must_match_exactly():
    """An Originator that merely starts like a known one is not recognised."""
    assert detect((b"Originator", b"kilo-code-fork")) is None


def test_cursor_by_header_presence():
    """Cursor is known by the presence of X-Cursor-Client-Version, whatever the User-Agent."""
    assert detect((b"User-Agent", b"node"), (b"X-Cursor-Client-Version", b"1.7")) == ClientInfo("Cursor")


@pytest.mark.parametrize("user_agent, header, name", [
    (b"mux/1", b"X-Mux-Workspace-Id", "Mux"),
    (b"claude-cli/2", b"X-Claude-Code-Session-Id", "Claude Code"),
    (b"codex/1", b"session-id", "Codex"),
    (b"codex/1", b"session_id", "Codex"),
    (b"GitHubCopilotChat/1", b"x-interaction-id", "GitHub Copilot (VS Code)"),
    (b"copilot/1", b"X-Client-Session-Id", "GitHub Copilot (CLI)"),
    (b"kilo-code/1", b"X-KILOCODE-TASKID", "Kilo Code"),
    (b"coder-agents/1", b"X-Coder-Chat-Id", "Coder Agents"),
    (b"opencode/1", b"X-OpenCode-Session", "OpenCode"),
    (b"opencode/1", b"x-session-affinity", "OpenCode"),
])
def test_session_headers(user_agent, header, name):
    """Each client's session header gives the session id (trimmed)."""
    assert detect((b"User-Agent", user_agent), (header, b"  sess-1  ")) == ClientInfo(name, "sess-1")


def test_session_headers_in_preference_order():
    """With two session headers, the first in the table's order wins; a blank one is skipped."""
    assert detect((b"User-Agent", b"codex/1"), (b"session_id", b"second"), (b"session-id", b"first")) == \
        ClientInfo("Codex", "first")
    assert detect((b"User-Agent", b"codex/1"), (b"session-id", b"  "), (b"session_id", b"second")) == \
        ClientInfo("Codex", "second")


def test_session_ids_are_capped():
    """A session id is at most 256 characters, from a header or a body."""
    long = b"s" * 300
    assert detect((b"User-Agent", b"mux/1"), (b"X-Mux-Workspace-Id", long)).session_id == "s" * 256
    body = {"metadata": {"user_id": json.dumps({"session_id": "b" * 300})}}
    assert claude_code_body_session(body) == "b" * 256
    assert claude_code_body_session({"metadata": {"user_id": "user_x_session_" + "c" * 300}}) == "c" * 256


def test_long_user_agent_still_matches():
    """The User-Agent is read (capped) and still matches its prefix."""
    assert detect((b"User-Agent", b"Zed/" + b"9" * 1000)) == ClientInfo("Zed")


def test_claude_code_session_from_the_body():
    """Without a session header, Claude Code's session comes from metadata.user_id (JSON or legacy form)."""
    ua = (b"User-Agent", b"claude-cli/2")
    body = {"metadata": {"user_id": json.dumps({"device_id": "d", "session_id": "s-json"})}}
    assert detect(ua, body=body) == ClientInfo("Claude Code", "s-json")
    body = {"metadata": {"user_id": "user_abc_account_123_session_s-legacy"}}
    assert detect(ua, body=body) == ClientInfo("Claude Code", "s-legacy")
    assert detect(ua, (b"X-Claude-Code-Session-Id", b"hdr"), body=body) == ClientInfo("Claude Code", "hdr")
    assert detect(ua) == ClientInfo("Claude Code", None)


@pytest.mark.parametrize("body", [
    None, [], {"metadata": "x"}, {"metadata": {}}, {"metadata": {"user_id": 5}}, {"metadata": {"user_id": ""}},
    {"metadata": {"user_id": "{not json"}}, {"metadata": {"user_id": "[1]"}},
    {"metadata": {"user_id": '{"session_id": 3}'}}, {"metadata": {"user_id": '{"session_id": ""}'}},
    {"metadata": {"user_id": "user_abc"}}, {"metadata": {"user_id": "user_abc_session_"}},
])
def test_claude_code_body_without_a_session(body):
    """Bodies without a usable session id give none (and never raise)."""
    assert claude_code_body_session(body) is None


def test_claude_code_json_user_id_with_leading_space():
    """A JSON user id is recognised even with leading whitespace."""
    assert claude_code_body_session({"metadata": {"user_id": '  {"session_id": "s"}'}}) == "s"


def test_legacy_user_id_takes_the_last_session_marker():
    """In the legacy form the session is what follows the last C{_session_}."""
    assert claude_code_body_session({"metadata": {"user_id": "a_session_b_session_c"}}) == "c"


def test_first_matching_row_wins():
    """Rows are tried in order: an earlier row that matches wins over a later one."""
    table = [ClientRule("First", ua_prefixes=("tool",)), ClientRule("Second", ua_prefixes=("tool/1",))]
    assert TableDetector(table).detect(request((b"User-Agent", b"tool/1")), None) == ClientInfo("First")
    assert TableDetector().table == CLIENT_TABLE


def test_a_rule_with_nothing_to_match_matches_nothing():
    """A row without prefixes, originators or marker header never matches."""
    rule = ClientRule("Nothing")
    assert not rule.matches("", "", request())
    assert TableDetector([rule]).detect(request((b"User-Agent", b"x")), None) is None


class Fixed:
    def __init__(self, answer):
        self.answer = answer
        self.calls = 0

    def detect(self, request, body):
        self.calls += 1
        return self.answer


def test_detector_chain_first_answer_wins():
    """Detectors run in order; the first that recognises the client decides; later ones are not asked."""
    first, second, third = Fixed(None), Fixed(ClientInfo("Plugin")), Fixed(ClientInfo("Late"))
    assert detect_client([first, second, third], request(), None) == ClientInfo("Plugin")
    assert third.calls == 0
    assert detect_client([], request(), None) == UNKNOWN_CLIENT


def test_detectors_see_the_parsed_body():
    """Each detector is given the request's parsed body (a plugin may read its session id there)."""
    seen = []

    class BodyReader:
        def detect(self, request, body):
            seen.append(body)
            return None
    body = {"metadata": {"user_id": "x"}}
    detect_client([BodyReader()], request(), body)
    assert seen == [body]
