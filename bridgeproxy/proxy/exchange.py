# -*- test-case-name: tests.test_pipeline -*-
"""
One request on its way through the bridge: what the pipeline learns about
it, and how to stop it at whatever stage it is in.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from twisted.internet.defer import Deferred

from bridgeproxy.errors import BridgeError
from bridgeproxy.types import UNKNOWN_CLIENT, ClientInfo, Credential, Initiator


@dataclass(eq=False)
class Exchange:
    """
    Everything the pipeline learns about one request; becomes its record.

    @ivar entry: the provider (a L{bridgeproxy.proxy.pipeline.ProviderEntry}),
        L{None} under an unknown prefix.
    @ivar subpath: the raw path after the provider's prefix.
    @ivar route: the intercepted route's name, C{""} for a passthrough, or
        L{None} when the request was not routed.
    @ivar route_error: a refusal decided while routing, answered once the
        credential has been checked (so that the request is recorded).
    """

    request: Any
    started: float
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    entry: Any = None
    subpath: bytes = b""
    route: Optional[str] = None
    route_error: Optional[BridgeError] = None
    answered: bool = False
    body: bytes = b""
    parsed: Optional[dict] = None
    streamed: bool = False
    client: ClientInfo = UNKNOWN_CLIENT
    credential: Optional[Credential] = None
    initiator: Optional[Initiator] = None
    credential_kind: Optional[str] = None
    upstream_key: Optional[str] = None
    upstream_status: Optional[int] = None
    forwarded_at: float = 0.0
    #: What is sent upstream, kept for a retry: C{(method, url, headers, body)}.
    outbound: Any = None
    #: How many times it was sent upstream; the breaker that let the last send
    #: through and its ticket, until the breaker is told how it went.
    attempts: int = 0
    ticket: Optional[tuple[Any, int]] = None
    #: Its place in the store's budget holds, until it is settled (L{bridgeproxy.proxy.admission.Ticket}).
    admitted: Any = None
    #: The stage in progress: the upstream request not answered yet (or the
    #: wait before a retry), the timer on it, the relay of its answer, or the
    #: error body being read.
    pending: Optional[Deferred] = None
    timer: Any = None
    relay: Any = None
    error_body: Any = None
    parser: Any = None
    timed_out: bool = False
    client_gone: bool = False
    shutdown: bool = False
    done: bool = False

    def stop(self) -> None:
        """Stop whatever stage this request is in; its own callbacks record how it ended."""
        if self.relay is not None:
            self.relay.client_gone()
        elif self.error_body is not None:
            self.error_body.stop()
        elif self.pending is not None:
            self.pending.cancel()

    def cancel_timer(self) -> None:
        """Cancel the timer on the upstream's headers, if it is still waiting."""
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
