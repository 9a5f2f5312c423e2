# -*- test-case-name: tests.test_initiator -*-
"""
The built-in initiator resolvers (SPEC section 4).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from bridgeproxy.auth import single_header
from bridgeproxy.values import is_uuid4
from bridgeproxy.errors import AuthenticationFailed, ConfigError, PermissionDenied
from bridgeproxy.interfaces import IConfigurable, IInitiatorResolver
from bridgeproxy.metrics import Metrics
from bridgeproxy.types import ClientInfo, Credential, Identity, Initiator

OWNER_HEADER = "X-Coder-Owner-Id"
CODER_AGENTS = "Coder Agents"


@implementer(IPlugin, IInitiatorResolver, IConfigurable)
class TokenResolver:
    """
    C{token}: the credential's owner, as the identity backend knows them.
    Unknown, expired or revoked credentials are refused (401); a disabled
    user's (403).
    """

    name = "token"

    def __init__(self, identity: Any = None):
        self._identity = identity

    def configure(self, context: Any) -> "TokenResolver":
        if context.identity is None:
            raise ConfigError("initiator.resolvers: 'token' needs an identity backend")
        return TokenResolver(context.identity)

    def resolve(self, request: Any, credential: Credential, client: ClientInfo,
                initiator: Optional[Initiator]) -> "Deferred[Initiator]":
        d = self._identity.identify(credential.token)
        d.addCallback(self._initiator)
        return d

    def _initiator(self, identity: Optional[Identity]) -> Initiator:
        if identity is None:
            raise AuthenticationFailed("Invalid, expired or revoked API key.", reason="unknown_key")
        if identity.disabled:
            raise PermissionDenied("This user is disabled.", reason="user_disabled")
        return Initiator(user_id=identity.user_id, username=identity.username,
                         credential_user_id=identity.user_id, resolved_by=self.name)


@implementer(IPlugin, IInitiatorResolver, IConfigurable)
class CoderAgentsOwnerResolver:
    """
    C{coder-agents-owner}: Coder Agents uses one (service account's) token
    for all its users and names the real user in C{X-Coder-Owner-Id}.

    The header and the User-Agent can be forged by anyone with a token, so
    the override is honoured only for tokens of the configured delegators
    (C{[initiator] delegators}); any other attempt is refused (the token's
    user stays the initiator), logged and counted.
    """

    name = "coder-agents-owner"
    log = Logger()

    def __init__(self, delegators: frozenset[str] = frozenset(), identity: Any = None,
                 metrics: Optional[Metrics] = None):
        self.delegators = delegators
        self._identity = identity
        self._metrics = metrics if metrics is not None else Metrics()

    def configure(self, context: Any) -> "CoderAgentsOwnerResolver":
        return CoderAgentsOwnerResolver(context.config.initiator.delegators,
                                        context.identity, context.metrics)

    def resolve(self, request: Any, credential: Credential, client: ClientInfo,
                initiator: Optional[Initiator]) -> Any:
        if client.name != CODER_AGENTS or initiator is None:
            return initiator
        owner = single_header(request, OWNER_HEADER)
        if owner is None:
            return initiator
        if not is_uuid4(owner):
            # The value is hostile input: say what is wrong, not what it was.
            self.log.warn(
                "Ignored {header}: not a canonical UUIDv4 ({length} characters); "
                "initiator stays {user_id}",
                header=OWNER_HEADER, length=len(owner), user_id=initiator.user_id)
            self._metrics.inc("delegation_invalid")
            return initiator
        if owner == initiator.user_id:
            return initiator
        if initiator.credential_user_id not in self.delegators:
            self.log.warn(
                "Refused {header} override: token of {token_user} ({username}) is not a "
                "configured delegator; header named {owner}; initiator stays {token_user}",
                header=OWNER_HEADER, token_user=initiator.credential_user_id,
                username=initiator.username, owner=owner)
            self._metrics.inc("delegation_refused")
            return initiator
        self.log.info(
            "Initiator override by {header}: token belongs to {token_user} ({username}), "
            "initiator is {owner}",
            header=OWNER_HEADER, token_user=initiator.credential_user_id,
            username=initiator.username, owner=owner)
        self._metrics.inc("delegation_accepted")
        delegated = Initiator(user_id=owner, username=None,
                              credential_user_id=initiator.credential_user_id,
                              resolved_by=self.name)
        if self._identity is None:
            return delegated
        d = self._identity.lookup_user(owner)

        def named(identity: Optional[Identity]) -> Initiator:
            if identity is None:
                return delegated
            if identity.disabled:
                raise PermissionDenied("This user is disabled.", reason="user_disabled")
            return Initiator(user_id=owner, username=identity.username,
                             credential_user_id=initiator.credential_user_id,
                             resolved_by=self.name)
        d.addCallback(named)
        return d
