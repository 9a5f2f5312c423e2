# -*- test-case-name: tests.test_errors,tests.test_pipeline -*-
"""
Typed refusals.  A chain step raises one of these to refuse a request; one
place (L{bridgeproxy.proxy.errors}) turns it into the provider's error shape.

Messages are shown to clients: never put a credential in one.
"""

from __future__ import annotations


class BridgeError(Exception):
    """
    A refusal with an HTTP status.

    @cvar status: the HTTP status code the client gets.
    @cvar kind: a provider-neutral error kind; each provider maps it to its
        own error C{type} (OpenAI C{invalid_request_error}, Anthropic
        C{authentication_error}, ...).
    """

    status = 500
    kind = "api_error"
    #: The interception's C{status} when this ends an authenticated request.
    record_status = "error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})


class BadRequest(BridgeError):
    """The request is malformed or ambiguous (400)."""

    status = 400
    kind = "invalid_request"
    record_status = "refused"


class AuthenticationFailed(BridgeError):
    """No credential, or one that is unknown, expired or revoked (401)."""

    status = 401
    kind = "authentication"
    record_status = "refused"

    def __init__(self, message: str, *, reason: str = "invalid", **kw):
        super().__init__(message, **kw)
        self.reason = reason


class PermissionDenied(BridgeError):
    """A known credential that may not do this (403)."""

    status = 403
    kind = "permission"
    record_status = "refused"

    def __init__(self, message: str, *, reason: str = "forbidden", **kw):
        super().__init__(message, **kw)
        self.reason = reason


class NotFound(BridgeError):
    """No route for this path (404)."""

    status = 404
    kind = "not_found"
    record_status = "refused"


class PayloadTooLarge(BridgeError):
    """The request body is over the configured limit (413)."""

    status = 413
    kind = "request_too_large"
    record_status = "refused"


class UpgradeNotSupported(BridgeError):
    """A WebSocket attempt (426): answered at once so the client falls back to HTTPS."""

    status = 426
    kind = "invalid_request"
    record_status = "refused"


class UpstreamUnavailable(BridgeError):
    """The upstream could not be reached (502)."""

    status = 502
    kind = "api_error"
    record_status = "upstream_unreachable"


class UpstreamTimeout(BridgeError):
    """The upstream stalled past the configured timeout (504)."""

    status = 504
    kind = "timeout"
    record_status = "timeout"


class Overloaded(BridgeError):
    """More requests in flight than C{[limits] max_concurrency} (503)."""

    status = 503
    kind = "overloaded"
    record_status = "refused"


class ShuttingDown(BridgeError):
    """A request the shutdown cut before the upstream answered (503)."""

    status = 503
    kind = "overloaded"
    record_status = "shutdown"


class RateLimited(BridgeError):
    """An initiator over C{[limits] per_initiator_rps} (429, with Retry-After)."""

    status = 429
    kind = "rate_limit"
    record_status = "refused"


class CircuitOpen(BridgeError):
    """
    The provider's circuit breaker is open (it failed too often lately): 503
    at once, with C{Retry-After}, and the provider is not asked.
    """

    status = 503
    kind = "overloaded"
    record_status = "refused"
    reason = "circuit_open"


class NotConfigured(BridgeError):
    """The bridge lacks what it needs to serve this (503)."""

    status = 503
    kind = "api_error"
    record_status = "refused"


class IdentityUnavailable(BridgeError):
    """
    The identity backend could not check a credential it has no answer for
    (a Coder deployment that is down or answers nonsense): 503, with
    C{Retry-After}.
    """

    status = 503
    kind = "api_error"
    record_status = "refused"
    reason = "identity_unavailable"


#: Each neutral error kind in the OpenAI error shape: C{(type, code)}.
OPENAI_ERRORS = {
    "invalid_request": ("invalid_request_error", None),
    "authentication": ("invalid_request_error", "invalid_api_key"),
    "permission": ("permission_error", "forbidden"),
    "not_found": ("invalid_request_error", "unknown_url"),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit": ("rate_limit_error", "rate_limit_exceeded"),
    # OpenAI's own type and code for an account whose quota is spent (not a passing rate limit).
    "budget": ("insufficient_quota", "insufficient_quota"),
    "overloaded": ("server_error", "overloaded"),
    "timeout": ("server_error", "upstream_timeout"),
    "api_error": ("server_error", None),
}


def openai_error(kind: str, message: str) -> dict:
    """
    An error in the OpenAI shape (C{{"error": {"message", "type", "param",
    "code"}}}): OpenAI's own, and the gateway's shape where no provider is
    known (most clients read it).
    """
    type_, code = OPENAI_ERRORS.get(kind, OPENAI_ERRORS["api_error"])
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class ConfigError(Exception):
    """A configuration file or plugin selection that cannot be used."""
