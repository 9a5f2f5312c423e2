"""
A Coder deployment stand-in: the users API (C{GET /api/v2/users/me},
C{GET /api/v2/users/<id>}) answering with the real API's JSON shapes,
authenticated by the C{Coder-Session-Token} header.  The same resource
serves the in-memory tests (through L{treq.testing.RequestTraversalAgent})
and the loopback ones (over HTTPS with a test CA).
"""

from __future__ import annotations

import json
import secrets
import string
import uuid
from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet import reactor, ssl
from twisted.web import server
from twisted.web.resource import Resource

ROLE_NAMES = {"owner": "Owner", "member": "Member", "auditor": "Auditor", "user-admin": "User Admin"}


def coder_token() -> str:
    """A token shaped like Coder's: a 10-character id, a dash, a 22-character secret."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(10)) + "-" + \
        "".join(secrets.choice(alphabet) for _ in range(22))


@dataclass
class Call:
    """One request the deployment received."""

    method: bytes
    path: bytes
    token: Optional[str]
    headers: dict


class FakeCoder(Resource):
    """
    Users and their tokens; answers as a Coder deployment does.

    @ivar fail_with: when set, every request gets this status (a deployment
        in trouble: 500, 502, 503).
    @ivar hold: when true, requests wait (for L{release}) instead of being answered.
    @ivar stall_body: when true, answers start (status, headers, a few bytes)
        and never finish.
    @ivar suspended_as_401: answer a suspended user's token with a 401
        "User is not active" (what coderd's API-key middleware does) instead
        of their user object.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.users: dict[str, dict] = {}
        self.tokens: dict[str, str] = {}
        self.calls: list[Call] = []
        self.fail_with: Optional[int] = None
        self.body_override: Optional[tuple[int, bytes]] = None
        self.hold = False
        self.held: list[Any] = []
        self.suspended_as_401 = False
        self.stall_body = False

    # -- the test's side ------------------------------------------------------------------------

    def add_user(self, username: str, status: str = "active", roles: tuple[str, ...] = ("member",),
                 user_id: Optional[str] = None) -> dict:
        """A user (the real API's C{codersdk.User} fields); returns its object."""
        user_id = user_id or str(uuid.uuid4())
        self.users[user_id] = {
            "id": user_id,
            "username": username,
            "name": username.title(),
            "email": f"{username}@example.com",
            "avatar_url": "",
            "created_at": "2026-01-05T10:00:00.000000Z",
            "updated_at": "2026-11-20T09:30:00.000000Z",
            "last_seen_at": "2026-11-24T16:00:00.000000Z",
            "status": status,
            "login_type": "password",
            "theme_preference": "",
            "organization_ids": ["6f3e9c1a-45d2-4b8e-9f01-2a3b4c5d6e7f"],
            "roles": [{"name": r, "display_name": ROLE_NAMES.get(r, r)} for r in roles],
        }
        return self.users[user_id]

    def add_token(self, user_id: str) -> str:
        """A new token for the user; returns it."""
        token = coder_token()
        self.tokens[token] = user_id
        return token

    def release(self) -> None:
        """Answer the held requests (as the deployment is now)."""
        held, self.held = self.held, []
        for request in held:
            if not request.finished and not getattr(request, "gone", False):
                request.write(self._answer(request))
                request.finish()

    def checks(self, path: bytes = b"/api/v2/users/me") -> int:
        """How many requests reached C{path}."""
        return sum(1 for call in self.calls if call.path == path)

    # -- the deployment's side ------------------------------------------------------------------

    def render_GET(self, request: Any) -> Any:
        token = _token(request)
        headers = {k.decode().lower(): [v.decode("latin-1") for v in vs]
                   for k, vs in request.requestHeaders.getAllRawHeaders()}
        self.calls.append(Call(request.method, request.path, token, headers))
        if self.stall_body:
            request.setResponseCode(200)
            request.setHeader(b"content-type", b"application/json")
            request.write(b'{"id": ')
            return server.NOT_DONE_YET
        if self.hold:
            self.held.append(request)
            request.notifyFinish().addErrback(lambda _: setattr(request, "gone", True))
            return server.NOT_DONE_YET
        return self._answer(request)

    def _answer(self, request: Any) -> bytes:
        if self.fail_with is not None:
            return _json(request, self.fail_with, {"message": "Internal error.", "detail": "database is down"})
        if self.body_override is not None:
            status, body = self.body_override
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"text/html")
            return body
        token = _token(request)
        if not token:
            return _json(request, 401, {
                "message": "Cookie \"coder_session_token\" or query parameter must be provided."})
        caller = self.users.get(self.tokens.get(token, ""))
        if caller is None:
            return _json(request, 401, {"message": "API key is invalid.",
                                        "detail": "The API key does not exist or has expired."})
        if caller["status"] == "suspended" and self.suspended_as_401:
            return _json(request, 401, {"message": f"User is not active (status = \"{caller['status']}\"). "
                                                   "Contact an admin to reactivate your account."})
        path = request.path.decode("latin-1")
        if path == "/api/v2/users/me":
            return _json(request, 200, caller)
        prefix = "/api/v2/users/"
        if path.startswith(prefix):
            wanted = path[len(prefix):]
            user = self.users.get(wanted) or next(
                (u for u in self.users.values() if u["username"] == wanted), None)
            if user is None:
                return _json(request, 404, {"message": "Resource not found or you do not have access to "
                                                       "this resource"})
            return _json(request, 200, user)
        return _json(request, 404, {"message": "Route not found."})


def _token(request: Any) -> Optional[str]:
    value = request.getHeader(b"coder-session-token")
    return value.decode("latin-1") if value else None


def _json(request: Any, status: int, obj: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(obj).encode()


def listen_tls(coder: FakeCoder, cert_path: Any, key_path: Any) -> Any:
    """Serve C{coder} over HTTPS on a loopback port; returns the listening port."""
    cert = ssl.PrivateCertificate.loadPEM(cert_path.read_text() + key_path.read_text())
    site = server.Site(coder)
    site.log = lambda request: None  # type: ignore[method-assign]
    return reactor.listenSSL(0, site, cert.options(), interface="127.0.0.1")
