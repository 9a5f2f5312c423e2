"""
bridgeproxy: a Twisted reverse proxy between AI coding clients and LLM
providers.

This module is the public API for plugin authors; import only these names.
"""

from bridgeproxy.auth import bearer_token, single_header
from bridgeproxy.chain import PluginContext
from bridgeproxy.clients import ClientRule
from bridgeproxy.errors import (
    AuthenticationFailed,
    BadRequest,
    BridgeError,
    ConfigError,
    NotFound,
    PermissionDenied,
)
from bridgeproxy.interfaces import (
    IAuthExtractor,
    IClientDetector,
    IConfigurable,
    IIdentityBackend,
    IInitiatorResolver,
    IProvider,
    IUsageParser,
)
from bridgeproxy.providers.anthropic import AnthropicProvider
from bridgeproxy.providers.openai import OpenAIProvider
from bridgeproxy.types import ClientInfo, Credential, Identity, Initiator, Interception, ToolCall, Usage

__version__ = "0.1.0"

__all__ = [
    "AnthropicProvider",
    "AuthenticationFailed",
    "BadRequest",
    "BridgeError",
    "ClientInfo",
    "ClientRule",
    "ConfigError",
    "Credential",
    "IAuthExtractor",
    "IClientDetector",
    "IConfigurable",
    "IIdentityBackend",
    "IInitiatorResolver",
    "IProvider",
    "IUsageParser",
    "Identity",
    "Initiator",
    "Interception",
    "NotFound",
    "OpenAIProvider",
    "PermissionDenied",
    "PluginContext",
    "ToolCall",
    "Usage",
    "bearer_token",
    "single_header",
]
