# -*- test-case-name: tests.test_tap_memory,tests.test_tap,tests.test_reload,tests.test_startup -*-
"""
The twistd glue, and the one place where the parts are wired together.
"""

from __future__ import annotations

import gc
import re
import signal
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Optional

from twisted.application import service
from twisted.internet import endpoints
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from bridgeproxy import chain
from bridgeproxy.api import BridgeAPI
from bridgeproxy.clients import TableDetector
from bridgeproxy.config import Config, load, override, parse
from bridgeproxy.errors import ConfigError
from bridgeproxy.interfaces import (
    IAuthExtractor, IClientDetector, IIdentityBackend, IInitiatorResolver, IProvider,
)
from bridgeproxy.metrics import Metrics
from bridgeproxy.prices import table_for
from bridgeproxy.proxy.admission import Admission
from bridgeproxy.proxy.upstream import make_agent
from bridgeproxy.proxy.pipeline import Bridge, ProviderEntry
from bridgeproxy.proxy.resource import BridgeResource
from bridgeproxy.proxy.site import make_site
from bridgeproxy.recording import Recorder, Retention
from bridgeproxy.store import AsyncStore, check_sqlite, safe_url
from bridgeproxy.workers import listen_backlog, tcp_address

log = Logger()

#: Allocations between young-generation collections (CPython's default: 700).
GC_THRESHOLD = 10_000


class Options(usage.Options):
    """C{twistd bridgeproxy} options."""

    synopsis = "[--config PATH] [--listen ENDPOINT]"
    optParameters = [
        ["config", "c", None, "Path to the TOML configuration file (default: the embedded defaults)."],
        ["listen", "l", None, "Twisted endpoint to listen on; overrides 'listen' in the configuration."],
        ["workers", "w", None, "Number of worker processes sharing the port; overrides 'workers'."],
        ["log-format", None, None, "Log to standard output as 'json' (one event per line) or 'text' "
                                   "(default: twistd's own logging, --logfile)."],
    ]

    def postOptions(self) -> None:
        # A configuration error is one line and a non-zero exit (SystemExit),
        # not a UsageError: twistd would print its whole usage text with it.
        try:
            config = load(self["config"]) if self["config"] else parse({})
        except ConfigError as e:
            raise SystemExit(f"bridgeproxy: {e}") from None
        #: Command-line settings that beat the file's, at start and at each reload.
        self.overrides: dict[str, Any] = {}
        if self["listen"]:
            self.overrides["listen"] = self["listen"]
            config = override(config, listen=self["listen"])
        if self["workers"]:
            try:
                workers = int(self["workers"])
                assert workers >= 1
            except (ValueError, AssertionError):
                raise SystemExit("bridgeproxy: --workers must be a whole number of 1 or more") from None
            self.overrides["workers"] = workers
            config = override(config, workers=workers)
        if self["log-format"] not in (None, "json", "text"):
            raise SystemExit("bridgeproxy: --log-format must be json or text")
        parent = self.parent
        if self["log-format"] and parent is not None and parent.get("logger") is None:
            # twistd resolves --logger after this; ours becomes its observer factory.
            parent["logger"] = f"bridgeproxy.logs.{self['log-format']}"
        if config.workers > 1:
            try:
                tcp_address(config.listen)
            except ConfigError as e:
                raise SystemExit(f"bridgeproxy: {e}") from None
        self.config = config


@dataclass
class App:
    """Everything L{build} made, for the service and for tests."""

    config: Config
    bridge: Bridge
    site: Any
    store: AsyncStore
    recorder: Recorder
    metrics: Metrics
    identity: Any
    retention: Retention
    reactor: Any = None
    plugin_package: Any = None
    admission: Any = None


@dataclass
class Chains:
    """The parts a reload may replace: the identity backend and the plugin chains."""

    identity: Any
    providers: dict[str, ProviderEntry]
    extractors: list[Any]
    resolvers: list[Any]
    detectors: list[Any]


def build_chains(config: Config, reactor: Any, store: Any, metrics: Metrics,
                 plugin_package: Any = None) -> Chains:
    """
    Select and configure the plugins C{config} names (at start, and again
    at each reload, with the same store and metrics).

    @raise ConfigError: for a plugin name that nothing provides.
    """
    context = chain.PluginContext(config=config, reactor=reactor, metrics=metrics, store=store)
    identity = chain.select(IIdentityBackend, [config.identity_backend], context,
                            "identity_backend", plugin_package)[0]
    context.identity = identity
    providers = {}
    found = chain.available(IProvider, plugin_package)
    for name, provider_config in config.providers.items():
        provider = chain.select(IProvider, [provider_config.plugin], context, f"providers.{name}", found=found)[0]
        base_url = provider_config.base_url or provider.default_base_url
        if not base_url:
            raise ConfigError(f"providers.{name}.base_url is required: the {provider_config.plugin!r} "
                              f"provider has no default")
        providers[name] = ProviderEntry(provider=provider, config=replace(provider_config, base_url=base_url))
    extractors = chain.select(IAuthExtractor, config.auth.extractors, context, "auth.extractors", plugin_package)
    resolvers = chain.select(IInitiatorResolver, config.initiator.resolvers, context,
                             "initiator.resolvers", plugin_package)
    detectors = chain.select(IClientDetector, config.clients.detectors, context,
                             "clients.detectors", plugin_package) + [TableDetector()]
    return Chains(identity=identity, providers=providers, extractors=extractors, resolvers=resolvers,
                  detectors=detectors)


def _warn_missing_keys(config: Config) -> None:
    for name, provider_config in config.providers.items():
        if provider_config.key is None:
            log.warn("No key for provider {name} ({source} is empty): only clients that bring "
                     "their own key can use it", name=name, source=provider_config.key_source)


def build(config: Config, reactor: Any, *, agent: Any = None, store: Optional[AsyncStore] = None,
          plugin_package: Any = None) -> App:
    """
    Wire the parts the configuration names.

    @param agent: the upstream L{IAgent}; a pooled L{Agent} when omitted.
    @param plugin_package: where to look for plugins (default:
        C{twisted.plugins}); tests pass their own.
    @raise ConfigError: for a plugin name that nothing provides.
    """
    metrics = Metrics()
    if store is None:
        store = AsyncStore(config.database, reactor)
    chains = build_chains(config, reactor, store, metrics, plugin_package)
    _warn_missing_keys(config)
    recorder = Recorder(store, reactor, config.recording, metrics)
    admission = Admission(store, reactor, config, table_for(config), metrics)
    bridge = Bridge(
        config, providers=chains.providers, extractors=chains.extractors, resolvers=chains.resolvers,
        detectors=chains.detectors, agent=agent if agent is not None else make_agent(reactor, config.upstream),
        clock=reactor, recorder=recorder, metrics=metrics, admission=admission,
    )
    bridge.api = BridgeAPI(extractors=chains.extractors, identity=chains.identity, store=store, clock=reactor,
                           recorder=recorder, providers=chains.providers,
                           metrics=None if config.metrics_listen else metrics, admission=admission)
    metrics.watch_queue(lambda: len(recorder.queue))
    site = make_site(BridgeResource(bridge), config.max_body_bytes, reactor, access_log=config.access_log)
    retention = Retention(store, reactor, config.recording.retention_days)
    return App(config=config, bridge=bridge, site=site, store=store,
               recorder=recorder, metrics=metrics, identity=chains.identity, retention=retention,
               reactor=reactor, plugin_package=plugin_package, admission=admission)


#: Settings bound when the process starts; a reload leaves them as they are.
RESTART_ONLY = ("listen", "workers", "database", "metrics_listen")
_RECORDING_RESTART_ONLY = ("enabled", "batch_size", "flush_interval", "queue_max", "spool_path", "retention_days")
_UPSTREAM_RESTART_ONLY = ("connect_timeout", "max_connections_per_host", "idle_connection_seconds", "ca_file")
_AIPROXY_RESTART_ONLY = ("listen", "ca_cert", "ca_key")


def split_reload(running: Config, new: Config) -> tuple[Config, list[str]]:
    """
    What a reload to C{new} can apply while running C{running}: C{new} with
    the restart-only settings kept as they run, and the names of the
    restart-only settings that differ (to be reported as ignored).
    """
    ignored = [name for name in RESTART_ONLY if getattr(running, name) != getattr(new, name)]
    ignored += [f"recording.{name}" for name in _RECORDING_RESTART_ONLY
                if getattr(running.recording, name) != getattr(new.recording, name)]
    ignored += [f"upstream.{name}" for name in _UPSTREAM_RESTART_ONLY
                if getattr(running.upstream, name) != getattr(new.upstream, name)]
    ignored += [f"aiproxy.{name}" for name in _AIPROXY_RESTART_ONLY
                if getattr(running.aiproxy, name) != getattr(new.aiproxy, name)]
    effective = replace(
        new, **{name: getattr(running, name) for name in RESTART_ONLY},
        recording=replace(new.recording, **{n: getattr(running.recording, n) for n in _RECORDING_RESTART_ONLY}),
        upstream=replace(new.upstream, **{n: getattr(running.upstream, n) for n in _UPSTREAM_RESTART_ONLY}),
        aiproxy=replace(new.aiproxy, **{n: getattr(running.aiproxy, n) for n in _AIPROXY_RESTART_ONLY}),
    )
    return effective, ignored


def read_config(path: Optional[str], overrides: Optional[Mapping[str, Any]] = None) -> Config:
    """
    The configuration at C{path} (the defaults without one), with the
    command line's C{overrides}.

    @raise ConfigError: for a file that cannot be read or is not valid.
    """
    config = load(path) if path else parse({})
    return override(config, **overrides) if overrides else config


def check(config: Config, reactor: Any, plugin_package: Any = None) -> None:
    """
    Whether the plugins C{config} names exist and accept their settings,
    without touching the store.

    @raise ConfigError: when they do not.
    """
    build_chains(config, reactor, AsyncStore(config.database, reactor), Metrics(), plugin_package)


def _set_access_log(site: Any, enabled: bool) -> None:
    if enabled:
        site.__dict__.pop("log", None)  # back to Site.log
    else:
        site.log = lambda request: None


def reload(app: App, path: Optional[str], overrides: Optional[Mapping[str, Any]] = None) -> bool:
    """
    Re-read the configuration file and serve new requests with it; requests
    in flight finish with what they started with.  Restart-only settings
    that changed are logged as ignored.  A file that does not load (or names
    a plugin nobody provides) changes nothing; the error is logged.

    @return: whether the new configuration applies.
    """
    try:
        effective, ignored = split_reload(app.config, read_config(path, overrides))
        chains = build_chains(effective, app.reactor, app.store, app.metrics, app.plugin_package)
    except ConfigError as e:
        log.error("Reload failed, still running the previous configuration: {error}", error=str(e))
        return False
    except Exception:
        log.failure("Reload failed, still running the previous configuration")
        return False
    if ignored:
        log.warn("Reload: {settings} changed but need a restart; ignored", settings=", ".join(ignored))
    _warn_missing_keys(effective)
    app.bridge.reconfigure(effective, providers=chains.providers, extractors=chains.extractors,
                           resolvers=chains.resolvers, detectors=chains.detectors)
    api = app.bridge.api
    if api is not None:
        api.extractors, api.identity, api.providers = chains.extractors, chains.identity, chains.providers
    _set_access_log(app.site, effective.access_log)
    app.site.requestFactory.max_body = effective.max_body_bytes
    app.identity = chains.identity
    app.config = effective
    log.info("Reloaded configuration from {path}; providers {providers}", path=path or "(defaults)",
             providers=", ".join(effective.providers))
    return True


class OnHangup(service.Service):
    """
    Runs C{action} in the reactor thread when the process gets SIGHUP.

    The handler only queues the call (C{callFromThread}): a signal handler
    runs between any two bytecodes of the reactor thread.
    """

    def __init__(self, reactor: Any, action: Callable[[], Any]):
        self.reactor = reactor
        self.action = action
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._hangup)

    def _hangup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.action)

    def stopService(self) -> None:
        super().stopService()
        signal.signal(signal.SIGHUP, self._previous if self._previous is not None else signal.SIG_DFL)
        self._previous = None


class BridgeService(service.MultiService):
    """
    The whole bridge as one service: the store and recorder, the listener.

    Stopping is sequential, unlike a plain L{MultiService}: stop accepting
    connections, let requests in flight finish (up to
    C{shutdown_grace_seconds}), flush the recording queue, close the store.

    A store that cannot be reached at start (a PostgreSQL server that is
    down) is tried again with a growing delay, logged each time; C{/readyz}
    answers 503 until it answers.

    @param clock: schedules those retries (default: the app's reactor).
    """

    #: Seconds before each new attempt to reach the store at start (the last one repeats).
    store_retry_delays = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)

    def __init__(self, app: App, listener: Optional[service.IService] = None, clock: Any = None):
        super().__init__()
        self.app = app
        self.listener = listener
        self.clock = clock if clock is not None else app.reactor
        self._store_retry: Any = None
        self._refresh: Optional[LoopingCall] = None
        if listener is not None:
            listener.setServiceParent(self)

    def startService(self) -> None:
        self.app.store.start()
        self.app.recorder.start()
        self.app.retention.start()
        if self.app.admission is not None:
            self.app.admission.start()
        if self.app.metrics.multiprocess:
            # A worker's gauges read from functions are written for the others' scrapes.
            self._refresh = LoopingCall(self.app.metrics.refresh)
            self._refresh.clock = self.clock
            self._refresh.start(1.0)
        super().startService()
        # Create or migrate the schema now, so a bad database URL shows at start.
        self._reach_store(0)

    def _reach_store(self, attempt: int) -> None:
        self._store_retry = None
        store = self.app.store
        d = store.run(lambda db: db.version())

        def reached(version: int) -> None:
            if attempt:
                log.info("Store {url} reachable (schema version {version})", url=safe_url(store.url),
                         version=version)

        def failed(failure: Any) -> None:
            if not self.running:
                return
            delay = self.store_retry_delays[min(attempt, len(self.store_retry_delays) - 1)]
            log.warn("Store {url} unavailable ({reason}); retrying in {delay:g}s", url=safe_url(store.url),
                     reason=store.describe(failure.value), delay=delay)
            self._store_retry = self.clock.callLater(delay, self._reach_store, attempt + 1)
        d.addCallbacks(reached, failed)

    @inlineCallbacks
    def stopService(self):
        service.Service.stopService(self)
        if self._store_retry is not None and self._store_retry.active():
            self._store_retry.cancel()
        self._store_retry = None
        if self.listener is not None and self.listener.running:
            yield self.listener.stopService()
        if self.app.bridge.in_flight:
            log.info("Waiting up to {grace}s for {count} requests in flight",
                     grace=self.app.config.shutdown_grace_seconds, count=len(self.app.bridge.in_flight))
            yield self.app.bridge.drain(self.app.config.shutdown_grace_seconds)
        self.app.retention.stop()
        if self._refresh is not None and self._refresh.running:
            self._refresh.stop()
        if self.app.admission is not None:
            yield self.app.admission.stop()
        yield self.app.recorder.stop()
        yield self.app.store.stop()
        for child in list(self):
            if child.running:
                yield child.stopService()


class ListeningPort(service.Service):
    """A port that is already listening (bound when the service was made); stopping closes it."""

    def __init__(self, port: Any):
        self.port = port

    def stopService(self) -> Any:
        super().stopService()
        return self.port.stopListening()


_BACKLOG_ENDPOINTS = frozenset({"tcp", "tcp6", "ssl", "unix"})


def with_backlog(description: str) -> str:
    """
    C{description} with C{backlog=} set to L{listen_backlog} when it is a
    tcp/tcp6/ssl/unix endpoint that does not set one itself (Twisted's own
    default is 50: a burst of clients would wait on SYN retries).
    """
    parts = re.split(r"(?<!\\):", description)
    if parts[0] not in _BACKLOG_ENDPOINTS or any(p.startswith("backlog=") for p in parts[1:]):
        return description
    return f"{description}:backlog={listen_backlog()}"


def listen(description: str, factory: Any, reactor: Any, what: str = "listen") -> ListeningPort:
    """
    Listen on the endpoint C{description} now (with the large backlog), so
    that a port in use stops the start with one line.

    @raise SystemExit: when it is not an endpoint or cannot be listened on.
    """
    try:
        endpoint = endpoints.serverFromString(reactor, with_backlog(description))
    except Exception as e:  # noqa: BLE001 - any parse or certificate error, told in one line
        raise SystemExit(f"bridgeproxy: {what}: not a usable endpoint {description!r} ({e})") from None
    outcome: list[Any] = []
    endpoint.listen(factory).addBoth(outcome.append)
    if not outcome:  # a plugin's endpoint type that binds later: the start could not say it listens
        raise SystemExit(f"bridgeproxy: {what}: endpoint {description!r} does not listen at once")
    if isinstance(outcome[0], Failure):
        error = outcome[0].value
        socket_error = getattr(error, "socketError", None)
        reason = getattr(socket_error, "strerror", None) or str(socket_error or error)
        reason = reason[:1].lower() + reason[1:]
        raise SystemExit(f"bridgeproxy: cannot listen on {description}: {reason}") from None
    return ListeningPort(outcome[0])


def _check_store(config: Config) -> None:
    try:
        check_sqlite(config.database)
    except ConfigError as e:
        raise SystemExit(f"bridgeproxy: {e}") from None


def _with_aiproxy(app: App, listener: service.IService, reactor: Any) -> service.IService:
    """The bridge's listener and the AI proxy's, stopped together at shutdown."""
    from bridgeproxy.aiproxy import make_aiproxy

    settings = app.config.aiproxy
    assert settings.listen
    try:
        factory = make_aiproxy(app, reactor)
    except ConfigError as e:
        raise SystemExit(f"bridgeproxy: {e}") from None
    both = service.MultiService()
    listener.setServiceParent(both)
    listen(settings.listen, factory, reactor, "aiproxy.listen").setServiceParent(both)
    log.info("AI proxy listening on {listen}; decrypting {domains}", listen=settings.listen,
             domains=", ".join(f"{host} ({provider})" for host, provider in settings.domains.items()) or "nothing")
    return both


def makeService(options: Options) -> service.IService:
    """The twistd entry point; the only place that imports the global reactor."""
    from twisted.internet import reactor

    return make_service(options.config, reactor, options["config"], options.overrides,
                        options["log-format"] or "text")


def make_service(config: Config, reactor: Any, config_path: Optional[str] = None,
                 overrides: Optional[Mapping[str, Any]] = None, log_format: str = "text") -> service.IService:
    """
    The whole bridge (or the supervisor of its workers) for C{config}.  The
    listeners are bound here, before twistd starts anything: a port in use
    or an unusable SQLite file is one line on standard error and exit
    status 1, and "listening" is logged only once the port is bound.
    """
    _check_store(config)
    if config.workers > 1 and config.aiproxy.listen:
        raise SystemExit("bridgeproxy: aiproxy.listen needs workers = 1 (the AI proxy runs in one process)")
    if config.workers > 1:
        from bridgeproxy.workers import Supervisor, reuseport_socket
        interface, port, backlog = tcp_address(config.listen)
        try:
            reuseport_socket(interface, port, backlog).close()
        except OSError as e:
            reason = (e.strerror or str(e))[:1].lower() + (e.strerror or str(e))[1:]
            raise SystemExit(f"bridgeproxy: cannot listen on {config.listen}: {reason}") from None
        try:
            # The workers would each fail on a configuration the supervisor can see is unusable.
            check(config, reactor)
        except ConfigError as e:
            raise SystemExit(f"bridgeproxy: {e}") from None
        supervisor = Supervisor(reactor, config_path, config.workers, config.listen, log_format, dict(overrides or {}),
                                share_metrics=True)
        top = service.MultiService()
        supervisor.setServiceParent(top)
        OnHangup(reactor, supervisor.reload).setServiceParent(top)
        log.info("bridgeproxy supervising {count} workers on {listen}", count=config.workers, listen=config.listen)
        return top
    try:
        app = build(config, reactor)
    except ConfigError as e:
        raise SystemExit(f"bridgeproxy: {e}") from None
    listener: service.IService = listen(config.listen, app.site, reactor)
    if config.aiproxy.listen:
        listener = _with_aiproxy(app, listener, reactor)
    top = BridgeService(app, listener)
    # What start-up made lives as long as the process: out of the cyclic
    # collector's sight, so that a full collection during a burst does not
    # walk every module, class and plugin again; and fewer young collections
    # while thousands of requests are set up at once.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)
    OnHangup(reactor, lambda: reload(app, config_path, overrides)).setServiceParent(top)
    if config.metrics_listen:
        from twisted.web.server import Site

        from bridgeproxy.api import MetricsResource
        metrics_site = Site(MetricsResource(app.metrics), reactor=reactor)
        metrics_site.log = lambda request: None  # type: ignore[method-assign]
        listen(config.metrics_listen, metrics_site, reactor, "metrics_listen").setServiceParent(top)
    log.info("bridgeproxy listening on {listen}; store {db}; providers {providers}",
             listen=config.listen, db=safe_url(config.database), providers=", ".join(config.providers))
    return top
