"""
Metrics (L{bridgeproxy.metrics}): what C{GET /metrics} shows after named
events and finished interceptions, and how request-controlled labels are
capped.
"""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from bridgeproxy import metrics as metrics_module
from bridgeproxy.metrics import Metrics


def samples(m: Metrics) -> dict:
    """Every sample of the exposition, keyed by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(m.exposition().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: Metrics, series: str, **labels) -> float:
    return samples(m).get((series, tuple(sorted(labels.items()))), 0.0)


def record(**kw):
    fields = dict(provider="anthropic", route="messages", intercepted=True, client="Claude Code", status="ok",
                  model="claude-sonnet", input_tokens=10, output_tokens=5, cache_read_tokens=0,
                  cache_write_tokens=2, cost_micros=None)
    fields.update(kw)
    return SimpleNamespace(**fields)


def test_named_counters_count():
    """C{inc} adds to a named counter (by one, or by an amount); unknown names read zero."""
    m = Metrics()
    m.inc("recorded")
    m.inc("recorded", 4)
    assert m.get("recorded") == 5
    assert m.get("never") == 0


def test_delegations_have_their_own_series():
    """delegation_* events are counted by outcome in bridgeproxy_delegations, not as generic events."""
    m = Metrics()
    m.inc("delegation_refused")
    m.inc("delegation_accepted", 2)
    assert value(m, "bridgeproxy_delegations_total", outcome="refused") == 1
    assert value(m, "bridgeproxy_delegations_total", outcome="accepted") == 2
    assert value(m, "bridgeproxy_events_total", name="delegation_refused") == 0


def test_spooled_rows_series():
    """Spooled records are counted in bridgeproxy_spooled_rows."""
    m = Metrics()
    m.inc("spooled", 7)
    assert value(m, "bridgeproxy_spooled_rows_total") == 7
    assert value(m, "bridgeproxy_events_total", name="spooled") == 0


def test_auth_failures_by_reason():
    """401 and 403 refusals are counted by reason; other refusals are not auth failures nor events."""
    m = Metrics()
    m.inc("refused:401:unknown_key")
    m.inc("refused:403:user_disabled", 3)
    m.inc("refused:404:not_found")
    m.inc("refused:401:odd:reason")
    assert value(m, "bridgeproxy_auth_failures_total", reason="unknown_key") == 1
    assert value(m, "bridgeproxy_auth_failures_total", reason="user_disabled") == 3
    assert value(m, "bridgeproxy_auth_failures_total", reason="odd:reason") == 1
    assert value(m, "bridgeproxy_auth_failures_total", reason="not_found") == 0
    assert not [k for k in samples(m) if k[0] == "bridgeproxy_events_total"]
    assert m.get("refused:404:not_found") == 1


def test_other_names_are_events():
    """Any other name is counted in bridgeproxy_events by name."""
    m = Metrics()
    m.inc("store_errors", 2)
    assert value(m, "bridgeproxy_events_total", name="store_errors") == 2


def test_model_labels_are_capped(monkeypatch):
    """Models become labels up to a cap; past it, or for absurdly long names, they are 'other'; none is 'unknown'."""
    monkeypatch.setattr(metrics_module, "_MAX_MODELS", 2)
    m = Metrics()
    assert m.model_label(None) == "unknown"
    assert m.model_label("") == "unknown"
    assert m.model_label("a") == "a"
    assert m.model_label("x" * 65) == "other"
    assert m.model_label("x" * 64) == "x" * 64
    assert m.model_label("c") == "other"
    assert m.model_label("a") == "a"  # already known: still itself
    assert m.model_label("x" * 64) == "x" * 64


def test_default_model_cap():
    """By default 200 distinct models get their own label."""
    m = Metrics()
    assert [m.model_label(f"m{i}") for i in range(200)] == [f"m{i}" for i in range(200)]
    assert m.model_label("m200") == "other"


def test_interception_counts_request_and_tokens():
    """A finished interception counts one request by provider/route/client/status and its non-zero tokens by kind."""
    m = Metrics()
    m.interception(record())
    m.interception(record(input_tokens=1, output_tokens=0, cache_write_tokens=0, cache_read_tokens=4))
    assert value(m, "bridgeproxy_requests_total", provider="anthropic", route="messages", client="Claude Code",
                 status="ok") == 2
    tokens = {k[1]: v for k, v in samples(m).items() if k[0] == "bridgeproxy_tokens_total"}
    assert tokens == {
        (("kind", "input"), ("model", "claude-sonnet"), ("provider", "anthropic")): 11,
        (("kind", "output"), ("model", "claude-sonnet"), ("provider", "anthropic")): 5,
        (("kind", "cache_read"), ("model", "claude-sonnet"), ("provider", "anthropic")): 4,
        (("kind", "cache_write"), ("model", "claude-sonnet"), ("provider", "anthropic")): 2,
    }


def test_passthrough_requests_are_one_route():
    """Passed-through requests are counted under route 'passthrough', whatever their path; no model is 'unknown'."""
    m = Metrics()
    m.interception(record(intercepted=False, route="/v1/models", model=None, input_tokens=3, output_tokens=0,
                          cache_write_tokens=0))
    assert value(m, "bridgeproxy_requests_total", provider="anthropic", route="passthrough", client="Claude Code",
                 status="ok") == 1
    assert value(m, "bridgeproxy_tokens_total", provider="anthropic", model="unknown", kind="input") == 3


def test_queue_depth_is_read_when_scraped():
    """The recording queue depth is whatever the watched function says at scrape time."""
    m = Metrics()
    depth = [3]
    m.watch_queue(lambda: depth[0])
    assert value(m, "bridgeproxy_recording_queue_depth") == 3
    depth[0] = 8
    assert value(m, "bridgeproxy_recording_queue_depth") == 8


def test_exposition_lists_every_series_with_help():
    """The exposition is Prometheus text naming every series the bridge keeps, with its help text."""
    families = {f.name: f.documentation for f in text_string_to_metric_families(Metrics().exposition().decode())}
    for name, help_text in [
        ("bridgeproxy_requests", "Requests served, by outcome"),
        ("bridgeproxy_streams_in_flight", "Streams being relayed"),
        ("bridgeproxy_upstream_latency_seconds", "Time until the upstream's response headers"),
        ("bridgeproxy_upstream_ttfb_seconds", "Time until the upstream's first body byte"),
        ("bridgeproxy_tokens", "Tokens, by provider, model and kind"),
        ("bridgeproxy_auth_failures", "Refused credentials, by reason"),
        ("bridgeproxy_delegations", "X-Coder-Owner-Id overrides, by outcome"),
        ("bridgeproxy_spooled_rows", "Records spooled to the local file"),
        ("bridgeproxy_recording_queue_depth", "Records waiting for the store"),
        ("bridgeproxy_events", "Other named events"),
    ]:
        assert families[name] == help_text, name


def test_latency_histograms_by_provider_with_fixed_buckets():
    """Latency and time-to-first-byte are histograms by provider with buckets from 5 ms to 300 s."""
    m = Metrics()
    m.upstream_latency.labels("openai").observe(0.2)
    m.ttfb.labels("openai").observe(400)
    s = samples(m)
    buckets = sorted(float(dict(k[1])["le"]) for k in s if k[0] == "bridgeproxy_upstream_latency_seconds_bucket")
    assert buckets == [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, float("inf")]
    assert value(m, "bridgeproxy_upstream_latency_seconds_bucket", provider="openai", le="0.25") == 1
    assert value(m, "bridgeproxy_upstream_latency_seconds_bucket", provider="openai", le="0.1") == 0
    assert value(m, "bridgeproxy_upstream_ttfb_seconds_bucket", provider="openai", le="300.0") == 0
    assert value(m, "bridgeproxy_upstream_ttfb_seconds_count", provider="openai") == 1
    ttfb = sorted(float(dict(k[1])["le"]) for k in s if k[0] == "bridgeproxy_upstream_ttfb_seconds_bucket")
    assert ttfb == buckets


def test_each_metrics_has_its_own_registry():
    """Two bridges in one process do not share series."""
    a, b = Metrics(), Metrics()
    a.inc("store_errors")
    a.streams_in_flight.inc()
    assert value(b, "bridgeproxy_events_total", name="store_errors") == 0
    assert value(b, "bridgeproxy_streams_in_flight") == 0
    assert value(a, "bridgeproxy_streams_in_flight") == 1
