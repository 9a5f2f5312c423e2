"""
Plugin discovery: every built-in provides its interface, the public API is
what it says, unknown names are clear errors, and a third-party plugin (the
worked example in docs/plugins.md) is found by getPlugins and used.
"""

import re
import sys
from pathlib import Path

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

import bridgeproxy
import twisted.plugins
from bridgeproxy import chain
from bridgeproxy.config import parse
from bridgeproxy.errors import ConfigError
from bridgeproxy.interfaces import (
    IAuthExtractor, IClientDetector, IIdentityBackend, IInitiatorResolver, IProvider,
)
from tests import fakes
from tests.http import call

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("interface,names", [
    (IAuthExtractor, {"coder-token", "authorization-bearer", "x-api-key"}),
    (IInitiatorResolver, {"token", "coder-agents-owner"}),
    (IProvider, {"openai", "anthropic"}),
    (IIdentityBackend, {"keystore"}),
])
def test_builtins_are_plugins(interface, names):
    """Our own parts are found by getPlugins like anybody's, and verifyObject holds for each."""
    found = chain.available(interface)
    assert names <= set(found)
    for name in names:
        verifyObject(interface, found[name])


def test_table_detector_provides_interface():
    """The built-in client table is an IClientDetector."""
    from bridgeproxy.clients import TableDetector
    verifyObject(IClientDetector, TableDetector())


def test_public_api_exports():
    """`from bridgeproxy import ...` offers exactly the documented names, and each exists."""
    expected = {
        "AuthenticationFailed", "BadRequest", "BridgeError", "ClientInfo", "ClientRule", "ConfigError",
        "Credential", "IAuthExtractor", "IClientDetector", "IConfigurable", "IIdentityBackend",
        "IInitiatorResolver", "IProvider", "IUsageParser", "Identity", "Initiator", "Interception",
        "NotFound", "PermissionDenied", "PluginContext", "ToolCall", "Usage", "bearer_token", "single_header",
    }
    assert set(bridgeproxy.__all__) == expected
    for name in expected:
        assert getattr(bridgeproxy, name) is not None


def test_unknown_plugin_name_lists_available():
    """A configured name that no plugin provides is a startup error listing the available names."""
    config = parse({"auth": {"extractors": ["coder-token", "acme-cookei"]}}, environ={})
    with pytest.raises(ConfigError) as caught:
        chain.select(IAuthExtractor, config.auth.extractors, chain.PluginContext(config=config),
                     "auth.extractors")
    message = str(caught.value)
    assert "'acme-cookei'" in message and "authorization-bearer" in message and "x-api-key" in message


def example_plugin_source() -> str:
    text = (ROOT / "docs" / "plugins.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks and blocks[0].startswith("# twisted/plugins/acme_bridge.py")
    return blocks[0]


def example_config() -> str:
    text = (ROOT / "docs" / "plugins.md").read_text()
    return re.findall(r"```toml\n(.*?)```", text, re.S)[0]


@pytest.fixture
def third_party_plugin(tmp_path):
    """Install the docs' example as a third-party plugin module on twisted.plugins' path."""
    plugins = tmp_path / "site" / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "acme_bridge.py").write_text(example_plugin_source())
    twisted.plugins.__path__.append(str(plugins))
    yield plugins
    twisted.plugins.__path__.remove(str(plugins))
    sys.modules.pop("twisted.plugins.acme_bridge", None)


@pytest_twisted.inlineCallbacks
def test_docs_example_plugin_end_to_end(tmp_path, third_party_plugin, agent, captured_log):
    """The worked example of docs/plugins.md is found, configured and used: cookie auth and the allow-list."""
    import tomllib
    extra = tomllib.loads(example_config())
    running = yield fakes.start_bridge(tmp_path, extra)
    try:
        alice = running.create_key("alice")
        bob = running.create_key("bob")
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        response, _ = yield call(agent, "POST", running.url + "/openai/v1/chat/completions", body,
                                 {"Cookie": f"theme=dark; bridge_token={alice}"})
        assert response.code == 200
        sent = running.upstream.requests[-1]
        assert sent.headers["authorization"] == [f"Bearer {fakes.OPENAI_KEY}"]
        response, answer = yield call(agent, "POST", running.url + "/openai/v1/chat/completions", body,
                                      {"Cookie": f"bridge_token={bob}"})
        assert response.code == 403
        assert b"may not use" in answer
        assert len(running.upstream.requests) == 1
    finally:
        yield running.stop()
