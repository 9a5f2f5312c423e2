"""
The built-in initiator resolvers (L{bridgeproxy.initiator}): who a request
is recorded as initiated by, which delegations are honoured, and what is
refused, logged and counted.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.logger import globalLogPublisher
from twisted.web.http_headers import Headers

from bridgeproxy.errors import AuthenticationFailed, ConfigError, PermissionDenied
from bridgeproxy.initiator import CoderAgentsOwnerResolver, TokenResolver
from bridgeproxy.metrics import Metrics
from bridgeproxy.types import ClientInfo, Credential, Identity, Initiator

SERVICE = "8f3e1c7a-2b4d-4e6f-8a9b-0c1d2e3f4a5b"
OWNER = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
OTHER = "3f6c2a1e-9b8d-4c7e-a5f4-0d1e2c3b4a59"
AGENTS = ClientInfo("Coder Agents")


def request(*headers):
    r = SimpleNamespace(requestHeaders=Headers())
    for name, value in headers:
        r.requestHeaders.addRawHeader(name, value)
    return r


def result_of(d):
    """What an already-fired Deferred (or a plain value) holds."""
    if not isinstance(d, Deferred):
        return d
    box = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    return box[0]


class Identities:
    def __init__(self, by_token=None, by_id=None):
        self.by_token = by_token or {}
        self.by_id = by_id or {}
        self.looked_up = []

    def identify(self, token):
        return succeed(self.by_token.get(token))

    def lookup_user(self, user_id):
        self.looked_up.append(user_id)
        return succeed(self.by_id.get(user_id))


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


# -- token ------------------------------------------------------------------------------


def test_token_resolver_names_the_tokens_owner():
    """A known token's user is the initiator (and the credential's user), resolved by 'token'."""
    resolver = TokenResolver(Identities({"t": Identity(SERVICE, "svc", key_id="k")}))
    initiator = result_of(resolver.resolve(request(), Credential("t", "authorization"), AGENTS, None))
    assert initiator == Initiator(user_id=SERVICE, username="svc", credential_user_id=SERVICE, resolved_by="token")


def test_token_resolver_refuses_unknown_and_disabled():
    """An unknown token is a 401 (unknown_key); a disabled user's is a 403 (user_disabled)."""
    resolver = TokenResolver(Identities({"off": Identity(SERVICE, "svc", disabled=True)}))
    failure = result_of(resolver.resolve(request(), Credential("nope", "authorization"), AGENTS, None))
    assert failure.check(AuthenticationFailed) and failure.value.reason == "unknown_key"
    assert failure.value.message == "Invalid, expired or revoked API key."
    failure = result_of(resolver.resolve(request(), Credential("off", "authorization"), AGENTS, None))
    assert failure.check(PermissionDenied) and failure.value.reason == "user_disabled"


def test_token_resolver_configuration_needs_an_identity_backend():
    """Configured without an identity backend the token resolver is a start-up error; with one it uses it."""
    with pytest.raises(ConfigError) as caught:
        TokenResolver().configure(SimpleNamespace(identity=None))
    assert str(caught.value) == "initiator.resolvers: 'token' needs an identity backend"
    identities = Identities({"t": Identity(OWNER, "o")})
    configured = TokenResolver().configure(SimpleNamespace(identity=identities))
    assert result_of(configured.resolve(request(), Credential("t", "x"), AGENTS, None)).user_id == OWNER


# -- coder-agents-owner ---------------------------------------------------------------------

TOKEN_USER = Initiator(user_id=SERVICE, username="svc", credential_user_id=SERVICE, resolved_by="token")


def owner_resolver(identities=None, delegators=frozenset({SERVICE})):
    metrics = Metrics()
    return CoderAgentsOwnerResolver(delegators, identities, metrics), metrics


def resolve(resolver, *headers, client=AGENTS, initiator=TOKEN_USER):
    return result_of(resolver.resolve(request(*headers), Credential("t", "authorization"), client, initiator))


def test_delegator_names_the_owner():
    """A delegator's token with X-Coder-Owner-Id: the owner is the initiator, with their name; counted."""
    identities = Identities(by_id={OWNER: Identity(OWNER, "olivia")})
    resolver, metrics = owner_resolver(identities)
    assert resolve(resolver, (b"X-Coder-Owner-Id", OWNER.encode())) == Initiator(
        user_id=OWNER, username="olivia", credential_user_id=SERVICE, resolved_by="coder-agents-owner")
    assert metrics.get("delegation_accepted") == 1
    assert identities.looked_up == [OWNER]


def test_delegated_owner_unknown_to_the_store_keeps_their_id():
    """An owner the identity backend does not know is still the initiator, without a name."""
    resolver, _ = owner_resolver(Identities())
    assert resolve(resolver, (b"X-Coder-Owner-Id", OWNER.encode())) == Initiator(
        user_id=OWNER, username=None, credential_user_id=SERVICE, resolved_by="coder-agents-owner")


def test_delegated_owner_without_identity_backend():
    """Without an identity backend the owner is the initiator at once, without a name."""
    resolver, metrics = owner_resolver(None)
    assert resolve(resolver, (b"X-Coder-Owner-Id", OWNER.encode())) == Initiator(
        user_id=OWNER, username=None, credential_user_id=SERVICE, resolved_by="coder-agents-owner")
    assert metrics.get("delegation_accepted") == 1


def test_disabled_owner_is_refused():
    """A delegation to a disabled user is a 403."""
    resolver, _ = owner_resolver(Identities(by_id={OWNER: Identity(OWNER, "o", disabled=True)}))
    failure = resolve(resolver, (b"X-Coder-Owner-Id", OWNER.encode()))
    assert failure.check(PermissionDenied) and failure.value.reason == "user_disabled"


def test_non_delegator_is_refused_logged_and_counted(logged):
    """The header from a token that is not a delegator is ignored (the token's user stays), logged, counted."""
    resolver, metrics = owner_resolver(Identities(), delegators=frozenset({OTHER}))
    assert resolve(resolver, (b"X-Coder-Owner-Id", OWNER.encode())) is TOKEN_USER
    assert metrics.get("delegation_refused") == 1 and metrics.get("delegation_accepted") == 0
    warnings = [e for e in logged if e.get("log_namespace", "").endswith("CoderAgentsOwnerResolver")]
    assert [e["log_level"].name for e in warnings] == ["warn"]
    assert warnings[0]["owner"] == OWNER and warnings[0]["token_user"] == SERVICE


@pytest.mark.parametrize("value", [b"not-a-uuid", OWNER.upper().encode(), b"1a2b3c4d-5e6f-1a7b-8c9d-0e1f2a3b4c5d"])
def test_malformed_owner_is_ignored_without_echoing_it(value, logged):
    """A value that is not a canonical UUIDv4 is ignored and counted; the log gives its length, not the value."""
    resolver, metrics = owner_resolver(Identities())
    assert resolve(resolver, (b"X-Coder-Owner-Id", value)) is TOKEN_USER
    assert metrics.get("delegation_invalid") == 1
    warnings = [e for e in logged if e.get("log_namespace", "").endswith("CoderAgentsOwnerResolver")]
    assert len(warnings) == 1 and warnings[0]["length"] == len(value)
    assert value.decode() not in repr(warnings[0])


def test_owner_equal_to_the_token_user_changes_nothing():
    """Naming oneself as owner is no delegation: nothing counted."""
    resolver, metrics = owner_resolver(Identities())
    assert resolve(resolver, (b"X-Coder-Owner-Id", SERVICE.encode())) is TOKEN_USER
    assert sum(metrics.counters.values()) == 0


def test_only_coder_agents_can_delegate():
    """Another client's X-Coder-Owner-Id is ignored; so is a request without the header or an initiator."""
    resolver, metrics = owner_resolver(Identities())
    assert resolve(resolver, (b"X-Coder-Owner-Id", OWNER.encode()), client=ClientInfo("Codex")) is TOKEN_USER
    assert resolve(resolver) is TOKEN_USER
    assert resolve(resolver, (b"X-Coder-Owner-Id", OWNER.encode()), initiator=None) is None
    assert sum(metrics.counters.values()) == 0


def test_owner_resolver_configuration():
    """Configured, the resolver takes the delegators, identity backend and metrics from the context."""
    metrics = Metrics()
    context = SimpleNamespace(config=SimpleNamespace(initiator=SimpleNamespace(delegators=frozenset({SERVICE}))),
                              identity=Identities(by_id={OWNER: Identity(OWNER, "o")}), metrics=metrics)
    resolver = CoderAgentsOwnerResolver().configure(context)
    assert resolve(resolver, (b"X-Coder-Owner-Id", OWNER.encode())).username == "o"
    assert metrics.get("delegation_accepted") == 1


def test_owner_resolver_defaults_refuse_everyone():
    """With no delegators (nor metrics) configured every override is refused, without failing."""
    resolver = CoderAgentsOwnerResolver()
    assert resolve(resolver, (b"X-Coder-Owner-Id", OWNER.encode())) is TOKEN_USER
    assert resolve(resolver, (b"X-Coder-Owner-Id", b"junk")) is TOKEN_USER


# -- the audit trail: what the log says -------------------------------------------------------------


def audit_lines(logged) -> list[str]:
    from twisted.logger import formatEvent
    return [formatEvent(e) for e in logged if e.get("log_namespace", "").endswith("CoderAgentsOwnerResolver")]


def test_audit_lines(logged):
    """Every delegation decision is one log line naming the header, the token's user and the owner named."""
    identities = Identities(by_id={OWNER: Identity(OWNER, "olivia")})
    accepting, _ = owner_resolver(identities)
    refusing, _ = owner_resolver(identities, delegators=frozenset({OTHER}))
    resolve(accepting, (b"X-Coder-Owner-Id", OWNER.encode()))
    resolve(refusing, (b"X-Coder-Owner-Id", OWNER.encode()))
    resolve(accepting, (b"X-Coder-Owner-Id", b"not-a-uuid"))
    assert audit_lines(logged) == [
        f"Initiator override by X-Coder-Owner-Id: token belongs to {SERVICE} (svc), initiator is {OWNER}",
        f"Refused X-Coder-Owner-Id override: token of {SERVICE} (svc) is not a configured delegator; "
        f"header named {OWNER}; initiator stays {SERVICE}",
        f"Ignored X-Coder-Owner-Id: not a canonical UUIDv4 (10 characters); initiator stays {SERVICE}",
    ]
    assert [e["log_level"].name for e in logged if "X-Coder-Owner-Id" in e.get("header", "")] == [
        "info", "warn", "warn"]


def test_refusal_messages_shown_to_clients():
    """A disabled user is told so in those words (the client shows the message)."""
    resolver = TokenResolver(Identities({"off": Identity(SERVICE, "svc", disabled=True)}))
    failure = result_of(resolver.resolve(request(), Credential("off", "authorization"), AGENTS, None))
    assert str(failure.value) == "This user is disabled."
    owner, _ = owner_resolver(Identities(by_id={OWNER: Identity(OWNER, "o", disabled=True)}))
    assert str(resolve(owner, (b"X-Coder-Owner-Id", OWNER.encode())).value) == "This user is disabled."
