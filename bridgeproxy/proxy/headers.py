# -*- test-case-name: tests.test_headers,tests.test_byok_bridge_key -*-
"""
Header hygiene (SPEC section 3): what reaches the upstream, and what of the
upstream's answer reaches the client.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from twisted.web.http_headers import Headers

from bridgeproxy.auth import PROVIDER_KEY_SOURCES, bearer_token, single_header
from bridgeproxy.errors import BadRequest, NotConfigured, PermissionDenied
from bridgeproxy.store.database import TOKEN_PREFIX
from bridgeproxy.types import Credential, Initiator

#: Hop-by-hop headers (RFC 9110 section 7.6.1), never forwarded either way.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"trailers", b"transfer-encoding", b"upgrade",
})

#: Set for the upstream by the agent, or decided by the credential.
_REPLACED = frozenset({b"host", b"content-length", b"authorization", b"x-api-key"})

ACTOR_ID = b"X-AI-Bridge-Actor-Id"
ACTOR_USERNAME = b"X-AI-Bridge-Actor-Metadata-Username"


def _connection_tokens(headers: Headers) -> frozenset[bytes]:
    """Headers that C{Connection} names as hop-by-hop for this message."""
    tokens = set()
    for value in headers.getRawHeaders(b"connection", ()):
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return frozenset(tokens)


def _dropped(name: bytes, connection: frozenset[bytes]) -> bool:
    return name in HOP_BY_HOP or name.startswith(b"proxy-") or name in connection


def upstream_headers(
    request: Any,
    *,
    intercepted: bool,
    bridge_headers: Iterable[str] = (),
) -> Headers:
    """
    The client's headers, cleaned for the upstream: hop-by-hop, C{Host},
    C{Content-Length}, credentials and every C{X-Coder-*} removed (and
    C{Accept-Encoding} on intercepted routes); everything else unchanged.

    @param bridge_headers: more header names of the bridge's own to remove
        (the configured credential headers).
    """
    incoming: Headers = request.requestHeaders
    connection = _connection_tokens(incoming)
    own = {h.lower().encode("latin-1") for h in bridge_headers}
    out = Headers()
    for name, values in incoming.getAllRawHeaders():
        lower = name.lower()
        if (
            _dropped(lower, connection)
            or lower in _REPLACED
            or lower.startswith(b"x-coder-")
            or lower in own
            or (intercepted and lower == b"accept-encoding")
        ):
            continue
        out.setRawHeaders(name, values)
    return out


def apply_credential(
    headers: Headers,
    request: Any,
    credential: Credential,
    entry: Any,
    allow_byok: bool,
) -> tuple[str, Optional[str]]:
    """
    Put the right provider key in C{headers} (SPEC section 3's table).

    @param entry: the provider and its configuration (its key).
    @return: C{(kind, key)}: C{"centralized"} or C{"byok"} and the key sent
        (for the masked hint; never log it), L{None} when the provider
        needs none and none is configured.
    @raise BadRequest: a second bridge key where a client's own key goes.
    @raise PermissionDenied: a client's own key when BYOK is not allowed.
    @raise NotConfigured: no provider key configured where one is needed.
    """
    provider = entry.provider
    if credential.source not in PROVIDER_KEY_SOURCES:
        authorization = bearer_token(single_header(request, "Authorization"))
        api_key = single_header(request, "X-Api-Key")
        # The bridge token sent again where a provider key goes is not the
        # client's own key: it must not be forwarded as one.
        if authorization == credential.token:
            authorization = None
        if api_key == credential.token:
            api_key = None
        # Nor is another bridge key (another user's, or another of the
        # client's): no provider key looks like one, and a bridge key never
        # reaches an upstream.
        if any(key is not None and key.startswith(TOKEN_PREFIX) for key in (authorization, api_key)):
            raise BadRequest("Send one bridge key: a second one is not a provider key, and is not forwarded.")
        if authorization or api_key:
            if not allow_byok:
                raise PermissionDenied(
                    "Using your own provider key is not allowed by this gateway.", reason="byok_disabled")
            return "byok", provider.set_client_key(headers, authorization, api_key)
    central_key = entry.config.key
    if not central_key:
        if provider.key_required:
            raise NotConfigured(f"No {entry.name} key is configured on this gateway.")
        return "centralized", None
    provider.set_central_key(headers, central_key)
    return "centralized", central_key


def drop_token(headers: Headers, token: str) -> int:
    """
    Remove every header whose value contains the bridge C{token} (a client
    may repeat it anywhere: a cookie, a header of its own).  The bridge
    token never reaches an upstream.

    @return: how many headers were removed.
    """
    needle = token.encode("latin-1", "replace")
    found = [name for name, values in headers.getAllRawHeaders() if any(needle in v for v in values)]
    for name in found:
        headers.removeHeader(name)
    return len(found)


def drop_token_from_query(query: bytes, token: str) -> bytes:
    """C{query} without the parameters that carry the bridge C{token}."""
    needle = token.encode("latin-1", "replace")
    if needle not in query:
        return query
    return b"&".join(part for part in query.split(b"&") if needle not in part)


def add_actor_headers(headers: Headers, initiator: Initiator) -> None:
    """Tell the upstream who the actor is (C{[upstream] send_actor_headers})."""
    headers.setRawHeaders(ACTOR_ID, [initiator.user_id.encode("latin-1")])
    if initiator.username:
        headers.setRawHeaders(ACTOR_USERNAME, [initiator.username.encode("utf-8")])


def add_forwarded(headers: Headers, request: Any) -> None:
    """Append this hop to C{X-Forwarded-For} / C{X-Forwarded-Proto}."""
    peer = request.getClientAddress()
    host = getattr(peer, "host", None)
    if host:
        chain = b", ".join(headers.getRawHeaders(b"x-forwarded-for", ()))
        value = host.encode("ascii")
        headers.setRawHeaders(b"X-Forwarded-For", [chain + b", " + value if chain else value])
    proto = b"https" if request.isSecure() else b"http"
    chain = b", ".join(headers.getRawHeaders(b"x-forwarded-proto", ()))
    headers.setRawHeaders(b"X-Forwarded-Proto", [chain + b", " + proto if chain else proto])


def copy_response_headers(source: Headers, target: Headers) -> None:
    """
    Copy the upstream's response headers to the client's, less hop-by-hop
    and C{Content-Length} (the relay decides that).
    """
    connection = _connection_tokens(source)
    for name, values in source.getAllRawHeaders():
        lower = name.lower()
        if _dropped(lower, connection) or lower == b"content-length":
            continue
        target.setRawHeaders(name, values)
