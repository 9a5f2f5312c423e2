# -*- test-case-name: tests.test_aiproxy_units,tests.test_aiproxy_memory,tests.test_aiproxy_e2e -*-
"""
The AI proxy: an HTTPS forward proxy, served beside the bridge, for clients
that honour C{HTTPS_PROXY} but cannot change their base URL (SPEC section 8,
C{docs/aiproxy.md}).

    server.py   the listener: one connection, one CONNECT (or /ca.pem)
    head.py     the request head, the CONNECT target, Proxy-Authorization
    ca.py       the CA, and the leaf certificates it signs per host
    mitm.py     a decrypted tunnel: the bridge's own channel and pipeline inside
    tunnel.py   a tunnel that is not decrypted: bytes both ways, back-pressure, half-close
    guard.py    where such a tunnel may go (the SSRF guard), and the resolver
"""

from bridgeproxy.aiproxy.ca import CertificateAuthority, create_ca
from bridgeproxy.aiproxy.guard import Guard, Resolver
from bridgeproxy.aiproxy.server import AIProxy, make_aiproxy

__all__ = ["AIProxy", "CertificateAuthority", "Guard", "Resolver", "create_ca", "make_aiproxy"]
