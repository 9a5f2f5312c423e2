"""
The twistd glue in memory: what `twistd bridgeproxy` says about its
options, how the parts are wired (the plugins the configuration names, in
its order), what a reload (SIGHUP) changes and what it leaves, how the
service reaches its store and stops, and what it listens on, all on a
MemoryReactorClock: nothing binds, nothing spawns, nothing sleeps.
"""

import errno
import gc
import json
import os
import signal
import socket

import pytest
from twisted.internet.error import CannotListenError
from twisted.internet.testing import StringTransport

from bridgeproxy import tap
from bridgeproxy.api import MetricsResource
from bridgeproxy.config import parse
from bridgeproxy.errors import ConfigError
from bridgeproxy.store import AsyncStore
from bridgeproxy.workers import Supervisor, listen_backlog
from treq.testing import RequestTraversalAgent

from tests.memory import ANTHROPIC_KEY, OPENAI_KEY, UPSTREAM, Gateway, Upstream, request_bytes
from tests.wired import logged, ENVIRON, Reactor, SyncStore, built, config_data, plugin_package

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}

PLUGINS = '''
from zope.interface import implementer
from twisted.internet.defer import succeed
from twisted.plugin import IPlugin
from bridgeproxy import (ClientInfo, IAuthExtractor, IClientDetector, IConfigurable, IIdentityBackend, Identity,
                         IProvider, OpenAIProvider)
from bridgeproxy.auth import BearerExtractor
from bridgeproxy.initiator import TokenResolver

TOKEN = "bp_acme-memory-token-0123456789"
#: The contexts the detector was configured with, the last first.
CONTEXTS = []


@implementer(IPlugin, IIdentityBackend)
class Memory:
    name = "acme-memory"

    def identify(self, token):
        return succeed(Identity("acme-user-id", "acme-user") if token == TOKEN else None)

    def lookup_user(self, user_id):
        return succeed(None)


@implementer(IPlugin, IClientDetector, IConfigurable)
class Detector:
    name = "acme-detector"
    client = None

    def configure(self, context):
        CONTEXTS.insert(0, context)
        configured = Detector()
        configured.client = context.options["client"]
        return configured

    def detect(self, request, body):
        agent = request.getHeader(b"user-agent") or b""
        return ClientInfo(self.client) if b"acme" in agent else None


@implementer(IPlugin, IProvider, IConfigurable)
class AcmeLLM(OpenAIProvider):
    name = "acme-llm"
    default_base_url = None

    def configure(self, context):
        configured = AcmeLLM()
        configured.default_base_url = context.options.get("base_url")
        return configured


class AcmeBearer(BearerExtractor):
    name = "acme-bearer"


class AcmeToken(TokenResolver):
    name = "acme-token"

    def configure(self, context):
        return AcmeToken(context.identity)


@implementer(IPlugin, IAuthExtractor, IConfigurable)
class Exploding:
    name = "exploding"

    def configure(self, context):
        raise RuntimeError("the acme plugin broke")

    def extract(self, request):
        return None


memory = Memory()
detector = Detector()
exploding = Exploding()
acme_llm = AcmeLLM()
bearer = AcmeBearer()
token = AcmeToken()
'''
ACME_TOKEN = "bp_acme-memory-token-0123456789"


@pytest.fixture
def acme(tmp_path):
    """A third party's plugin package: every plugin the acme configuration names, and only there."""
    with plugin_package(tmp_path / "site", "acme_tap_plugins", PLUGINS) as package:
        yield package


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


# -- twistd bridgeproxy's options ---------------------------------------------------------


def options(*args, parent=None):
    opts = tap.Options()
    if parent is not None:
        opts.parent = parent
    opts.parseOptions(list(args))
    return opts


def refused(*args):
    with pytest.raises(SystemExit) as caught:
        options(*args)
    return str(caught.value)


def test_options_without_a_file_are_the_defaults():
    """Without --config, twistd bridgeproxy runs the embedded defaults and overrides nothing."""
    opts = options()
    assert opts.config == parse({})
    assert opts.overrides == {}
    assert (opts["config"], opts["listen"], opts["workers"], opts["log-format"]) == (None, None, None, None)


def test_options_read_the_file_and_the_command_line_beats_it(tmp_path):
    """--config is read; --listen and --workers beat its values and are kept as overrides for reloads."""
    path = tmp_path / "bridge.toml"
    path.write_text('listen = "tcp:9000:interface=127.0.0.1"\nworkers = 2\nshutdown_grace_seconds = 3\n')
    opts = options("--config", str(path))
    assert (opts.config.listen, opts.config.workers, opts.config.shutdown_grace_seconds) == (
        "tcp:9000:interface=127.0.0.1", 2, 3.0)
    assert opts.overrides == {}
    opts = options("-c", str(path), "--listen", "tcp:9100", "--workers", "4")
    assert (opts.config.listen, opts.config.workers, opts.config.shutdown_grace_seconds) == ("tcp:9100", 4, 3.0)
    assert opts.overrides == {"listen": "tcp:9100", "workers": 4}


def test_a_bad_file_or_option_is_one_line_not_the_usage_text(tmp_path):
    """A bad file, --workers, --log-format or a workers endpoint that is not tcp is one line, not the usage text."""
    path = tmp_path / "bridge.toml"
    path.write_text("workers = 0\n")
    assert refused("--config", str(path)) == "bridgeproxy: workers must be greater than 0, got 0"
    assert refused("--config", str(tmp_path / "missing.toml")).startswith(
        "bridgeproxy: cannot read configuration ")
    for bad in ("0", "-1", "two", "1.5"):
        assert refused("--workers", bad) == "bridgeproxy: --workers must be a whole number of 1 or more"
    assert refused("--log-format", "xml") == "bridgeproxy: --log-format must be json or text"
    assert refused("--workers", "2", "--listen", "unix:/run/bridge.sock") == (
        "bridgeproxy: workers need a 'tcp:PORT:interface=ADDR' listen endpoint, got 'unix:/run/bridge.sock'")
    assert options("--workers", "1", "--listen", "unix:/run/bridge.sock").config.workers == 1


def test_log_format_becomes_twistds_logger_unless_one_is_given():
    """--log-format becomes twistd's --logger, unless --logger was given."""
    twistd = {"logger": None}
    options("--log-format", "json", parent=twistd)
    assert twistd == {"logger": "bridgeproxy.logs.json"}
    twistd = {"logger": None}
    assert options("--log-format", "text", parent=twistd)["log-format"] == "text"
    assert twistd == {"logger": "bridgeproxy.logs.text"}
    twistd = {"logger": "mine.observer"}
    options("--log-format", "json", parent=twistd)
    assert twistd == {"logger": "mine.observer"}
    twistd = {"logger": None}
    options(parent=twistd)
    assert twistd == {"logger": None}
    assert options("--log-format", "json")["log-format"] == "json"   # no twistd around: nothing to set


def test_make_service_gets_the_options(monkeypatch, tmp_path):
    """The twistd entry point passes the configuration, the file, the overrides and the log format on."""
    made = []
    monkeypatch.setattr(tap, "make_service", lambda *args: made.append(args) or "the service")
    (tmp_path / "bridge.toml").write_text("workers = 1\n")
    opts = options("--listen", "tcp:9100", "--config", str(tmp_path / "bridge.toml"))
    assert tap.makeService(opts) == "the service"
    from twisted.internet import reactor
    assert made == [(opts.config, reactor, str(tmp_path / "bridge.toml"), {"listen": "tcp:9100"}, "text")]
    opts = options("--log-format", "json")
    tap.makeService(opts)
    assert made[-1][-1] == "json"


# -- wiring -------------------------------------------------------------------------------


ACME = {"identity_backend": "acme-memory", "auth": {"extractors": ["acme-bearer"]},
        "initiator": {"resolvers": ["acme-token"]}, "clients": {"detectors": ["acme-detector"]},
        "providers": {"acme": {"plugin": "acme-llm", "key_env": "K_OPENAI"}},
        "plugins": {"acme-llm": {"base_url": UPSTREAM + "/v1"}, "acme-detector": {"client": "Acme CLI"}}}


def acme_config(**extra):
    return parse({**ACME, **extra}, environ=ENVIRON)


def test_the_configured_plugins_serve_in_the_configured_order(acme):
    """Identity backend, extractors, resolvers, detectors and providers come from the plugin package, in the
    configuration's order, each configured with its own table; the built-in client table comes last."""
    store = SyncStore()
    reactor = Reactor()
    app = tap.build(acme_config(), reactor, store=store, plugin_package=acme)
    chains = tap.build_chains(acme_config(), reactor, store, app.metrics, acme)
    assert [type(p).__name__ for p in chains.detectors] == ["Detector", "TableDetector"]
    assert chains.detectors[0].client == "Acme CLI"
    assert [p.name for p in chains.extractors] == ["acme-bearer"]
    assert [p.name for p in chains.resolvers] == ["acme-token"]
    assert chains.identity.name == "acme-memory" and app.identity.name == "acme-memory"
    assert {name: (entry.provider.name, entry.config.base_url) for name, entry in chains.providers.items()} == {
        "acme": ("acme-llm", UPSTREAM + "/v1")}
    context = acme.plugins.CONTEXTS[0]
    assert (context.reactor, context.store, context.metrics, context.identity) == (
        reactor, store, app.metrics, chains.identity)
    assert context.config == acme_config() and context.options == {"client": "Acme CLI"}


def test_a_built_bridge_serves_and_records_with_its_plugins(acme):
    """A bridge built with a plugin package serves with its plugins: their key check, client names and provider."""
    store, reactor, upstream = SyncStore(), Reactor(), Upstream()
    agent = RequestTraversalAgent(upstream)
    app = tap.build(acme_config(), reactor, agent=agent, store=store, plugin_package=acme)
    gateway = Gateway(bridge=app.bridge, site=app.site, clock=reactor, upstream=upstream, upstream_agent=agent)
    assert gateway.send("POST", "/acme/v1/chat/completions", CHAT,
                        {**bearer(ACME_TOKEN), "User-Agent": "claude-cli/2.0 acme"}).status == 200
    assert gateway.send("POST", "/acme/v1/chat/completions", CHAT,
                        {**bearer(ACME_TOKEN), "User-Agent": "claude-cli/2.0 (external, cli)"}).status == 200
    assert upstream.seen[0].uri == b"/v1/chat/completions"
    assert upstream.seen[0].header("authorization") == f"Bearer {OPENAI_KEY}".encode()
    assert gateway.send("POST", "/acme/v1/chat/completions", CHAT, bearer("bp_nobody-0123456789")).status == 401
    app.recorder.flush()
    rows = store.db.interceptions()
    assert sorted((r["client"], r["initiator_username"]) for r in rows if r["status"] == "ok") == [
        ("Acme CLI", "acme-user"), ("Claude Code", "acme-user")]
    # The API answers with the same identity backend.
    assert gateway.send("GET", "/api/v1/interceptions", headers=bearer(ACME_TOKEN)).status == 200
    assert gateway.send("GET", "/api/v1/interceptions", headers=bearer("bp_nobody-0123456789")).status == 401


@pytest.mark.parametrize("data,message", [
    ({"identity_backend": "ldap"}, "identity_backend: no IIdentityBackend plugin is called 'ldap' "
                                   "(available: coder, keystore)"),
    ({"providers": {"local": {"plugin": "openai-compatible"}}},
     "providers.local.base_url is required: the 'openai-compatible' provider has no default"),
    ({"providers": {"azure": {"plugin": "azure"}}}, "providers.azure: no IProvider plugin is called 'azure'"),
    ({"auth": {"extractors": ["cookie"]}}, "auth.extractors: no IAuthExtractor plugin is called 'cookie'"),
    ({"initiator": {"resolvers": ["ldap"]}}, "initiator.resolvers: no IInitiatorResolver plugin is called 'ldap'"),
    ({"clients": {"detectors": ["acme"]}}, "clients.detectors: no IClientDetector plugin is called 'acme'"),
])
def test_a_plugin_nobody_provides_stops_the_build(data, message):
    """A plugin nobody provides, or a provider without a base URL, stops the build and the check alike."""
    config = parse(config_data(data), environ=ENVIRON)
    with pytest.raises(ConfigError) as caught:
        tap.build(config, Reactor(), store=SyncStore())
    assert str(caught.value).startswith(message)
    with pytest.raises(ConfigError):
        tap.check(config, Reactor())


def test_provider_defaults_and_the_default_agent():
    """Without base_url a provider goes to its plugin's own; without an agent the bridge makes its pool."""
    config = parse({"providers": {"openai": {}, "claude": {"plugin": "anthropic"}}}, environ={})
    app = tap.build(config, Reactor(), store=SyncStore())
    providers = app.bridge.providers
    assert (providers[b"openai"].config.base_url, providers[b"claude"].config.base_url) == (
        "https://api.openai.com/v1", "https://api.anthropic.com")
    assert providers[b"claude"].provider.name == "anthropic"


def test_build_makes_its_store_from_the_configuration(tmp_path):
    """Without a store given, build makes one for the configured database."""
    app = tap.build(parse({"database": f"sqlite:{tmp_path / 'b.db'}"}, environ={}), Reactor())
    assert isinstance(app.store, AsyncStore) and app.store.url == f"sqlite:{tmp_path / 'b.db'}"


def test_a_provider_without_a_key_is_a_warning(captured_log):
    """A provider without a key is one warning naming where the key was looked for."""
    tap.build(parse(config_data(), environ={"K_OPENAI": OPENAI_KEY}), Reactor(), store=SyncStore())
    assert ("No key for provider anthropic (environment variable K_ANTHROPIC is empty): only clients that "
            "bring their own key can use it") in logged(captured_log)
    assert "No key for provider openai" not in captured_log.text()


def test_what_build_wires():
    """The body limit, the access log, the metrics, the recorder and the retention come from the configuration."""
    app, gateway, store = built({"max_body_bytes": 1000, "recording": {"retention_days": 2, "batch_size": 1}})
    assert app.config.max_body_bytes == 1000 and app.reactor is gateway.clock and app.plugin_package is None
    big = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 2000}]}
    token = store.db.create_key("alice")[1]
    assert gateway.send("POST", "/openai/v1/chat/completions", big, bearer(token)).status == 413
    # The recording queue is watched by /metrics.
    gateway.send("POST", "/openai/v1/chat/completions", CHAT, bearer(token))
    gateway.send("POST", "/openai/v1/chat/completions", CHAT, bearer(token))
    assert len(app.recorder.queue) == 3
    metrics = gateway.send("GET", "/metrics").body
    assert b"bridgeproxy_recording_queue_depth 3.0" in metrics
    app.recorder.flush()
    assert len(app.recorder.queue) == 2   # batches of one
    while app.recorder.queue:
        gateway.clock.advance(0)
    # Retention: rows older than two days go at start.
    store.db.execute("UPDATE interceptions SET started_at = ? WHERE http_status = 413",
                     (gateway.clock.seconds() - 3 * 86400,))
    store.db.execute("UPDATE interceptions SET started_at = ? WHERE http_status = 200",
                     (gateway.clock.seconds() - 86400,))
    app.retention.start()
    gateway.clock.advance(0)
    assert [r["http_status"] for r in store.db.interceptions()] == [200, 200]


def test_the_access_log_is_off_unless_configured(captured_log):
    """The access log writes a line per request, on the bridge's clock, only when configured."""
    app, gateway, _ = built()
    gateway.site.doStart()
    gateway.send("GET", "/healthz")
    assert '"GET /healthz HTTP/1.1" 200' not in captured_log.text()
    app, gateway, _ = built({"access_log": True})
    gateway.site.doStart()
    gateway.send("GET", "/healthz?secret=x")
    size = len(b'{"status":"ok","pid":%d}' % os.getpid())
    assert f'127.0.0.1 - - [01/Jan/1970:00:00:00 +0000] "GET /healthz HTTP/1.1" 200 {size} "-" "-"' in logged(
        captured_log)


# -- reload ---------------------------------------------------------------------------------


def running_config(**extra):
    return parse(config_data(extra), environ=ENVIRON)


def test_split_reload_keeps_what_needs_a_restart():
    """A reload keeps the restart-only settings as they run, names those that changed, and applies the rest."""
    running = running_config()
    new = parse(config_data({
        "listen": "tcp:9999", "workers": 3, "database": "sqlite:other.db", "metrics_listen": "tcp:9090",
        "access_log": True, "max_body_bytes": 10,
        "recording": {"enabled": False, "batch_size": 7, "flush_interval": 9.0, "queue_max": 5,
                      "spool_path": "other.jsonl", "retention_days": 4, "max_prompt_chars": 10},
        "upstream": {"connect_timeout": 1.0, "max_connections_per_host": 3, "idle_connection_seconds": 4.0,
                     "timeout": 7.0, "send_actor_headers": True},
        "auth": {"allow_byok": False}}), environ=ENVIRON)
    effective, ignored = tap.split_reload(running, new)
    assert ignored == [
        "listen", "workers", "database", "metrics_listen",
        "recording.enabled", "recording.batch_size", "recording.flush_interval", "recording.queue_max",
        "recording.spool_path", "recording.retention_days",
        "upstream.connect_timeout", "upstream.max_connections_per_host", "upstream.idle_connection_seconds"]
    for name in ("listen", "workers", "database", "metrics_listen"):
        assert getattr(effective, name) == getattr(running, name)
    assert effective.recording == running.recording.__class__(**{**running.recording.__dict__,
                                                                 "max_prompt_chars": 10})
    assert effective.upstream == running.upstream.__class__(**{**running.upstream.__dict__, "timeout": 7.0,
                                                               "send_actor_headers": True})
    assert (effective.access_log, effective.max_body_bytes, effective.auth.allow_byok) == (True, 10, False)
    assert tap.split_reload(running, running_config()) == (running, [])


def test_read_config(tmp_path):
    """read_config is the file (or the defaults) with the command line's overrides."""
    assert tap.read_config(None) == parse({})
    assert tap.read_config(None, {"listen": "tcp:1"}) == parse({"listen": "tcp:1"})
    assert tap.read_config(None, {}) == parse({})
    path = tmp_path / "bridge.toml"
    path.write_text("workers = 2\n")
    config = tap.read_config(str(path), {"listen": "tcp:7"})
    assert (config.workers, config.listen, config.source_path) == (2, "tcp:7", str(path))


def test_check_does_not_touch_the_store(tmp_path):
    """Checking a configuration does not create or open the store."""
    config = parse({"database": f"sqlite:{tmp_path / 'never.db'}"}, environ={})
    tap.check(config, Reactor())
    assert not (tmp_path / "never.db").exists()


def test_check_configures_the_plugins_as_a_start_would(acme, tmp_path):
    """The plugins get the context of a start (the reactor, a store of the configured database, metrics), so
    that their configure can refuse what it cannot use; the store is not opened."""
    reactor = Reactor()
    config = acme_config(database=f"sqlite:{tmp_path / 'never.db'}")
    tap.check(config, reactor, acme)
    context = acme.plugins.CONTEXTS[0]
    assert context.reactor is reactor and context.config == config
    assert isinstance(context.store, AsyncStore) and context.store.url == f"sqlite:{tmp_path / 'never.db'}"
    assert context.metrics is not None and context.identity.name == "acme-memory"
    assert not (tmp_path / "never.db").exists()
    with pytest.raises(ConfigError):
        tap.check(config, Reactor())   # not in the installed plugins


def write(path, extra=None, alone=False):
    """A configuration file: the memory upstream's plus C{extra}, or C{extra} C{alone}."""
    data = extra if alone else config_data(extra)
    lines = []

    def table(prefix, values):
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict)}
        if prefix:
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {json.dumps(v)}")
        for k, v in values.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v)
    table("", data)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def app(tmp_path, monkeypatch):
    """A bridge built from tmp_path/bridge.toml, as twistd builds it, with alice's key."""
    monkeypatch.setenv("K_OPENAI", OPENAI_KEY)
    monkeypatch.setenv("K_ANTHROPIC", ANTHROPIC_KEY)
    store = SyncStore()
    reactor, upstream = Reactor(), Upstream()
    agent = RequestTraversalAgent(upstream)
    app = tap.build(tap.read_config(write(tmp_path / "bridge.toml")), reactor, agent=agent, store=store)
    app.gateway = Gateway(bridge=app.bridge, site=app.site, clock=reactor, upstream=upstream, upstream_agent=agent)
    app.gateway.site.doStart()
    app.token = store.db.create_key("alice")[1]
    return app


def test_reload_applies_to_the_next_request(app, tmp_path, monkeypatch, captured_log):
    """A new key, new limits and the access log apply at once; restart-only settings are logged as ignored."""
    monkeypatch.setenv("K_OPENAI", "sk-reloaded-0123456789")
    path = write(tmp_path / "bridge.toml", {"listen": "tcp:9999", "workers": 2, "access_log": True,
                                            "max_body_bytes": 1000,
                                            "auth": {"allow_byok": False},
                                            "providers": {"openai": {"base_url": UPSTREAM + "/v2",
                                                                     "key_env": "K_OPENAI"}}})
    old_identity = app.identity
    assert tap.reload(app, path) is True
    assert "Reload: listen, workers changed but need a restart; ignored" in logged(captured_log)
    assert f"Reloaded configuration from {path}; providers openai, anthropic" in logged(captured_log)
    assert app.config.listen == parse({}).listen and app.config.workers == 1 and app.config.max_body_bytes == 1000
    assert app.identity is not old_identity and app.bridge.api.identity is app.identity
    assert app.bridge.api.providers["openai"] is app.bridge.providers[b"openai"]
    answer = app.gateway.send("POST", "/openai/v1/chat/completions", CHAT, bearer(app.token))
    assert answer.status == 200
    assert app.gateway.upstream.seen[-1].uri == b"/v2/chat/completions"
    assert app.gateway.upstream.seen[-1].header("authorization") == b"Bearer sk-reloaded-0123456789"
    assert any('"POST /openai/v1/chat/completions HTTP/1.1" 200' in line for line in logged(captured_log))
    big = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 2000}]}
    assert app.gateway.send("POST", "/openai/v1/chat/completions", big, bearer(app.token)).status == 413
    # BYOK is now refused, through the API's extractors too.
    byok = {"X-Coder-Token": app.token, "Authorization": "Bearer sk-own-0123456789"}
    assert app.gateway.send("POST", "/openai/v1/chat/completions", CHAT, byok).status == 403
    assert app.gateway.send("GET", "/api/v1/usage", headers={"X-Api-Key": app.token}).status == 200
    # The access log goes off again.
    path = write(tmp_path / "bridge.toml")
    assert tap.reload(app, path) is True
    before = logged(captured_log).count('"GET /healthz HTTP/1.1"')
    app.gateway.send("GET", "/healthz")
    assert logged(captured_log).count('"GET /healthz HTTP/1.1"') == before


def test_reload_without_a_file_is_the_defaults_and_keeps_the_overrides(monkeypatch, captured_log):
    """A reload without a file applies the defaults with the overrides; nothing is reported as ignored."""
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    app, _, _ = built({"providers": {"openai": {}, "anthropic": {}}}, environ=dict(os.environ))
    assert tap.reload(app, None, {"max_body_bytes": 1000}) is True
    assert app.config.max_body_bytes == 1000
    assert "Reloaded configuration from (defaults); providers openai, anthropic" in logged(captured_log)
    assert "need a restart" not in captured_log.text()
    assert "No key for provider" not in captured_log.text()


def test_reload_warns_about_a_provider_without_a_key(app, tmp_path, monkeypatch, captured_log):
    """A reload whose provider has lost its key says so, as a start does."""
    monkeypatch.delenv("K_ANTHROPIC")
    assert tap.reload(app, write(tmp_path / "bridge.toml")) is True
    assert ("No key for provider anthropic (environment variable K_ANTHROPIC is empty): only clients that bring "
            "their own key can use it") in logged(captured_log)


def test_a_broken_file_changes_nothing(app, tmp_path, captured_log):
    """A file that is not TOML or names a missing plugin is one error line; the bridge keeps serving as before."""
    path = tmp_path / "bridge.toml"
    path.write_text("max_body_bytes = \n")
    before = app.config
    assert tap.reload(app, str(path)) is False
    assert (f"Reload failed, still running the previous configuration: {path}: not valid TOML: Invalid value "
            "(at line 1, column 18)") in logged(captured_log)
    path.write_text('identity_backend = "ldap"\n')
    assert tap.reload(app, str(path)) is False
    assert ("Reload failed, still running the previous configuration: identity_backend: no IIdentityBackend "
            "plugin is called 'ldap' (available: coder, keystore)") in logged(captured_log)
    assert app.config is before
    assert app.gateway.send("POST", "/openai/v1/chat/completions", CHAT, bearer(app.token)).status == 200


def test_a_plugin_that_breaks_changes_nothing(acme, tmp_path, captured_log):
    """A plugin whose configure raises is logged with its traceback and changes nothing."""
    store = SyncStore()
    app = tap.build(acme_config(), Reactor(), store=store, plugin_package=acme)
    before = app.config
    path = write(tmp_path / "bridge.toml", {**ACME, "auth": {"extractors": ["exploding"]}}, alone=True)
    assert tap.reload(app, path) is False
    assert app.config is before
    assert logged(captured_log)[-1] == "Reload failed, still running the previous configuration"
    assert "the acme plugin broke" in captured_log.text()   # with its traceback
    # A reload looks in the same plugin package again.
    path = write(tmp_path / "bridge.toml", {**ACME, "auth": {"extractors": []}}, alone=True)
    assert tap.reload(app, path) is True and app.config.auth.extractors == ()


def test_reload_without_the_api(tmp_path):
    """(A bridge built without its own endpoints reloads too.)"""
    app, _, _ = built()
    app.bridge.api = None
    assert tap.reload(app, None) is True


# -- SIGHUP -------------------------------------------------------------------------------------


@pytest.fixture
def sighup():
    """SIGHUP's handler as it was, put back after the test."""
    previous = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, previous)


def test_sighup_runs_the_action_in_the_reactor_thread_while_running(sighup):
    """SIGHUP queues the action for the reactor thread; stopping puts the previous handler back."""
    calls = []
    reactor = Reactor()
    reactor.callFromThread = lambda f, *a: calls.append(("queued", f))
    mine = lambda signum, frame: None  # noqa: E731
    signal.signal(signal.SIGHUP, mine)
    hangup = tap.OnHangup(reactor, lambda: calls.append("reloaded"))
    hangup.startService()
    assert hangup.running
    handler = signal.getsignal(signal.SIGHUP)
    assert handler is not mine
    handler(signal.SIGHUP, None)
    assert calls == [("queued", hangup.action)]
    hangup.stopService()
    assert not hangup.running
    assert signal.getsignal(signal.SIGHUP) is mine


def test_sighup_default_comes_back_when_there_was_none(sighup):
    """A previous handler Python does not know of comes back as the default one."""
    hangup = tap.OnHangup(Reactor(), lambda: None)
    hangup.startService()
    hangup._previous = None   # a handler installed outside Python (signal.signal then returns None)
    hangup.stopService()
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL


# -- the service ---------------------------------------------------------------------------------


class Port:
    def __init__(self):
        self.stopped = 0

    def stopListening(self):
        self.stopped += 1


def test_the_service_starts_everything_and_stops_in_order(captured_log):
    """Starting starts the store, recorder and listener; stopping closes the port, flushes records, then the store."""
    app, gateway, store = built({"recording": {"retention_days": 1}})
    port = Port()
    listener = tap.ListeningPort(port)
    svc = tap.BridgeService(app, listener)
    assert listener.parent is svc and svc.clock is app.reactor
    svc.startService()
    assert store.started == 1 and listener.running and svc.running
    assert "unavailable" not in captured_log.text() and "reachable" not in captured_log.text()
    token = store.db.create_key("alice")[1]
    gateway.send("POST", "/openai/v1/chat/completions", CHAT, bearer(token))
    svc.stopService()
    assert port.stopped == 1 and not listener.running and store.stopped == 1
    assert len(store.db.interceptions()) == 1   # the recorder flushed before the store closed


def test_a_store_down_at_start_is_tried_again_later_and_later(captured_log):
    """A store down at start is tried again after 1, 2, 4, 8, 15, then every 30 s, each logged without its password."""
    store = SyncStore("postgresql://bridge:hunter2-0123@db.internal/bridge")
    store.down = OSError("could not connect to db.internal")
    app, _, _ = built(store=store)
    svc = tap.BridgeService(app)
    svc.startService()
    clock = app.reactor
    delays = []
    for _ in range(8):
        [call] = [c for c in clock.getDelayedCalls() if c.func == svc._reach_store]
        delays.append(call.getTime() - clock.seconds())
        clock.advance(call.getTime() - clock.seconds())
    assert delays == [1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 30.0, 30.0]
    lines = logged(captured_log)
    assert [line for line in lines if "unavailable" in line] == [
        f"Store postgresql://***@db.internal/bridge unavailable (could not connect to db.internal); retrying in {d}s"
        for d in ("1", "2", "4", "8", "15", "30", "30", "30", "30")]
    assert "hunter2" not in captured_log.text()
    store.down = None
    clock.advance(30)
    assert "Store postgresql://***@db.internal/bridge reachable (schema version 7)" in logged(captured_log)
    assert [c for c in clock.getDelayedCalls() if c.func == svc._reach_store] == []
    svc.stopService()


def test_stopping_cancels_the_next_attempt():
    """Stopping cancels the next attempt to reach the store."""
    store = SyncStore()
    store.down = OSError("down")
    app, _, _ = built(store=store)
    svc = tap.BridgeService(app)
    svc.startService()
    assert [c for c in app.reactor.getDelayedCalls() if c.func == svc._reach_store]
    svc.stopService()
    assert [c for c in app.reactor.getDelayedCalls() if c.func == svc._reach_store] == []


def test_a_failure_after_stopping_is_not_retried(captured_log):
    """(The store's answer arrives after the service stopped: nothing is scheduled.)"""
    from twisted.internet.defer import Deferred
    store = SyncStore()
    pending = Deferred()
    store.run = lambda work: pending
    app, _, _ = built(store=store)
    svc = tap.BridgeService(app)
    svc.startService()
    svc.running = False
    pending.errback(OSError("down"))
    assert [c for c in app.reactor.getDelayedCalls() if c.func == svc._reach_store] == []
    assert "unavailable" not in captured_log.text()


def test_the_service_retries_on_its_own_clock():
    """The attempts are scheduled on the clock given to the service."""
    from twisted.internet.task import Clock
    store = SyncStore()
    store.down = OSError("down")
    app, _, _ = built(store=store)
    clock = Clock()
    svc = tap.BridgeService(app, clock=clock)
    svc.startService()
    assert [c.getTime() for c in clock.getDelayedCalls()] == [1.0]
    svc.stopService()


def test_requests_in_flight_are_waited_for(captured_log):
    """Stopping waits for requests in flight up to shutdown_grace_seconds, and says so."""
    from tests import memory
    app, gateway, store = built({"shutdown_grace_seconds": 5})
    token = store.db.create_key("alice")[1]
    gateway.upstream.handler = memory.sse_answer([b"data: {}\n\n"], end="hang")
    gateway.open("POST", "/openai/v1/chat/completions", {**CHAT, "stream": True}, bearer(token))
    svc = tap.BridgeService(app)
    svc.startService()
    d = svc.stopService()
    assert "Waiting up to 5.0s for 1 requests in flight" in logged(captured_log)
    assert not d.called
    gateway.clock.advance(5)
    gateway.pump()
    assert d.called


# -- listening -------------------------------------------------------------------------------------


def test_the_backlog_is_large_unless_the_endpoint_says():
    """tcp, tcp6, ssl and unix endpoints get the large backlog unless they set one; other endpoints are left alone."""
    n = listen_backlog()
    assert tap.with_backlog("tcp:8080") == f"tcp:8080:backlog={n}"
    assert tap.with_backlog("tcp6:8080:interface=\\:\\:1") == f"tcp6:8080:interface=\\:\\:1:backlog={n}"
    assert tap.with_backlog("ssl:8443:privateKey=k.pem") == f"ssl:8443:privateKey=k.pem:backlog={n}"
    assert tap.with_backlog("unix:/run/b.sock") == f"unix:/run/b.sock:backlog={n}"
    assert tap.with_backlog("unix:/run/b\\:backlog=5") == f"unix:/run/b\\:backlog=5:backlog={n}"
    assert tap.with_backlog("tcp:8080:backlog=10") == "tcp:8080:backlog=10"
    assert tap.with_backlog("tcp:8080:interface=127.0.0.1:backlog=10") == "tcp:8080:interface=127.0.0.1:backlog=10"
    assert tap.with_backlog("systemd:domain=INET:index=0") == "systemd:domain=INET:index=0"
    assert tap.with_backlog("backlog=5:tcp") == "backlog=5:tcp"


def test_listen_binds_now_with_the_backlog():
    """listen binds at once, with the large backlog, and the service stops the port."""
    reactor = Reactor()
    factory = object()
    port = tap.listen("tcp:8080:interface=127.0.0.1", factory, reactor)
    assert reactor.tcpServers == [(8080, factory, listen_backlog(), "127.0.0.1")]
    assert isinstance(port, tap.ListeningPort)
    port.port = Port()
    port.startService()
    port.stopService()
    assert port.port.stopped == 1


class Refusing(Reactor):
    def __init__(self, error):
        super().__init__()
        self.error = error

    def listenTCP(self, port, factory, backlog=50, interface=""):
        raise self.error


def test_a_port_that_cannot_be_listened_on_is_one_line():
    """A port that cannot be bound is one line with the system's reason."""
    in_use = CannotListenError("127.0.0.1", 8080, socket.error(errno.EADDRINUSE, "Address already in use"))
    with pytest.raises(SystemExit) as caught:
        tap.listen("tcp:8080:interface=127.0.0.1", object(), Refusing(in_use))
    assert str(caught.value) == "bridgeproxy: cannot listen on tcp:8080:interface=127.0.0.1: address already in use"
    with pytest.raises(SystemExit) as caught:
        tap.listen("tcp:8080", object(), Refusing(CannotListenError("", 8080, "Weird reason")))
    assert str(caught.value) == "bridgeproxy: cannot listen on tcp:8080: weird reason"
    with pytest.raises(SystemExit) as caught:
        tap.listen("tcp:8080", object(), Refusing(RuntimeError("Out of ports")))
    assert str(caught.value) == "bridgeproxy: cannot listen on tcp:8080: out of ports"


def test_an_endpoint_that_is_not_one_is_one_line():
    """An endpoint string that does not parse is one line naming the setting."""
    with pytest.raises(SystemExit) as caught:
        tap.listen("tcp:eighty", object(), Reactor(), "metrics_listen")
    assert str(caught.value).startswith("bridgeproxy: metrics_listen: not a usable endpoint 'tcp:eighty' (")
    with pytest.raises(SystemExit) as caught:
        tap.listen("nonsense:1", object(), Reactor())
    assert str(caught.value).startswith("bridgeproxy: listen: not a usable endpoint 'nonsense:1' (")


# -- make_service --------------------------------------------------------------------------------


@pytest.fixture
def gc_state(sighup):
    """The collector's settings as they were, put back after the test (make_service freezes what exists)."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_make_service_listens_before_starting(tmp_path, gc_state, captured_log):
    """make_service binds the port and migrates the store before twistd starts, and logs what it serves."""
    config = parse({"database": f"sqlite:{tmp_path / 'b.db'}", "listen": "tcp:8080:interface=127.0.0.1",
                    "providers": {"openai": {}, "local": {"plugin": "anthropic"}}}, environ={})
    reactor = Reactor()
    top = tap.make_service(config, reactor)
    [(port, site, backlog, interface)] = reactor.tcpServers
    assert (port, backlog, interface) == (8080, listen_backlog(), "127.0.0.1")
    assert (tmp_path / "b.db").exists()   # created and migrated now
    assert isinstance(top, tap.BridgeService)
    listener, hangup = list(top)
    assert listener is top.listener and isinstance(listener, tap.ListeningPort)
    assert isinstance(hangup, tap.OnHangup) and hangup.reactor is reactor
    assert site is top.app.site and top.app.reactor is reactor
    assert gc.get_threshold()[0] == tap.GC_THRESHOLD and gc.get_threshold()[1:] == (20, 20)
    assert gc.get_freeze_count() > 0
    assert (f"bridgeproxy listening on tcp:8080:interface=127.0.0.1; store sqlite:{tmp_path / 'b.db'}; "
            f"providers openai, local") in logged(captured_log)


def test_sighup_reloads_the_file_given(tmp_path, gc_state, monkeypatch, captured_log):
    """SIGHUP reads the file again; the command line's settings still beat it (not reported as changed)."""
    path = tmp_path / "bridge.toml"
    path.write_text(f'database = "sqlite:{tmp_path / "b.db"}"\n')
    config = tap.read_config(str(path), {"listen": "tcp:8081"})
    top = tap.make_service(config, Reactor(), str(path), {"listen": "tcp:8081"})
    _, hangup = list(top)
    path.write_text(f'database = "sqlite:{tmp_path / "b.db"}"\nmax_body_bytes = 1000\nlisten = "tcp:1"\n')
    hangup.action()
    app = top.app
    assert app.config.max_body_bytes == 1000 and app.config.listen == "tcp:8081"
    assert not any("need a restart" in line for line in logged(captured_log))


def test_a_separate_metrics_listener(tmp_path, gc_state, captured_log):
    """metrics_listen is a second port serving only /metrics, without an access log, on the bridge's clock."""
    config = parse({"database": f"sqlite:{tmp_path / 'b.db'}", "listen": "tcp:8080",
                    "metrics_listen": "tcp:9090:interface=127.0.0.1"}, environ={})
    reactor = Reactor()
    top = tap.make_service(config, reactor)
    [main, metrics] = reactor.tcpServers
    assert main[0] == 8080 and (metrics[0], metrics[2], metrics[3]) == (9090, listen_backlog(), "127.0.0.1")
    site = metrics[1]
    assert isinstance(site.resource, MetricsResource) and site.resource.metrics is top.app.metrics
    before = len(reactor.getDelayedCalls())
    site.buildProtocol(None).makeConnection(StringTransport())
    assert len(reactor.getDelayedCalls()) == before + 1   # its idle timeout runs on the bridge's clock
    assert site.log(object()) is None   # no access log there (a Site's own log would need a request)
    assert isinstance(list(top)[2], tap.ListeningPort) and list(top)[2].parent is top


def test_make_service_refuses_an_unusable_start(tmp_path, gc_state):
    """An unusable store, plugin or metrics endpoint stops the start with one line."""
    with pytest.raises(SystemExit) as caught:
        tap.make_service(parse({"database": f"sqlite:{tmp_path / 'no' / 'b.db'}"}, environ={}), Reactor())
    assert str(caught.value) == (f"bridgeproxy: database: cannot use sqlite:{tmp_path / 'no' / 'b.db'}: "
                                 f"the directory {tmp_path / 'no'} does not exist")
    with pytest.raises(SystemExit) as caught:
        tap.make_service(parse({"database": "sqlite::memory:", "identity_backend": "ldap"}, environ={}), Reactor())
    assert str(caught.value).startswith("bridgeproxy: identity_backend: no IIdentityBackend plugin is called 'ldap'")
    with pytest.raises(SystemExit) as caught:
        tap.make_service(parse({"database": "sqlite::memory:", "metrics_listen": "nonsense"}, environ={}),
                         Reactor())
    assert str(caught.value).startswith("bridgeproxy: metrics_listen: not a usable endpoint 'nonsense'")


class Socket:
    def __init__(self, made, error=None):
        self.made, self.error = made, error
        self.closed = False

    def __call__(self, interface, port, backlog):
        if self.error is not None:
            raise self.error
        self.made.append((interface, port, backlog))
        return self

    def close(self):
        self.closed = True


def test_workers_are_supervised(tmp_path, gc_state, monkeypatch, captured_log):
    """With workers > 1 the process supervises: it checks the port and the configuration, then starts N
    workers that read the same file, with the command line's settings."""
    made = []
    sock = Socket(made)
    monkeypatch.setattr("bridgeproxy.workers.reuseport_socket", sock)
    path = tmp_path / "bridge.toml"
    path.write_text(f'database = "sqlite:{tmp_path / "b.db"}"\nworkers = 3\nlisten = "tcp:8090:interface=127.0.0.2"\n')
    config = tap.read_config(str(path), {"workers": 3})
    reactor = Reactor()
    top = tap.make_service(config, reactor, str(path), {"workers": 3}, "json")
    assert made == [("127.0.0.2", 8090, listen_backlog())] and sock.closed
    assert reactor.tcpServers == []
    supervisor, hangup = list(top)
    assert isinstance(supervisor, Supervisor) and isinstance(hangup, tap.OnHangup)
    assert (supervisor.reactor, supervisor.config_path, supervisor.count, supervisor.listen, supervisor.log_format,
            supervisor.overrides) == (reactor, str(path), 3, "tcp:8090:interface=127.0.0.2", "json", {"workers": 3})
    assert hangup.action == supervisor.reload and hangup.reactor is reactor
    assert "bridgeproxy supervising 3 workers on tcp:8090:interface=127.0.0.2" in logged(captured_log)


def test_workers_refuse_a_port_in_use_or_a_bad_configuration(tmp_path, gc_state, monkeypatch):
    """With workers, a port in use or a configuration the workers could not run stops the start."""
    monkeypatch.setattr("bridgeproxy.workers.reuseport_socket",
                        Socket([], OSError(errno.EADDRINUSE, "Address already in use")))
    config = parse({"database": "sqlite::memory:", "workers": 2, "listen": "tcp:8090"}, environ={})
    with pytest.raises(SystemExit) as caught:
        tap.make_service(config, Reactor())
    assert str(caught.value) == "bridgeproxy: cannot listen on tcp:8090: address already in use"
    monkeypatch.setattr("bridgeproxy.workers.reuseport_socket", Socket([], OSError("Strange failure")))
    with pytest.raises(SystemExit) as caught:
        tap.make_service(config, Reactor())
    assert str(caught.value) == "bridgeproxy: cannot listen on tcp:8090: strange failure"
    monkeypatch.setattr("bridgeproxy.workers.reuseport_socket", Socket([]))
    with pytest.raises(SystemExit) as caught:
        tap.make_service(parse({"database": "sqlite::memory:", "workers": 2, "listen": "tcp:8090",
                                "auth": {"extractors": ["cookie"]}}, environ={}), Reactor())
    assert str(caught.value).startswith("bridgeproxy: auth.extractors: no IAuthExtractor plugin is called 'cookie'")
    supervisor, _ = list(tap.make_service(config, Reactor()))
    assert (supervisor.config_path, supervisor.log_format, supervisor.overrides) == (None, "text", {})


# -- what an operator sees of the wiring ---------------------------------------------------------


def metric(gateway, line):
    """Whether /metrics shows C{line}."""
    return line.encode() in gateway.send("GET", "/metrics").body.split(b"\n")


def test_the_metrics_count_what_every_part_does(app, tmp_path):
    """/metrics counts the pipeline's requests, the recorder's writes and the plugins' events alike, after a
    reload too."""
    gateway = app.gateway
    gateway.send("POST", "/openai/v1/chat/completions", CHAT, bearer(app.token))
    app.recorder.flush()
    assert metric(gateway, 'bridgeproxy_requests_total{client="Unknown",provider="openai",route="chat.completions",'
                           'status="ok"} 1.0')
    assert metric(gateway, 'bridgeproxy_events_total{name="recorded"} 1.0')
    owner = {**bearer(app.token), "User-Agent": "coder-agents/1.0",
             "X-Coder-Owner-Id": "0b5e2d7c-1a3f-4e6b-9c8d-7f6e5d4c3b2a"}
    gateway.send("POST", "/openai/v1/chat/completions", CHAT, owner)
    assert metric(gateway, 'bridgeproxy_delegations_total{outcome="refused"} 1.0')
    assert tap.reload(app, write(tmp_path / "bridge.toml")) is True
    gateway.send("POST", "/openai/v1/chat/completions", CHAT, owner)
    assert metric(gateway, 'bridgeproxy_delegations_total{outcome="refused"} 2.0')


def test_without_an_agent_the_bridge_connects_through_its_reactor():
    """Without an agent given, the bridge connects to the provider itself, through its reactor."""
    reactor = Reactor()
    config = parse({"providers": {"openai": {"base_url": "http://127.0.0.1:9/v1", "key_env": "K_OPENAI"}}},
                   environ=ENVIRON)
    app = tap.build(config, reactor, store=SyncStore())
    token = app.store.db.create_key("alice")[1]
    gateway = Gateway(bridge=app.bridge, site=app.site, clock=reactor, upstream=Upstream(), upstream_agent=None)
    protocol, _ = gateway.connect()
    protocol.dataReceived(request_bytes("POST", "/openai/v1/chat/completions", CHAT, bearer(token)))
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("127.0.0.1", 9)]


def test_an_access_log_kept_on_by_a_reload(app, tmp_path):
    """A reload that keeps the access log on keeps it on."""
    path = write(tmp_path / "bridge.toml", {"access_log": True})
    assert tap.reload(app, path) is True
    assert tap.reload(app, path) is True
    assert app.config.access_log is True


def test_keyword_endpoints_keep_their_own_backlog():
    """An endpoint written with keywords keeps its own backlog wherever it is written."""
    assert tap.with_backlog("tcp:backlog=10:port=8080") == "tcp:backlog=10:port=8080"
    assert tap.with_backlog("tcp:port=8080") == f"tcp:port=8080:backlog={listen_backlog()}"


def test_the_port_listened_on_is_the_services():
    """The service returned by listen holds the port bound."""
    port = tap.listen("tcp:8080", object(), Reactor())
    assert port.port.getHost().port == 8080


LATER = '''
from zope.interface import implementer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamServerEndpoint, IStreamServerEndpointStringParser
from twisted.plugin import IPlugin


@implementer(IStreamServerEndpoint)
class Later:
    def listen(self, factory):
        return Deferred()


@implementer(IPlugin, IStreamServerEndpointStringParser)
class LaterParser:
    prefix = "later"

    def parseStreamServer(self, reactor, *args, **kwargs):
        return Later()


parser = LaterParser()
'''


@pytest.fixture
def later_endpoint(tmp_path):
    """A third party's endpoint type (`later:`) that listens some time after it is asked to."""
    import twisted.plugins
    (tmp_path / "endpoints").mkdir()
    (tmp_path / "endpoints" / "later_endpoint.py").write_text(LATER)
    twisted.plugins.__path__.append(str(tmp_path / "endpoints"))
    yield
    twisted.plugins.__path__.remove(str(tmp_path / "endpoints"))
    import sys
    sys.modules.pop("twisted.plugins.later_endpoint", None)


def test_an_endpoint_that_listens_later_is_refused_at_once(later_endpoint):
    """The start must know that the port is bound: an endpoint that binds later is one line, not a hang."""
    with pytest.raises(SystemExit) as caught:
        tap.listen("later:x", object(), Reactor(), "metrics_listen")
    assert str(caught.value) == "bridgeproxy: metrics_listen: endpoint 'later:x' does not listen at once"
