"""
A fast fake provider for the benchmarks: a bare HTTP/1.1 keep-alive server.

POST /v1/chat/completions           -> a fixed JSON completion with usage
POST /v1/chat/completions (stream)  -> EVENTS SSE chunks, one every GAP_MS
                                       (headers X-Bench-Events, X-Bench-Gap-Ms override
                                       them for one request)
GET /closed                         -> JSON {X-Bench-Id: time.monotonic() of the close}
                                       for the connections of requests that carried
                                       an X-Bench-Id (benchmarks/cancel.py)

Usage: python benchmarks/upstream.py PORT [EVENTS] [GAP_MS]
"""

import json
import sys
import time

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

BODY = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there!"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
}).encode()
BLOCKING = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY)) + BODY
STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


EVENT = b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"tok"}}]}\n\n'
LAST = (b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o","choices":[],'
        b'"usage":{"prompt_tokens":12,"completion_tokens":20}}\n\ndata: [DONE]\n\n')


CLOSED: dict = {}


class Upstream(Protocol):
    events = 20
    gap = 0.05

    def connectionMade(self):
        self.buffer = b""
        self.bench_id = None

    def connectionLost(self, reason):
        if self.bench_id is not None:
            CLOSED[self.bench_id] = time.monotonic()

    def dataReceived(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = 0
            events, gap = self.events, self.gap
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"x-bench-events":
                    events = int(value)
                elif name == b"x-bench-gap-ms":
                    gap = float(value) / 1000
                elif name == b"x-bench-id":
                    self.bench_id = value.strip().decode()
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.close_after = b"connection: close" in head.lower()
            self.buffer = self.buffer[end + 4 + length:]
            if head.startswith(b"GET /closed"):
                answer = json.dumps(CLOSED).encode()
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                     b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer))
            elif b'"stream": true' in body or b'"stream":true' in body:
                self.transport.write(STREAM_HEAD)
                self.stream(0, events, gap)
            else:
                self.transport.write(BLOCKING)

    def stream(self, i, events, gap):
        if not self.transport.connected:
            return
        if i == events:
            self.transport.write(chunk(LAST) + b"0\r\n\r\n")
            if self.close_after:
                self.transport.loseConnection()
            return
        self.transport.write(chunk(EVENT))
        reactor.callLater(gap, self.stream, i + 1, events, gap)


def main():
    port = int(sys.argv[1])
    if len(sys.argv) > 2:
        Upstream.events = int(sys.argv[2])
    if len(sys.argv) > 3:
        Upstream.gap = float(sys.argv[3]) / 1000
    reactor.listenTCP(port, Factory.forProtocol(Upstream), interface="127.0.0.1", backlog=4096)
    reactor.run()


if __name__ == "__main__":
    main()
