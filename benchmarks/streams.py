"""
N concurrent streaming requests: time to first byte, gaps between events,
failures.  A raw HTTP/1.1 client (no SDK overhead) so that the client is not
what is measured.

Usage: python benchmarks/streams.py HOST:PORT PATH N RAMP_SECONDS [TOKEN] [--events E --gap-ms G] > JSON
(--events/--gap-ms ask benchmarks/upstream.py for that stream shape, by request headers)
"""

import argparse
import json
import statistics
import time

from twisted.internet import reactor
from twisted.internet.protocol import ClientFactory, Protocol

BODY = b'{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}'


class Stream(Protocol):
    shape = b""

    def __init__(self, result, path, token):
        self.result = result
        self.path = path
        self.token = token
        self.arrivals = []
        self.data = bytearray()
        self.start = 0.0

    def connectionMade(self):
        self.start = time.perf_counter()
        self.result.opened()
        auth = b"Authorization: Bearer %s\r\n" % self.token.encode() if self.token else b""
        self.transport.write(
            b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n%s%s"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (self.path.encode(), auth, self.shape,
                                                                      len(BODY), BODY))

    def dataReceived(self, data):
        now = time.perf_counter()
        self.result.last_arrival = now
        self.data += data
        for _ in range(data.count(b"data: ")):
            self.arrivals.append(now)

    def connectionLost(self, reason):
        ok = self.data.startswith(b"HTTP/1.1 200") and b"[DONE]" in self.data
        self.result.done(self, ok)


class Factory(ClientFactory):
    def __init__(self, result, path, token):
        self.result, self.path, self.token = result, path, token

    def buildProtocol(self, addr):
        return Stream(self.result, self.path, self.token)

    def clientConnectionFailed(self, connector, reason):
        self.result.failures += 1
        self.result.finish_one()


class Result:
    def __init__(self, n):
        self.n = n
        self.finished = 0
        self.failures = 0
        self.ttfb = []
        self.gaps = []
        self.events = 0
        self.open = 0
        self.peak = 0
        self.first_open = None
        self.last_arrival = None

    def opened(self):
        if self.first_open is None:
            self.first_open = time.perf_counter()
        self.open += 1
        self.peak = max(self.peak, self.open)

    def done(self, stream, ok):
        self.open -= 1
        if ok and stream.arrivals:
            self.ttfb.append(stream.arrivals[0] - stream.start)
            self.gaps.extend(b - a for a, b in zip(stream.arrivals, stream.arrivals[1:]))
            self.events += len(stream.arrivals)
        else:
            self.failures += 1
        self.finish_one()

    def finish_one(self):
        self.finished += 1
        if self.finished == self.n:
            reactor.stop()


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("path")
    parser.add_argument("n", type=int)
    parser.add_argument("ramp", type=float)
    parser.add_argument("token", nargs="?", default="")
    parser.add_argument("--events", type=int)
    parser.add_argument("--gap-ms", type=float)
    args = parser.parse_args()
    host, port = args.target.split(":")
    path, n, ramp, token = args.path, args.n, args.ramp, args.token
    if args.events is not None:
        Stream.shape += b"X-Bench-Events: %d\r\n" % args.events
    if args.gap_ms is not None:
        Stream.shape += b"X-Bench-Gap-Ms: %g\r\n" % args.gap_ms
    result = Result(n)
    factory = Factory(result, path, token)
    # Open the connections over the ramp, as clients would arrive.
    for i in range(n):
        reactor.callLater(i * ramp / n, reactor.connectTCP, host, int(port), factory, 30)
    reactor.callLater(300, reactor.stop)
    began = time.perf_counter()
    reactor.run()
    print(json.dumps({
        "streams": n, "peak_open": result.peak, "failures": result.failures + (n - result.finished),
        "events": result.events,
        "events_per_s": round(result.events / (result.last_arrival - result.first_open), 1)
        if result.events and result.last_arrival else None,
        "wall_s": round(time.perf_counter() - began, 2),
        "ttfb_p50_ms": round(1000 * statistics.median(result.ttfb), 2) if result.ttfb else None,
        "ttfb_p99_ms": round(1000 * pct(result.ttfb, 0.99), 2) if result.ttfb else None,
        "gap_p50_ms": round(1000 * statistics.median(result.gaps), 2) if result.gaps else None,
        "gap_p99_ms": round(1000 * pct(result.gaps, 0.99), 2) if result.gaps else None,
        "gap_max_ms": round(1000 * max(result.gaps), 2) if result.gaps else None,
    }))


if __name__ == "__main__":
    main()
