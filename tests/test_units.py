"""
Unit tests over in-memory fakes: the extractor chain, the client table, the
resolvers, configuration errors, the SSE parser at every split point, the
usage parsers, and masking.
"""

import json

import pytest
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from bridgeproxy import errors
from bridgeproxy.auth import ApiKeyExtractor, BearerExtractor, CoderTokenExtractor, extract_credential
from bridgeproxy.clients import CLIENT_TABLE, TableDetector, claude_code_body_session, detect_client
from bridgeproxy.config import ConfigError, parse
from bridgeproxy.values import is_uuid4
from bridgeproxy.initiator import CoderAgentsOwnerResolver, TokenResolver
from bridgeproxy.providers.anthropic import AnthropicProvider
from bridgeproxy.providers.openai import OpenAIProvider
from bridgeproxy.sse import SSEParser
from bridgeproxy.types import ClientInfo, Credential, Identity, Initiator, mask_secret
from tests import fakes
from tests.payloads import CHAT_CHUNKS, MESSAGE_EVENTS, RESPONSE_EVENTS


def request_with(headers: dict) -> DummyRequest:
    request = DummyRequest([b""])
    for name, value in headers.items():
        values = value if isinstance(value, list) else [value]
        request.requestHeaders.setRawHeaders(name.encode(), [v.encode() for v in values])
    return request


CHAIN = [CoderTokenExtractor(), BearerExtractor(), ApiKeyExtractor()]


# -- extractors -------------------------------------------------------------------


@pytest.mark.parametrize("headers,expected", [
    ({"X-Coder-Token": "  tok-1  "}, ("tok-1", "x-coder-token")),
    ({"x-coder-token": "tok-1", "Authorization": "Bearer tok-2"}, ("tok-1", "x-coder-token")),
    ({"Authorization": "bEaReR tok-2"}, ("tok-2", "authorization")),
    ({"Authorization": "Bearer tok-2", "X-Api-Key": "tok-3"}, ("tok-2", "authorization")),
    ({"Authorization": "Bearer a b", "X-Api-Key": "tok-3"}, ("tok-3", "x-api-key")),
    ({"Authorization": "Basic abc", "X-Api-Key": " tok-3 "}, ("tok-3", "x-api-key")),
    ({"Authorization": "Bearer", "X-Coder-Token": "   "}, None),
    ({}, None),
])
def test_extractor_chain_order_and_forms(headers, expected):
    """The default chain: X-Coder-Token, then exactly `Bearer <token>`, then X-Api-Key; blanks are absent."""
    credential = extract_credential(CHAIN, request_with(headers))
    assert (credential.token, credential.source) == expected if expected else credential is None


def test_conflicting_duplicates_are_refused():
    """The same credential header twice with different values raises BadRequest; identical twice is fine."""
    with pytest.raises(errors.BadRequest) as caught:
        extract_credential(CHAIN, request_with({"X-Api-Key": ["a-value", "b-value"]}))
    assert "a-value" not in str(caught.value)
    assert extract_credential(CHAIN, request_with({"X-Api-Key": ["same", "same"]})).token == "same"


def test_coder_token_header_names_are_configurable():
    """The coder-token extractor reads every configured header name (the later AI proxy's too)."""
    extractor = CoderTokenExtractor(["X-Coder-Token", "X-Coder-AI-Governance-Token"])
    assert extractor.extract(request_with({"X-Coder-AI-Governance-Token": "gov"})).source == \
        "x-coder-ai-governance-token"


def test_credential_repr_hides_token():
    """A credential's repr, and so any traceback that shows it, never contains the token."""
    credential = Credential(token="bp_supersecretvalue0123456789", source="authorization")
    assert "supersecret" not in repr(credential)
    assert "supersecret" not in credential.hint


@pytest.mark.parametrize("secret", ["abcdefgh", "x" * 9, "sk-" + "a" * 45, "bp_" + "Z" * 40])
def test_mask_shows_at_most_a_quarter(secret):
    """A masked hint shows a few characters from each end, never more than a quarter of the secret."""
    hint = mask_secret(secret)
    assert len(hint.replace("...", "")) <= len(secret) // 4
    assert secret not in hint


# -- clients -----------------------------------------------------------------------

CLIENT_CASES = [
    ({"User-Agent": "mux/1.0", "X-Mux-Workspace-Id": "w1"}, ("Mux", "w1")),
    ({"User-Agent": "xum/1.0"}, ("Mux", None)),
    ({"User-Agent": "claude-cli/2.1.197 (external, sdk-cli)", "X-Claude-Code-Session-Id": "s1"}, ("Claude Code", "s1")),
    ({"User-Agent": "codex_exec/0.169.0 (Debian 12.0.0; x86_64)", "session-id": "c1"}, ("Codex", "c1")),
    ({"User-Agent": "codex_cli_rs/0.1", "session_id": "c2"}, ("Codex", "c2")),
    ({"User-Agent": "Zed/0.200"}, ("Zed", None)),
    ({"User-Agent": "GitHubCopilotChat/0.30", "x-interaction-id": "i1"}, ("GitHub Copilot (VS Code)", "i1")),
    ({"User-Agent": "copilot/1.0", "X-Client-Session-Id": "k1"}, ("GitHub Copilot (CLI)", "k1")),
    ({"User-Agent": "node", "Originator": "kilo-code", "X-KILOCODE-TASKID": "t1"}, ("Kilo Code", "t1")),
    ({"User-Agent": "Kilo-Code/4.0"}, ("Kilo Code", None)),
    ({"User-Agent": "roo-code/3"}, ("Roo Code", None)),
    ({"Originator": "roo-code"}, ("Roo Code", None)),
    ({"User-Agent": "coder-agents/v2.24.0 (linux/amd64)", "X-Coder-Chat-Id": "ch"}, ("Coder Agents", "ch")),
    ({"User-Agent": "Charm Crush/0.1"}, ("Charm Crush", None)),
    ({"User-Agent": "charm-crush/0.1"}, ("Charm Crush", None)),
    ({"User-Agent": "OpenAI/Python", "X-Cursor-Client-Version": "1.5"}, ("Cursor", None)),
    ({"User-Agent": "opencode/0.5", "x-session-affinity": "aff"}, ("OpenCode", "aff")),
    ({"User-Agent": "opencode/0.5", "X-OpenCode-Session": "oc", "x-session-affinity": "aff"}, ("OpenCode", "oc")),
    ({"User-Agent": "Junie:1.0"}, ("Junie", None)),
    ({"User-Agent": "curl/8"}, ("Unknown", None)),
    ({}, ("Unknown", None)),
]


@pytest.mark.parametrize("headers,expected", CLIENT_CASES)
def test_client_table(headers, expected):
    """Every client of SPEC section 5 is recognised, with its session id."""
    client = detect_client([TableDetector()], request_with(headers), None)
    assert (client.name, client.session_id) == expected


def test_client_table_is_data():
    """The table is rows of data in SPEC order; first match wins (Mux before anything else)."""
    assert [rule.name for rule in CLIENT_TABLE][:3] == ["Mux", "Claude Code", "Codex"]


@pytest.mark.parametrize("user_id,expected", [
    ('{"device_id":"d","account_uuid":"a","session_id":"abc-123"}', "abc-123"),
    ("user_0123abcd_account_5e6f7a8b-0000-4000-8000-000000000000_session_77f0a2c1-1111", "77f0a2c1-1111"),
    ("not-a-session", None),
    ("{broken json", None),
])
def test_claude_code_session_from_body(user_id, expected):
    """Claude Code's session id comes from metadata.user_id in both its JSON and legacy forms."""
    assert claude_code_body_session({"metadata": {"user_id": user_id}}) == expected


def test_plugin_detector_runs_before_table():
    """A detector from a plugin is asked before the built-in table."""
    class Mine:
        name = "mine"

        def detect(self, request, body):
            return ClientInfo("Mine") if request.requestHeaders.hasHeader(b"x-mine") else None
    request = request_with({"User-Agent": "claude-cli/2", "X-Mine": "1"})
    assert detect_client([Mine(), TableDetector()], request, None).name == "Mine"


# -- resolvers ---------------------------------------------------------------------


class FakeIdentity:
    def __init__(self, tokens, users=()):
        self.tokens = tokens
        self.users = {u.user_id: u for u in users}

    def identify(self, token):
        return succeed(self.tokens.get(token))

    def lookup_user(self, user_id):
        return succeed(self.users.get(user_id))


def resolved(d):
    results = []
    d.addBoth(results.append)
    return results[0]


def test_token_resolver_outcomes():
    """Unknown token -> 401 (AuthenticationFailed); disabled user -> 403; else the token's user."""
    resolver = TokenResolver(FakeIdentity({
        "ok": Identity("u1", "alice"), "off": Identity("u2", "bob", disabled=True)}))
    cred = lambda t: Credential(token=t, source="authorization")  # noqa: E731
    assert resolved(resolver.resolve(None, cred("nope"), ClientInfo("x"), None)).check(errors.AuthenticationFailed)
    assert resolved(resolver.resolve(None, cred("off"), ClientInfo("x"), None)).check(errors.PermissionDenied)
    initiator = resolved(resolver.resolve(None, cred("ok"), ClientInfo("x"), None))
    assert (initiator.user_id, initiator.username, initiator.credential_user_id) == ("u1", "alice", "u1")


@pytest.mark.parametrize("value,valid", [
    (fakes.OWNER_ID, True), (fakes.OWNER_ID.upper(), False), ("1a2b3c4d-5e6f-1a7b-8c9d-0e1f2a3b4c5d", False),
    ("{" + fakes.OWNER_ID + "}", False), (fakes.OWNER_ID.replace("-", ""), False), ("", False),
])
def test_uuid4_validation(value, valid):
    """Only canonical, lower-case, hyphenated version-4 UUIDs are accepted as owner ids."""
    assert is_uuid4(value) is valid


def test_owner_resolver_gate():
    """The override applies only for Coder Agents, a valid UUIDv4, and a delegator's token."""
    sa = Initiator(user_id=fakes.DELEGATOR_ID, username="sa", credential_user_id=fakes.DELEGATOR_ID)
    resolver = CoderAgentsOwnerResolver(frozenset({fakes.DELEGATOR_ID}),
                                        FakeIdentity({}, [Identity(fakes.OWNER_ID, "dana")]))
    req = request_with({"X-Coder-Owner-Id": fakes.OWNER_ID})
    agents = ClientInfo("Coder Agents")
    after = resolved(resolver.resolve(req, None, agents, sa))
    assert (after.user_id, after.username, after.credential_user_id, after.delegated) == (
        fakes.OWNER_ID, "dana", fakes.DELEGATOR_ID, True)
    assert resolver.resolve(req, None, ClientInfo("Codex"), sa) is sa
    other = Initiator(user_id=fakes.OWNER_ID.replace("1a", "2b"), credential_user_id="someone")
    assert resolver.resolve(req, None, agents, other) is other


# -- configuration -----------------------------------------------------------------


@pytest.mark.parametrize("data,message", [
    ({"lisen": "tcp:1"}, "'lisen'"),
    ({"auth": {"extractor": []}}, "'auth.extractor'"),
    ({"auth": {"allow_byok": "yes"}}, "auth.allow_byok must be bool"),
    ({"upstream": {"timeout": 0}}, "upstream.timeout must be greater than 0"),
    ({"initiator": {"delegators": ["not-a-uuid"]}}, "initiator.delegators"),
    ({"providers": {"openai": {"key": "sk-x"}}}, "providers.openai.key is not allowed"),
    ({"providers": {"openai": {"base_url": "ftp://x"}}}, "providers.openai.base_url"),
    ({"database": "mysql://x"}, "database must be"),
    ({"recording": {"batch_size": True}}, "recording.batch_size must be int"),
])
def test_config_errors_name_the_key(data, message):
    """Unknown keys and bad values are startup errors that name the key."""
    with pytest.raises(ConfigError) as caught:
        parse(data, environ={})
    assert message in str(caught.value)


def test_config_keys_from_env_and_file(tmp_path):
    """Provider keys come from the environment (default OPENAI_API_KEY) or a file, and never show in repr."""
    (tmp_path / "key").write_text("sk-from-file-0123456789\n")
    config = parse({"providers": {"openai": {}, "anthropic": {"key_file": str(tmp_path / "key")}}},
                   environ={"OPENAI_API_KEY": "sk-from-env-0123456789"})
    assert config.providers["openai"].key == "sk-from-env-0123456789"
    assert config.providers["anthropic"].key == "sk-from-file-0123456789"
    assert "sk-from" not in repr(config)
    defaults = parse({}, environ={})
    assert defaults.auth.extractors == ("coder-token", "authorization-bearer", "x-api-key")
    assert defaults.initiator.resolvers == ("token", "coder-agents-owner")
    assert defaults.auth.allow_byok is True and defaults.database == "sqlite:bridgeproxy.db"


def test_example_config_parses():
    """The example configuration shipped in examples/ is valid."""
    from bridgeproxy.config import load
    config = load("examples/bridgeproxy.toml", environ={})
    assert config.listen.startswith("tcp:")


# -- SSE and usage parsing -----------------------------------------------------------


def parse_all(chunks):
    parser = SSEParser()
    events = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events


@pytest.mark.parametrize("stream", [MESSAGE_EVENTS, CHAT_CHUNKS, RESPONSE_EVENTS])
def test_sse_every_split_point(stream):
    """The SSE parser yields the same events whatever the chunk boundaries (every split point of a real stream)."""
    data = b"".join(stream)
    whole = parse_all([data])
    assert len(whole) == len(stream)
    for cut in range(1, len(data)):
        assert parse_all([data[:cut], data[cut:]]) == whole, cut
    assert parse_all([data[i:i + 1] for i in range(len(data))]) == whole


def test_sse_line_endings_and_comments():
    """CRLF, CR, comments and multi-line data follow the SSE rules, also with CR and LF split apart."""
    data = b": ping\r\nevent: a\r\ndata: x\r\ndata: y\r\n\r\ndata: z\r\rdata:w\n\n"
    expected = [("a", "x\ny"), (None, "z"), (None, "w")]
    assert parse_all([data]) == expected
    for cut in range(1, len(data)):
        assert parse_all([data[:cut], data[cut:]]) == expected


@pytest.mark.parametrize("provider,route,stream,expected", [
    (AnthropicProvider(), "messages", MESSAGE_EVENTS, (40, 21, [("bash", '{"cmd": "ls"}')])),
    (OpenAIProvider(), "chat.completions", CHAT_CHUNKS, (11, 2, [])),
    (OpenAIProvider(), "responses", RESPONSE_EVENTS, (20, 4, [])),
])
def test_streamed_usage_at_every_split(provider, route, stream, expected):
    """Streamed usage and tool calls come out the same at every split point of the stream."""
    data = b"".join(stream)
    for cut in range(len(data) + 1):
        parser = provider.usage_parser(route, True)
        parser.feed(data[:cut])
        parser.feed(data[cut:])
        usage = parser.finish()
        assert (usage.input_tokens, usage.output_tokens,
                [(t.name, t.arguments) for t in usage.tool_calls]) == expected
        assert usage.complete


def test_streamed_openai_tool_call_deltas():
    """OpenAI chat tool-call arguments streamed in pieces are assembled per tool call."""
    chunks = [
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_a", "function": {"name": "read", "arguments": ""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"p\":"}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 1, "id": "call_b", "function": {"name": "write", "arguments": "{}"}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]},
    ]
    parser = OpenAIProvider().usage_parser("chat.completions", True)
    parser.feed(b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks))
    calls = parser.finish().tool_calls
    assert [(c.name, c.arguments, c.call_id) for c in calls] == [
        ("read", '{"p":1}', "call_a"), ("write", "{}", "call_b")]


def test_truncated_stream_is_incomplete():
    """A stream cut before its end is read as incomplete, with the tokens seen so far."""
    data = b"".join(MESSAGE_EVENTS[:2])
    parser = AnthropicProvider().usage_parser("messages", True)
    parser.feed(data)
    usage = parser.finish()
    assert usage.complete is False and usage.input_tokens == 40


def test_prompts():
    """The last user prompt: skipping tool results, from string or text parts, per API."""
    anthropic_body = {"messages": [
        {"role": "user", "content": "do it"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "x", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "done"}]}]}
    assert AnthropicProvider().prompt_of("messages", anthropic_body) == "do it"
    assert OpenAIProvider().prompt_of("responses", {"input": [
        {"role": "user", "content": [{"type": "input_text", "text": "a"}]}]}) == "a"
    assert OpenAIProvider().prompt_of("chat.completions", {"messages": [
        {"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}) == "q"


class AnsweringStore:
    """A store that answers at once (its Deferred has fired before run() returns)."""

    def __init__(self, answer):
        self.answer = answer
        self.calls = 0

    def run(self, work):
        self.calls += 1
        from twisted.internet.defer import fail
        return fail(self.answer) if isinstance(self.answer, Exception) else succeed(self.answer)


def fired(d):
    """The result a Deferred has already fired with (fails the test if it has not fired)."""
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred never fired"
    return results[0]


def test_keystore_answers_when_the_store_answers_at_once():
    """A store that answers synchronously still gets the caller its identity (the Deferred fires)."""
    from bridgeproxy.identity import KeystoreBackend
    store = AnsweringStore(Identity("u", "n"))
    backend = KeystoreBackend(store, Clock(), cache_seconds=5)
    assert fired(backend.identify("t")) == Identity("u", "n")
    assert fired(backend.identify("t")) == Identity("u", "n")  # from the cache
    assert store.calls == 1
    unknown = KeystoreBackend(AnsweringStore(None), Clock(), cache_seconds=5)
    assert fired(unknown.identify("nope")) is None


def test_keystore_store_down_at_once_is_503_for_unknown_tokens():
    """A store that fails synchronously: the caller's Deferred fails with the 503 refusal, never hangs."""
    from bridgeproxy.identity import KeystoreBackend
    backend = KeystoreBackend(AnsweringStore(OSError("down")), Clock(), cache_seconds=5)
    assert fired(backend.identify("t")).check(errors.NotConfigured)


def test_clock_is_injected():
    """The keystore cache expires on the injected clock, not on wall time."""
    from bridgeproxy.identity import KeystoreBackend
    store = AnsweringStore(Identity("u", "n"))
    clock = Clock()
    backend = KeystoreBackend(store, clock, cache_seconds=5)
    fired(backend.identify("t"))
    clock.advance(4.9)
    fired(backend.identify("t"))
    assert store.calls == 1
    clock.advance(0.2)
    assert fired(backend.identify("t")) == Identity("u", "n")
    assert store.calls == 2


def test_concurrent_lookups_share_one_store_call():
    """Requests with the same token that arrive before the store answers cost one store call."""
    from twisted.internet.defer import Deferred

    from bridgeproxy.identity import KeystoreBackend

    class SlowStore:
        pending = []

        def run(self, work):
            d = Deferred()
            SlowStore.pending.append(d)
            return d
    backend = KeystoreBackend(SlowStore(), Clock(), cache_seconds=5)
    results = []
    for _ in range(3):
        backend.identify("t").addCallback(results.append)
    assert len(SlowStore.pending) == 1
    SlowStore.pending[0].callback(Identity("u", "n"))
    assert [r.user_id for r in results] == ["u", "u", "u"]


def test_a_record_after_the_recorder_stopped_is_spooled(tmp_path):
    """A record that arrives after the recorder's last flush (a request cut at shutdown) goes to the spool
    file, to be replayed at the next start; it is never left in memory."""
    from bridgeproxy.config import RecordingConfig
    from bridgeproxy.recording import Recorder, from_json
    from bridgeproxy.types import Interception

    class Store:
        def run(self, work):
            return succeed(0)
    spool = tmp_path / "spool.jsonl"
    recorder = Recorder(Store(), Clock(), RecordingConfig(spool_path=str(spool)))
    recorder.start()
    fired(recorder.stop())
    late = Interception(id="late", started_at=1.0, ended_at=2.0, provider="openai", route="chat.completions",
                        intercepted=True, method="POST", model=None, streamed=True, client="Unknown",
                        client_session_id=None, user_agent=None, initiator_id="u", initiator_username=None,
                        credential_user_id="u", credential_kind="centralized", credential_hint=None,
                        upstream_status=200, status="shutdown")
    recorder.record(late)
    assert not recorder.queue
    assert [from_json(line).id for line in spool.read_text().splitlines()] == ["late"]


def _full_record(**changes):
    from bridgeproxy.types import Interception, ToolCall
    values = dict(id="r1", started_at=1.5, ended_at=2.75, provider="openai", route="responses", intercepted=True,
                  method="POST", model="gpt-5", streamed=True, client="Codex", client_session_id="s",
                  user_agent="codex/1", initiator_id="u1", initiator_username="alice", credential_user_id="u0",
                  credential_kind="byok", credential_hint="sk-...x", upstream_status=200, http_status=200,
                  input_tokens=1, output_tokens=2, cache_read_tokens=3, cache_write_tokens=4, prompt="p",
                  tool_calls=(ToolCall("apply_patch", "*** Begin", "call_1"),), stop_reason="completed",
                  error=None, status="ok")
    values.update(changes)
    return Interception(**values)


def test_a_record_is_the_same_in_the_spool_the_store_and_the_api(tmp_path):
    """One declaration: a record round-trips through the spool line and the store unchanged, and both spell
    a tool call as {name, arguments, id} with duration_ms derived."""
    from bridgeproxy.recording import from_json, to_json
    from bridgeproxy.store import Database
    from bridgeproxy.types import record_dict
    record = _full_record()
    assert from_json(to_json(record)) == record
    db = Database(f"sqlite:{tmp_path / 'b.db'}")
    db.migrate()
    db.insert_interceptions([record])
    (stored,) = db.interceptions()
    assert stored == record_dict(record) == json.loads(to_json(record))
    assert stored["tool_calls"] == [{"name": "apply_patch", "arguments": "*** Begin", "id": "call_1"}]
    assert stored["duration_ms"] == 1250


def test_a_spool_line_of_an_earlier_version_still_replays():
    """Spool files written before the record was declared once (tool call ids spelt call_id, no
    duration_ms) are read as the same record."""
    from dataclasses import asdict

    from bridgeproxy.recording import from_json
    record = _full_record()
    assert from_json(json.dumps(asdict(record))) == record
    with pytest.raises(ValueError):
        from_json(json.dumps({"id": "only-an-id"}))


def test_a_replay_cut_short_by_a_crash_is_replayed(tmp_path):
    """A spool being replayed when the process died (left as spool.jsonl.replay) is replayed at the next
    start, and a newer spool beside it is not written over it: both reach the store."""
    from bridgeproxy.config import RecordingConfig
    from bridgeproxy.recording import Recorder, to_json

    stored = []

    class Store:
        def run(self, work):
            class Db:
                def insert_interceptions(self, records):
                    stored.extend(r.id for r in records)
                    return len(records)
            return succeed(work(Db()))
    spool = tmp_path / "spool.jsonl"
    (tmp_path / "spool.jsonl.replay").write_text(to_json(_full_record(id="from-the-crash")) + "\n")
    spool.write_text(to_json(_full_record(id="spooled-later")) + "\n")
    clock = Clock()
    recorder = Recorder(Store(), clock, RecordingConfig(spool_path=str(spool), flush_interval=0.1))
    recorder.start()
    for _ in range(5):
        clock.advance(0.1)
    assert sorted(stored) == ["from-the-crash", "spooled-later"]
    assert not spool.exists() and not (tmp_path / "spool.jsonl.replay").exists()


def test_store_urls_and_errors_never_show_a_password():
    """What twistd logs of a store (its URL, a driver's error) masks the password in every form, the
    password= parameter included."""
    from bridgeproxy.store import describe_error, safe_url
    assert safe_url("postgresql://u:pw@h:5432/db") == "postgresql://***@h:5432/db"
    assert safe_url("postgresql://u@h/db?sslmode=require&password=s3cret") == \
        "postgresql://***@h/db?sslmode=require&password=***"
    assert safe_url("postgresql://h/db?Password=s3cret") == "postgresql://h/db?Password=***"
    url = "postgresql://u:p%40ss@h/db?password=two"
    error = OSError("auth failed for p@ss (p%40ss) and two\nsecond line")
    assert describe_error(error, url) == "auth failed for *** (***) and ***"
