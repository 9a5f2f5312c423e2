# -*- test-case-name: tests.test_flights,tests.test_identity,tests.test_coder -*-
"""
One question in flight per key: the callers who ask it again before it is
answered wait for that answer instead of asking again (a client opening
many streams with one key costs one lookup, not one per stream).
"""

from __future__ import annotations

from typing import Any, Callable, Hashable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure


class Flights:
    """The questions in flight, by key."""

    def __init__(self) -> None:
        self._waiting: dict[Hashable, list[Deferred]] = {}

    def __len__(self) -> int:
        """How many questions are in flight."""
        return len(self._waiting)

    def ask(self, key: Hashable, start: Callable[[], Any]) -> Deferred:
        """
        C{start()}'s answer (a value, a L{Deferred}, or a failure): asked
        now unless a question with C{key} is in flight already.

        Each caller gets a L{Deferred} of its own; one it cancels is passed
        over when the answer comes, the others still get it.
        """
        mine: Deferred = Deferred()
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.append(mine)
            return mine
        # Registered before asking: an answer that comes at once finds it.
        self._waiting[key] = [mine]
        maybeDeferred(start).addBoth(self._hand_out, key)
        return mine

    def _hand_out(self, answer: Any, key: Hashable) -> None:
        for d in self._waiting.pop(key):
            if d.called:  # cancelled by its caller
                continue
            if isinstance(answer, Failure):
                d.errback(answer)
            else:
                d.callback(answer)
