# -*- test-case-name: tests.test_pipeline,tests.test_records -*-
"""
What an exchange becomes in the audit trail: its L{Interception}, and the
masking of the secrets it knows out of any text it records.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Optional

from bridgeproxy.proxy.exchange import Exchange
from bridgeproxy.types import Interception, Usage, mask_secret

#: An error message is recorded up to this many characters.
MAX_ERROR_CHARS = 1000
#: A user agent is recorded up to this many characters.
MAX_USER_AGENT_CHARS = 512


def printable(path: bytes, hide: Callable[[str], str] = str) -> str:
    """
    A path for a log line or message: no query string, the secrets in it
    hidden by C{hide} (before it is cut short, so that no key is cut in
    two), at most 200 characters, no control characters.
    """
    text = hide(path.partition(b"?")[0].decode("latin-1"))[:200]
    return "".join(c if c.isprintable() else "?" for c in text)


#: What a provider key or a bridge key looks like, wherever it comes from
#: (a client's own key of another provider, pasted into a path): a word of
#: its own (not the tail of another), 20 characters or more after the
#: prefix (a bridge key has 43, OpenAI's and Anthropic's more).
_KEY_SHAPED = re.compile(r"(?<![A-Za-z0-9_-])(?:sk-|bp_)[A-Za-z0-9_-]{20,}")


def mask(text: str, secrets: Iterable[Optional[str]]) -> str:
    """
    C{text} with each of C{secrets} (of six characters or more) masked, the
    longest first (so that no tail of a longer one is left when a shorter
    one is part of it), and anything shaped like a provider's or a
    bridge's key.
    """
    for secret in sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, mask_secret(secret))
    return _KEY_SHAPED.sub(lambda match: mask_secret(match.group()), text)


def scrub(text: str, ex: Exchange, secrets: Iterable[str] = ()) -> str:
    """
    C{text} with the secrets this exchange knows masked (an upstream may echo
    them), and those in C{secrets} (every provider's key), and anything
    shaped like a provider's or a bridge's key.
    """
    central = ex.entry.config.key if ex.entry is not None else None
    return mask(text, (ex.credential.token if ex.credential else None, ex.upstream_key, central, *secrets))


def interception(ex: Exchange, *, ended_at: float, status: str, error: Optional[str],
                 usage: Optional[Usage], http_status: Optional[int], max_prompt_chars: int,
                 prices: Any = None, secrets: Iterable[str] = ()) -> Interception:
    """
    The record of C{ex}.

    @param status: how it ended; a stream whose parser did not see its end
        is C{incomplete} even when the relay ended cleanly.
    @param http_status: the status the client got, if it got one.
    @param prices: the L{bridgeproxy.prices.PriceTable} that prices C{usage}
        (no cost without one, or without usage).
    @param secrets: keys to mask in what is recorded, besides the exchange's own.
    """
    initiator = ex.initiator
    parsed = ex.parsed or {}
    prompt = None
    if parsed:  # only an intercepted route's body is parsed: its provider and route are known
        prompt = ex.entry.provider.prompt_of(ex.route, parsed)
        if prompt is not None:
            prompt = prompt[:max_prompt_chars]
    model = (usage.model if usage is not None and usage.model else None) or (
        parsed.get("model") if isinstance(parsed.get("model"), str) else None)
    request = ex.request
    user_agent = request.requestHeaders.getRawHeaders(b"user-agent")
    provider_name = ex.entry.name if ex.entry is not None else "unknown"
    cost = prices.cost(provider_name, model, usage) if prices is not None and usage is not None else None
    first_byte = getattr(ex.relay, "first_at", None)
    return Interception(
        id=ex.id,
        started_at=ex.started,
        ended_at=ended_at,
        provider=provider_name,
        route=ex.route or printable(ex.subpath, lambda text: scrub(text, ex, secrets)),
        intercepted=bool(ex.route),
        method=request.method.decode("latin-1"),
        model=model,
        streamed=ex.streamed,
        client=ex.client.name,
        client_session_id=ex.client.session_id,
        user_agent=user_agent[0].decode("latin-1")[:MAX_USER_AGENT_CHARS] if user_agent else None,
        initiator_id=initiator.user_id if initiator else None,
        initiator_username=initiator.username if initiator else None,
        credential_user_id=initiator.credential_user_id if initiator else None,
        credential_kind=ex.credential_kind,
        credential_hint=mask_secret(ex.upstream_key) if ex.upstream_key else None,
        upstream_status=ex.upstream_status,
        http_status=http_status,
        input_tokens=usage.input_tokens if usage else 0,
        output_tokens=usage.output_tokens if usage else 0,
        cache_read_tokens=usage.cache_read_tokens if usage else 0,
        cache_write_tokens=usage.cache_write_tokens if usage else 0,
        prompt=prompt,
        tool_calls=usage.tool_calls if usage else (),
        stop_reason=usage.stop_reason if usage else None,
        error=scrub(error, ex, secrets)[:MAX_ERROR_CHARS] if error else None,
        # Only a stream can be cut before its terminal event; a blocking answer
        # the parser could not read (an HTML error page) is what it is.
        status="incomplete" if (status == "ok" and ex.streamed and usage is not None and not usage.complete)
        else status,
        cost_micros=cost,
        attempts=ex.attempts,
        ttfb_ms=int(round((first_byte - ex.started) * 1000)) if first_byte is not None else None,
    )
