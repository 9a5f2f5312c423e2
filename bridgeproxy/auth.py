# -*- test-case-name: tests.test_auth -*-
"""
The built-in credential extractors (SPEC section 2) and the helper every
extractor should use to read a header.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from twisted.plugin import IPlugin
from zope.interface import implementer

from bridgeproxy.errors import BadRequest
from bridgeproxy.interfaces import IAuthExtractor, IConfigurable
from bridgeproxy.types import Credential


def header_key(name: str) -> bytes:
    """
    A header name as Twisted stores it (lower-case bytes), encoded once:
    Twisted would normalise a str name on every call otherwise.
    """
    key = _NAMES.get(name)
    if key is None:
        key = _NAMES[name] = name.lower().encode("ascii")
    return key


def single_header(request: Any, name: str) -> Optional[str]:
    """
    The value of header C{name}, trimmed; L{None} when absent or blank.

    @raise BadRequest: when the header was sent more than once with
        different values: guessing which one is meant is how a forged
        header wins.
    """
    values = request.requestHeaders.getRawHeaders(header_key(name))
    if not values:
        return None
    found = None
    for raw in values:
        value = raw.decode("latin-1").strip()
        if not value:
            continue
        if found is None:
            found = value
        elif value != found:
            raise BadRequest(f"the {name} header was sent more than once with different values")
    return found


_NAMES: dict[str, bytes] = {}


def bearer_token(value: Optional[str]) -> Optional[str]:
    """
    The token of an C{Authorization: Bearer <token>} value: scheme
    case-insensitive, exactly one token after it; anything else is L{None}.
    """
    if not value:
        return None
    parts = value.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return parts[1]


@implementer(IPlugin, IAuthExtractor, IConfigurable)
class CoderTokenExtractor:
    """
    C{coder-token}: the bridge token an AI proxy put in a header of its own
    (C{X-Coder-Token}; the names are C{[auth] coder_token_headers}).
    """

    name = "coder-token"

    def __init__(self, headers: Sequence[str] = ("X-Coder-Token",)):
        self.headers = tuple(headers)

    def configure(self, context: Any) -> "CoderTokenExtractor":
        return CoderTokenExtractor(context.config.auth.coder_token_headers)

    def extract(self, request: Any) -> Optional[Credential]:
        for header in self.headers:
            value = single_header(request, header)
            if value:
                return Credential(token=value, source=header.lower())
        return None


@implementer(IPlugin, IAuthExtractor)
class BearerExtractor:
    """C{authorization-bearer}: C{Authorization: Bearer <token>}."""

    name = "authorization-bearer"

    def extract(self, request: Any) -> Optional[Credential]:
        token = bearer_token(single_header(request, "Authorization"))
        if token:
            return Credential(token=token, source="authorization")
        return None


@implementer(IPlugin, IAuthExtractor)
class ApiKeyExtractor:
    """C{x-api-key}: the whole C{X-Api-Key} value (the Anthropic SDK's way)."""

    name = "x-api-key"

    def extract(self, request: Any) -> Optional[Credential]:
        value = single_header(request, "X-Api-Key")
        if value:
            return Credential(token=value, source="x-api-key")
        return None


#: Sources whose header the client uses for a provider key: a bridge token
#: found there is the client's only credential, so those headers are removed
#: and the configured provider key takes their place.
PROVIDER_KEY_SOURCES = frozenset({"authorization", "x-api-key"})


def extract_credential(extractors: Iterable[Any], request: Any) -> Optional[Credential]:
    """Run the extractor chain; the first credential found wins."""
    for extractor in extractors:
        credential = extractor.extract(request)
        if credential is not None and credential.token:
            return credential
    return None
