# -*- test-case-name: tests.test_chain,tests.test_plugins -*-
"""
Plugin discovery and ordering.

Our own extractors, resolvers and providers are registered in
C{twisted/plugins/bridgeproxy_builtins.py} like anybody else's, found with
C{twisted.plugin.getPlugins}, and used in the order the configuration
names them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional, Sequence

from twisted.logger import Logger
from twisted.plugin import getPlugins
from zope.interface.interface import InterfaceClass

from bridgeproxy.config import Config
from bridgeproxy.errors import ConfigError
from bridgeproxy.interfaces import IConfigurable


@dataclass
class PluginContext:
    """
    What a plugin's C{configure} gets.

    @ivar config: the whole L{bridgeproxy.config.Config}.
    @ivar options: this plugin's own C{[plugins.<name>]} table.
    @ivar identity: the L{bridgeproxy.IIdentityBackend} in use (L{None}
        while the identity backend itself is being configured).
    @ivar store: the L{bridgeproxy.store.AsyncStore}.
    @ivar reactor: the reactor (also the clock).
    @ivar metrics: counters a plugin may bump (name -> int).
    """

    config: Config
    options: Mapping[str, Any] = field(default_factory=dict)
    identity: Any = None
    store: Any = None
    reactor: Any = None
    metrics: Any = None
    log: Logger = field(default_factory=Logger)


def available(interface: InterfaceClass, package: Any = None) -> dict[str, Any]:
    """
    Every plugin providing C{interface}, by name.  Where two share a name,
    the first found wins.
    """
    if package is None:
        import twisted.plugins as package
    found: dict[str, Any] = {}
    for plugin in getPlugins(interface, package):  # type: ignore[arg-type, var-annotated]
        name = getattr(plugin, "name", None)
        if isinstance(name, str) and name not in found:
            found[name] = plugin
    return found


def select(interface: InterfaceClass, names: Sequence[str], context: PluginContext,
           what: str, package: Any = None, found: Optional[Mapping[str, Any]] = None) -> list[Any]:
    """
    The plugins called C{names}, configured, in that order.

    @param what: the configuration key naming them, for error messages.
    @raise ConfigError: for a name no plugin provides, listing those that exist.
    """
    if found is None:
        found = available(interface, package)
    chosen = []
    for name in names:
        plugin = found.get(name)
        if plugin is None:
            have = ", ".join(sorted(found)) or "none"
            raise ConfigError(f"{what}: no {interface.__name__} plugin is called {name!r} (available: {have})")
        chosen.append(configure(plugin, context, name))
    return chosen


def configure(plugin: Any, context: PluginContext, name: str) -> Any:
    """Let a plugin that provides L{IConfigurable} configure itself."""
    if IConfigurable.providedBy(plugin):
        options = context.config.plugins.get(name, {})
        own = replace(context, options=options)
        return plugin.configure(own)
    return plugin
