# -*- test-case-name: tests.test_clients -*-
"""
Client detection (SPEC section 5): a table of rules, first match wins.

The table is data: adding a client is adding a row.  Detectors from plugins
(L{bridgeproxy.IClientDetector}) run before it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from zope.interface import implementer

from bridgeproxy.auth import header_key
from bridgeproxy.interfaces import IClientDetector
from bridgeproxy.types import UNKNOWN_CLIENT, ClientInfo

_MAX_SESSION_ID = 256


def _header(request: Any, name: str) -> Optional[str]:
    values = request.requestHeaders.getRawHeaders(header_key(name))
    if not values:
        return None
    return values[0][:_MAX_SESSION_ID].decode("latin-1").strip() or None


def claude_code_body_session(body: Optional[dict]) -> Optional[str]:
    """
    Claude Code's session id from C{metadata.user_id}: a JSON string with
    C{session_id}, or the legacy C{user_<hash>_account_<uuid>_session_<id>}.
    """
    if not isinstance(body, dict):
        return None
    metadata = body.get("metadata")
    if not isinstance(metadata, dict):
        return None
    user_id = metadata.get("user_id")
    if not isinstance(user_id, str) or not user_id:
        return None
    if user_id.lstrip().startswith("{"):
        try:
            parsed = json.loads(user_id)
        except ValueError:
            return None
        session = parsed.get("session_id") if isinstance(parsed, dict) else None
        return session[:_MAX_SESSION_ID] if isinstance(session, str) and session else None
    marker = "_session_"
    if marker in user_id:
        session = user_id.rsplit(marker, 1)[1]
        return session[:_MAX_SESSION_ID] or None
    return None


@dataclass(frozen=True)
class ClientRule:
    """
    One row of the client table.

    @ivar ua_prefixes: lower-case prefixes of the User-Agent that match.
    @ivar originators: lower-case C{Originator} header values that match.
    @ivar header_present: a header whose mere presence matches.
    @ivar session_headers: headers holding the session id, in preference order.
    @ivar body_session: reads a session id from the parsed body when no
        header had one.
    """

    name: str
    ua_prefixes: tuple[str, ...] = ()
    originators: tuple[str, ...] = ()
    header_present: Optional[str] = None
    session_headers: tuple[str, ...] = ()
    body_session: Optional[Callable[[Optional[dict]], Optional[str]]] = None

    def matches(self, user_agent: str, originator: str, request: Any) -> bool:
        if self.ua_prefixes and user_agent.startswith(self.ua_prefixes):
            return True
        if self.originators and originator in self.originators:
            return True
        if self.header_present is not None and request.requestHeaders.hasHeader(
                header_key(self.header_present)):
            return True
        return False

    def client(self, request: Any, body: Optional[dict]) -> ClientInfo:
        for header in self.session_headers:
            session = _header(request, header)
            if session:
                return ClientInfo(self.name, session)
        if self.body_session is not None:
            return ClientInfo(self.name, self.body_session(body))
        return ClientInfo(self.name)


CLIENT_TABLE: tuple[ClientRule, ...] = (
    ClientRule("Mux", ua_prefixes=("mux/", "xum/"), session_headers=("X-Mux-Workspace-Id",)),
    ClientRule("Claude Code", ua_prefixes=("claude",), session_headers=("X-Claude-Code-Session-Id",),
               body_session=claude_code_body_session),
    ClientRule("Codex", ua_prefixes=("codex",), session_headers=("session-id", "session_id")),
    ClientRule("Zed", ua_prefixes=("zed/",)),
    ClientRule("GitHub Copilot (VS Code)", ua_prefixes=("githubcopilotchat/",),
               session_headers=("x-interaction-id",)),
    ClientRule("GitHub Copilot (CLI)", ua_prefixes=("copilot/",), session_headers=("X-Client-Session-Id",)),
    ClientRule("Kilo Code", ua_prefixes=("kilo-code/",), originators=("kilo-code",),
               session_headers=("X-KILOCODE-TASKID",)),
    ClientRule("Roo Code", ua_prefixes=("roo-code/",), originators=("roo-code",)),
    ClientRule("Coder Agents", ua_prefixes=("coder-agents/",), session_headers=("X-Coder-Chat-Id",)),
    ClientRule("Charm Crush", ua_prefixes=("charm crush/", "charm-crush/")),
    ClientRule("Cursor", header_present="X-Cursor-Client-Version"),
    ClientRule("OpenCode", ua_prefixes=("opencode/",), session_headers=("X-OpenCode-Session", "x-session-affinity")),
    ClientRule("Junie", ua_prefixes=("junie:",)),
)


@implementer(IClientDetector)
class TableDetector:
    """Detects clients from a table of L{ClientRule}s."""

    name = "table"

    def __init__(self, table: Iterable[ClientRule] = CLIENT_TABLE):
        self.table = tuple(table)

    def detect(self, request: Any, body: Optional[dict]) -> Optional[ClientInfo]:
        user_agent = (_header(request, "User-Agent") or "").lower()
        originator = (_header(request, "Originator") or "").lower()
        for rule in self.table:
            if rule.matches(user_agent, originator, request):
                return rule.client(request, body)
        return None


def detect_client(detectors: Iterable[Any], request: Any, body: Optional[dict]) -> ClientInfo:
    """Run the detectors in order; L{UNKNOWN_CLIENT} when none recognises it."""
    for detector in detectors:
        found = detector.detect(request, body)
        if found is not None:
            return found
    return UNKNOWN_CLIENT
