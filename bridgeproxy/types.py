# -*- test-case-name: tests.test_types -*-
"""
Small, frozen data types that travel through the request pipeline.

None of them ever shows a secret in its C{repr}: a token can end up in a
traceback or a log line by accident, so the field that holds it is excluded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


def mask_secret(secret: str) -> str:
    """
    A hint of C{secret} safe to record and show: a few characters from each
    end, never more than a quarter of it, the middle elided.

    >>> mask_secret("sk-ant-0123456789abcdef0123456789")
    'sk-a...789'
    """
    n = len(secret)
    if n < 8:
        return "..."
    shown = max(1, min(4, n // 8))
    return f"{secret[:shown]}...{secret[-max(1, shown - 1):]}"


@dataclass(frozen=True)
class Credential:
    """
    A credential found on a request by an L{IAuthExtractor}.

    @ivar token: the secret itself; never shown by C{repr}.
    @ivar source: where it was found, lower-cased: a header name such as
        C{"x-coder-token"}, C{"authorization"}, C{"x-api-key"}, or a
        plugin's own word (C{"cookie:session"}).
    """

    token: str = field(repr=False)
    source: str

    @property
    def hint(self) -> str:
        """A masked hint of the token, safe for logs."""
        return mask_secret(self.token)


@dataclass(frozen=True)
class Identity:
    """
    Who a bridge credential belongs to, as an identity backend knows it.

    @ivar key_id: the id of the key (not the key), if the backend has one.
    @ivar disabled: a disabled user's requests are refused with 403.
    """

    user_id: str
    username: Optional[str] = None
    key_id: Optional[str] = None
    disabled: bool = False
    admin: bool = False


@dataclass(frozen=True)
class Initiator:
    """
    Who initiated a request, as the resolver chain decided.

    @ivar user_id: the initiating user's id (a UUID).
    @ivar username: their name, where known.
    @ivar credential_user_id: whose credential the request carried; differs
        from C{user_id} when a delegating service account acted for a user.
    @ivar resolved_by: the name of the resolver that last set it.
    """

    user_id: str
    username: Optional[str] = None
    credential_user_id: Optional[str] = None
    resolved_by: str = ""

    @property
    def delegated(self) -> bool:
        """Whether the initiator is somebody other than the token's owner."""
        return (
            self.credential_user_id is not None
            and self.credential_user_id != self.user_id
        )


@dataclass(frozen=True)
class ClientInfo:
    """
    The client program that sent a request.

    @ivar name: the recorded name (C{"Claude Code"}, C{"Codex"}, C{"Unknown"}).
    @ivar session_id: the client's own session id, where it sends one.
    """

    name: str
    session_id: Optional[str] = None


UNKNOWN_CLIENT = ClientInfo("Unknown")


@dataclass(frozen=True)
class ToolCall:
    """A tool call the model made: its name and its (JSON text) arguments."""

    name: str
    arguments: str = ""
    call_id: Optional[str] = None


@dataclass(frozen=True)
class Usage:
    """What a provider's answer said about itself, as its parser read it."""

    model: Optional[str] = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    stop_reason: Optional[str] = None
    tool_calls: tuple[ToolCall, ...] = ()
    error: Optional[str] = None
    complete: bool = True


@dataclass(frozen=True)
class Interception:
    """
    One proxied request, as recorded (SPEC section 7).

    Times are POSIX seconds; C{duration_ms} is derived from them.
    """

    id: str
    started_at: float
    ended_at: float
    provider: str
    route: str
    intercepted: bool
    method: str
    model: Optional[str]
    streamed: bool
    client: str
    client_session_id: Optional[str]
    user_agent: Optional[str]
    initiator_id: Optional[str]
    initiator_username: Optional[str]
    credential_user_id: Optional[str]
    credential_kind: Optional[str]
    credential_hint: Optional[str]
    upstream_status: Optional[int]
    #: The status the client got (the upstream's, relayed, or the gateway's own refusal).
    http_status: Optional[int] = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    prompt: Optional[str] = None
    tool_calls: tuple[ToolCall, ...] = ()
    stop_reason: Optional[str] = None
    error: Optional[str] = None
    status: str = "ok"

    @property
    def duration_ms(self) -> int:
        """How long the request took, in whole milliseconds."""
        return int(round((self.ended_at - self.started_at) * 1000))
