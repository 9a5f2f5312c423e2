"""
Baseline: a twisted.web hello-world server, no upstream call — the most a
twisted.web server does per request on this machine (the server-side floor).

Usage: python benchmarks/hello.py LISTEN_PORT
"""

import sys

from twisted.internet import reactor
from twisted.web import resource, server

ANSWER = b'{"id":"chatcmpl-bench","object":"chat.completion","choices":[]}'


class Hello(resource.Resource):
    isLeaf = True

    def render(self, request):
        request.content.read()
        request.setHeader(b"content-type", b"application/json")
        return ANSWER


def main():
    site = server.Site(Hello())
    site.log = lambda request: None
    reactor.listenTCP(int(sys.argv[1]), site, interface="127.0.0.1", backlog=4096)
    reactor.run()


if __name__ == "__main__":
    main()
