# -*- test-case-name: tests.test_coder,tests.test_e2e_coder -*-
"""
The C{coder} identity backend: bridge keys are the users' own Coder session
or API tokens, checked with the Coder deployment that issued them.

A token is checked with C{GET {url}/api/v2/users/me} and the header
C{Coder-Session-Token}.  A C{200} names the user (id, username, status,
roles): an C{active} user's requests go through, a C{suspended} or
C{dormant} one's get 403.  A C{401} means the deployment does not know the
token (401), unless it says the token's user is not active (403: that is how
a Coder deployment answers for a suspended user).

Answers are cached, the deployment's "yes" (C{cache_seconds}) and "no"
(C{negative_cache_seconds}) apart, so a flood of bad tokens cannot push the
good ones out.  However many requests carry one token while it is being
checked, the deployment is asked once.  While the deployment cannot answer
(refused connection, timeout, TLS failure, 5xx, nonsense), an answer it gave
earlier keeps being used for C{stale_seconds} past its expiry; a token it
never answered for gets 503.  After a failure the deployment is left alone
for C{retry_seconds}, so that an outage does not make every request wait for
the timeout.

Tokens are keyed by their SHA-256 in memory, sent only to the deployment,
and never written to a log line or an error.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import os
import re
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Optional, Union
from urllib.parse import urlsplit

from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from zope.interface import implementer

from bridgeproxy.errors import ConfigError, IdentityUnavailable, PermissionDenied
from bridgeproxy.flights import Flights
from bridgeproxy.interfaces import IConfigurable, IIdentityBackend
from bridgeproxy.metrics import Metrics
from bridgeproxy.proxy import upstream
from bridgeproxy.types import Identity

#: The header a Coder deployment reads a session or API token from.
TOKEN_HEADER = b"Coder-Session-Token"
ME_PATH = "/api/v2/users/me"
USERS_PATH = "/api/v2/users/"
#: A user object is a few hundred bytes; anything much larger is not one.
MAX_ANSWER_BYTES = 256 * 1024
#: Entries kept per cache (the oldest go first).
MAX_ENTRIES = 100_000
#: What a token can look like: visible ASCII.  Anything else is no Coder
#: token, and must not be written into a header: it is refused unasked.
_TOKEN = re.compile(r"[\x21-\x7e]{1,1024}")
#: How a Coder deployment's 401 starts when the token is fine but its user is not active.
_INACTIVE_MESSAGE = "user is not active"


class _Verdict(enum.Enum):
    """What the deployment said, short of a user."""

    UNKNOWN = "unknown"          # 401: no such token (or expired, revoked)
    INACTIVE = "inactive"        # 401 naming a user who is not active
    UNAVAILABLE = "unavailable"  # no usable answer, and nothing cached


Answer = Union[Identity, _Verdict]


class _BadAnswer(Exception):
    """The deployment answered, but not as a Coder deployment does."""


class _TimedOut(Exception):
    """The deployment did not answer in time."""


# -- settings ------------------------------------------------------------------------------------

_KEYS = frozenset({
    "url", "ca_file", "cache_seconds", "negative_cache_seconds", "stale_seconds", "retry_seconds",
    "timeout", "admin_roles", "service_token_env", "service_token_file",
})


@dataclass(frozen=True)
class CoderSettings:
    """
    The C{[plugins.coder]} table, checked.

    @ivar url: the deployment's address (C{https://coder.example.com}), no
        trailing slash.
    @ivar ca_file: PEM file of the CA to verify the deployment's certificate
        against, instead of the system's trust store.
    @ivar service_token: a token that may read users, for L{CoderBackend.lookup_user}.
    """

    url: str
    ca_file: Optional[str] = None
    cache_seconds: float = 60.0
    negative_cache_seconds: float = 10.0
    stale_seconds: float = 300.0
    retry_seconds: float = 5.0
    timeout: float = 10.0
    admin_roles: frozenset[str] = frozenset({"owner"})
    service_token: Optional[str] = field(default=None, repr=False)

    @classmethod
    def parse(cls, options: Mapping[str, Any], environ: Mapping[str, str], base_dir: str) -> "CoderSettings":
        """
        @param base_dir: the configuration file's directory (relative files are read from there).
        @raise ConfigError: naming the key and what was expected.
        """
        unknown = sorted(set(options) - _KEYS)
        if unknown:
            raise ConfigError(f"plugins.coder: unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})")
        url = _url(options.get("url"))
        ca_file = _optional_string(options, "ca_file")
        if ca_file is not None:
            if not url.startswith("https:"):
                raise ConfigError("plugins.coder.ca_file applies to an https url only")
            ca_file = os.path.join(base_dir, ca_file)  # an absolute path stays as it is
            _load_ca(ca_file)
        roles = options.get("admin_roles", ["owner"])
        if not isinstance(roles, list) or not all(isinstance(r, str) and r for r in roles):
            raise ConfigError(f"plugins.coder.admin_roles must be a list of role names, got {roles!r}")
        return cls(
            url=url, ca_file=ca_file,
            cache_seconds=_seconds(options, "cache_seconds", cls.cache_seconds),
            negative_cache_seconds=_seconds(options, "negative_cache_seconds", cls.negative_cache_seconds),
            stale_seconds=_seconds(options, "stale_seconds", cls.stale_seconds),
            retry_seconds=_seconds(options, "retry_seconds", cls.retry_seconds),
            timeout=_seconds(options, "timeout", cls.timeout, positive=True),
            admin_roles=frozenset(roles),
            service_token=_service_token(options, environ, base_dir),
        )


def _url(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("plugins.coder.url is required: the Coder deployment's address, "
                          "such as \"https://coder.example.com\"")
    url = value.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"plugins.coder.url must be an https:// (or http://) address, got {url!r}")
    if "@" in parts.netloc:
        raise ConfigError("plugins.coder.url must not carry a user name or password")
    if "?" in url or "#" in url:  # an empty query or fragment too
        raise ConfigError(f"plugins.coder.url must not have a query or fragment, got {url!r}")
    try:
        _ = parts.port
    except ValueError:
        raise ConfigError(f"plugins.coder.url has an invalid port, got {url!r}") from None
    return url.rstrip("/")


def _seconds(options: Mapping[str, Any], key: str, default: float, positive: bool = False) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        what = "more than 0" if positive else "0 or more"
        raise ConfigError(f"plugins.coder.{key} must be a number of seconds ({what}), got {value!r}")
    return float(value)


def _optional_string(options: Mapping[str, Any], key: str) -> Optional[str]:
    value = options.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"plugins.coder.{key} must be a non-empty string, got {value!r}")
    return value.strip()


def _load_ca(path: str) -> Certificate:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"plugins.coder.ca_file: cannot read {path!r}: {e.strerror}") from None
    try:
        return Certificate.loadPEM(data)
    except Exception:  # noqa: BLE001 - OpenSSL's errors say little; ours names the file
        raise ConfigError(f"plugins.coder.ca_file: {path!r} holds no PEM certificate") from None


def _service_token(options: Mapping[str, Any], environ: Mapping[str, str], base_dir: str) -> Optional[str]:
    env = _optional_string(options, "service_token_env")
    path = _optional_string(options, "service_token_file")
    if env and path:
        raise ConfigError("plugins.coder: give service_token_env or service_token_file, not both")
    if env:
        token = environ.get(env, "").strip()
        if not token:
            raise ConfigError(f"plugins.coder.service_token_env: the environment variable {env} is empty")
    elif path:
        full = os.path.join(base_dir, path)  # an absolute path stays as it is
        try:
            with open(full, encoding="utf-8") as f:  # pragma: no mutate - UTF-8 is the locale's encoding too
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            reason = getattr(e, "strerror", None) or "not UTF-8 text"
            raise ConfigError(f"plugins.coder.service_token_file: cannot read {full!r}: {reason}") from None
        if not token:
            raise ConfigError(f"plugins.coder.service_token_file: {full!r} is empty")
    else:
        return None
    if not _TOKEN.fullmatch(token):
        raise ConfigError("plugins.coder: the service token holds characters no Coder token has")
    return token


# -- the caches ----------------------------------------------------------------------------------


class _Cache:
    """Answers by key with the time they were given; the oldest go first when full."""

    def __init__(self, size: int = MAX_ENTRIES):
        self._entries: dict[Any, tuple[float, Any]] = {}
        self._size = size

    def get(self, key: Any) -> Optional[tuple[float, Any]]:
        return self._entries.get(key)

    def put(self, key: Any, when: float, answer: Any) -> None:
        self._entries.pop(key, None)
        if len(self._entries) >= self._size:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (when, answer)

    def drop(self, key: Any) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


class Caches:
    """
    What a deployment said: about tokens, yes (users) and no (verdicts)
    apart, and about users by id.  Kept across reloads while the deployment's
    address stays the same.
    """

    def __init__(self, size: int = MAX_ENTRIES):
        self.positive = _Cache(size)
        self.negative = _Cache(size)
        self.users = _Cache(size)


def _digest(token: str) -> bytes:
    # A token is visible ASCII (checked before): one encoding per token.
    return hashlib.sha256(token.encode()).digest()


# -- talking to the deployment -------------------------------------------------------------------


class _NoCookies(IndexableCookieJar):
    """A cookie set while checking one user's token must not travel with the next user's."""

    def set_cookie(self, cookie: Any) -> None:
        pass

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass


class _Body(Protocol):
    """Reads an answer's body whole, up to C{limit} bytes, into C{finished}; cancelling it stops the transfer."""

    def __init__(self, limit: int):
        self.finished: Deferred = Deferred(lambda _: self.stop())
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0

    def stop(self) -> None:
        """Stop the transfer (the rest of the body is not wanted)."""
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.stop()
            self.finished.errback(_BadAnswer(f"an answer larger than {self.limit} bytes"))
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.finished.called:
            return
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(reason)


def _read(response: Any) -> Deferred:
    """C{(status, body)} of C{response}; cancelling stops the transfer."""
    body = _Body(MAX_ANSWER_BYTES)
    response.deliverBody(body)
    return body.finished.addCallback(lambda data: (response.code, data))


def _user(body: bytes, admin_roles: frozenset[str]) -> Identity:
    """
    The Identity a Coder user object describes.

    @raise _BadAnswer: when C{body} is not one.
    """
    try:
        user = json.loads(body)
    except ValueError:
        raise _BadAnswer("a 200 answer that is not JSON") from None
    if not isinstance(user, dict):
        raise _BadAnswer("a 200 answer that is not a user object")
    user_id, username, status = user.get("id"), user.get("username"), user.get("status")
    if not isinstance(user_id, str) or not _is_uuid(user_id):
        raise _BadAnswer("a user object without a UUID id")
    if not isinstance(username, str) or not username or not username.isprintable() or len(username) > 256:
        raise _BadAnswer("a user object without a username")
    if not isinstance(status, str):
        raise _BadAnswer("a user object without a status")
    roles = user.get("roles") or []
    names = {r.get("name") for r in roles if isinstance(r, dict)} if isinstance(roles, list) else set()
    # Only "active" may work: suspended, dormant and any status added later are refused.
    return Identity(user_id=user_id.lower(), username=username, disabled=status != "active",
                    admin=bool(names & admin_roles))


def _is_uuid(value: str) -> bool:
    if len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def _inactive(body: bytes) -> bool:
    """Whether a 401's body says the token is good but its user is not active."""
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        return False
    return isinstance(message, str) and message.lower().startswith(_INACTIVE_MESSAGE)


def _reason(failure: Failure, timeout: float) -> str:
    """Why the deployment did not answer, on one short line (never a header value)."""
    if failure.check(_TimedOut):
        return f"no answer within {timeout:g} s"
    if failure.check(_BadAnswer):
        return f"it sent {failure.getErrorMessage()}"
    reasons = getattr(failure.value, "reasons", None)  # ResponseNeverReceived, ResponseFailed
    if reasons:
        failure = reasons[0]
    message = failure.getErrorMessage().splitlines()[0][:200] if failure.getErrorMessage() else ""
    return f"{failure.type.__name__}: {message}" if message else failure.type.__name__


@implementer(IIdentityBackend)
class CoderBackend:
    """
    L{IIdentityBackend} over a Coder deployment's users API.

    @param agent: the L{twisted.web.iweb.IAgent} beneath treq (a pooled,
        verified one in production, L{treq.testing.RequestTraversalAgent} in tests).
    @param clock: an L{IReactorTime}: cache ages, the request timeout.
    @param caches: what an earlier configuration of the same deployment learnt.
    """

    name = "coder"
    log = Logger()

    def __init__(self, settings: CoderSettings, agent: Any, clock: Any,
                 metrics: Optional[Metrics] = None, caches: Optional[Caches] = None):
        self.settings = settings
        self._clock = clock
        self._http = HTTPClient(agent, cookiejar=_NoCookies())
        self._metrics = metrics if metrics is not None else Metrics()
        self.caches = caches if caches is not None else Caches()
        #: The questions to the deployment in flight, by token digest (bytes) or user id (str): never equal.
        self._flights = Flights()
        #: Until when the deployment is not asked, after a failure.
        self._down_until = -math.inf
        self._failing = False  # pragma: no mutate - None is as false

    # -- tokens --------------------------------------------------------------------------------

    def identify(self, token: str) -> "Deferred[Optional[Identity]]":
        """
        The user C{token} belongs to (L{None}: unknown to the deployment).

        Fails with L{PermissionDenied} when the deployment says the token's
        user is not active without naming them, and with
        L{IdentityUnavailable} when it cannot be asked and nothing is cached.
        """
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            return succeed(None)
        key = _digest(token)
        now = self._clock.seconds()
        s, caches = self.settings, self.caches
        for cache, ttl in ((caches.positive, s.cache_seconds), (caches.negative, s.negative_cache_seconds)):
            entry = cache.get(key)
            if entry is not None and now - entry[0] < ttl:
                return maybeDeferred(self._verdict, entry[1])
        return self._flights.ask(key, lambda: self._check(token, key)).addCallback(self._verdict)

    def _check(self, token: str, key: bytes) -> Deferred:
        """Ask the deployment about C{token}; fires with an L{Answer}, never fails."""
        if self._clock.seconds() < self._down_until:
            return succeed(self._fallback(key))
        d = maybeDeferred(self._get, ME_PATH, token)
        d.addCallback(self._me, key)
        d.addErrback(self._unreachable, key)
        return d

    def _me(self, result: tuple[int, bytes], key: bytes) -> Answer:
        code, body = result
        caches, now = self.caches, self._clock.seconds()
        self._metrics.inc(f"coder_check:{code}")
        if code == 200:
            identity = _user(body, self.settings.admin_roles)
            self._answered()
            caches.negative.drop(key)
            caches.positive.put(key, now, identity)
            caches.users.put(identity.user_id, now, identity)
            return identity
        if code == 401:
            self._answered()
            verdict = _Verdict.INACTIVE if _inactive(body) else _Verdict.UNKNOWN
            caches.positive.drop(key)
            caches.negative.put(key, now, verdict)
            return verdict
        raise _BadAnswer(f"status {code}")

    def _answered(self) -> None:
        if self._failing:
            self._failing = False  # pragma: no mutate - None is as false
            self.log.info("Coder deployment {url} answers again", url=self.settings.url)

    def _unreachable(self, failure: Failure, key: bytes) -> Answer:
        self._went_down(failure)
        return self._fallback(key)

    def _went_down(self, failure: Failure) -> None:
        self._down_until = self._clock.seconds() + self.settings.retry_seconds
        self._metrics.inc("coder_unreachable")
        self._failing = True
        self.log.warn("Coder deployment {url} could not check a token: {reason}; cached answers stand in, "
                      "and it is asked again after {retry} s", url=self.settings.url,
                      reason=_reason(failure, self.settings.timeout), retry=f"{self.settings.retry_seconds:g}")

    def _fallback(self, key: bytes) -> Answer:
        """The last answer about C{key}, if it is recent enough to stand in for the deployment."""
        now, s, caches = self._clock.seconds(), self.settings, self.caches
        for cache, ttl in ((caches.positive, s.cache_seconds), (caches.negative, s.negative_cache_seconds)):
            entry = cache.get(key)
            if entry is not None and now - entry[0] < ttl + s.stale_seconds:
                self._metrics.inc("coder_stale_answer")
                answer: Answer = entry[1]
                return answer
        self._metrics.inc("coder_unavailable")
        return _Verdict.UNAVAILABLE

    # -- users by id ---------------------------------------------------------------------------

    def lookup_user(self, user_id: str) -> "Deferred[Optional[Identity]]":
        """
        The user with this id: asked of the deployment with the service
        token when one is configured, else what the bridge learnt when that
        user's own token was checked.  Never fails: L{None} when unknown.
        """
        if not isinstance(user_id, str) or not _is_uuid(user_id):
            return succeed(None)
        user_id = user_id.lower()
        entry = self.caches.users.get(user_id)
        if entry is not None:
            ttl = self.settings.cache_seconds if entry[1] is not None else self.settings.negative_cache_seconds
            if self._clock.seconds() - entry[0] < ttl:
                return succeed(entry[1])
        if self.settings.service_token is None or self._clock.seconds() < self._down_until:
            return succeed(self._known(user_id))
        return self._flights.ask(user_id, lambda: self._lookup(user_id)).addCallback(self._verdict)

    def _lookup(self, user_id: str) -> Deferred:
        assert self.settings.service_token is not None
        d = maybeDeferred(self._get, USERS_PATH + user_id, self.settings.service_token)  # a UUID: nothing to quote
        d.addCallback(self._looked_up, user_id)

        def failed(failure: Failure) -> Optional[Identity]:
            self._went_down(failure)
            return self._known(user_id)
        d.addErrback(failed)
        return d

    def _looked_up(self, result: tuple[int, bytes], user_id: str) -> Optional[Identity]:
        code, body = result
        now = self._clock.seconds()
        if code == 200:
            identity = _user(body, self.settings.admin_roles)
            if identity.user_id != user_id:
                raise _BadAnswer("a user object for another id")
            self._answered()
            self.caches.users.put(user_id, now, identity)
            return identity
        if code in (400, 404):
            self._answered()
            self.caches.users.put(user_id, now, None)
            return None
        if code in (401, 403):
            self._answered()
            self.log.warn("Coder deployment {url} refused the service token ({code}): delegated users "
                          "are named from the cache only", url=self.settings.url, code=code)
            return self._known(user_id)
        raise _BadAnswer(f"status {code}")

    def _known(self, user_id: str) -> Optional[Identity]:
        entry = self.caches.users.get(user_id)
        s = self.settings
        if entry is not None and self._clock.seconds() - entry[0] < s.cache_seconds + s.stale_seconds:
            known: Optional[Identity] = entry[1]
            return known
        return None

    # -- plumbing ------------------------------------------------------------------------------

    def _get(self, path: str, token: str) -> Deferred:
        """C{GET} C{path} with C{token}; fires with C{(status, body)} or fails within the timeout."""
        # pragma: no mutate start - header names are case-insensitive; a token is visible ASCII
        headers = Headers({TOKEN_HEADER: [token.encode("ascii")], b"Accept": [b"application/json"]})
        # pragma: no mutate end
        d = self._http.get(
            self.settings.url + path, headers=headers, allow_redirects=False,
            reactor=self._clock,  # pragma: no mutate - treq uses it only for a timeout of its own (none here)
        )
        d.addCallback(_read)
        timer = self._clock.callLater(self.settings.timeout, d.cancel)

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            elif isinstance(result, Failure):  # cancelled by the timer
                return Failure(_TimedOut())
            return result
        return d.addBoth(done)

    def _verdict(self, answer: Optional[Answer]) -> Optional[Identity]:
        """What an L{IIdentityBackend} answers for C{answer}: an identity, L{None}, or an exception raised."""
        if answer is None or answer is _Verdict.UNKNOWN:
            return None
        if answer is _Verdict.INACTIVE:
            raise PermissionDenied("This user is not active in the Coder deployment.", reason="user_inactive")
        if answer is _Verdict.UNAVAILABLE:
            raise IdentityUnavailable(
                "The Coder deployment that checks API keys cannot be reached; try again shortly.",
                headers={"Retry-After": str(max(1, math.ceil(self.settings.retry_seconds)))})
        return answer


# -- the plugin ----------------------------------------------------------------------------------


def make_agent(reactor: Any, config: Any, settings: CoderSettings) -> Any:
    """
    The pooled agent for the deployment: TLS verified (service-identity, the
    host name included) against C{ca_file} when set, else the system's CAs;
    connections time out with the request.
    """
    return upstream.make_agent(reactor, replace(config.upstream, ca_file=settings.ca_file,
                                                connect_timeout=settings.timeout))


@implementer(IPlugin, IIdentityBackend, IConfigurable)
class CoderPlugin:
    """
    The C{coder} identity backend's plugin: configured from
    C{[plugins.coder]}, it is a L{CoderBackend}.  A reload that keeps the
    deployment's address keeps what was cached.

    @param environ: where C{service_token_env} is read (default: the process's).
    @param agent_factory: C{(reactor, config, settings) -> IAgent}, for tests.
    """

    name = "coder"
    log = Logger()

    def __init__(self, environ: Optional[Mapping[str, str]] = None,
                 agent_factory: Callable[[Any, Any, CoderSettings], Any] = make_agent):
        self._environ = environ
        self._agent_factory = agent_factory
        self._caches: dict[str, Caches] = {}

    def configure(self, context: Any) -> CoderBackend:
        source = context.config.source_path
        base_dir = os.path.dirname(os.path.abspath(source)) if source else "."
        environ = self._environ if self._environ is not None else os.environ
        settings = CoderSettings.parse(context.options, environ, base_dir)
        if settings.url.startswith("http:"):
            self.log.warn("plugins.coder.url is plain http: users' Coder tokens cross the network unencrypted")
        caches = self._caches.setdefault(settings.url, Caches())
        agent = self._agent_factory(context.reactor, context.config, settings)
        return CoderBackend(settings, agent, context.reactor, context.metrics, caches)

    def identify(self, token: str) -> Deferred:  # pragma: no cover - replaced by configure
        raise NotImplementedError("configure() first")

    def lookup_user(self, user_id: str) -> Deferred:  # pragma: no cover - replaced by configure
        raise NotImplementedError("configure() first")
