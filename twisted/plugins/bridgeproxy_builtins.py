"""
bridgeproxy's own extractors, resolvers, providers and identity backend,
registered like anybody else's plugins.
"""

from bridgeproxy.auth import ApiKeyExtractor, BearerExtractor, CoderTokenExtractor
from bridgeproxy.coder import CoderPlugin
from bridgeproxy.identity import KeystorePlugin
from bridgeproxy.initiator import CoderAgentsOwnerResolver, TokenResolver
from bridgeproxy.providers.anthropic import AnthropicProvider
from bridgeproxy.providers.openai import OpenAICompatibleProvider, OpenAIProvider

coderToken = CoderTokenExtractor()
authorizationBearer = BearerExtractor()
xApiKey = ApiKeyExtractor()
tokenResolver = TokenResolver()
coderAgentsOwner = CoderAgentsOwnerResolver()
openaiProvider = OpenAIProvider()
openaiCompatibleProvider = OpenAICompatibleProvider()
anthropicProvider = AnthropicProvider()
keystore = KeystorePlugin()
coder = CoderPlugin()
