"""
C{twistd bridgeproxy}: the AI gateway as a reverse proxy.

Kept tiny: the real work is imported only when the plugin is used.
"""

from twisted.application.service import ServiceMaker

bridgeproxy = ServiceMaker(
    "bridgeproxy",
    "bridgeproxy.tap",
    "Reverse proxy between AI coding clients and LLM providers, with attribution and recording.",
    "bridgeproxy",
)
