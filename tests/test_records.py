"""
What a request becomes in the audit trail, field by field, and how paths
and secrets are shown in it.
"""

from tests import memory
from tests.memory import OPENAI_KEY, TOKEN, USER_ID

MESSAGE = {"model": "claude-sonnet-4-5", "type": "message", "content": [
    {"type": "tool_use", "id": "t1", "name": "bash", "input": {"cmd": "ls"}}],
    "stop_reason": "tool_use",
    "usage": {"input_tokens": 11, "output_tokens": 7, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 3}}


def test_every_field_of_an_intercepted_request():
    """An intercepted, answered request is recorded with who, which client, what, how much and how it ended."""
    g = memory.gateway({"recording": {"max_prompt_chars": 8}})
    g.upstream.handler = memory.json_answer(200, {**MESSAGE, "model": "claude-sonnet-4-5-20250929"})
    g.clock.advance(1000)
    body = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "list my files"}]}
    g.send("POST", "/anthropic/v1/messages", body, {
        "X-Coder-Token": TOKEN, "X-Api-Key": "sk-ant-client-own-0123456789abcdef",
        "User-Agent": "claude-cli/2.1 " + "x" * 600, "X-Claude-Code-Session-Id": "sess-1"})
    (r,) = g.records
    assert (r.provider, r.route, r.intercepted, r.method, r.streamed) == ("anthropic", "messages", True, "POST", False)
    assert r.model == "claude-sonnet-4-5-20250929"  # what answered, not what was asked
    assert (r.client, r.client_session_id) == ("Claude Code", "sess-1")
    assert r.user_agent.startswith("claude-cli/2.1 ") and len(r.user_agent) == 512
    assert (r.initiator_id, r.initiator_username, r.credential_user_id) == (USER_ID, "alice", USER_ID)
    assert (r.credential_kind, r.credential_hint) == ("byok", "sk-a...def")
    assert (r.upstream_status, r.http_status, r.status, r.error) == (200, 200, "ok", None)
    assert (r.input_tokens, r.output_tokens, r.cache_read_tokens, r.cache_write_tokens) == (11, 7, 5, 3)
    assert r.prompt == "list my "
    assert [(t.name, t.arguments, t.call_id) for t in r.tool_calls] == [("bash", '{"cmd":"ls"}', "t1")]
    assert r.stop_reason == "tool_use"
    assert r.started_at == 1000 and r.ended_at == 1000


def test_a_refused_passthrough_is_recorded_by_its_path():
    """A request that is not intercepted is recorded by its path (no query), without model, tokens or prompt;
    the model asked for is kept when nothing answered."""
    g = memory.gateway()
    g.send("GET", "/openai/v1/files?purpose=fine-tune", None, {"Authorization": f"Bearer {TOKEN}"})
    (r,) = g.records
    assert (r.route, r.intercepted, r.model, r.prompt, r.tool_calls) == ("/v1/files", False, None, None, ())
    assert (r.credential_kind, r.credential_hint, r.upstream_status, r.http_status) == (None, None, None, 404)
    assert (r.input_tokens, r.output_tokens, r.cache_read_tokens, r.cache_write_tokens) == (0, 0, 0, 0)
    g.upstream.handler = memory.json_answer(500, {"oops": True})
    g.send("POST", "/openai/v1/chat/completions", {"model": "gpt-4o", "messages": []},
           {"Authorization": f"Bearer {TOKEN}"})
    assert g.records[1].model == "gpt-4o" and g.records[1].credential_kind == "centralized"
    assert g.records[1].credential_hint == "sk-c...def"


def test_paths_and_errors_in_records_are_printable_and_masked():
    """A recorded path has no control characters and is cut at 200 characters; an error is cut at 1000
    characters and never carries the gateway's key or the bridge token."""
    from bridgeproxy.proxy.records import printable
    assert printable(b"/v1/a\tb?key=secret") == "/v1/a?b"
    assert printable(b"/" + b"x" * 300) == "/" + "x" * 199
    assert printable(b"/caf\xe9") == "/caf\xe9"
    g = memory.gateway()
    g.upstream.handler = memory.json_answer(401, {"error": {"message": f"bad key {OPENAI_KEY} " + "y" * 2000}})
    g.send("POST", "/openai/v1/chat/completions", {"model": "gpt-4o", "messages": []},
           {"Authorization": f"Bearer {TOKEN}"})
    (r,) = g.records
    assert len(r.error) == 1000 and OPENAI_KEY not in r.error and r.error.startswith("bad key sk-c...")


def test_the_prompt_and_model_of_each_route():
    """The recorded prompt is read the route's way (Responses `input`, chat `messages`); a model that is not a
    string is not recorded as one; every record has its own UUID."""
    import uuid
    g = memory.gateway()
    g.upstream.handler = memory.json_answer(200, {})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    g.send("POST", "/openai/v1/responses", {"model": "gpt-5", "input": "from responses"}, auth)
    g.send("POST", "/openai/v1/chat/completions", {"model": 5, "messages": [{"role": "user", "content": "chat"}]},
           auth)
    assert [(r.prompt, r.model) for r in g.records] == [("from responses", "gpt-5"), ("chat", None)]
    ids = [uuid.UUID(r.id) for r in g.records]
    assert all(i.version == 4 for i in ids) and ids[0] != ids[1]


def test_secrets_of_six_characters_or_more_are_masked():
    """A secret is masked wherever it appears from six characters on; a shorter one (too likely to be a common
    word) is left alone."""
    from bridgeproxy.proxy.exchange import Exchange
    from bridgeproxy.proxy.records import scrub
    from bridgeproxy.types import Credential
    for token, masked in (("abcdef", "..."), ("abcde", "abcde")):
        ex = Exchange(request=None, started=0, credential=Credential(token, "authorization"))
        assert scrub(f"key {token} again {token}", ex) == f"key {masked} again {masked}"


def test_given_secrets_and_key_shaped_words_are_masked():
    """Keys given (any provider's, whatever their shape) and words shaped like a provider's or a bridge's key
    are masked; shorter look-alikes, the tails of other words and ids are not."""
    from bridgeproxy.proxy.exchange import Exchange
    from bridgeproxy.proxy.records import scrub
    from bridgeproxy.types import mask_secret
    ex = Exchange(request=None, started=0)
    assert scrub("vllm token-abc123-compat here", ex, ("token-abc123-compat",)) == "vllm to...t here"
    key, bridge_key = "sk-" + "0123456789abcdefghij", "bp_" + "0123456789ABCDEFGH-_"
    assert scrub(f"a {key} b ({bridge_key})", ex) == f"a {mask_secret(key)} b ({mask_secret(bridge_key)})"
    kept = ("a sk-0123456789abcdefghi b, sk-proj-****abcd, skx-0123456789abcdefghijklmn, "
            "ft:gpt-4o:acme:risk-assessment-v2:AbC123, req_9fsk-0123456789abcdefghijXYZ, disk-space-exhausted-again-"
            "and-again, webp_thumbnail_large_2x_retina_display")
    assert scrub(kept, ex) == kept


def test_the_longest_secret_is_masked_first():
    """A secret that is part of a longer one does not leave the longer one's tail behind."""
    from bridgeproxy.proxy.records import mask
    from bridgeproxy.types import mask_secret
    short, long = "abcdef-012345", "abcdef-012345-and-more-of-it"
    assert mask(f"x {long} y", [short, long]) == f"x {mask_secret(long)} y"
    assert mask(f"x {long} y", [long, short]) == f"x {mask_secret(long)} y"
    # Not merely the first in reverse alphabetical order: the longest.
    short, long = "zzzzzz-0123", "aaaa-zzzzzz-0123-more"
    assert mask(f"x {long} y", [short, long]) == f"x {mask_secret(long)} y"


def test_the_exchanges_own_provider_key_is_masked_without_being_given():
    """The key of the provider an exchange went to is masked even when the caller gives no list of keys
    (after a reload that changed it, the request in flight still knows its own)."""
    from types import SimpleNamespace

    from bridgeproxy.proxy.exchange import Exchange
    from bridgeproxy.proxy.records import scrub
    from bridgeproxy.types import mask_secret
    own = "central-key-not-key-shaped-0123"
    ex = Exchange(request=None, started=0)
    ex.entry = SimpleNamespace(config=SimpleNamespace(key=own))
    assert scrub(f"echo {own}", ex) == f"echo {mask_secret(own)}"


def test_a_path_is_masked_before_it_is_cut_short():
    """A key across the 200th character of a path is masked whole, not cut in two and left half visible."""
    from bridgeproxy.proxy.records import mask, printable
    key = "AIzaSyD-not-key-shaped-0123456789abcdef"
    path = ("/v1/" + "x" * 180 + "/" + key).encode()
    shown = printable(path, lambda text: mask(text, [key]))
    assert len(shown) <= 200 and "0123456789" not in shown and "AIzaSyD-not" not in shown
    assert key[:15] in printable(path)  # without hiding, the cut would have left a part of it


def test_a_path_is_cut_at_its_first_question_mark():
    from bridgeproxy.proxy.records import printable
    assert printable(b"/v1/x?a=1?b=2") == "/v1/x"
