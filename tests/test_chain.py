"""
Plugin discovery and ordering as a plugin author and an operator see them:
which plugins are found (by name, the first of a name winning), the order
the configuration names them in, the error for a name nobody provides, and
the options table a configurable plugin gets.
"""

import pytest
from twisted.logger import Logger

from bridgeproxy import chain
from bridgeproxy.config import parse
from bridgeproxy.errors import ConfigError
from bridgeproxy.interfaces import IAuthExtractor, IClientDetector, IInitiatorResolver
from tests.wired import plugin_package

PLUGINS = '''
from zope.interface import implementer, provider
from twisted.plugin import IPlugin
from bridgeproxy import IAuthExtractor, IConfigurable


@implementer(IPlugin, IAuthExtractor)
class Cookie:
    def __init__(self, name, note):
        self.name = name
        self.note = note

    def extract(self, request):
        return None


@implementer(IPlugin, IAuthExtractor, IConfigurable)
class Configurable(Cookie):
    def configure(self, context):
        return ("configured", self.name, context)


class Anonymous(Cookie):
    def __getattribute__(self, name):
        if name == "name":
            raise AttributeError(name)
        return super().__getattribute__(name)


first = Cookie("cookie", "first")
second = Cookie("cookie", "second")
nameless = Cookie(None, "nameless")
numbered = Cookie(7, "numbered")
anonymous = Anonymous("anonymous", "anonymous")
header = Cookie("header", "header")
tuned = Configurable("tuned", "tuned")
'''


@pytest.fixture
def package(tmp_path):
    """A plugin package of a third party's, holding the plugins above."""
    with plugin_package(tmp_path / "site", "acme_plugins", PLUGINS) as package:
        yield package


def test_plugins_are_found_by_name_the_first_of_a_name_winning(package):
    """Plugins are offered by their str name, the first of a name winning; others are not offered."""
    found = chain.available(IAuthExtractor, package)
    assert sorted(found) == ["cookie", "header", "tuned"]   # a plugin without a str name is not offered
    assert found["cookie"].note == "first"
    assert chain.available(IInitiatorResolver, package) == {}


def test_without_a_package_the_installed_plugins_are_found():
    """Without a package, the plugins installed in twisted.plugins are found (the built-ins among them)."""
    assert {"coder-token", "authorization-bearer", "x-api-key"} <= set(chain.available(IAuthExtractor))


def test_the_configured_order_is_kept(package):
    """The plugins chosen come in the order the configuration names them; none named, none chosen."""
    context = chain.PluginContext(config=parse({}, environ={}))
    chosen = chain.select(IAuthExtractor, ["header", "cookie"], context, "auth.extractors", package)
    assert [p.note for p in chosen] == ["header", "first"]
    assert chain.select(IAuthExtractor, [], context, "auth.extractors", package) == []


def test_a_name_nobody_provides_stops_the_start_listing_those_that_exist(package):
    """A name no plugin provides is a ConfigError naming the key, the interface and the names that exist."""
    context = chain.PluginContext(config=parse({}, environ={}))
    with pytest.raises(ConfigError) as caught:
        chain.select(IAuthExtractor, ["header", "cookei"], context, "auth.extractors", package)
    assert str(caught.value) == ("auth.extractors: no IAuthExtractor plugin is called 'cookei' "
                                 "(available: cookie, header, tuned)")
    with pytest.raises(ConfigError) as caught:
        chain.select(IClientDetector, ["acme"], context, "clients.detectors", package)
    assert str(caught.value) == "clients.detectors: no IClientDetector plugin is called 'acme' (available: none)"


def test_plugins_already_found_are_not_looked_for_again(package):
    """Plugins found once (the providers, for several tables) are chosen from, not looked for again."""
    context = chain.PluginContext(config=parse({}, environ={}))
    mine = chain.available(IAuthExtractor, package)
    assert chain.select(IAuthExtractor, ["header"], context, "x", found=mine) == [mine["header"]]
    with pytest.raises(ConfigError) as caught:
        chain.select(IAuthExtractor, ["coder-token"], context, "auth.extractors", found=mine)
    assert "(available: cookie, header, tuned)" in str(caught.value)


def test_a_configurable_plugin_gets_its_own_table_and_is_replaced_by_what_it_returns(package):
    """An IConfigurable plugin gets the shared context with its own [plugins.<name>] table and is replaced by what
    configure returns."""
    config = parse({"plugins": {"tuned": {"cookie": "bridge_token"}, "other": {"x": 1}}}, environ={})
    log = Logger()
    context = chain.PluginContext(config=config, identity="identity", store="store", reactor="reactor",
                                  metrics="metrics", log=log)
    [(what, name, own)] = chain.select(IAuthExtractor, ["tuned"], context, "auth.extractors", package)
    assert (what, name) == ("configured", "tuned")
    assert own.options == {"cookie": "bridge_token"}
    assert (own.config, own.identity, own.store, own.reactor, own.metrics, own.log) == (
        config, "identity", "store", "reactor", "metrics", log)
    assert context.options == {}   # the shared context is left as it was
    bare = chain.PluginContext(config=parse({}, environ={}))
    [(_, _, own)] = chain.select(IAuthExtractor, ["tuned"], bare, "auth.extractors", package)
    assert own.options == {}
