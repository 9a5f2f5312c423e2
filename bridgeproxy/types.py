# -*- test-case-name: tests.test_types -*-
"""
Small, frozen data types that travel through the request pipeline.

None of them ever shows a secret in its C{repr}: a token can end up in a
traceback or a log line by accident, so the field that holds it is excluded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Optional


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
    #: What it cost, in micro-units of the price table's currency (L{bridgeproxy.prices});
    #: L{None} when nothing was priced: no usage, or a model with no price.
    cost_micros: Optional[int] = None
    #: How many times it was sent upstream (more than 1 after retries; 0 when
    #: refused before); L{None} in records made before this was recorded.
    attempts: Optional[int] = None
    #: Milliseconds from the request's arrival to the first byte of the answer's body
    #: relayed to the client; L{None} when no body was relayed (a refusal, an error
    #: answer read whole) and in records made before this was recorded.
    ttfb_ms: Optional[int] = None

    @property
    def duration_ms(self) -> int:
        """How long the request took, in whole milliseconds."""
        return int(round((self.ended_at - self.started_at) * 1000))


# -- an interception as data: declared once, by the dataclass above -----------------------------

#: The keys of a record as data (the store's columns, the spool's and the
#: API's JSON), in order: the fields of L{Interception}, then the derived
#: C{duration_ms}.
RECORD_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Interception)) + ("duration_ms",)
_BOOLEANS = frozenset(f.name for f in fields(Interception) if f.type in ("bool", bool))


def record_dict(record: Interception) -> dict[str, Any]:
    """
    A record as JSON-ready data (the spool's lines, the API's and the
    command line's JSON): every field, C{duration_ms}, and each tool call as
    C{{"name", "arguments", "id"}}.
    """
    data = {key: getattr(record, key) for key in RECORD_KEYS}
    data["tool_calls"] = [{"name": t.name, "arguments": t.arguments, "id": t.call_id} for t in record.tool_calls]
    return data


def record_from_dict(data: Mapping[str, Any]) -> Interception:
    """
    The record C{data} describes (as L{record_dict} made it; a tool call's
    id may also be spelt C{call_id}, as spool files of earlier versions do).

    @raise ValueError: when C{data} is not a record.
    """
    try:
        values = {f.name: data[f.name] for f in fields(Interception) if f.name in data}
        values["tool_calls"] = tuple(
            ToolCall(name=t["name"], arguments=t.get("arguments", ""), call_id=t.get("id", t.get("call_id")))
            for t in data.get("tool_calls") or ())
        return Interception(**values)
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"not an interception record: {e}") from None


def record_row(record: Interception) -> tuple:
    """A record as a row of the store, in L{RECORD_KEYS} order (booleans as 0/1, tool calls as JSON text)."""
    data = record_dict(record)
    return tuple(
        int(value) if key in _BOOLEANS else
        (json.dumps(value) if value else "[]") if key == "tool_calls" else value
        for key, value in data.items())


def row_dict(row: tuple) -> dict[str, Any]:
    """A row of the store (in L{RECORD_KEYS} order) as L{record_dict}'s data."""
    data = dict(zip(RECORD_KEYS, row))
    for key in _BOOLEANS:
        data[key] = bool(data[key])
    data["tool_calls"] = json.loads(data["tool_calls"] or "[]")
    return data
