# -*- test-case-name: tests.test_config,tests.test_units -*-
"""
The configuration file (TOML) turned into a frozen L{Config}.

Every key is declared once, with L{setting}: its default, its kind, its check
and its documentation line.  Reading a table, refusing unknown keys and
writing the reference tables of C{docs/configuration.md}
(C{python -m bridgeproxy.config}) all derive from those declarations.

Every error names the key and what was expected; unknown keys are errors,
since a misspelt key that is silently ignored is a security setting that
silently does not apply.  Provider keys come from the environment or a
file, never from the file itself or the command line.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Mapping, Optional
from urllib.parse import urlsplit

from bridgeproxy.errors import ConfigError
from bridgeproxy.proxy.routing import PassthroughRule
from bridgeproxy.values import is_uuid4

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
DEFAULT_DATABASE = "sqlite:bridgeproxy.db"

#: How each kind of value reads from TOML, and what the reference calls it.
_KINDS: dict[str, str] = {
    "bool": "boolean", "int": "integer", "number": "number", "string": "string",
    "strings": "list of strings", "optional string": "string", "optional number": "number",
    "integers": "list of integers", "table": "table of strings",
}

Check = Callable[[str, Any, str], Any]


def setting(default: Any, doc: str, *, kind: Optional[str] = None, check: Optional[Check] = None,
        shown: Optional[str] = None, type_name: Optional[str] = None) -> Any:
    """
    Declare a configuration key as a dataclass field.

    @param default: its value when the file does not set it.
    @param doc: its line in the reference.
    @param kind: how it reads (C{bool}, C{int}, C{number}, C{string},
        C{strings}, C{optional string}); by default from C{default}'s type.
    @param check: C{check(where, value, base_dir)} returns the value to keep
        or raises L{ConfigError}; C{base_dir} is the configuration file's
        directory (for relative paths).
    @param shown: how the reference shows the default (else C{default} in TOML).
    @param type_name: how the reference names its type (else from C{kind}).
    """
    if kind is None:
        kind = {bool: "bool", int: "int", float: "number", str: "string", tuple: "strings"}[type(default)]
    metadata = {"doc": doc, "kind": kind, "check": check, "shown": shown, "type_name": type_name}
    return field(default=default, metadata=metadata)


# -- checks ------------------------------------------------------------------------


def positive(where: str, value: Any, base_dir: str) -> Any:
    if value <= 0:
        raise ConfigError(f"{where} must be greater than 0, got {value}")
    return value


def not_negative(where: str, value: Any, base_dir: str) -> Any:
    if value < 0:
        raise ConfigError(f"{where} must be 0 (off) or more, got {value}")
    return value


def _amount(where: str, value: float, base_dir: str) -> float:
    # TOML has inf and nan; a price is a plain amount (the cap keeps a cost within a BIGINT).
    if not 0 <= value <= 1_000_000:
        raise ConfigError(f"{where} must be an amount from 0 to 1000000 (per million tokens), got {value}")
    return value


def _client(where: str, value: str, base_dir: str) -> str:
    if value not in ("httptools", "twisted"):
        raise ConfigError(f"{where} must be \"httptools\" or \"twisted\", not {value!r}")
    return value


def _existing_file(where: str, value: Optional[str], base_dir: str) -> Optional[str]:
    if not value:
        return None
    full = _beside(value, base_dir)
    if not os.path.isfile(full):
        raise ConfigError(f"{where}: no such file {full!r}")
    return full


def _delegators(where: str, value: tuple[str, ...], base_dir: str) -> frozenset[str]:
    for one in value:
        if not is_uuid4(one):
            raise ConfigError(f"{where} must hold user ids as canonical UUIDv4 strings, got {one!r}")
    return frozenset(value)


def _database(where: str, value: str, base_dir: str) -> str:
    if not value.startswith(("sqlite:", "postgresql://", "postgres://")):
        raise ConfigError(f"database must be 'sqlite:PATH' or 'postgresql://...', got {value.partition(':')[0]!r}...")
    return value


def _rules(where: str, value: Optional[tuple[str, ...]], base_dir: str) -> Optional[tuple[str, ...]]:
    for rule in value or ():
        try:
            PassthroughRule.parse(rule)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    return value


def _base_url(where: str, value: Optional[str], base_dir: str) -> Optional[str]:
    if value is None:
        return None
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{where} must start with http:// or https://, got {value!r}")
    return value.rstrip("/")


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
    if path == ":memory:":
        return url
    return "sqlite:" + _beside(path, base_dir)


# -- the declarations ----------------------------------------------------------------


@dataclass(frozen=True)
class ProviderConfig:
    """One C{[providers.<name>]} table, with its key already read."""

    name: str = field(default="", metadata={})
    plugin: str = setting(
        "", "the `IProvider` plugin serving this table (`openai`, `anthropic`, `openai-compatible`, or a plugin's "
        "name); a name no plugin provides stops the start, listing those that exist", shown="the table's name")
    base_url: Optional[str] = setting(
        None, "where requests go; an OpenAI-shaped base includes `/v1`", kind="optional string", check=_base_url,
        shown="the plugin's default: OpenAI `https://api.openai.com/v1`, Anthropic `https://api.anthropic.com`; "
              "none for `openai-compatible` (required)")
    key_env: Optional[str] = setting(
        None, "environment variable holding the provider key", kind="optional string", shown="`<NAME>_API_KEY`")
    key_file: Optional[str] = setting(
        None, "file holding the provider key (relative to the configuration file); exclusive with `key_env`",
        kind="optional string")
    passthrough: Optional[tuple[str, ...]] = setting(
        None, "the passthrough allow-list, replacing the default: rules `\"METHODS /path/pattern\"` "
        "(`\"GET /v1/models/*\"`, `\"* /v1/conversations/**\"`); anything neither intercepted nor allowed is 404 "
        "and never forwarded; `[]` forwards only the intercepted routes", kind="strings", check=_rules,
        shown="the provider's own list (see `docs/routes.md`)")
    passthrough_extra: tuple[str, ...] = setting(
        (), "rules added to the allow-list (the default one, or `passthrough`)", check=_rules)
    key: Optional[str] = field(default=None, repr=False, metadata={})
    key_source: str = field(default="", metadata={})


@dataclass(frozen=True)
class AuthConfig:
    """C{[auth]}."""

    extractors: tuple[str, ...] = setting(
        ("coder-token", "authorization-bearer", "x-api-key"),
        "the `IAuthExtractor` chain, in order; the first credential found wins")
    coder_token_headers: tuple[str, ...] = setting(
        ("X-Coder-Token",), "header names the `coder-token` extractor reads, in order (add "
        "`X-Coder-AI-Governance-Token` for later AI proxies); every `X-Coder-*` header is removed before "
        "forwarding anyway")
    allow_byok: bool = setting(
        True, "whether a client that authenticated with `X-Coder-Token` may send its own "
        "`Authorization`/`X-Api-Key` to the provider; when `false` such requests get 403")
    cache_seconds: float = setting(
        5.0, "how long a key check is cached in memory; a revoked key or disabled user takes effect within this "
        "time (0 disables the cache)", check=not_negative)


@dataclass(frozen=True)
class InitiatorConfig:
    """C{[initiator]}."""

    resolvers: tuple[str, ...] = setting(("token", "coder-agents-owner"), "the `IInitiatorResolver` chain, in order")
    delegators: frozenset[str] = setting(
        frozenset(), "user ids (service accounts) whose tokens may name another user in `X-Coder-Owner-Id` when "
        "the client is Coder Agents; for any other token the header is refused, logged and counted, and the "
        "token's user stays the initiator", kind="strings", check=_delegators, shown="`[]`",
        type_name="list of UUIDv4 strings")


@dataclass(frozen=True)
class ClientsConfig:
    """C{[clients]}."""

    detectors: tuple[str, ...] = setting(
        (), "`IClientDetector` plugins asked, in order, before the built-in client table")


@dataclass(frozen=True)
class UpstreamConfig:
    """C{[upstream]}."""

    send_actor_headers: bool = setting(
        False, "send `X-AI-Bridge-Actor-Id` and `X-AI-Bridge-Actor-Metadata-Username` (the initiator) upstream")
    timeout: float = setting(
        600.0, "stall timeout: no response headers, or no body bytes while the client is reading, for this long "
        "ends the request — 504 before the headers; mid-stream, an error event in the provider's SSE shape",
        check=positive, type_name="number (seconds)")
    connect_timeout: float = setting(
        10.0, "TCP/TLS connect timeout; a failed connect is 502", check=positive, type_name="number (seconds)")
    max_connections_per_host: int = setting(
        256, "idle keep-alive connections kept per upstream host (treq's default is 2); concurrent requests are "
        "not capped by it", check=positive)
    idle_connection_seconds: float = setting(240.0, "how long an idle upstream connection is kept", check=positive)
    client: str = setting(
        "httptools", "the HTTP/1.1 client beneath treq: `httptools` (the bridge's own pooled client on the "
        "httptools C parser, about twice as fast) or `twisted` (`twisted.web.client.Agent`)", check=_client)
    ca_file: Optional[str] = setting(
        None, "PEM file of CA certificates to verify upstream TLS against (a private gateway's CA); without it, "
        "the system's trust store. Host names are always checked (service-identity)", kind="optional string",
        check=_existing_file)


@dataclass(frozen=True)
class RecordingConfig:
    """C{[recording]}."""

    enabled: bool = setting(True, "record interceptions")
    batch_size: int = setting(200, "records written per store transaction", check=positive)
    flush_interval: float = setting(0.2, "how often the queue is flushed", check=positive, type_name="number (seconds)")
    queue_max: int = setting(
        10000, "records held in memory while the store is unavailable; past it the oldest are spooled to "
        "`spool_path` and replayed later", check=positive)
    spool_path: str = setting(
        "bridgeproxy-spool.jsonl", "the local spool file (JSON lines); a relative path is relative to the "
        "configuration file's directory")
    max_prompt_chars: int = setting(4096, "the recorded last user prompt is cut to this length", check=positive)
    ask_stream_usage: bool = setting(
        False, "OpenAI chat completions streams report token usage only when the client asks "
        "(`stream_options.include_usage`); when `true`, the bridge adds that to streamed requests that lack it, "
        "so their tokens are recorded. The client then gets one more chunk (empty `choices`, with `usage`): the "
        "OpenAI SDKs handle it, some hand-written clients may not. Off: request bodies reach the provider byte "
        "for byte")
    retention_days: int = setting(
        0, "interceptions older than this many days are deleted at start and every hour; 0 keeps everything",
        check=not_negative)


def _shared(where: str, value: str, base_dir: str) -> str:
    if value not in ("auto", "store", "process"):
        raise ConfigError(f"{where} must be \"auto\", \"store\" or \"process\", not {value!r}")
    return value


@dataclass(frozen=True)
class LimitsConfig:
    """C{[limits]}."""

    max_concurrency: int = setting(
        0, "requests in flight beyond this get 503 in the provider's shape (`overloaded`), with `Retry-After: 1`",
        check=not_negative, shown="`0` (off)")
    per_initiator_rps: float = setting(
        0.0, "each initiator may make this many requests a second on average; beyond it 429 in the provider's "
        "shape with `Retry-After`", check=not_negative, shown="`0` (off)")
    per_initiator_burst: int = setting(
        0, "how many requests an initiator may make at once before the rate applies", check=not_negative,
        shown="`ceil(per_initiator_rps)`")
    shared: str = setting(
        "auto", "where the limits are counted: `\"store\"` for the whole gateway (every worker and every "
        "instance on the same database: one store round trip per request, see `docs/performance.md`), "
        "`\"process\"` for each process on its own (with `workers = N` the gateway then allows N times as "
        "much), `\"auto\"` the store when `workers` is above 1 or `database` is PostgreSQL", check=_shared)

    def counted_in_store(self, config: "Config") -> bool:
        """Whether these limits are the whole gateway's, counted in the store, under C{config}."""
        if self.shared == "auto":
            return config.workers > 1 or not config.database.startswith("sqlite:")
        return self.shared == "store"


#: The AI proxy's default domain allow-list: host -> the provider (its C{[providers]} name) it reaches.
DEFAULT_AIPROXY_DOMAINS = {"api.openai.com": "openai", "api.anthropic.com": "anthropic"}
_HOST_NAME = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


def _domains(where: str, value: Mapping[str, str], base_dir: str) -> dict[str, str]:
    domains = {}
    for host, provider in value.items():
        name = host.lower().rstrip(".")
        if not _HOST_NAME.fullmatch(name):
            raise ConfigError(f"{where}: {host!r} is not a host name")
        if not _PROVIDER_NAME.fullmatch(provider):
            raise ConfigError(f"{where}.{host}: {provider!r} is not a provider's name")
        domains[name] = provider
    return domains


def _ports(where: str, value: tuple[int, ...], base_dir: str) -> tuple[int, ...]:
    for port in value:
        if not 1 <= port <= 65535:
            raise ConfigError(f"{where}: {port} is not a TCP port (1 to 65535)")
    return value


def _cidrs(where: str, value: tuple[str, ...], base_dir: str) -> tuple[str, ...]:
    networks = []
    for one in value:
        try:
            networks.append(str(ipaddress.ip_network(one, strict=False)))
        except ValueError:
            raise ConfigError(f"{where}: {one!r} is not an address range (CIDR, e.g. \"10.0.0.0/8\")") from None
    return tuple(networks)


def _proxy_url(where: str, value: Optional[str], base_dir: str) -> Optional[str]:
    if value is None:
        return None
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError:
        port = None
        url = None
    if url is None or url.scheme != "http" or not url.hostname or port is None or url.path not in ("", "/"):
        raise ConfigError(f"{where} must be 'http://[user:password@]host:port'")
    return value


@dataclass(frozen=True)
class AIProxyConfig:
    """C{[aiproxy]}."""

    listen: Optional[str] = setting(
        None, "a Twisted server endpoint string for the AI proxy (`tcp:8888:interface=127.0.0.1`, or an `ssl:` "
        "endpoint for a TLS connection to the proxy itself); the listen backlog is as for `listen`. Without it, "
        "no AI proxy", kind="optional string", shown="— (off)")
    ca_cert: Optional[str] = setting(
        None, "the PEM certificate of the CA that signs the proxy's certificates for the allow-listed hosts "
        "(`bridgeproxy ca create`); clients must trust it. Required with `listen`", kind="optional string",
        check=_existing_file)
    ca_key: Optional[str] = setting(
        None, "the CA's private key (PEM, unencrypted; keep it mode 0600). Required with `listen`",
        kind="optional string", check=_existing_file)
    domains: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_AIPROXY_DOMAINS), metadata={
        "doc": "the domain allow-list: `\"host\" = \"provider\"`, the provider being a `[providers.<name>]`; "
               "`CONNECT`s to these hosts are decrypted and served by the bridge as requests to `/<provider>/…`, "
               "anything else is tunnelled without being decrypted",
        "kind": "table", "check": _domains, "type_name": "table of strings",
        "shown": '`{"api.openai.com" = "openai", "api.anthropic.com" = "anthropic"}`'})
    allowed_ports: tuple[int, ...] = setting(
        (443,), "the ports a `CONNECT` may name, for every host; any other is refused with 403",
        kind="integers", check=_ports, shown="`[443]`")
    allowed_private_cidrs: tuple[str, ...] = setting(
        (), "address ranges a tunnel may reach although they are private, loopback, link-local or reserved "
        "(`[\"10.1.0.0/16\"]`); any other such address is refused with 403", check=_cidrs)
    # repr=False: its password is a secret.
    upstream_proxy: Optional[str] = field(default=None, repr=False, metadata=setting(
        None, "an HTTP proxy (`http://[user:password@]host:port`) that tunnels which are not decrypted go through "
        "(a `CONNECT` to the checked address); the decrypted requests go the bridge's way", kind="optional string",
        check=_proxy_url).metadata)


@dataclass(frozen=True)
class BreakerConfig:
    """C{[breaker]}: a circuit breaker per provider."""

    failures: int = setting(
        5, "this many failures in a row (connect errors, timeouts, 5xx, and 429 answered to the gateway's own "
        "key) open the provider's breaker; 0 turns breakers off", check=not_negative)
    window: float = setting(
        10.0, "the failures must fall within this many seconds", check=positive, type_name="number (seconds)")
    open_seconds: float = setting(
        30.0, "how long an open breaker answers 503 (with `Retry-After`) without asking the provider",
        check=positive, type_name="number (seconds)")
    probes: int = setting(
        3, "then this many requests go through (half-open): all succeed and it closes, one fails and it opens "
        "again", check=positive)


@dataclass(frozen=True)
class RetriesConfig:
    """C{[retries]}: resending a request the provider did not take."""

    max: int = setting(
        2, "how many times a request is sent again after a connect failure or a 429, 502 or 503 answer, never "
        "once a byte of the answer reached the client; 0 turns retries off", check=not_negative)
    backoff: float = setting(
        0.5, "the wait before the first retry, doubled for each next one, each wait jittered (half to all of "
        "it)", check=positive, type_name="number (seconds)")
    max_backoff: float = setting(
        8.0, "no wait is longer than this (before jitter)", check=positive, type_name="number (seconds)")
    retry_after_cap: float = setting(
        10.0, "a provider's `Retry-After` (or `retry-after-ms`) up to this long is waited exactly; a longer one "
        "is not retried: the client gets the provider's answer, `Retry-After` included", check=not_negative,
        type_name="number (seconds)")


def _period(where: str, value: str, base_dir: str) -> str:
    if value not in ("day", "week", "month"):
        raise ConfigError(f"{where} must be \"day\", \"week\" or \"month\", not {value!r}")
    return value


def _budget_amount(where: str, value: Optional[float], base_dir: str) -> Optional[float]:
    if value is not None and not 0 <= value <= 1_000_000_000:
        raise ConfigError(f"{where} must be an amount from 0 to 1000000000, got {value}")
    return value


@dataclass(frozen=True)
class BudgetsConfig:
    """C{[budgets]}: what users may spend (their own budgets are set with C{bridgeproxy budgets set})."""

    default_amount: Optional[float] = setting(
        None, "the budget of every user without one of their own, in units of the price table's currency per "
        "`default_period`; without it such users are not limited", kind="optional number", check=_budget_amount,
        shown="— (none)", type_name="number (currency)")
    default_period: str = setting(
        "month", "the period of `default_amount`: `\"day\"`, `\"week\"` (Monday to Sunday) or `\"month\"`, UTC "
        "calendar periods", check=_period)
    assumed_max_tokens: int = setting(
        32768, "the output tokens a request is assumed to ask for when it sets no `max_tokens`, "
        "`max_output_tokens` or `max_completion_tokens` (its worst case is held against the budget while it "
        "runs)", check=positive)
    hold_seconds: float = setting(
        60.0, "a running request's hold on its user's budget lasts this long unless its process renews it (every "
        "few seconds); the holds of a process that died stop counting after it", check=positive,
        type_name="number (seconds)")
    fail_open: bool = setting(
        False, "when the store cannot be reached to check a budget: `false` answers 503, `true` forwards the "
        "request unchecked (its cost is still recorded)")


@dataclass(frozen=True)
class PriceConfig:
    """One C{[prices."<provider>/<model>"]} table: amounts per million tokens."""

    input: Optional[float] = setting(
        None, "an input token not read from the cache (required)", kind="optional number", check=_amount,
        shown="—", type_name="number (currency per million tokens)")
    output: Optional[float] = setting(
        None, "an output token, reasoning included (required)", kind="optional number", check=_amount,
        shown="—", type_name="number (currency per million tokens)")
    cache_read: Optional[float] = setting(
        None, "an input token read from the prompt cache", kind="optional number", check=_amount,
        shown="`input`", type_name="number (currency per million tokens)")
    cache_write: Optional[float] = setting(
        None, "an input token written to the prompt cache", kind="optional number", check=_amount,
        shown="`input`", type_name="number (currency per million tokens)")

    @property
    def price(self) -> Any:
        """The L{bridgeproxy.prices.Price} this table declares (in micro-units)."""
        from bridgeproxy.prices import price
        assert self.input is not None and self.output is not None
        return price(self.input, self.output, self.cache_read, self.cache_write)


@dataclass(frozen=True)
class Config:
    """The whole configuration; see C{docs/configuration.md}."""

    listen: str = setting(
        DEFAULT_LISTEN, "a Twisted server endpoint string (`tcp:PORT:interface=ADDR`, "
        "`ssl:8443:privateKey=key.pem:certKey=cert.pem`, `unix:/run/bridge.sock`); the listen backlog is 1024 or "
        "the system's `net.core.somaxconn`, whichever is larger, unless the string sets `backlog=N` itself")
    database: str = setting(
        DEFAULT_DATABASE, "the store: `sqlite:PATH` (a relative path is relative to the configuration file's "
        "directory, for `twistd` and the `bridgeproxy` command alike; without a configuration file, to the "
        "working directory) or `postgresql://user:pass@host:port/db`", check=_database)
    max_body_bytes: int = setting(
        32 * 1024 * 1024, "request bodies larger than this are refused with 413, in the provider's error shape; "
        "the body is discarded as it arrives, never buffered past the limit", check=positive,
        shown="`33554432` (32 MiB)")
    identity_backend: str = setting("keystore", "the `IIdentityBackend` plugin that checks bridge keys")
    shutdown_grace_seconds: float = setting(
        30.0, "on SIGTERM, how long requests in flight (streams included) may take to finish before they are cut "
        "(and recorded as `shutdown`)", check=not_negative)
    access_log: bool = setting(
        False, "an access-log line per request (combined format without the query string and the Referer). Off "
        "by default: every authenticated request already logs its `interception` line, and a second line per "
        "request costs about a fifth of the throughput (see `docs/performance.md`)")
    log_interceptions: bool = setting(
        True, "one `interception` log line per finished request (id, initiator, client, model, status, tokens, "
        "duration). The same facts are in the store and the metrics; at high request rates the line costs about "
        "16 % of throughput")
    metrics_listen: Optional[str] = setting(
        None, "a Twisted endpoint for a separate Prometheus listener serving only `/metrics`; without it "
        "`/metrics` is on the main listener", kind="optional string")
    workers: int = setting(
        1, "worker processes sharing the port (`SO_REUSEPORT`); the twistd process supervises them and restarts "
        "any that dies. Needs a fixed `tcp:PORT` listen endpoint", check=positive)
    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    auth: AuthConfig = AuthConfig()
    initiator: InitiatorConfig = InitiatorConfig()
    clients: ClientsConfig = ClientsConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    recording: RecordingConfig = RecordingConfig()
    limits: LimitsConfig = LimitsConfig()
    breaker: BreakerConfig = BreakerConfig()
    retries: RetriesConfig = RetriesConfig()
    budgets: BudgetsConfig = BudgetsConfig()
    #: C{"<provider>/<model>"} -> its price, over the shipped table (L{bridgeproxy.prices}).
    prices: Mapping[str, PriceConfig] = field(default_factory=dict)
    aiproxy: AIProxyConfig = AIProxyConfig()
    plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source_path: Optional[str] = None


#: The tables that are a section dataclass each, in the reference's order.
SECTIONS: dict[str, type] = {
    "auth": AuthConfig, "initiator": InitiatorConfig, "clients": ClientsConfig,
    "upstream": UpstreamConfig, "recording": RecordingConfig, "limits": LimitsConfig,
    "breaker": BreakerConfig, "retries": RetriesConfig, "budgets": BudgetsConfig,
    "aiproxy": AIProxyConfig,
}


def declared(cls: type) -> list[Any]:
    """The fields of C{cls} declared with L{setting}, in order."""
    return [f for f in fields(cls) if "doc" in f.metadata]


# -- reading -----------------------------------------------------------------------


def _where(table: str, name: str) -> str:
    return f"{table}.{name}" if table else name


def _check_keys(table: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    for name in data:
        if name not in allowed:
            known = ", ".join(sorted(allowed))
            raise ConfigError(f"unknown key {_where(table, name)!r} (known keys here: {known})")


def _as(kind: str, where: str, value: Any) -> Any:
    """C{value} read as C{kind}, or a L{ConfigError} naming C{where}."""
    if kind == "integers":
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{where} must be a list of integers")
        return tuple(value)
    if kind == "table":
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and k.strip() and isinstance(v, str) and v.strip() for k, v in value.items()):
            raise ConfigError(f"{where} must be a table of non-empty strings")
        return {k.strip(): v.strip() for k, v in value.items()}
    if kind == "strings":
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise ConfigError(f"{where} must be a list of non-empty strings")
        return tuple(v.strip() for v in value)
    expected = {"bool": bool, "int": int, "number": float, "string": str, "optional string": str,
                "optional number": float}[kind]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{where} must be {expected.__name__}, got {type(value).__name__}")
    if kind == "optional string":
        return value or None
    return value


def _read(cls: type, table: str, data: Mapping[str, Any], base_dir: str, **fixed: Any) -> Any:
    """An instance of C{cls} from a table, every key checked as declared."""
    specs = {f.name: f for f in declared(cls)}
    _check_keys(table, data, set(specs))
    values: dict[str, Any] = dict(fixed)
    for name, value in data.items():
        meta = specs[name].metadata
        where = _where(table, name)
        value = _as(meta["kind"], where, value)
        if meta["check"] is not None:
            value = meta["check"](where, value, base_dir)
        values[name] = value
    return cls(**values)


def _table(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def _read_key(provider: ProviderConfig, environ: Mapping[str, str], base_dir: str) -> ProviderConfig:
    where = f"providers.{provider.name}"
    if provider.key_env and provider.key_file:
        raise ConfigError(f"{where}: give key_env or key_file, not both")
    if provider.key_file:
        path = _beside(provider.key_file, base_dir)
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read().strip()
        except OSError as e:
            raise ConfigError(f"{where}.key_file: cannot read {path!r}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{where}.key_file: {path!r} is not UTF-8 text") from None
        return replace(provider, key=value or None, key_source=f"file {path}")
    name = provider.key_env or f"{provider.name.upper()}_API_KEY"
    value = environ.get(name, "").strip()
    return replace(provider, key=value or None, key_source=f"environment variable {name}")


#: A provider's name is a URL prefix: these are the bridge's own.
RESERVED_PREFIXES = frozenset({"api", "healthz", "readyz", "metrics", "ui"})
_PROVIDER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def _providers(data: Mapping[str, Any], environ: Mapping[str, str], base_dir: str) -> dict[str, ProviderConfig]:
    tables = _table(data, "providers") or {"openai": {}, "anthropic": {}}
    result = {}
    for name, table in tables.items():
        where = f"providers.{name}"
        if not _PROVIDER_NAME.fullmatch(name):
            raise ConfigError(f"[providers.{name!r}]: a provider's name is its URL prefix: lower-case letters, "
                              f"digits, '-' and '_'")
        if name in RESERVED_PREFIXES:
            raise ConfigError(f"[providers.{name}]: {name!r} is a path of the bridge's own "
                              f"({', '.join(sorted(RESERVED_PREFIXES))} are reserved)")
        if not isinstance(table, dict):
            raise ConfigError(f"[{where}] must be a table")
        if "key" in table:
            raise ConfigError(
                f"{where}.key is not allowed: put the key in an environment variable "
                f"(key_env) or a file (key_file), never in the configuration")
        provider = _read(ProviderConfig, where, table, base_dir, name=name)
        if not provider.plugin:
            provider = replace(provider, plugin=name)
        result[name] = _read_key(provider, environ, base_dir)
    return result


def _prices(data: Mapping[str, Any], providers: Mapping[str, ProviderConfig],
            base_dir: str) -> dict[str, PriceConfig]:
    result = {}
    for key, table in _table(data, "prices").items():
        where = f'prices."{key}"'
        name, slash, model = key.partition("/")
        if not slash or not model.strip() or model != model.strip():
            raise ConfigError(f"[{where}]: name a provider and a model: [prices.\"<provider>/<model>\"]")
        if name not in providers:
            raise ConfigError(f"[{where}]: no provider named {name!r} (configured: {', '.join(sorted(providers))})")
        if not isinstance(table, dict):
            raise ConfigError(f"[{where}] must be a table")
        entry = _read(PriceConfig, where, table, base_dir)
        if entry.input is None or entry.output is None:
            raise ConfigError(f"[{where}]: input and output are required")
        result[key] = entry
    return result


def parse(data: Mapping[str, Any], environ: Optional[Mapping[str, str]] = None,
          base_dir: str = ".", source_path: Optional[str] = None) -> Config:
    """
    Build a L{Config} from parsed TOML.

    @raise ConfigError: naming the offending key.
    """
    if environ is None:
        environ = os.environ
    tables = set(SECTIONS) | {"providers", "plugins", "prices"}
    _check_keys("", data, {f.name for f in declared(Config)} | tables)
    sections = {name: _read(cls, name, _table(data, name), base_dir) for name, cls in SECTIONS.items()}
    plugins = _table(data, "plugins")
    for name, table in plugins.items():
        if not isinstance(table, dict):
            raise ConfigError(f"[plugins.{name}] must be a table")
    top = {k: v for k, v in data.items() if k not in tables}
    providers = _providers(data, environ, base_dir)
    config = _read(Config, "", top, base_dir, providers=providers, prices=_prices(data, providers, base_dir),
                   plugins={k: dict(v) for k, v in plugins.items()}, source_path=source_path, **sections)
    if source_path is not None:
        # A file's relative paths mean the same whoever reads it (twistd,
        # the CLI) from whatever directory.
        config = replace(config, database=_sqlite_beside(config.database, base_dir),
                         recording=replace(config.recording,
                                           spool_path=_beside(config.recording.spool_path, base_dir)))
    _check_aiproxy(config)
    return config


def _check_aiproxy(config: Config) -> None:
    """An AI proxy that is switched on has what it needs."""
    aiproxy = config.aiproxy
    if not aiproxy.listen:
        return
    for name in ("ca_cert", "ca_key"):
        if not getattr(aiproxy, name):
            raise ConfigError(f"aiproxy.{name} is required with aiproxy.listen (bridgeproxy ca create makes one)")
    for host, provider in aiproxy.domains.items():
        if provider not in config.providers:
            raise ConfigError(f"aiproxy.domains.{host}: no provider {provider!r} is configured "
                              f"(configured: {', '.join(sorted(config.providers))})")
    if "coder-token" not in config.auth.extractors:
        raise ConfigError("aiproxy.listen needs the 'coder-token' extractor in auth.extractors: the AI proxy "
                          "hands the bridge key over in X-Coder-Token")


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
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse(data, environ, base_dir=os.path.dirname(os.path.abspath(path)), source_path=path)


def override(config: Config, **changes: Any) -> Config:
    """A copy of C{config} with top-level C{changes} (used by command-line options)."""
    return replace(config, **changes)


# -- the reference -----------------------------------------------------------------


def _shown(value: Any) -> str:
    if value is None or value == ():
        return "—" if value is None else "`[]`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value == int(value):
        return f"`{int(value)}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, tuple):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    return f"`{value}`"


def reference_table(cls: type) -> str:
    """The reference table of C{cls}'s keys (markdown), from their declarations."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in declared(cls):
        meta = f.metadata
        type_name = meta["type_name"] or _KINDS[meta["kind"]]
        shown = meta["shown"] or _shown(f.default)
        lines.append(f"| `{f.name}` | {type_name} | {shown} | {meta['doc']} |")
    return "\n".join(lines) + "\n"


#: The tables of the reference, by the marker that introduces them in docs/configuration.md.
REFERENCE: dict[str, type] = {"top": Config, "providers": ProviderConfig, **SECTIONS, "prices": PriceConfig}


def write_reference(text: str) -> str:
    """C{text} (docs/configuration.md) with every generated table replaced by its declaration's."""
    for name, cls in REFERENCE.items():
        start = f"<!-- keys: {name} -->\n"
        end = "<!-- /keys -->"
        i = text.index(start) + len(start)
        j = text.index(end, i)
        text = text[:i] + reference_table(cls) + text[j:]
    return text


if __name__ == "__main__":  # pragma: no cover - python -m bridgeproxy.config docs/configuration.md
    path = sys.argv[1] if len(sys.argv) > 1 else "docs/configuration.md"
    with open(path, encoding="utf-8") as f:
        current = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(write_reference(current))
