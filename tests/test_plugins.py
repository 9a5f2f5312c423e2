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
    (IProvider, {"openai", "anthropic", "openai-compatible"}),
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
        "AnthropicProvider", "AuthenticationFailed", "BadRequest", "BridgeError", "ClientInfo", "ClientRule", "ConfigError",
        "Credential", "IAuthExtractor", "IClientDetector", "IConfigurable", "IIdentityBackend",
        "IInitiatorResolver", "IProvider", "IUsageParser", "Identity", "Initiator", "Interception",
        "NotFound", "OpenAIProvider", "PermissionDenied", "PluginContext", "ToolCall", "Usage", "bearer_token", "single_header",
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


def example_plugin_source(name: str = "acme_bridge") -> str:
    """The docs' example plugin module C{twisted/plugins/<name>.py}, as written in docs/plugins.md."""
    text = (ROOT / "docs" / "plugins.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S)
              if b.startswith(f"# twisted/plugins/{name}.py")]
    assert len(blocks) == 1
    return blocks[0]


def example_config(plugin: str = "acme-cookie") -> str:
    """The docs' configuration block that names C{plugin}."""
    text = (ROOT / "docs" / "plugins.md").read_text()
    blocks = [b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if f'"{plugin}"' in b]
    assert blocks
    return blocks[0]


@pytest.fixture
def third_party_plugin(tmp_path):
    """Install the docs' examples as third-party plugin modules on twisted.plugins' path."""
    plugins = tmp_path / "site" / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    for name in ("acme_bridge", "acme_azure"):
        (plugins / f"{name}.py").write_text(example_plugin_source(name))
    twisted.plugins.__path__.append(str(plugins))
    yield plugins
    twisted.plugins.__path__.remove(str(plugins))
    for name in ("acme_bridge", "acme_azure"):
        sys.modules.pop(f"twisted.plugins.{name}", None)


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


@pytest_twisted.inlineCallbacks
def test_docs_example_provider_end_to_end(tmp_path, third_party_plugin, agent, captured_log):
    """The provider worked example of docs/plugins.md provides IProvider and serves its table end to end:
    its URL, its key header, the bridge token never sent, the record under the table's name."""
    import tomllib
    found = chain.available(IProvider)
    verifyObject(IProvider, found["acme-azure"])
    table = tomllib.loads(example_config("acme-azure"))["providers"]["azure"]

    def azure(upstream_url):
        return {"providers": {"azure": {**table, "base_url": upstream_url + "/openai/deployments/gpt-4o",
                                        "key_env": "T_AZURE_KEY"}}}
    running = yield fakes.start_bridge(tmp_path, extra_for=azure, environ={"T_AZURE_KEY": "azure-key-0123456789"})
    try:
        token = running.create_key("alice")
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        response, _ = yield call(agent, "POST", running.url + "/azure/v1/chat/completions?x=1", body,
                                 {"Authorization": f"Bearer {token}"})
        assert response.code == 200
        sent = running.upstream.requests[-1]
        assert sent.uri == b"/openai/deployments/gpt-4o/chat/completions?x=1&api-version=2024-10-21"
        assert sent.headers["api-key"] == ["azure-key-0123456789"]
        assert "authorization" not in sent.headers
        response, _ = yield call(agent, "GET", running.url + "/azure/v1/models", None,
                                 {"Authorization": f"Bearer {token}"})
        assert response.code == 404
        yield running.flush()
        assert {(r["provider"], r["route"], r["status"]) for r in running.rows()} == {
            ("azure", "chat.completions", "ok"), ("azure", "/v1/models", "refused")}
    finally:
        yield running.stop()
