# -*- test-case-name: tests.test_initiator -*-
"""
Counters that the pipeline and plugins bump.  Cheap enough for the hot path
(a dict increment); exported by whatever the operator wires up.
"""

from __future__ import annotations

from collections import Counter


class Metrics:
    """Named counters, with optional labels folded into the name."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()

    def inc(self, name: str, amount: int = 1) -> None:
        self.counters[name] += amount

    def get(self, name: str) -> int:
        return self.counters.get(name, 0)
