"""
Baseline: twisted.web.proxy.ReverseProxyResource in front of the fake upstream.

Usage: python benchmarks/reverse_proxy_baseline.py LISTEN_PORT UPSTREAM_PORT
"""

import sys

from twisted.internet import reactor
from twisted.web import proxy, server


def main():
    listen, upstream = int(sys.argv[1]), int(sys.argv[2])
    site = server.Site(proxy.ReverseProxyResource("127.0.0.1", upstream, b"/v1"))
    site.log = lambda request: None  # the bridge's access log is on; this only narrows the gap for it
    reactor.listenTCP(listen, site, interface="127.0.0.1", backlog=4096)
    reactor.run()


if __name__ == "__main__":
    main()
