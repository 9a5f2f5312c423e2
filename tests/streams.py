"""
Streaming over loopback, for the tests: provider SSE payloads, a body
collector with its first-bytes and end Deferreds, and a helper to open a
stream through an Agent.
"""

import json

from twisted.internet import defer, reactor
from twisted.internet.protocol import Protocol
from twisted.web.http_headers import Headers

from bridgeproxy.proxy.upstream import BytesProducer

ANTHROPIC_EVENTS = [
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",'
    b'"model":"claude-sonnet-4-5","content":[],"stop_reason":null,"usage":{"input_tokens":25,"output_tokens":1,'
    b'"cache_read_input_tokens":100,"cache_creation_input_tokens":7}}}\n\n',
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo"}}\n\n',
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
    b'"usage":{"output_tokens":12}}\n\n',
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
]
STREAM_MESSAGES = {"model": "claude-sonnet-4-5", "max_tokens": 10, "stream": True,
                   "messages": [{"role": "user", "content": "hi"}]}
STREAM_CHAT = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def sleep(seconds):
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


class Collector(Protocol):
    """Collects a streamed body; C{first} fires at the first bytes, C{done} at the end."""

    def __init__(self, pause=False):
        self.chunks = []
        self.first = defer.Deferred()
        self.done = defer.Deferred()
        self.pause = pause
        self.reason = None

    def dataReceived(self, data):
        self.chunks.append(data)
        if not self.first.called:
            self.first.callback(data)

    def connectionLost(self, reason):
        self.reason = reason
        self.done.callback(b"".join(self.chunks))

    @property
    def size(self):
        return sum(map(len, self.chunks))


@defer.inlineCallbacks
def open_stream(agent, url, body, headers, collector):
    hdrs = Headers({k.encode(): [v.encode()] for k, v in headers.items()})
    hdrs.setRawHeaders(b"content-type", [b"application/json"])
    response = yield agent.request(b"POST", url.encode(), hdrs, BytesProducer(json.dumps(body).encode()))
    response.deliverBody(collector)
    if collector.pause:
        # Not in connectionMade: deliverBody resumes the transport after it.
        collector.transport.pauseProducing()
    return response
