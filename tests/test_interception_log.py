"""The interception log line: one per request, its text and its fields (in memory)."""

from __future__ import annotations

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from tests import memory
from tests.memory import TOKEN

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def events():
    seen: list = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def interception_events(events):
    return [e for e in events if e.get("log_format", "").startswith("interception ")]


def test_one_line_per_request_with_its_fields(events):
    g = memory.gateway()
    g.send("POST", "/openai/v1/chat/completions", {"model": "gpt-4o", "messages": []},
           {"Authorization": f"Bearer {TOKEN}"})
    [event] = interception_events(events)
    record = g.records[0]
    assert formatEvent(event) == (
        f"interception {record.id} initiator={record.initiator_username} client={record.client} provider=openai "
        f"route=chat.completions model=gpt-4o status=ok upstream_status=200 tokens_in={record.input_tokens} "
        f"tokens_out={record.output_tokens} duration_ms={record.duration_ms}")
    assert (event["id"], event["provider"], event["model"], event["status"]) == (record.id, "openai", "gpt-4o", "ok")


def test_braces_sent_by_a_client_are_logged_as_sent(events):
    """A model name is the client's text: braces in it are not read as log fields."""
    g = memory.gateway()
    g.send("POST", "/openai/v1/chat/completions", {"model": "gpt-{id}-{0}}", "messages": []},
           {"Authorization": f"Bearer {TOKEN}"})
    [event] = interception_events(events)
    assert " model=gpt-{id}-{0}} " in formatEvent(event)
    assert event["model"] == "gpt-{id}-{0}}"
