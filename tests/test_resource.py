"""
What a path reaches (L{bridgeproxy.proxy.resource}), in memory: the
providers under their prefix and again under /api/v2/aibridge/, the
bridge's own endpoints, and everything else refused the pipeline's way.
"""

import pytest
from twisted.internet.defer import succeed

from bridgeproxy.api import BridgeAPI
from bridgeproxy.metrics import Metrics
from tests import memory
from tests.memory import TOKEN, USER_ID

BEARER = {"Authorization": f"Bearer {TOKEN}"}


class Store:
    """A store that answers every query at once: an empty SQLite database in memory."""

    def __init__(self):
        from bridgeproxy.store.database import Database
        self.db = Database("sqlite::memory:")
        self.db.migrate()

    def run(self, f):
        return succeed(f(self.db))


class Recorder:
    queue: list = []


def with_api(metrics=None) -> memory.Gateway:
    g = memory.gateway()
    g.bridge.api = BridgeAPI(extractors=g.bridge.extractors, identity=memory.Identities(), store=Store(),
                             recorder=Recorder(), providers={name.decode(): entry for name, entry in g.bridge.providers.items()},
                             metrics=metrics)
    return g


@pytest.mark.parametrize("path", ["/api", "/api/", "/api/v2", "/api/v2/", "/api/v2/aibridge", "/api/v2/aibridge/",
                                  "/api/v2/other/x", "/api/v3", "/nope/v1/models"])
def test_paths_under_no_provider_are_the_pipelines_404(path):
    """The branches of the tree, and whatever is under no provider, are refused like an unknown route: 404 in the
    OpenAI shape, recorded under provider `unknown` with the path as its route."""
    g = memory.gateway()
    answer = g.send("GET", path, None, BEARER)
    assert (answer.status, answer.json()["error"]["code"]) == (404, "unknown_url")
    assert answer.json()["error"]["message"] == f"Unknown route: GET {path}"
    (record,) = g.records
    assert (record.provider, record.route, record.status, record.initiator_id) == ("unknown", path, "refused", USER_ID)
    assert g.upstream.seen == []


def test_providers_are_mounted_under_api_v2_aibridge_too():
    g = memory.gateway()
    assert g.send("GET", "/api/v2/aibridge/openai/v1/models", None, BEARER).status == 200
    assert g.send("POST", "/api/v2/aibridge/anthropic/v1/messages/count_tokens", {}, BEARER).status == 200
    assert [s.uri for s in g.upstream.seen] == [b"/v1/models", b"/v1/messages/count_tokens"]
    assert [(r.provider, r.route) for r in g.records] == [("openai", "/v1/models"),
                                                        ("anthropic", "/v1/messages/count_tokens")]


def test_readiness_metrics_and_the_record_views_are_served():
    """/readyz, /metrics (when served here) and /api/v1/<view> reach the bridge's own endpoints."""
    metrics = Metrics()
    metrics.inc("some_event")
    g = with_api(metrics)
    ready = g.send("GET", "/readyz")
    assert ready.status == 200 and ready.json()["status"] == "ready"
    assert ready.json()["providers_with_key"] == {"openai": True, "anthropic": True}
    served = g.send("GET", "/metrics")
    assert served.status == 200 and b'bridgeproxy_events_total{name="some_event"} 1.0' in served.body
    views = g.send("GET", "/api/v1/interceptions", None, BEARER)
    assert views.status == 200 and views.json() == {"data": [], "next_offset": None, "next_cursor": None, "scanned": None}
    usage = g.send("GET", "/api/v1/usage?by=client", None, BEARER)
    assert usage.status == 200 and usage.json() == {"by": "client", "data": []}
    assert g.send("GET", "/api/v1/nothing", None, BEARER).status == 404
    assert g.upstream.seen == [] and g.records == []


def test_a_path_the_rules_refuse_never_reaches_an_endpoint():
    """An unsafe path goes to the pipeline (400), whatever it would otherwise have reached."""
    g = with_api(Metrics())
    for path in ("/api/v1/../v1/interceptions", "/metrics/..", "/readyz/./"):
        answer = g.send("GET", path, None, BEARER)
        assert answer.status == 400 and "Refused path" in answer.json()["error"]["message"], path

