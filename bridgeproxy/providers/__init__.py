"""
The built-in providers.  Each is an L{bridgeproxy.IProvider} plugin,
registered in C{twisted/plugins/bridgeproxy_builtins.py}.
"""

from bridgeproxy.providers.anthropic import AnthropicProvider
from bridgeproxy.providers.openai import OpenAIProvider

__all__ = ["AnthropicProvider", "OpenAIProvider"]
