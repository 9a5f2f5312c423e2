# -*- test-case-name: tests.test_e2e_metrics,tests.test_metrics -*-
"""
Metrics: Prometheus series (C{GET /metrics}) and plain counters that the
pipeline, the recorder and plugins bump by name.

Each L{Metrics} has its own registry, so that several bridges in one process
(tests) do not share series.  Label values that come from requests (the
model) are capped in number, so a client cannot grow the series without
bound.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Optional

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client import Counter as PCounter

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_ADMISSION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_MAX_MODELS = 200


class Metrics:
    """Named counters and the Prometheus series behind C{/metrics}."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = PCounter("bridgeproxy_requests", "Requests served, by outcome",
                                 ["provider", "route", "client", "status"], registry=r)
        self.streams_in_flight = Gauge("bridgeproxy_streams_in_flight", "Streams being relayed", registry=r)
        self.upstream_latency = Histogram("bridgeproxy_upstream_latency_seconds",
                                          "Time until the upstream's response headers", ["provider"],
                                          buckets=_LATENCY_BUCKETS, registry=r)
        self.ttfb = Histogram("bridgeproxy_upstream_ttfb_seconds", "Time until the upstream's first body byte",
                              ["provider"], buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens = PCounter("bridgeproxy_tokens", "Tokens, by provider, model and kind",
                               ["provider", "model", "kind"], registry=r)
        self.cost = PCounter("bridgeproxy_cost_micros", "What requests cost, in micro-units of the price "
                             "table's currency, by provider and model", ["provider", "model"], registry=r)
        self.unpriced = PCounter("bridgeproxy_unpriced_requests", "Requests with tokens but no price for their "
                                 "model (recorded without a cost)", ["provider", "model"], registry=r)
        self.retries = PCounter("bridgeproxy_upstream_retries", "Requests sent to a provider again, by what the "
                                "send before got (connect, 429, 502, 503)", ["provider", "reason"], registry=r)
        self.breaker_state = Gauge("bridgeproxy_breaker_state", "Each provider's circuit breaker: 0 closed, "
                                   "1 half-open, 2 open", ["provider"], registry=r)
        self.breaker_changes = PCounter("bridgeproxy_breaker_transitions", "Circuit breaker changes, by the "
                                        "state entered", ["provider", "state"], registry=r)
        self.budget_refusals = PCounter("bridgeproxy_budget_refusals", "Requests refused because their user's "
                                        "budget could not cover their worst case, by the budget's period",
                                        ["period"], registry=r)
        self.budget_unpriced = PCounter("bridgeproxy_budget_unpriced_requests", "Requests of users with a budget "
                                        "whose model has no price: let through without a hold",
                                        ["provider", "model"], registry=r)
        self.admission_latency = Histogram("bridgeproxy_admission_seconds", "Time to admit a request in the "
                                           "store (budget hold) before it is forwarded",
                                           buckets=_ADMISSION_BUCKETS, registry=r)
        self.auth_failures = PCounter("bridgeproxy_auth_failures", "Refused credentials, by reason",
                                      ["reason"], registry=r)
        self.delegations = PCounter("bridgeproxy_delegations", "X-Coder-Owner-Id overrides, by outcome",
                                    ["outcome"], registry=r)
        self.spooled = PCounter("bridgeproxy_spooled_rows", "Records spooled to the local file", registry=r)
        self.queue_depth = Gauge("bridgeproxy_recording_queue_depth", "Records waiting for the store",
                                 registry=r)
        self.events = PCounter("bridgeproxy_events", "Other named events", ["name"], registry=r)
        self.aiproxy_tunnels = Gauge("bridgeproxy_aiproxy_tunnels_open",
                                     "AI proxy tunnels open, by kind (mitm: decrypted; tunnelled: passed through)",
                                     ["kind"], registry=r)
        self.aiproxy_connects = PCounter("bridgeproxy_aiproxy_connects", "AI proxy CONNECT requests, by outcome",
                                         ["outcome"], registry=r)
        self.aiproxy_leaf_certificates = PCounter("bridgeproxy_aiproxy_leaf_certificates",
                                                  "Leaf certificates the AI proxy minted", registry=r)
        self._models: set[str] = set()

    def inc(self, name: str, amount: int = 1) -> None:
        """Bump the counter C{name} (and its Prometheus series)."""
        self.counters[name] += amount
        if name.startswith("delegation_"):
            self.delegations.labels(name[len("delegation_"):]).inc(amount)
        elif name == "spooled":
            self.spooled.inc(amount)
        elif name.startswith("refused:401:") or name.startswith("refused:403:"):
            self.auth_failures.labels(name.split(":", 2)[2]).inc(amount)
        elif not name.startswith("refused:"):
            self.events.labels(name).inc(amount)

    def get(self, name: str) -> int:
        return self.counters.get(name, 0)

    def model_label(self, model: Optional[str]) -> str:
        if not model:
            return "unknown"
        if model in self._models:
            return model
        if len(self._models) >= _MAX_MODELS or len(model) > 64:
            return "other"
        self._models.add(model)
        return model

    def interception(self, record: Any) -> None:
        """Count a finished interception, its tokens and its cost (or that it had none)."""
        route = record.route if record.intercepted else "passthrough"
        self.requests.labels(record.provider, route, record.client, record.status).inc()
        model = self.model_label(record.model)
        for kind in ("input", "output", "cache_read", "cache_write"):
            value = getattr(record, f"{kind}_tokens")
            if value:
                self.tokens.labels(record.provider, model, kind).inc(value)
        cost = record.cost_micros
        if cost:
            self.cost.labels(record.provider, model).inc(cost)
        elif cost is None and (record.input_tokens or record.output_tokens or record.cache_read_tokens
                               or record.cache_write_tokens):
            self.unpriced.labels(record.provider, model).inc()

    def watch_queue(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)

    def exposition(self) -> bytes:
        """The Prometheus text format of every series."""
        return generate_latest(self.registry)
