"""
How long after a client disconnects mid-stream the upstream sees its
request cancelled: N streams through a proxy, each cut after its first event;
the fake provider (benchmarks/upstream.py) notes when each upstream
connection closed (time.monotonic(), one clock for every process of the machine).

Usage: python benchmarks/cancel.py HOST:PORT PATH UPSTREAM_PORT N [TOKEN] > JSON
"""

import json
import statistics
import sys
import time
import urllib.request

from twisted.internet import reactor
from twisted.internet.protocol import ClientFactory, Protocol

BODY = b'{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}'


class Cut(Protocol):
    def __init__(self, run, bench_id):
        self.run, self.bench_id, self.data = run, bench_id, b""

    def connectionMade(self):
        auth = b"Authorization: Bearer %s\r\n" % self.run.token if self.run.token else b""
        self.transport.write(
            b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n%sX-Bench-Id: %s\r\n"
            b"X-Bench-Events: 40\r\nX-Bench-Gap-Ms: 100\r\nContent-Length: %d\r\n\r\n%s"
            % (self.run.path, auth, self.bench_id.encode(), len(BODY), BODY))

    def dataReceived(self, data):
        self.data += data
        if b"data: " in self.data and self.bench_id not in self.run.cut:
            self.run.cut[self.bench_id] = time.monotonic()
            self.transport.abortConnection()

    def connectionLost(self, reason):
        self.run.finished += 1
        if self.run.finished == self.run.n:
            reactor.callLater(1.0, reactor.stop)  # leave the proxy time to cancel


class Run(ClientFactory):
    def __init__(self, path, token, n):
        self.path, self.token, self.n = path, token, n
        self.cut, self.finished, self.next = {}, 0, 0

    def buildProtocol(self, addr):
        self.next += 1
        return Cut(self, f"cancel-{time.monotonic_ns()}-{self.next}")


def main():
    host, port = sys.argv[1].split(":")
    path, upstream_port, n = sys.argv[2].encode(), int(sys.argv[3]), int(sys.argv[4])
    token = sys.argv[5].encode() if len(sys.argv) > 5 else b""
    run = Run(path, token, n)
    for i in range(n):
        reactor.callLater(i * 0.05, reactor.connectTCP, host, int(port), run)
    reactor.callLater(60, reactor.stop)
    reactor.run()
    with urllib.request.urlopen(f"http://127.0.0.1:{upstream_port}/closed", timeout=10) as answer:
        closed = json.loads(answer.read())
    delays = sorted(1000 * (closed[i] - t) for i, t in run.cut.items() if i in closed)
    print(json.dumps({
        "cut": len(run.cut), "cancelled": len(delays),
        "p50_ms": round(statistics.median(delays), 2) if delays else None,
        "max_ms": round(max(delays), 2) if delays else None,
    }))


if __name__ == "__main__":
    main()
