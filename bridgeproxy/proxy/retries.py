# -*- test-case-name: tests.test_retries -*-
"""
When a request is sent to the provider again, and after how long.

Only where it is safe: the request body is in memory, so it can be sent
again; and only outcomes that say the provider did not take the request
are retried — a connect failure (nothing was sent), or a 429, 502 or 503
answer.  Either comes before any byte of an answer reached the client; once
the bridge starts relaying an answer it never sends the request again.

The wait is the provider's own C{retry-after-ms} or C{Retry-After} when it
sends one (up to C{retry_after_cap}: a longer one is not retried, and the
client gets the answer with its C{Retry-After}), else an exponential
backoff with jitter, measured on the injected clock.
"""

from __future__ import annotations

import math
import random as _random
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Optional

from twisted.internet.error import ConnectError
from twisted.python.failure import Failure

from bridgeproxy.config import RetriesConfig

#: The answers that say "not now" rather than "no".
RETRIED_STATUSES = frozenset({429, 502, 503})


def retry_after(headers: Any, now: float) -> Optional[float]:
    """
    The wait an answer asks for, in seconds: C{retry-after-ms} (OpenAI's),
    else C{Retry-After} in seconds or as an HTTP date; L{None} when it asks
    for none (or says something unreadable).
    """
    values = headers.getRawHeaders(b"retry-after-ms")  # pragma: no mutate - header names are case-insensitive
    if values:
        try:
            wait = float(values[0])
        except ValueError:
            pass
        else:
            if 0 <= wait < math.inf:
                return wait / 1000
    values = headers.getRawHeaders(b"retry-after")  # pragma: no mutate - header names are case-insensitive
    if not values:
        return None
    text = values[0].decode("latin-1").strip()  # pragma: no mutate - codec names are case-insensitive
    try:
        wait = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - now)
    return wait if 0 <= wait < math.inf else None


def connect_failure(failure: Failure) -> bool:
    """Whether C{failure} happened before the request was sent: no connection could be made."""
    # Name resolution fails with an OSError (socket.gaierror, or "no address").
    return failure.check(ConnectError, OSError) is not None


class Retries:
    """
    The retry policy of C{[retries]}.

    @param clock: whose C{seconds()} dates a C{Retry-After} given as a date.
    @param random: a source of floats in [0, 1) for the jitter.
    """

    def __init__(self, config: RetriesConfig, clock: Any, random: Callable[[], float] = _random.random):
        self.config = config
        self._clock = clock
        self.random = random

    def after_answer(self, attempts: int, code: int, headers: Any) -> Optional[float]:
        """
        After the answer C{code} (with C{headers}) to the last of C{attempts}
        sends: how long to wait before sending again, or L{None} not to.
        """
        if code not in RETRIED_STATUSES or attempts > self.config.max:
            return None
        asked = retry_after(headers, self._clock.seconds())
        if asked is not None:
            return asked if asked <= self.config.retry_after_cap else None
        return self.backoff(attempts)

    def after_failure(self, attempts: int, failure: Failure) -> Optional[float]:
        """After the last of C{attempts} sends failed with C{failure}: the wait before sending again, or L{None}."""
        if attempts > self.config.max or not connect_failure(failure):
            return None
        return self.backoff(attempts)

    def backoff(self, attempts: int) -> float:
        """The jittered wait after C{attempts} sends: half to all of C{backoff * 2 ** (attempts - 1)}, capped."""
        base = min(self.config.max_backoff, self.config.backoff * 2 ** min(attempts - 1, 30))
        return base * (0.5 + self.random() / 2)


__all__ = ["RETRIED_STATUSES", "Retries", "connect_failure", "retry_after"]
