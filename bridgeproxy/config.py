# -*- test-case-name: tests.test_units -*-
"""
The configuration file (TOML) turned into a frozen L{Config}.

Every error names the key and what was expected; unknown keys are errors,
since a misspelt key that is silently ignored is a security setting that
silently does not apply.  Provider keys come from the environment or a
file, never from the file itself or the command line.
"""

from __future__ import annotations

import os
import tomllib
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional

from bridgeproxy.errors import ConfigError
from bridgeproxy.proxy.routing import PassthroughRule

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
DEFAULT_DATABASE = "sqlite:bridgeproxy.db"


@dataclass(frozen=True)
class ProviderConfig:
    """One C{[providers.<name>]} table, with its key already read."""

    name: str
    #: L{None}: the provider plugin's C{default_base_url}.
    base_url: Optional[str]
    key: Optional[str] = field(default=None, repr=False)
    key_source: str = ""
    #: The passthrough allow-list (C{"METHODS /pattern"} rules); L{None}
    #: means the provider's own default list.
    passthrough: Optional[tuple[str, ...]] = None
    #: Rules added to the list (the default one, or C{passthrough}).
    passthrough_extra: tuple[str, ...] = ()
    #: The name of the L{bridgeproxy.IProvider} plugin serving this table
    #: (by default the table's own name).
    plugin: str = ""


@dataclass(frozen=True)
class AuthConfig:
    extractors: tuple[str, ...] = ("coder-token", "authorization-bearer", "x-api-key")
    allow_byok: bool = True
    coder_token_headers: tuple[str, ...] = ("X-Coder-Token",)
    cache_seconds: float = 5.0


@dataclass(frozen=True)
class InitiatorConfig:
    resolvers: tuple[str, ...] = ("token", "coder-agents-owner")
    delegators: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ClientsConfig:
    detectors: tuple[str, ...] = ()


@dataclass(frozen=True)
class UpstreamConfig:
    send_actor_headers: bool = False
    timeout: float = 600.0
    connect_timeout: float = 10.0
    max_connections_per_host: int = 256
    idle_connection_seconds: float = 240.0
    ca_file: Optional[str] = None


@dataclass(frozen=True)
class RecordingConfig:
    enabled: bool = True
    batch_size: int = 200
    flush_interval: float = 0.2
    queue_max: int = 10000
    spool_path: str = "bridgeproxy-spool.jsonl"
    max_prompt_chars: int = 4096
    retention_days: int = 0
    ask_stream_usage: bool = False


@dataclass(frozen=True)
class LimitsConfig:
    max_concurrency: int = 0
    per_initiator_rps: float = 0.0
    per_initiator_burst: int = 0


@dataclass(frozen=True)
class Config:
    """The whole configuration; see C{docs/configuration.md}."""

    listen: str = DEFAULT_LISTEN
    database: str = DEFAULT_DATABASE
    max_body_bytes: int = 32 * 1024 * 1024
    shutdown_grace_seconds: float = 30.0
    access_log: bool = False
    log_interceptions: bool = True
    metrics_listen: Optional[str] = None
    workers: int = 1
    identity_backend: str = "keystore"
    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    auth: AuthConfig = AuthConfig()
    initiator: InitiatorConfig = InitiatorConfig()
    clients: ClientsConfig = ClientsConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    recording: RecordingConfig = RecordingConfig()
    limits: LimitsConfig = LimitsConfig()
    plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source_path: Optional[str] = None


# -- validation helpers ------------------------------------------------------


def _where(table: str, key: str) -> str:
    return f"{table}.{key}" if table else key


def _check_keys(table: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    for key in data:
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise ConfigError(
                f"unknown key {_where(table, key)!r} (known keys here: {known})"
            )


def _typed(table: str, data: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    if key not in data:
        return default
    value = data[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(
            f"{_where(table, key)} must be {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _positive(table: str, key: str, value: float) -> float:
    if value <= 0:
        raise ConfigError(f"{_where(table, key)} must be greater than 0, got {value}")
    return value


def _strings(table: str, data: Mapping[str, Any], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    if key not in data:
        return default
    value = data[key]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{_where(table, key)} must be a list of non-empty strings")
    return tuple(v.strip() for v in value)


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}] must be a table")
    return value


def _beside(path: str, base_dir: str) -> str:
    """C{path}, relative to C{base_dir} unless it is absolute (or empty)."""
    if not path or os.path.isabs(path):
        return path
    return os.path.join(base_dir, path)


def _sqlite_beside(url: str, base_dir: str) -> str:
    """A C{sqlite:} URL whose relative path is taken relative to C{base_dir}."""
    if not url.startswith("sqlite:"):
        return url
    path = url[len("sqlite:"):]
    if path in ("", ":memory:"):
        return url
    return "sqlite:" + _beside(path, base_dir)


def _ca_file(path: Optional[str], base_dir: str) -> Optional[str]:
    if not path:
        return None
    full = path if os.path.isabs(path) else os.path.join(base_dir, path)
    if not os.path.isfile(full):
        raise ConfigError(f"upstream.ca_file: no such file {full!r}")
    return full


def parse_since(value: Optional[str]) -> Optional[float]:
    """
    An ISO 8601 date or time (UTC unless it says otherwise) as POSIX seconds.

    @raise ValueError: for anything else.
    """
    if value is None:
        return None
    from datetime import datetime, timezone
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def is_uuid4(value: str) -> bool:
    """Whether C{value} is a version-4 UUID in canonical (lower-case, hyphenated) form."""
    if len(value) != 36:
        return False
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    return parsed.version == 4 and str(parsed) == value


# -- providers ---------------------------------------------------------------



def _read_key(name: str, table: Mapping[str, Any], environ: Mapping[str, str], base_dir: str) -> tuple[Optional[str], str]:
    where = f"providers.{name}"
    if "key" in table:
        raise ConfigError(
            f"{where}.key is not allowed: put the key in an environment variable "
            f"(key_env) or a file (key_file), never in the configuration"
        )
    key_env = _typed(where, table, "key_env", str, None)
    key_file = _typed(where, table, "key_file", str, None)
    if key_env and key_file:
        raise ConfigError(f"{where}: give key_env or key_file, not both")
    if key_file:
        path = key_file if os.path.isabs(key_file) else os.path.join(base_dir, key_file)
        try:
            with open(path, encoding="utf-8") as f:
                key = f.read().strip()
        except OSError as e:
            raise ConfigError(f"{where}.key_file: cannot read {path!r}: {e.strerror}") from None
        return (key or None), f"file {path}"
    if key_env is None:
        key_env = f"{name.upper()}_API_KEY"
    value = environ.get(key_env, "").strip()
    return (value or None), f"environment variable {key_env}"


def _providers(data: Mapping[str, Any], environ: Mapping[str, str], base_dir: str) -> dict[str, ProviderConfig]:
    tables = _table(data, "providers")
    if not tables:
        tables = {"openai": {}, "anthropic": {}}
    result = {}
    for name, table in tables.items():
        where = f"providers.{name}"
        if not isinstance(table, dict):
            raise ConfigError(f"[{where}] must be a table")
        _check_keys(where, table, {"base_url", "key_env", "key_file", "key", "passthrough", "passthrough_extra",
                                   "plugin"})
        base = _typed(where, table, "base_url", str, None)
        if base is not None and not base.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.base_url must start with http:// or https://, got {base!r}")
        plugin = _typed(where, table, "plugin", str, name)
        key, source = _read_key(name, table, environ, base_dir)
        passthrough = _rules(where, table, "passthrough")
        extra = _rules(where, table, "passthrough_extra") or ()
        result[name] = ProviderConfig(name=name, base_url=base.rstrip("/") if base else None, key=key,
                                      key_source=source, passthrough=passthrough, passthrough_extra=extra,
                                      plugin=plugin)
    return result


def _rules(where: str, table: Mapping[str, Any], key: str) -> Optional[tuple[str, ...]]:
    """A passthrough list, each rule checked now (an empty list is allowed: nothing passes)."""
    if key not in table:
        return None
    value = table[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}.{key} must be a list of 'METHODS /path/pattern' strings")
    for rule in value:
        try:
            PassthroughRule.parse(rule)
        except ConfigError as e:
            raise ConfigError(f"{where}.{key}: {e}") from None
    return tuple(value)


# -- the whole file ------------------------------------------------------------

_TOP = {
    "listen", "database", "max_body_bytes", "shutdown_grace_seconds", "access_log", "log_interceptions", "metrics_listen", "workers",
    "identity_backend",
    "providers", "auth", "limits", "initiator", "clients", "upstream", "recording", "plugins",
}


def parse(data: Mapping[str, Any], environ: Optional[Mapping[str, str]] = None,
          base_dir: str = ".", source_path: Optional[str] = None) -> Config:
    """
    Build a L{Config} from parsed TOML.

    @raise ConfigError: naming the offending key.
    """
    if environ is None:
        environ = os.environ
    _check_keys("", data, _TOP)

    auth_t = _table(data, "auth")
    _check_keys("auth", auth_t, {"extractors", "allow_byok", "coder_token_headers", "cache_seconds"})
    d = AuthConfig()
    auth = AuthConfig(
        extractors=_strings("auth", auth_t, "extractors", d.extractors),
        allow_byok=_typed("auth", auth_t, "allow_byok", bool, d.allow_byok),
        coder_token_headers=_strings("auth", auth_t, "coder_token_headers", d.coder_token_headers),
        cache_seconds=_typed("auth", auth_t, "cache_seconds", float, d.cache_seconds),
    )
    if auth.cache_seconds < 0:
        raise ConfigError("auth.cache_seconds must be 0 or more")

    init_t = _table(data, "initiator")
    _check_keys("initiator", init_t, {"resolvers", "delegators"})
    delegators = _strings("initiator", init_t, "delegators", ())
    for value in delegators:
        if not is_uuid4(value):
            raise ConfigError(
                f"initiator.delegators must hold user ids as canonical UUIDv4 strings, got {value!r}"
            )
    initiator = InitiatorConfig(
        resolvers=_strings("initiator", init_t, "resolvers", InitiatorConfig().resolvers),
        delegators=frozenset(delegators),
    )

    clients_t = _table(data, "clients")
    _check_keys("clients", clients_t, {"detectors"})
    clients = ClientsConfig(detectors=_strings("clients", clients_t, "detectors", ()))

    up_t = _table(data, "upstream")
    _check_keys("upstream", up_t, {
        "send_actor_headers", "timeout", "connect_timeout",
        "max_connections_per_host", "idle_connection_seconds", "ca_file"})
    u = UpstreamConfig()
    upstream = UpstreamConfig(
        send_actor_headers=_typed("upstream", up_t, "send_actor_headers", bool, u.send_actor_headers),
        timeout=_positive("upstream", "timeout", _typed("upstream", up_t, "timeout", float, u.timeout)),
        connect_timeout=_positive("upstream", "connect_timeout",
                                  _typed("upstream", up_t, "connect_timeout", float, u.connect_timeout)),
        max_connections_per_host=int(_positive("upstream", "max_connections_per_host", _typed(
            "upstream", up_t, "max_connections_per_host", int, u.max_connections_per_host))),
        idle_connection_seconds=_positive("upstream", "idle_connection_seconds", _typed(
            "upstream", up_t, "idle_connection_seconds", float, u.idle_connection_seconds)),
        ca_file=_ca_file(_typed("upstream", up_t, "ca_file", str, None), base_dir),
    )

    rec_t = _table(data, "recording")
    _check_keys("recording", rec_t, {
        "enabled", "batch_size", "flush_interval", "queue_max", "spool_path",
        "max_prompt_chars", "retention_days", "ask_stream_usage"})
    r = RecordingConfig()
    recording = RecordingConfig(
        enabled=_typed("recording", rec_t, "enabled", bool, r.enabled),
        batch_size=int(_positive("recording", "batch_size", _typed("recording", rec_t, "batch_size", int, r.batch_size))),
        flush_interval=_positive("recording", "flush_interval",
                                 _typed("recording", rec_t, "flush_interval", float, r.flush_interval)),
        queue_max=int(_positive("recording", "queue_max", _typed("recording", rec_t, "queue_max", int, r.queue_max))),
        spool_path=_typed("recording", rec_t, "spool_path", str, r.spool_path),
        max_prompt_chars=int(_positive("recording", "max_prompt_chars",
                                       _typed("recording", rec_t, "max_prompt_chars", int, r.max_prompt_chars))),
        retention_days=_typed("recording", rec_t, "retention_days", int, r.retention_days),
        ask_stream_usage=_typed("recording", rec_t, "ask_stream_usage", bool, r.ask_stream_usage),
    )
    if recording.retention_days < 0:
        raise ConfigError("recording.retention_days must be 0 (keep forever) or more")

    lim_t = _table(data, "limits")
    _check_keys("limits", lim_t, {"max_concurrency", "per_initiator_rps", "per_initiator_burst"})
    limits = LimitsConfig(
        max_concurrency=_typed("limits", lim_t, "max_concurrency", int, 0),
        per_initiator_rps=_typed("limits", lim_t, "per_initiator_rps", float, 0.0),
        per_initiator_burst=_typed("limits", lim_t, "per_initiator_burst", int, 0),
    )
    if limits.max_concurrency < 0 or limits.per_initiator_rps < 0 or limits.per_initiator_burst < 0:
        raise ConfigError("limits: values must be 0 (off) or more")

    plugins_t = _table(data, "plugins")
    for name, table in plugins_t.items():
        if not isinstance(table, dict):
            raise ConfigError(f"[plugins.{name}] must be a table")

    max_body = _typed("", data, "max_body_bytes", int, Config.max_body_bytes)
    _positive("", "max_body_bytes", max_body)
    database = _typed("", data, "database", str, DEFAULT_DATABASE)
    if not (database.startswith("sqlite:") or database.startswith(("postgresql://", "postgres://"))):
        raise ConfigError(
            f"database must be 'sqlite:PATH' or 'postgresql://...', got {database.split(':', 1)[0]!r}..."
        )
    if source_path is not None:
        # A file's relative paths mean the same whoever reads it (twistd,
        # the CLI) from whatever directory.
        database = _sqlite_beside(database, base_dir)
        recording = replace(recording, spool_path=_beside(recording.spool_path, base_dir))

    return Config(
        listen=_typed("", data, "listen", str, DEFAULT_LISTEN),
        database=database,
        max_body_bytes=max_body,
        shutdown_grace_seconds=_typed("", data, "shutdown_grace_seconds", float, Config.shutdown_grace_seconds),
        access_log=_typed("", data, "access_log", bool, False),
        log_interceptions=_typed("", data, "log_interceptions", bool, True),
        metrics_listen=_typed("", data, "metrics_listen", str, None) or None,
        workers=int(_positive("", "workers", _typed("", data, "workers", int, 1))),
        identity_backend=_typed("", data, "identity_backend", str, "keystore"),
        providers=_providers(data, environ, base_dir),
        auth=auth,
        initiator=initiator,
        clients=clients,
        upstream=upstream,
        recording=recording,
        limits=limits,
        plugins={k: dict(v) for k, v in plugins_t.items()},
        source_path=source_path,
    )


def load(path: str, environ: Optional[Mapping[str, str]] = None) -> Config:
    """
    Read and parse the configuration file at C{path}.

    @raise ConfigError: when it cannot be read, is not TOML, or is not valid.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read configuration {path!r}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse(data, environ, base_dir=os.path.dirname(os.path.abspath(path)), source_path=path)


def override(config: Config, **changes: Any) -> Config:
    """A copy of C{config} with top-level C{changes} (used by command-line options)."""
    return replace(config, **changes)

