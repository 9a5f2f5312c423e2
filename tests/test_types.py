"""
The pipeline's data types (L{bridgeproxy.types}): secrets never shown, the
masked hint, delegation and durations as recorded.
"""

from __future__ import annotations

import pytest

from bridgeproxy.types import (
    UNKNOWN_CLIENT,
    ClientInfo,
    Credential,
    Identity,
    Initiator,
    Interception,
    ToolCall,
    Usage,
    mask_secret,
)


@pytest.mark.parametrize("secret, hint", [
    ("", "..."), ("1234567", "..."),
    ("12345678", "1...8"), ("0123456789abcdef", "01...f"), ("0123456789abcdef01234567", "012...67"),
    ("sk-ant-0123456789abcdef0123456789", "sk-a...789"), ("x" * 200, "xxxx...xxx"),
])
def test_mask_secret(secret, hint):
    """Short secrets show nothing; longer ones a few characters from each end (at most 4 and 3), never more."""
    assert mask_secret(secret) == hint


def test_mask_never_shows_more_than_a_quarter():
    """For every length the hint shows at most a quarter of the secret."""
    for n in range(0, 80):
        secret = "".join(chr(0x41 + i % 26) for i in range(n))
        shown = len(mask_secret(secret)) - 3
        assert shown <= n // 4, n


def test_credential_hides_its_token():
    """A credential's repr never contains the token; its hint is the masked token."""
    credential = Credential("bp_secret-token-value-123", "authorization")
    assert "bp_secret" not in repr(credential) and "authorization" in repr(credential)
    assert credential.hint == "bp_...23"


def test_delegated_only_when_someone_else_holds_the_credential():
    """An initiator is delegated when the credential belongs to another user; unknown holder is not delegation."""
    assert Initiator("a", credential_user_id="b").delegated is True
    assert Initiator("a", credential_user_id="a").delegated is False
    assert Initiator("a").delegated is False


def test_defaults():
    """Defaults as the pipeline relies on them: unknown client, empty usage complete, identities enabled."""
    assert UNKNOWN_CLIENT == ClientInfo("Unknown", None)
    assert Usage() == Usage(None, 0, 0, 0, 0, None, (), None, True)
    assert Identity("u") == Identity("u", None, None, False, False)
    assert Initiator("u") == Initiator("u", None, None, "")
    assert ToolCall("n") == ToolCall("n", "", None)


def interception(started, ended):
    return Interception(id="i", started_at=started, ended_at=ended, provider="p", route="r", intercepted=True,
                        method="POST", model=None, streamed=False, client="c", client_session_id=None,
                        user_agent=None, initiator_id=None, initiator_username=None, credential_user_id=None,
                        credential_kind=None, credential_hint=None, upstream_status=None)


@pytest.mark.parametrize("started, ended, ms", [(10.0, 11.25, 1250), (10.0, 10.0004, 0), (10.0, 10.0006, 1),
                                                (0.0, 2.0, 2000)])
def test_duration_is_whole_milliseconds_rounded(started, ended, ms):
    """The recorded duration is the elapsed time in milliseconds, rounded to the nearest whole one."""
    assert interception(started, ended).duration_ms == ms


def test_interception_defaults():
    """An interception records zero tokens, no prompt or tools, status ok, unless told otherwise."""
    record = interception(1.0, 2.0)
    assert (record.http_status, record.input_tokens, record.output_tokens, record.cache_read_tokens,
            record.cache_write_tokens, record.prompt, record.tool_calls, record.stop_reason, record.error,
            record.status) == (None, 0, 0, 0, 0, None, (), None, None, "ok")
