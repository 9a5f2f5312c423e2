"""
Refusals as the client gets them (L{bridgeproxy.proxy.errors.write_error}):
status line, headers and body in the provider's error shape; and the
refusals a plugin may raise (L{bridgeproxy.errors}), with their reasons.
"""

import json

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from bridgeproxy.errors import AuthenticationFailed, BridgeError, PermissionDenied, RateLimited
from bridgeproxy.providers.anthropic import AnthropicProvider
from bridgeproxy.proxy.errors import write_error
from tests import memory
from tests.memory import TOKEN

BEARER = {"Authorization": f"Bearer {TOKEN}"}
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


class Refusing(Resource):
    """Answers every request with C{write_error(request, provider, error)}."""

    isLeaf = True

    def __init__(self, provider, error):
        super().__init__()
        self.provider, self.error = provider, error

    def render(self, request):
        write_error(request, self.provider, self.error)
        return NOT_DONE_YET


def refused(provider, error) -> memory.Answer:
    """What a client gets when its request is answered with C{error}."""
    protocol = Site(Refusing(provider, error), reactor=Clock()).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET /x HTTP/1.1\r\nHost: b\r\n\r\n")
    answer = memory.parse_answer(transport.value())
    assert answer is not None
    return answer


def test_a_refusal_without_a_provider_is_in_the_openai_shape():
    """Status and reason phrase, JSON content type, an exact Content-Length, the error's own headers, and the
    OpenAI error body."""
    answer = refused(None, RateLimited("Too many requests; slow down.", headers={"Retry-After": "3"}))
    assert answer.raw.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert answer.headers["content-type"] == [b"application/json"]
    assert answer.headers["content-length"] == [str(len(answer.body)).encode()]
    assert answer.headers["retry-after"] == [b"3"]
    assert answer.json() == {"error": {"message": "Too many requests; slow down.", "type": "rate_limit_error",
                                       "param": None, "code": "rate_limit_exceeded"}}


def test_a_refusal_for_a_provider_is_in_its_shape():
    answer = refused(AnthropicProvider(), PermissionDenied("No."))
    assert answer.status == 403 and answer.headers["content-type"] == [b"application/json"]
    assert answer.json() == {"type": "error", "error": {"type": "permission_error", "message": "No."}}
    assert answer.headers["content-length"] == [str(len(answer.body)).encode()]


def test_a_status_without_a_standard_phrase_says_error():
    """A plugin's refusal with a status HTTP gives no phrase for still gets a status line."""

    class Odd(BridgeError):
        status = 599
    answer = refused(None, Odd("odd"))
    assert answer.raw.startswith(b"HTTP/1.1 599 Error\r\n")
    assert answer.json()["error"]["type"] == "server_error"


def test_header_values_are_written_as_latin_1():
    answer = refused(None, BridgeError("x", headers={"X-Why": "caf\xe9"}))
    assert answer.headers["x-why"] == [b"caf\xe9"]


class Refuses:
    """A resolver plugin that refuses every key with C{error}."""

    def __init__(self, error):
        self.error = error

    def resolve(self, request, credential, client, initiator):
        raise self.error


def test_a_plugins_refusals_keep_their_headers_and_have_default_reasons():
    """A resolver plugin's AuthenticationFailed or PermissionDenied without a reason is counted as `invalid` or
    `forbidden`; the headers it gives reach the client."""
    g = memory.gateway()
    g.bridge.resolvers = (Refuses(AuthenticationFailed("Expired.", headers={"WWW-Authenticate": "Bearer"})),)
    answer = g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    assert (answer.status, answer.json()["error"]["message"]) == (401, "Expired.")
    assert answer.headers["www-authenticate"] == [b"Bearer"]
    g.bridge.resolvers = (Refuses(PermissionDenied("Not you.", headers={"X-Why": "policy"})),)
    answer = g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    assert (answer.status, answer.headers["x-why"]) == (403, [b"policy"])
    assert (g.bridge.metrics.get("refused:401:invalid"), g.bridge.metrics.get("refused:403:forbidden")) == (1, 1)
    assert g.upstream.seen == []


def test_a_refusal_body_is_json_the_client_can_parse():
    """Whatever the message holds, the body parses as JSON and says it back."""
    message = 'quote " backslash \\ newline \n unicode \u2603'
    assert json.loads(refused(None, BridgeError(message)).body)["error"]["message"] == message
