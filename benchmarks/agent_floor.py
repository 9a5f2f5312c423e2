"""
Baseline: the least a proxy built on twisted.web.client.Agent can do — read
the body, forward it over a keep-alive pool, write the answer back.  No
auth, no header hygiene, no recording: the floor of bridgeproxy's own
architecture, so the benchmark shows what the pipeline adds on top of it.

Usage: python benchmarks/agent_floor.py LISTEN_PORT UPSTREAM_PORT
"""

import sys

from twisted.internet import reactor
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from bridgeproxy.proxy.upstream import BytesProducer


class Floor(resource.Resource):
    isLeaf = True

    def __init__(self, agent, upstream):
        super().__init__()
        self.agent = agent
        self.url = b"http://127.0.0.1:%d/v1" % upstream

    def render(self, request):
        d = self.agent.request(request.method, self.url + request.path, None, BytesProducer(request.content.read()))
        d.addCallback(readBody)

        def done(body):
            request.write(body)
            request.finish()
        d.addCallbacks(done, lambda f: (request.setResponseCode(502), request.finish()))
        return server.NOT_DONE_YET


def main():
    listen, upstream = int(sys.argv[1]), int(sys.argv[2])
    pool = HTTPConnectionPool(reactor)
    pool.maxPersistentPerHost = 256
    site = server.Site(Floor(Agent(reactor, pool=pool), upstream))
    site.log = lambda request: None
    reactor.listenTCP(listen, site, interface="127.0.0.1", backlog=4096)
    reactor.run()


if __name__ == "__main__":
    main()
