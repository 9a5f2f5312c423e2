"""
A second bridge key where a client's own provider key goes (BYOK) is not
the client's key: it is refused, and never reaches the provider (a bridge
key never reaches an upstream), whoever's key it is.
"""

import json

import pytest

from bridgeproxy.types import Identity
from tests import memory
from tests.memory import TOKEN, USER_ID

OTHER = "bp_bob-bridge-key-9876543210fedcbaZYX"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


def two_users():
    return memory.gateway(identities=memory.Identities({
        TOKEN: Identity(USER_ID, "alice"), OTHER: Identity("9a8b7c6d-0000-4000-8000-000000000002", "bob")}))


@pytest.mark.parametrize("path,body,headers", [
    ("/openai/v1/chat/completions", CHAT, {"Authorization": f"Bearer {OTHER}"}),
    ("/anthropic/v1/messages", MESSAGES, {"X-Api-Key": OTHER}),
    ("/anthropic/v1/messages", MESSAGES, {"Authorization": f"Bearer {OTHER}"}),
    ("/openai/v1/chat/completions", CHAT, {"Authorization": "Bearer bp_not-even-a-known-key-0123456789"}),
])
def test_another_bridge_key_as_the_provider_key_is_refused_and_not_forwarded(path, body, headers):
    """
    X-Coder-Token authenticates; another bridge key in Authorization or
    X-Api-Key: 400 in the provider's shape, and the provider sees nothing.
    """
    g = two_users()
    answer = g.send("POST", path, body, {"X-Coder-Token": TOKEN, **headers})
    assert answer.status == 400
    error = answer.json()["error"]
    assert error["message"].startswith("Send one bridge key")
    assert ("type" in answer.json()) is path.startswith("/anthropic")  # the provider's own error shape
    assert g.upstream.seen == []
    assert OTHER not in answer.body.decode()


def test_a_clients_own_provider_key_still_goes_through():
    """A provider key that is not a bridge key is the client's own, as before (BYOK)."""
    g = two_users()
    answer = g.send("POST", "/openai/v1/chat/completions", CHAT,
                    {"X-Coder-Token": TOKEN, "Authorization": "Bearer sk-clients-own-key-0123456789"})
    assert answer.status == 200
    assert g.upstream.seen[0].header("authorization") == b"Bearer sk-clients-own-key-0123456789"
    assert TOKEN not in json.dumps([v.decode() for vs in g.upstream.seen[0].headers.values() for v in vs])
