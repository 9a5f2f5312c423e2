# -*- test-case-name: tests.test_pipeline -*-
"""
The request's way through the bridge, in one straight line:

route -> extract credential -> detect client -> resolve initiator ->
limits -> clean headers -> admission (the budget hold, and the limits
counted for the whole gateway, in the store) -> breaker -> forward (treq;
retried while nothing was relayed) -> relay (+ tap for recording) -> record
(and settle the admission).

The resource tree (L{bridgeproxy.proxy.resource}) finds the provider and
hands the request here; each arrow is one call into one module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping, Optional, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH

from bridgeproxy.auth import extract_credential
from bridgeproxy.clients import detect_client
from bridgeproxy.config import Config, ProviderConfig
from bridgeproxy.errors import (
    AuthenticationFailed, BadRequest, BridgeError, NotFound, PayloadTooLarge, ShuttingDown, UpgradeNotSupported,
    UpstreamTimeout, UpstreamUnavailable,
)
from bridgeproxy.metrics import Metrics
from bridgeproxy.prices import table_for
from bridgeproxy.proxy import records
from bridgeproxy.proxy.breaker import STATES, Breakers
from bridgeproxy.proxy.errors import write_error
from bridgeproxy.proxy.exchange import Exchange
from bridgeproxy.proxy.headers import (
    add_actor_headers, add_forwarded, apply_credential, copy_response_headers, drop_token, drop_token_from_query,
    upstream_headers,
)
from bridgeproxy.proxy.limits import Limits
from bridgeproxy.proxy.relay import COMPLETE, TRUNCATED, UPSTREAM_BROKE, Discard, ErrorBody, Relay
from bridgeproxy.proxy.retries import Retries
from bridgeproxy.proxy.routing import Passthrough, unsafe_path
from bridgeproxy.proxy.upstream import Upstream
from bridgeproxy.types import Initiator, Interception, Usage

#: Subpaths of a provider's base that answer a HEAD probe.
_BASE_PATHS = frozenset({b"", b"/", b"/v1", b"/v1/"})
_METHODS_WITH_BODY = frozenset({b"POST", b"PUT", b"PATCH"})
#: An upstream error answer is read whole (to mask keys in it) up to this size.
MAX_ERROR_BODY = 1024 * 1024
#: After the shutdown grace period, how long stopped requests get to record themselves.
DRAIN_HARD_CAP = 2.0


@dataclass(frozen=True)
class ProviderEntry:
    """A configured provider: its plugin and its settings."""

    provider: Any
    config: ProviderConfig

    @property
    def name(self) -> str:
        """The configured name: the URL prefix, and what records and metrics say."""
        return self.config.name

    @cached_property
    def passthrough(self) -> Passthrough:
        """The allow-list: the configured one, else the provider's own, plus the configured extras."""
        rules = self.config.passthrough if self.config.passthrough is not None else self.provider.passthrough
        return Passthrough.parse(tuple(rules) + tuple(self.config.passthrough_extra))


_LOG_LINE = (
    "interception {id} initiator={initiator} client={client} provider={provider} route={route} "
    "model={model} status={status} upstream_status={upstream_status} tokens_in={tokens_in} "
    "tokens_out={tokens_out} duration_ms={duration_ms}")


class Bridge:
    """
    The pipeline, holding the parts the plugin chains and the config chose.

    @param agent: the L{twisted.web.iweb.IAgent} beneath treq for the
        upstream requests.
    @param clock: an L{IReactorTime}.
    @param recorder: anything with C{record(Interception)}.
    @param admission: the checks made in the store before forwarding (a
        L{bridgeproxy.proxy.admission.Admission}: budgets, and the limits
        when they are counted for the whole gateway), or L{None}.
    """

    log = Logger()
    limits: Limits
    breakers: Breakers

    def __init__(self, config: Config, *, providers: Mapping[str, ProviderEntry],
                 extractors: Sequence[Any], resolvers: Sequence[Any], detectors: Sequence[Any],
                 agent: Any, clock: Any, recorder: Any, metrics: Optional[Metrics] = None,
                 admission: Any = None):
        #: The agent beneath treq (its connection pool can be inspected).
        self.agent = agent
        self.admission = admission
        self.upstream = Upstream(agent, clock)
        self.clock = clock
        self.recorder = recorder
        self.metrics = metrics if metrics is not None else Metrics()
        #: The bridge's own endpoints (L{bridgeproxy.api.BridgeAPI}), if any.
        self.api: Any = None
        #: Requests being served, for the shutdown drain and the limits.
        self.in_flight: set[Exchange] = set()
        self._drained: list[Deferred] = []
        self.reconfigure(config, providers=providers, extractors=extractors, resolvers=resolvers,
                         detectors=detectors)

    def reconfigure(self, config: Config, *, providers: Mapping[str, ProviderEntry],
                    extractors: Sequence[Any], resolvers: Sequence[Any], detectors: Sequence[Any]) -> None:
        """
        Serve new requests with a new configuration and chains (a reload).

        Requests in flight finish with what they started with; the rate
        limiter keeps its buckets unless the limits changed.
        """
        # Everything is computed before anything is assigned: a reload that
        # fails half-way must leave the running configuration whole.
        old = getattr(self, "config", None)
        by_prefix = {name.encode("ascii"): entry for name, entry in providers.items()}
        for entry in by_prefix.values():
            _ = entry.passthrough  # parsed now: a bad rule fails the reload, not a request
        limits = self.limits if old is not None and old.limits == config.limits else Limits(
            config.limits, self.clock, in_store=self.admission is not None and config.limits.counted_in_store(config))
        prices = table_for(config)
        breakers = self.breakers if old is not None and old.breaker == config.breaker else Breakers(
            config.breaker, self.clock, self._breaker_changed)
        self.config = config
        self.providers = by_prefix
        #: Every provider's key: masked in whatever is answered, logged or recorded.
        self.secrets = tuple(entry.config.key for entry in by_prefix.values() if entry.config.key)
        self.extractors = tuple(extractors)
        self.resolvers = tuple(resolvers)
        self.detectors = tuple(detectors)
        self.timeout = config.upstream.timeout
        self._bridge_headers = tuple(config.auth.coder_token_headers)
        self.limits = limits
        self.prices = prices
        self.breakers = breakers
        self.retries = Retries(config.retries, self.clock)
        if self.admission is not None:
            self.admission.reconfigure(config, prices, limits)
        for name in providers:
            breaker = breakers.get(name)
            if breaker is not None:
                self.metrics.breaker_state.labels(name).set(STATES[breaker.state])

    # -- the straight line -----------------------------------------------------------

    def handle(self, request: Any, provider: Optional[bytes], subpath: bytes) -> None:
        """
        Serve C{request} for C{provider} (its prefix; L{None} for a path under
        no provider), C{subpath} being the raw path after the prefix.  Always
        answers the request, one way or another.
        """
        ex = Exchange(request=request, started=self.clock.seconds(), subpath=subpath)
        ex.entry = self.providers.get(provider) if provider is not None else None
        self.in_flight.add(ex)
        # From the start: a client may leave while its key is being checked.
        request.notifyFinish().addErrback(self._client_gone, ex)
        try:
            ex.route_error = self._route(ex)
            if ex.answered:  # a probe
                self._close(ex)
                return
            self.limits.check_concurrency(len(self.in_flight))
            credential = extract_credential(self.extractors, request)
            if credential is None:
                raise ex.route_error or AuthenticationFailed(
                    "No API key provided. Send your bridge key as a Bearer token, in X-Api-Key, "
                    "or in X-Coder-Token.", reason="missing")
            ex.credential = credential
            ex.client = detect_client(self.detectors, request, ex.parsed)
            outcome = self._resolve(ex, 0, None)
        except BridgeError as error:
            self._refuse(ex, error)
            return
        except Exception:
            self._crash(ex)  # the failure is the exception being handled
            return
        if isinstance(outcome, Deferred):
            outcome.addCallback(self._forward, ex)
            outcome.addErrback(self._failed_before_upstream, ex)
        else:
            try:
                self._forward(outcome, ex)
            except BridgeError as error:
                self._refuse(ex, error)
            except Exception:
                self._crash(ex)

    def _unknown_route(self, ex: Exchange) -> NotFound:
        # The secrets in the path are hidden before it is cut short (and the
        # message is scrubbed again when the refusal is answered).
        path = records.printable(ex.request.path, lambda text: records.scrub(text, ex, self.secrets))
        return NotFound(f"Unknown route: {ex.request.method.decode('latin-1')} {path}")

    def _route(self, ex: Exchange) -> Optional[BridgeError]:
        """
        Check the path, find the route, read and check the body.

        @return: the refusal this request will get (after its credential is
            checked), or L{None}.  A probe is answered here (C{ex.answered}).
        """
        request, entry = ex.request, ex.entry
        # Before anything else: an upstream must never see a path that it
        # could normalise into one the allow-list does not allow.
        unsafe = unsafe_path(request.path)
        if unsafe is not None:
            return BadRequest(f"Refused path: {unsafe}.")
        if not request.uri.isascii():
            return BadRequest("Refused query string: it contains a byte that is not ASCII.")
        if entry is None:
            return self._unknown_route(ex)
        if request.requestHeaders.hasHeader(b"upgrade"):
            return UpgradeNotSupported(
                "WebSocket is not supported by this gateway; use HTTPS (server-sent events).")
        method = request.method
        if method == b"HEAD" and ex.subpath in _BASE_PATHS:
            # Claude Code probes connectivity this way, without a credential.
            request.setResponseCode(200)
            request.finish()
            ex.answered = True
            return None
        route = entry.provider.route(ex.subpath) if method == b"POST" else None
        if route is None:
            if not entry.passthrough.allows(method, ex.subpath):
                return self._unknown_route(ex)
            route = ""
        ex.route = route
        if request.too_large:  # a BoundedRequest (proxy/site.py) stopped keeping its body
            return PayloadTooLarge(f"Request body is larger than {self.config.max_body_bytes} bytes.")
        ex.body = request.content.read()
        if route:
            try:
                parsed = json.loads(ex.body)
            except ValueError:
                return BadRequest("The request body is not valid JSON.")
            if not isinstance(parsed, dict):
                return BadRequest("The request body must be a JSON object.")
            ex.parsed = parsed
            ex.streamed = parsed.get("stream") is True
            if self.config.recording.ask_stream_usage and ex.streamed:
                rewritten = entry.provider.ask_stream_usage(route, parsed)
                if rewritten is not None:
                    ex.body = json.dumps(rewritten, separators=(",", ":")).encode("utf-8")
        return None

    def _resolve(self, ex: Exchange, start: int, initiator: Optional[Initiator]) -> Any:
        """Run the resolvers from C{start}; synchronous until one returns a Deferred."""
        resolvers = self.resolvers
        for i in range(start, len(resolvers)):
            result = resolvers[i].resolve(ex.request, ex.credential, ex.client, initiator)
            if isinstance(result, Deferred):
                return result.addCallback(self._resolve_from, ex, i + 1)
            initiator = result
        return initiator

    def _resolve_from(self, initiator: Optional[Initiator], ex: Exchange, start: int) -> Any:
        return self._resolve(ex, start, initiator)

    def _forward(self, initiator: Optional[Initiator], ex: Exchange) -> None:
        if initiator is None:
            raise AuthenticationFailed("No user could be resolved for this API key.", reason="no_initiator")
        ex.initiator = initiator
        if ex.client_gone:
            self._record(ex, status="client_disconnected", error="client disconnected before the request was sent")
            return
        if ex.route_error is not None:
            raise ex.route_error
        request, entry, credential = ex.request, ex.entry, ex.credential
        assert entry is not None
        assert credential is not None
        assert ex.route is not None
        if credential.token.encode("latin-1", "replace") in request.path:
            raise BadRequest("Refused path: it contains the bridge key; send the key in a header only.")
        self.limits.check_rate(initiator.user_id)
        self._prepare(ex)
        admitting = self.admission.admit(ex) if self.admission is not None else None
        if admitting is not None:
            admitting.addCallback(self._admitted, ex)
            admitting.addErrback(self._failed_before_upstream, ex)
            return
        self._send(ex)

    def _admitted(self, _: Any, ex: Exchange) -> None:
        """The store admitted C{ex} (its budget hold is taken): send it, unless it was stopped meanwhile."""
        if ex.client_gone:
            self._record(ex, status="client_disconnected", error="client disconnected before the request was sent")
            return
        if ex.shutdown:
            raise ShuttingDown("The gateway is shutting down; retry.")
        self._send(ex)

    def _prepare(self, ex: Exchange) -> None:
        """Make the upstream request of C{ex}: its URL, its clean headers, the key it goes with."""
        request, entry, credential, initiator = ex.request, ex.entry, ex.credential, ex.initiator
        assert entry is not None and credential is not None and initiator is not None
        intercepted = bool(ex.route)
        headers = upstream_headers(request, intercepted=intercepted, bridge_headers=self._bridge_headers)
        ex.credential_kind, ex.upstream_key = apply_credential(
            headers, request, credential, entry, self.config.auth.allow_byok)
        if drop_token(headers, credential.token):
            self.metrics.inc("bridge_token_dropped")
        if self.config.upstream.send_actor_headers:
            add_actor_headers(headers, initiator)
        if not intercepted:
            add_forwarded(headers, request)
        query = drop_token_from_query(request.uri.partition(b"?")[2], credential.token)
        url = entry.provider.upstream_url(entry.config.base_url, ex.subpath, query)
        body = ex.body if (ex.body or request.method in _METHODS_WITH_BODY) else None
        ex.outbound = (request.method, url, headers, body)

    def _send(self, ex: Exchange) -> None:
        """Send the request upstream (again, for a retry), if the provider's breaker lets it through."""
        breaker = self.breakers.get(ex.entry.name)
        if breaker is not None:
            ex.ticket = (breaker, breaker.admit())
        ex.attempts += 1
        ex.forwarded_at = self.clock.seconds()
        pending = ex.pending = self.upstream.request(*ex.outbound)
        ex.timer = self.clock.callLater(self.timeout, self._headers_timeout, ex)
        pending.addCallbacks(self._respond, self._upstream_failed, callbackArgs=(ex,), errbackArgs=(ex,))
        # A bug in either (a provider's parser, say) still answers the client and ends the request.
        pending.addErrback(self._crash_after_upstream, ex)

    def _headers_timeout(self, ex: Exchange) -> None:
        ex.timer = None
        ex.timed_out = True
        if ex.pending is not None:
            ex.pending.cancel()

    def _client_gone(self, failure: Failure, ex: Exchange) -> None:
        ex.client_gone = True
        ex.stop()

    def _respond(self, response: Any, ex: Exchange) -> None:
        ex.pending = None
        ex.cancel_timer()
        request, provider = ex.request, ex.entry.provider
        ex.upstream_status = response.code
        self.metrics.upstream_latency.labels(ex.entry.name).observe(self.clock.seconds() - ex.forwarded_at)
        # A 429 answered to a client's own key (BYOK) is that client's limit, not the provider's health.
        self._judge(ex, response.code < 500 and (response.code != 429 or ex.credential_kind != "centralized"))
        if ex.client_gone:
            response.deliverBody(Discard())
            self._record(ex, status="client_disconnected", error="client disconnected before the answer")
            return
        wait = None if ex.shutdown else self.retries.after_answer(ex.attempts, response.code, response.headers)
        if wait is not None:  # nothing was relayed yet: the client sees only the answer to the retry
            response.deliverBody(Discard())
            self._retry(ex, wait, str(response.code))
            return
        content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        stream = content_type.startswith(b"text/event-stream")
        request.setResponseCode(response.code, response.phrase)
        copy_response_headers(response.headers, request.responseHeaders)
        if response.length is not UNKNOWN_LENGTH and not stream:
            request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % response.length])
        if stream:
            ex.streamed = True
            self.metrics.streams_in_flight.inc()
            request.responseHeaders.setRawHeaders(b"Cache-Control", [b"no-cache"])
            request.responseHeaders.setRawHeaders(b"X-Accel-Buffering", [b"no"])
        if ex.route:
            ex.parser = provider.usage_parser(ex.route, stream)
        if response.code >= 400 and not stream and ex.credential_kind == "centralized":
            # An error may repeat the key it was sent: that key is ours, not
            # the client's, so the answer is read whole and the key masked
            # (its Content-Length is set again for what is relayed).
            ex.error_body = ErrorBody(self.clock, self.timeout, MAX_ERROR_BODY,
                                      lambda body: self._error_answered(ex, response.code, body))
            response.deliverBody(ex.error_body)
            return
        route = ex.route  # "" for a passthrough
        tail = (lambda kind, message: provider.stream_error_event(route, kind, message)) if stream else None
        parser = ex.parser
        ex.relay = Relay(request, self.clock, self.timeout,
                         parser.feed if parser is not None else None,
                         lambda outcome, failure: self._relayed(ex, outcome, failure), tail,
                         parser.ended if stream and parser is not None else None)
        response.deliverBody(ex.relay)
        ex.relay.delivered()

    def _error_answered(self, ex: Exchange, code: int, body: bytes) -> None:
        """An upstream error answer, read whole: mask our keys in it, relay it, record it."""
        text = body.decode("utf-8", "replace")
        scrubbed = records.scrub(text, ex, self.secrets)
        if scrubbed != text:
            body = scrubbed.encode("utf-8")
        parser = ex.parser
        if parser is not None:
            parser.feed(body)
        request = ex.request
        if request.channel is not None:  # the client is still there (its connection sets it None)
            request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
            request.write(body)
            request.finish()
        usage = parser.finish() if parser is not None else None
        error = usage.error if usage is not None and usage.error else f"upstream status {code}"
        self._record(ex, status="ok", error=error, usage=usage)

    def _relayed(self, ex: Exchange, outcome: str, failure: Optional[Failure]) -> None:
        usage = ex.parser.finish() if ex.parser is not None else None
        relay = ex.relay
        provider = ex.entry.name
        if relay.first_at is not None:
            self.metrics.ttfb.labels(provider).observe(relay.first_at - ex.forwarded_at)
        if relay.stall_tail is not None:
            self.metrics.streams_in_flight.dec()
        error = None
        if outcome != COMPLETE:
            if ex.shutdown:
                outcome = "shutdown"
            error = {"timeout": "upstream stalled past the timeout",
                     "shutdown": "cut short by shutdown after the grace period",
                     "client_disconnected": "client disconnected",
                     TRUNCATED: "upstream ended the stream before its terminal event"}.get(
                outcome, "upstream connection broke: " + (failure.getErrorMessage() if failure else ""))
            self.log.info("Relay of {id} ended: {outcome}", id=ex.id, outcome=outcome)
            if outcome == UPSTREAM_BROKE and relay.stall_tail is not None:
                # A stream cut short is an incomplete answer, however it was cut.
                outcome = TRUNCATED
        elif usage is not None and usage.error:
            error = usage.error
        self._record(ex, status=outcome if outcome != COMPLETE else "ok", error=error, usage=usage)

    # -- retries and the breaker ----------------------------------------------------

    def _judge(self, ex: Exchange, healthy: Optional[bool]) -> None:
        """Tell the provider's breaker how the last send went (L{None}: it cannot tell)."""
        if ex.ticket is None:
            return
        (breaker, ticket), ex.ticket = ex.ticket, None
        if healthy is None:
            breaker.released(ticket)
        elif healthy:
            breaker.succeeded(ticket)
        else:
            breaker.failed(ticket)

    def _retry(self, ex: Exchange, wait: float, reason: str) -> None:
        """Send the request again after C{wait} seconds (the client is still waiting for its first byte)."""
        provider = ex.entry.name
        self.metrics.retries.labels(provider, reason).inc()
        self.log.info("Retrying {id} at {provider} in {wait:.2f} s (attempt {attempt} got {reason})",
                      id=ex.id, provider=provider, wait=wait, attempt=ex.attempts, reason=reason)
        ex.upstream_status = None
        ex.pending = deferLater(self.clock, wait, lambda: None)
        ex.pending.addCallbacks(self._resend, self._upstream_failed, callbackArgs=(ex,), errbackArgs=(ex,))

    def _resend(self, _: Any, ex: Exchange) -> None:
        ex.pending = None
        try:
            self._send(ex)
        except BridgeError as error:
            self._refuse(ex, error)
        except Exception:
            self._crash(ex, Failure())

    def _breaker_changed(self, provider: str, old: str, new: str) -> None:
        self.metrics.breaker_state.labels(provider).set(STATES[new])
        self.metrics.breaker_changes.labels(provider, new).inc()
        if new == "open":
            self.log.warn("Circuit breaker of {provider} opened (was {old}): requests get 503 for {seconds:g} s",
                          provider=provider, old=old, seconds=self.config.breaker.open_seconds)
        else:
            self.log.info("Circuit breaker of {provider} is {new} (was {old})", provider=provider, new=new, old=old)

    # -- the ways out --------------------------------------------------------------

    def _upstream_failed(self, failure: Failure, ex: Exchange) -> None:
        ex.pending = None
        ex.cancel_timer()
        stopped = ex.client_gone or ex.shutdown
        self._judge(ex, None if stopped or failure.check(BridgeError) else False)
        if not stopped and not ex.timed_out:
            wait = self.retries.after_failure(ex.attempts, failure)
            if wait is not None:
                self._retry(ex, wait, "connect")
                return
        if ex.client_gone:
            self._record(ex, status="client_disconnected", error="client disconnected before the answer")
            return
        if ex.shutdown:
            error: BridgeError = ShuttingDown("The gateway is shutting down; retry.")
        elif ex.timed_out:
            error = UpstreamTimeout("The upstream did not answer in time.")
        elif failure.check(BridgeError):
            error = failure.value
        else:
            self.log.warn("Upstream {provider} unreachable for {id}: {reason}",
                          provider=ex.entry.name, id=ex.id, reason=records.scrub(failure.getErrorMessage(), ex, self.secrets))
            error = UpstreamUnavailable("The upstream provider could not be reached.")
        self._refuse(ex, error)

    def _crash_after_upstream(self, failure: Failure, ex: Exchange) -> None:
        ex.pending = None
        self._crash(ex, failure)

    def _failed_before_upstream(self, failure: Failure, ex: Exchange) -> None:
        if failure.check(BridgeError):
            self._refuse(ex, failure.value)
        else:
            self._crash(ex, failure)

    def _refuse(self, ex: Exchange, error: BridgeError) -> None:
        request = ex.request
        if ex.route_error is not None and ex.initiator is None:
            # The route was refused already; the credential was checked only
            # to record who asked, and its own refusal changes no answer.
            error = ex.route_error
        reason = getattr(error, "reason", error.kind)
        self.metrics.inc(f"refused:{error.status}:{reason}")
        credential = ex.credential
        message = records.scrub(error.message, ex, self.secrets)
        if message != error.message:
            # A path can carry a secret (a client's mistake); the answer and the log never do.
            error = _masked(error, message)
        self.log.info("Refused {method} {path}: {status} ({reason}) client={client} "
                      "credential={credential_kind} hint={hint}",
                      method=request.method.decode("latin-1"),
                      path=records.printable(request.path, lambda text: records.scrub(text, ex, self.secrets)),
                      status=error.status, reason=reason, client=ex.client.name,
                      credential_kind=credential.source if credential is not None else "none",
                      hint=credential.hint if credential is not None else "none")
        if ex.initiator is not None:
            # Authenticated: this belongs in the audit trail too.
            self._record(ex, status=error.record_status, error=error.message, http_status=error.status)
        if not request.finished and not ex.client_gone:
            provider = ex.entry.provider if ex.entry is not None else None
            write_error(request, provider, error)
        self._close(ex)

    def _crash(self, ex: Exchange, failure: Optional[Failure] = None) -> None:
        # The traceback names our code, never a header value: values are only
        # ever passed as arguments, not formatted into exception messages.
        self.log.failure("Unexpected error serving {id}", failure, id=ex.id)
        self._refuse(ex, BridgeError("Internal error in the gateway."))

    def _record(self, ex: Exchange, *, status: str, error: Optional[str] = None,
                usage: Optional[Usage] = None, http_status: Optional[int] = None) -> None:
        if ex.done:
            return
        ex.done = True
        request = ex.request
        if http_status is None and request.startedWriting:
            http_status = request.code
        record = records.interception(ex, ended_at=self.clock.seconds(), status=status, error=error, usage=usage,
                                      http_status=http_status,
                                      max_prompt_chars=self.config.recording.max_prompt_chars,
                                      prices=self.prices, secrets=self.secrets)
        self.metrics.interception(record)
        if ex.admitted is not None:
            self.admission.finish(ex, record.cost_micros)
        self.recorder.record(record)
        if self.config.log_interceptions:
            # A request that came through the AI proxy has the proxy's line instead: the same facts, and where from.
            log_line = getattr(request, "log_interception", None)
            (log_line if log_line is not None else self._log_line)(record)
        self._close(ex)

    def _log_line(self, record: Interception) -> None:
        fields = dict(
            id=record.id, initiator=record.initiator_username or record.initiator_id, client=record.client,
            provider=record.provider, route=record.route, model=record.model, status=record.status,
            upstream_status=record.upstream_status, tokens_in=record.input_tokens,
            tokens_out=record.output_tokens, duration_ms=record.duration_ms)
        # The text is made here with str.format (in C) rather than by the
        # logger's formatter (in Python, a call per field, for every
        # observer); the fields stay on the event for the JSON log.
        text = _LOG_LINE.format(**fields).replace("{", "{{").replace("}", "}}")
        self.log.info(text, **fields)

    def _close(self, ex: Exchange) -> None:
        if ex.admitted is not None:  # ended without a record: its hold goes, nothing spent
            self.admission.finish(ex, None)
        self.in_flight.discard(ex)
        if not self.in_flight and self._drained:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def drain(self, grace: float) -> Deferred:
        """
        Fires when no request is in flight, or after C{grace} seconds; then
        what is still running is stopped (and recorded as cut short).
        """
        d: Deferred = Deferred()
        if not self.in_flight:
            d.callback(None)
            return d
        self._drained.append(d)

        timers: list = []

        def expired() -> None:
            # Each exchange stopped here records itself (as shutdown) and
            # leaves in_flight when its relay or request notices, a reactor
            # turn or two later; whatever has not by the hard cap is let go.
            for ex in list(self.in_flight):
                ex.shutdown = True
                ex.stop()
                if ex.relay is not None:
                    ex.request.loseConnection()
            timers.append(self.clock.callLater(DRAIN_HARD_CAP, forced))

        def forced() -> None:
            for ex in list(self.in_flight):
                self._record(ex, status="shutdown", error="cut short by shutdown after the grace period")
                self._close(ex)
        timers.append(self.clock.callLater(grace, expired))

        def cancel(result: Any) -> Any:
            for timer in timers:
                if timer.active():
                    timer.cancel()
            return result
        d.addBoth(cancel)
        return d


def _masked(error: BridgeError, message: str) -> BridgeError:
    """A copy of C{error} saying C{message} (its class, status and headers kept)."""
    copy = BridgeError.__new__(type(error))
    copy.__dict__.update(error.__dict__)
    copy.message = message
    copy.args = (message,)
    return copy

