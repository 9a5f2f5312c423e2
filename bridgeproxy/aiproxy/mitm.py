# -*- test-case-name: tests.test_aiproxy_mitm,tests.test_aiproxy_e2e -*-
"""
A decrypted tunnel: the requests inside it are the bridge's own.

Once the proxy has answered a C{CONNECT} to an allow-listed host, the
tunnel's bytes go through TLS (the host's leaf) into an L{HTTPChannel} of
the bridge, whose requests are L{TunnelRequest}s: each carries the bridge
key the C{CONNECT} authenticated with in C{X-Coder-Token} and reaches
L{Bridge.handle} for the host's provider, exactly as a direct request to
C{/PROVIDER/...} would.  The client's own C{Authorization} / C{X-Api-Key}
is left alone, so the bring-your-own-key rules apply unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from bridgeproxy.proxy.records import mask, printable

log = Logger(namespace="bridgeproxy.aiproxy")


@dataclass(frozen=True)
class Tunnel:
    """
    What a decrypted tunnel's requests share: who opened it and where to.

    @ivar provider: the provider's name (its URL prefix) the host maps to.
    @ivar token: the bridge key of the C{CONNECT}; never log it.
    @ivar host: the host the client asked for.
    @ivar username: whose key it is (for the log lines).
    @ivar bridge: the L{bridgeproxy.proxy.pipeline.Bridge}.
    """

    provider: bytes
    token: str
    host: str
    username: str
    bridge: Any


class TunnelRequest:
    """
    Mixed into the bridge's request class: a request read inside a
    decrypted tunnel (the channel's C{tunnel}, a L{Tunnel}).
    """

    #: Kept from the channel, which a request loses when its client leaves.
    tunnel: Tunnel
    channel: Any
    requestHeaders: Any
    path: bytes
    method: bytes

    def process(self) -> None:
        tunnel = self.tunnel = self.channel.tunnel
        # The CONNECT's key, in the first header the coder-token extractor
        # reads, whatever the client put there itself (set replaces).
        name = tunnel.bridge.config.auth.coder_token_headers[0]
        self.requestHeaders.setRawHeaders(name, [tunnel.token.encode("ascii")])
        super().process()  # type: ignore[misc]

    def log_interception(self, record: Any) -> None:
        """
        The proxy's log line of one decrypted request, in place of the
        bridge's C{interception} line (the pipeline calls it when it would
        log that one): the same facts under the same id, and the tunnel's.
        """
        tunnel = self.tunnel
        path = printable(self.path, lambda text: mask(text, (tunnel.token, *tunnel.bridge.secrets)))
        log.info(
            "interception {id} via aiproxy {method} https://{host}{path} tunnel_user={tunnel_user} "
            "initiator={initiator} client={client} provider={provider} route={route} model={model} status={status} "
            "http_status={http_status} upstream_status={upstream_status} tokens_in={tokens_in} "
            "tokens_out={tokens_out} duration_ms={duration_ms}",
            id=record.id, method=self.method.decode("latin-1"), host=tunnel.host, path=path,
            tunnel_user=tunnel.username, initiator=record.initiator_username or record.initiator_id,
            client=record.client, provider=record.provider, route=record.route, model=record.model,
            status=record.status, http_status=record.http_status, upstream_status=record.upstream_status,
            tokens_in=record.input_tokens, tokens_out=record.output_tokens, duration_ms=record.duration_ms)


class TunnelResource(Resource):
    """The root of a decrypted tunnel: every path is the tunnel's provider's."""

    isLeaf = True

    def __init__(self, bridge: Any):
        super().__init__()
        self.bridge = bridge

    def render(self, request: Any) -> Any:
        self.bridge.handle(request, request.channel.tunnel.provider, request.path)
        return NOT_DONE_YET


class TunnelChannel(HTTPChannel):
    """The bridge's HTTP channel inside a decrypted tunnel (its C{tunnel}, a L{Tunnel})."""

    tunnel: Tunnel
    _decrypted = False

    def dataReceived(self, data: bytes) -> None:
        self._decrypted = True  # only what TLS decrypted gets here
        super().dataReceived(data)

    def connectionLost(self, reason: Any = None) -> None:
        if not self._decrypted and reason is not None and reason.check(SSL.Error):
            # The usual cause: the client does not trust the proxy's CA.
            log.info("aiproxy: TLS with the client for {host} failed, before any request (does the client trust "
                     "the proxy's CA?): {reason}", host=self.tunnel.host, reason=reason.getErrorMessage()[:300])
        super().connectionLost(reason)


def tunnel_channel(site: Any, log_site: Any, tunnel: Tunnel, reactor: Any) -> TunnelChannel:
    """
    An HTTP/1.1 channel serving the decrypted tunnel's requests with C{site}
    (a L{TunnelResource} and L{TunnelRequest}s), logged like the bridge's
    own requests (C{log_site}: its access log, its idle timeout).
    """
    channel = TunnelChannel()
    channel.site = site  # type: ignore[attr-defined]
    channel.factory = log_site  # type: ignore[assignment]
    channel.requestFactory = site.requestFactory
    channel.timeOut = log_site.timeOut
    channel.callLater = reactor.callLater  # type: ignore[method-assign]
    channel.tunnel = tunnel
    return channel


__all__ = ["Tunnel", "TunnelChannel", "TunnelRequest", "TunnelResource", "tunnel_channel"]
