# -*- test-case-name: tests.test_resource,tests.test_pipeline,tests.test_e2e_api,tests.test_ui -*-
"""
The resource tree: what a path reaches.

    /healthz, /readyz, /metrics      the bridge's own endpoints
    /api/v1/<view>                   reading records back
    /<provider>/...                  a configured provider (the pipeline)
    /api/v2/aibridge/<provider>/...  the same providers, mounted again
    /ui/                             the administrators' dashboard (bridgeproxy.ui)

Anything else reaches the pipeline as a path under no provider, so that it
is refused (and, for an authenticated caller, recorded) the pipeline's way.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from bridgeproxy.api import ApiV1Resource, Endpoint
from bridgeproxy.proxy.pipeline import Bridge, ProviderEntry
from bridgeproxy.proxy.routing import unsafe_path
from bridgeproxy.ui import UIResource


class ProviderResource(Resource):
    """
    A provider's prefix: everything below it goes to the pipeline, with the
    raw path after the prefix (C{request.postpath} is percent-decoded; the
    upstream must get the path as the client sent it).
    """

    isLeaf = True

    def __init__(self, bridge: Bridge, name: Optional[bytes]):
        super().__init__()
        self.bridge = bridge
        self.name = name

    def render(self, request: Any) -> Any:
        if self.name is None:
            subpath = request.path
        else:
            # Each segment after the prefix, with its slash: b"" for the prefix alone.
            subpath = b"/".join([b""] + request.path.split(b"/")[1 + len(request.prepath):])
        self.bridge.handle(request, self.name, subpath)
        return NOT_DONE_YET


class _Branch(Resource):
    """A branch of the tree whose unknown children, and itself, reach the pipeline as unknown paths."""

    def __init__(self, unknown: ProviderResource):
        super().__init__()
        self.unknown = unknown

    def getChild(self, path: bytes, request: Any) -> Resource:
        return self.unknown

    def render(self, request: Any) -> Any:
        return self.unknown.render(request)


class ProvidersResource(Resource):
    """One child per configured provider (looked up at each request: a reload may change them)."""

    def __init__(self, bridge: Bridge):
        super().__init__()
        self.bridge = bridge
        self._leaves: dict[Optional[bytes], ProviderResource] = {}

    def render(self, request: Any) -> Any:
        return self.leaf(None).render(request)

    def leaf(self, name: Optional[bytes]) -> ProviderResource:
        """The pipeline's resource for provider C{name} (L{None}: under no provider)."""
        if name is not None and name not in self.bridge.providers:
            name = None
        found = self._leaves.get(name)
        if found is None:
            found = self._leaves[name] = ProviderResource(self.bridge, name)
        return found

    def getChild(self, path: bytes, request: Any) -> Resource:
        return self.leaf(path)


class BridgeResource(ProvidersResource):
    """
    The root.  Paths are checked before anything else: an unsafe one goes
    to the pipeline, which refuses it, whatever it would have reached.
    """

    def __init__(self, bridge: Bridge):
        super().__init__(bridge)
        unknown = self.leaf(None)
        self.api = _Branch(unknown)
        v2 = _Branch(unknown)
        v2.putChild(b"aibridge", ProvidersResource(bridge))
        self.api.putChild(b"v2", v2)
        self._own: dict[bytes, Resource] = {}

    def _endpoints(self) -> dict[bytes, Resource]:
        own = self._own
        if not own and self.bridge.api is not None:
            endpoints = self.bridge.api
            own[b"healthz"] = Endpoint(endpoints.health)
            own[b"readyz"] = Endpoint(endpoints.ready)
            own[b"metrics"] = Endpoint(endpoints.serve_metrics)
            self.api.putChild(b"v1", ApiV1Resource(endpoints))
            own[b"ui"] = UIResource(self.bridge)
        return own

    def getChildWithDefault(self, path: bytes, request: Any) -> Resource:
        if path in self.bridge.providers:
            return self.leaf(path)
        if unsafe_path(request.path) is not None:
            return self.leaf(None)
        if path == b"api":
            self._endpoints()
            return self.api
        return self._endpoints().get(path) or self.leaf(None)


__all__ = ["Bridge", "BridgeResource", "ProviderEntry", "ProviderResource"]
