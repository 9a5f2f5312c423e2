# -*- test-case-name: tests.test_values,tests.test_units -*-
"""
Small values read from untrusted text: user ids and points in time.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Optional


def is_uuid4(value: str) -> bool:
    """Whether C{value} is a version-4 UUID in canonical (lower-case, hyphenated) form."""
    if len(value) != 36:
        return False
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    return parsed.version == 4 and str(parsed) == value


def parse_since(value: Optional[str]) -> Optional[float]:
    """
    An ISO 8601 date or time (UTC unless it says otherwise) as POSIX seconds.

    @raise ValueError: for anything else.
    """
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()
