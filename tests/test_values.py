"""
Small values read from untrusted text: user ids (X-Coder-Owner-Id, the
configuration's delegators) and the API's C{since=} points in time.
"""

import time

import pytest

from bridgeproxy.values import is_uuid4, parse_since

OWNER_ID = "3f6c2a1e-9b8d-4c7e-a5f4-0d1e2c3b4a59"


@pytest.mark.parametrize("value", [
    OWNER_ID[:-1],                       # one character short
    OWNER_ID + "0",                      # one too many
    OWNER_ID.replace("-", ""),           # 32 hex digits, a form uuid.UUID accepts
    "urn:uuid:" + OWNER_ID,              # another form uuid.UUID accepts
    "x",
])
def test_only_the_36_character_canonical_form_is_a_user_id(value):
    """A value of any other length is refused, even where Python's UUID parser would read it."""
    assert is_uuid4(value) is False


def test_a_canonical_uuid4_is_a_user_id():
    """The canonical form is accepted; 36 characters that are not hex are not."""
    assert is_uuid4(OWNER_ID) is True
    assert is_uuid4("3f6c2a1e-9b8d-4c7e-a5f4-0d1e2c3b4a5g") is False   # 36 characters, not hex


@pytest.fixture
def far_from_utc(monkeypatch):
    """The machine's zone is UTC-10 (Hawaii, no daylight saving) while the test runs."""
    monkeypatch.setenv("TZ", "Pacific/Honolulu")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("value,seconds", [
    ("2024-01-01", 1704067200.0),
    ("2024-01-01T10:00:00", 1704067200.0 + 36000),
    ("2024-01-01T10:00:00+02:00", 1704067200.0 + 28800),
    ("2024-01-01T10:00:00Z", 1704067200.0 + 36000),
])
def test_since_is_utc_unless_it_says_otherwise(far_from_utc, value, seconds):
    """A date or time without a zone is UTC whatever the machine's zone; one with a zone keeps it."""
    assert parse_since(value) == seconds


def test_no_since_is_none_and_anything_else_is_refused():
    """No since is no bound; text that is not ISO 8601 is refused."""
    assert parse_since(None) is None
    with pytest.raises(ValueError):
        parse_since("yesterday")
