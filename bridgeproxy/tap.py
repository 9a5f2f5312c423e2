# -*- test-case-name: tests.test_tap -*-
"""
The twistd glue, and the one place where the parts are wired together.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Optional

from twisted.application import service, strports
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger
from twisted.python import usage

from bridgeproxy import chain
from bridgeproxy.api import BridgeAPI
from bridgeproxy.clients import TableDetector
from bridgeproxy.config import Config, load, override, parse
from bridgeproxy.errors import ConfigError
from bridgeproxy.interfaces import (
    IAuthExtractor, IClientDetector, IIdentityBackend, IInitiatorResolver, IProvider,
)
from bridgeproxy.metrics import Metrics
from bridgeproxy.proxy.forward import make_agent
from bridgeproxy.proxy.resource import Bridge, BridgeResource, ProviderEntry
from bridgeproxy.proxy.site import make_site
from bridgeproxy.recording import Recorder, Retention
from bridgeproxy.store import AsyncStore

log = Logger()


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
        try:
            config = load(self["config"]) if self["config"] else parse({})
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
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
                raise usage.UsageError("--workers must be a whole number of 1 or more") from None
            self.overrides["workers"] = workers
            config = override(config, workers=workers)
        if self["log-format"] not in (None, "json", "text"):
            raise usage.UsageError("--log-format must be json or text")
        parent = getattr(self, "parent", None)
        if self["log-format"] and parent is not None and parent.get("logger") is None:
            # twistd resolves --logger after this; ours becomes its observer factory.
            parent["logger"] = f"bridgeproxy.logs.{self['log-format']}"
        if config.workers > 1:
            from bridgeproxy.workers import tcp_address
            try:
                tcp_address(config.listen)
            except ConfigError as e:
                raise usage.UsageError(str(e)) from None
        self.config = config


@dataclass
class App:
    """Everything L{build} made, for the service and for tests."""

    config: Config
    bridge: Bridge
    resource: BridgeResource
    site: Any
    store: AsyncStore
    recorder: Recorder
    metrics: Metrics
    identity: Any
    retention: Retention
    reactor: Any = None
    plugin_package: Any = None


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
        provider = chain.select(IProvider, [name], context, "providers", found=found)[0]
        providers[name] = ProviderEntry(provider=provider, config=provider_config)
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
    bridge = Bridge(
        config, providers=chains.providers, extractors=chains.extractors, resolvers=chains.resolvers,
        detectors=chains.detectors, agent=agent if agent is not None else make_agent(reactor, config.upstream),
        clock=reactor, recorder=recorder, metrics=metrics,
    )
    bridge.api = BridgeAPI(extractors=chains.extractors, identity=chains.identity, store=store,
                           recorder=recorder, providers=chains.providers,
                           metrics=None if config.metrics_listen else metrics)
    metrics.watch_queue(lambda: len(recorder.queue))
    resource = BridgeResource(bridge)
    site = make_site(resource, config.max_body_bytes, reactor, access_log=config.access_log)
    retention = Retention(store, reactor, config.recording.retention_days)
    return App(config=config, bridge=bridge, resource=resource, site=site, store=store,
               recorder=recorder, metrics=metrics, identity=chains.identity, retention=retention,
               reactor=reactor, plugin_package=plugin_package)


#: Settings bound when the process starts; a reload leaves them as they are.
RESTART_ONLY = ("listen", "workers", "database", "metrics_listen")
_RECORDING_RESTART_ONLY = ("enabled", "batch_size", "flush_interval", "queue_max", "spool_path", "retention_days")
_UPSTREAM_RESTART_ONLY = ("connect_timeout", "max_connections_per_host", "idle_connection_seconds", "ca_file")


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
    effective = replace(
        new, **{name: getattr(running, name) for name in RESTART_ONLY},
        recording=replace(new.recording, **{n: getattr(running.recording, n) for n in _RECORDING_RESTART_ONLY}),
        upstream=replace(new.upstream, **{n: getattr(running.upstream, n) for n in _UPSTREAM_RESTART_ONLY}),
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
        log.warn("Reload: {settings} changed but take a restart; ignored", settings=", ".join(ignored))
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
    """

    def __init__(self, app: App, listener: Optional[service.IService] = None):
        super().__init__()
        self.app = app
        self.listener = listener
        if listener is not None:
            listener.setServiceParent(self)

    def startService(self) -> None:
        self.app.store.start()
        # Create or migrate the schema now, so a bad database URL shows at start.
        d = self.app.store.run(lambda db: db.version())
        d.addErrback(lambda f: log.error("Store {url} unavailable at start: {error}",
                                         url=_safe_url(self.app.config.database), error=f.getErrorMessage()))
        self.app.recorder.start()
        self.app.retention.start()
        super().startService()

    @inlineCallbacks
    def stopService(self):
        service.Service.stopService(self)
        if self.listener is not None and self.listener.running:
            yield self.listener.stopService()
        if self.app.bridge.in_flight:
            log.info("Waiting up to {grace}s for {count} requests in flight",
                     grace=self.app.config.shutdown_grace_seconds, count=len(self.app.bridge.in_flight))
            yield self.app.bridge.drain(self.app.config.shutdown_grace_seconds)
        self.app.retention.stop()
        yield self.app.recorder.stop()
        yield self.app.store.stop()
        for child in list(self):
            if child.running:
                yield child.stopService()


def _safe_url(url: str) -> str:
    """A database URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def makeService(options: Options) -> service.IService:
    """The twistd entry point; the only place that imports the global reactor."""
    from twisted.internet import reactor

    config: Config = options.config
    if config.workers > 1:
        from bridgeproxy.workers import Supervisor
        log.info("bridgeproxy supervising {count} workers on {listen}", count=config.workers, listen=config.listen)
        supervisor = Supervisor(reactor, options["config"], config.workers, config.listen,
                                options["log-format"] or "text", options.overrides)
        top = service.MultiService()
        supervisor.setServiceParent(top)
        OnHangup(reactor, supervisor.reload).setServiceParent(top)
        return top
    try:
        app = build(config, reactor)
    except ConfigError as e:
        raise SystemExit(f"bridgeproxy: {e}") from None
    try:
        listener = strports.service(config.listen, app.site)
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"bridgeproxy: listen: not a usable endpoint {config.listen!r} ({e})") from None
    top = BridgeService(app, listener)
    OnHangup(reactor, lambda: reload(app, options["config"], options.overrides)).setServiceParent(top)
    if config.metrics_listen:
        from twisted.web.server import Site

        from bridgeproxy.api import MetricsResource
        metrics_site = Site(MetricsResource(app.metrics), reactor=reactor)
        metrics_site.log = lambda request: None  # type: ignore[method-assign]
        try:
            strports.service(config.metrics_listen, metrics_site).setServiceParent(top)
        except (ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"bridgeproxy: metrics_listen: not a usable endpoint ({e})") from None
    log.info("bridgeproxy listening on {listen}; store {db}; providers {providers}",
             listen=config.listen, db=_safe_url(config.database), providers=", ".join(config.providers))
    return top
