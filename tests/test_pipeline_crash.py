"""
Something unexpected breaking while the upstream's answer is handled (a
provider's usage parser, copying the answer's headers): the client still
gets a 500 in its provider's shape, the request is recorded, and nothing of
it stays in flight (its slot and budget hold are settled).
"""

from __future__ import annotations

import pytest

import bridgeproxy.proxy.pipeline as pipeline_module
from bridgeproxy.proxy.admission import Admission
from bridgeproxy.proxy.limits import Limits
from bridgeproxy.store.limits import slots_in_use
from tests.memory import TOKEN, gateway, json_answer
from tests.syncstore import SyncStore

AUTH = {"Authorization": f"Bearer {TOKEN}"}
MESSAGES = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
INTERNAL = {"type": "error", "error": {"type": "api_error", "message": "Internal error in the gateway."}}


def broken(*args, **kwargs):
    raise ZeroDivisionError("a bug")


def anthropic_gateway(extra=None):
    g = gateway(extra)
    g.upstream.handler = json_answer(200, {"id": "m", "type": "message", "content": [],
                                           "usage": {"input_tokens": 3, "output_tokens": 4}})
    return g


def test_a_parser_that_breaks_answers_500_and_ends_the_request(captured_log):
    g = anthropic_gateway()
    g.bridge.providers[b"anthropic"].provider.usage_parser = broken
    answer = g.send("POST", "/anthropic/v1/messages", MESSAGES, AUTH)
    assert answer.status == 500 and answer.json() == INTERNAL
    (record,) = g.records
    assert (record.status, record.http_status) == ("error", 500)
    assert g.bridge.in_flight == set()
    failures = [e for e in captured_log.events if e.get("log_failure") is not None]
    assert len(failures) == 1 and failures[0]["log_failure"].check(ZeroDivisionError)


def test_copying_the_headers_breaking_settles_the_slot(monkeypatch: pytest.MonkeyPatch):
    """With [limits] counted in the store, the request's slot goes back too."""
    monkeypatch.setattr(pipeline_module, "copy_response_headers", broken)
    g = anthropic_gateway({"limits": {"max_concurrency": 10, "shared": "store"}})
    store = SyncStore()
    bridge = g.bridge
    # As tap.build wires it: the pipeline's limits know they are counted in the store.
    bridge.admission = Admission(store, g.clock, bridge.config, bridge.prices, bridge.metrics, holder="this")
    bridge.limits = Limits(bridge.config.limits, g.clock, in_store=True)
    bridge.admission.reconfigure(bridge.config, bridge.prices, bridge.limits)
    answer = g.send("POST", "/anthropic/v1/messages", MESSAGES, AUTH)
    assert answer.status == 500 and answer.json() == INTERNAL
    assert [(r.status, r.http_status) for r in g.records] == [("error", 500)]
    assert bridge.in_flight == set()
    assert store.calls == 2  # admitted, then settled
    assert slots_in_use(store.db) == 0
