"""
Header hygiene (L{bridgeproxy.proxy.headers}): which of the client's
headers reach the upstream, which provider key is sent, how the bridge
token is kept from the upstream, and which of the upstream's headers reach
the client.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.web.http_headers import Headers

from bridgeproxy.errors import BadRequest, NotConfigured, PermissionDenied
from bridgeproxy.providers.anthropic import AnthropicProvider
from bridgeproxy.providers.openai import OpenAICompatibleProvider, OpenAIProvider
from bridgeproxy.proxy.headers import (
    add_actor_headers,
    add_forwarded,
    apply_credential,
    copy_response_headers,
    drop_token,
    drop_token_from_query,
    upstream_headers,
)
from bridgeproxy.types import Credential, Initiator

TOKEN = "bp_bridge-token-0123456789"


class Request:
    """What the header functions read of a request."""

    def __init__(self, headers: list, peer=None, secure: bool = False):
        self.requestHeaders = Headers()
        for name, value in headers:
            self.requestHeaders.addRawHeader(name, value)
        self.peer = peer if peer is not None else IPv4Address("TCP", "10.0.0.7", 5555)
        self.secure = secure

    def getClientAddress(self):
        return self.peer

    def isSecure(self):
        return self.secure


def names(headers: Headers) -> dict:
    return {name.lower(): values for name, values in headers.getAllRawHeaders()}


def test_hop_by_hop_host_length_and_credentials_are_not_forwarded():
    """Hop-by-hop headers, Host, Content-Length, credentials and X-Coder-* never reach the upstream."""
    request = Request([
        (b"Connection", b"keep-alive"), (b"Keep-Alive", b"timeout=5"), (b"Proxy-Connection", b"x"),
        (b"Proxy-Authorization", b"Basic x"), (b"Proxy-Authenticate", b"x"), (b"Proxy-Custom", b"x"),
        (b"TE", b"trailers"), (b"Trailer", b"x"), (b"Trailers", b"x"), (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"h2c"), (b"Host", b"bridge"), (b"Content-Length", b"12"),
        (b"Authorization", b"Bearer " + TOKEN.encode()), (b"X-Api-Key", b"k"),
        (b"X-Coder-Token", b"t"), (b"X-Coder-Owner-Id", b"o"),
        (b"Content-Type", b"application/json"), (b"Anthropic-Version", b"2023-06-01"), (b"User-Agent", b"ua"),
        (b"Accept-Encoding", b"gzip"),
    ])
    out = names(upstream_headers(request, intercepted=False))
    assert out == {b"content-type": [b"application/json"], b"anthropic-version": [b"2023-06-01"],
                   b"user-agent": [b"ua"], b"accept-encoding": [b"gzip"]}


def test_accept_encoding_is_dropped_on_intercepted_routes_only():
    """On an intercepted route the bridge must read the answer, so the client's Accept-Encoding goes."""
    request = Request([(b"Accept-Encoding", b"gzip, br"), (b"Accept", b"text/event-stream")])
    assert names(upstream_headers(request, intercepted=True)) == {b"accept": [b"text/event-stream"]}
    assert b"accept-encoding" in names(upstream_headers(request, intercepted=False))


def test_headers_named_by_connection_are_hop_by_hop():
    """Every header Connection names (any case, with spaces and empty items) is dropped too."""
    request = Request([(b"Connection", b"X-Secret , , x-other"), (b"Connection", b"Close"),
                       (b"X-Secret", b"s"), (b"X-Other", b"o"), (b"Close", b"c"), (b"X-Kept", b"k")])
    assert names(upstream_headers(request, intercepted=False)) == {b"x-kept": [b"k"]}


def test_configured_credential_headers_are_dropped_in_any_case():
    """The bridge's own credential headers (configured names) are removed, whatever their case."""
    request = Request([(b"x-my-token", b"t"), (b"X-Kept", b"k")])
    assert names(upstream_headers(request, intercepted=False, bridge_headers=["X-My-Token"])) == {
        b"x-kept": [b"k"]}


def test_repeated_headers_keep_every_value_in_order():
    """A header sent twice reaches the upstream with both values, in order."""
    request = Request([(b"X-Tag", b"a"), (b"X-Tag", b"b")])
    assert names(upstream_headers(request, intercepted=False)) == {b"x-tag": [b"a", b"b"]}


# -- provider keys ---------------------------------------------------------------------


def entry(provider, key, name="openai"):
    """A provider as the pipeline holds it: the plugin, its configuration (key) and its table's name."""
    return SimpleNamespace(provider=provider, config=SimpleNamespace(key=key), name=name)


def headers_after(credential, request_headers, provider=None, central="sk-central", byok=False, name="openai"):
    headers = Headers()
    result = apply_credential(headers, Request(request_headers), credential,
                              entry(provider or OpenAIProvider(), central, name), byok)
    return result, names(headers)


def test_token_in_a_provider_key_header_gets_the_central_key():
    """A bridge token sent where a provider key goes is replaced by the configured key."""
    credential = Credential(TOKEN, "authorization")
    result, headers = headers_after(credential, [(b"Authorization", b"Bearer " + TOKEN.encode())])
    assert result == ("centralized", "sk-central")
    assert headers == {b"authorization": [b"Bearer sk-central"]}
    credential = Credential(TOKEN, "x-api-key")
    result, headers = headers_after(credential, [(b"X-Api-Key", TOKEN.encode())], AnthropicProvider())
    assert result == ("centralized", "sk-central")
    assert headers == {b"x-api-key": [b"sk-central"]}


def test_own_key_beside_a_coder_token_is_byok_when_allowed():
    """With the token in X-Coder-Token, a key in Authorization or X-Api-Key is the client's own (BYOK)."""
    credential = Credential(TOKEN, "x-coder-token")
    result, headers = headers_after(credential, [(b"Authorization", b"Bearer sk-own")], byok=True)
    assert result == ("byok", "sk-own")
    assert headers == {b"authorization": [b"Bearer sk-own"]}
    result, headers = headers_after(credential, [(b"X-Api-Key", b"sk-ant-own")], AnthropicProvider(), byok=True)
    assert result == ("byok", "sk-ant-own")
    assert headers == {b"x-api-key": [b"sk-ant-own"]}


def test_own_key_is_refused_when_byok_is_off():
    """A client's own key when the gateway does not allow it is a 403 with reason byok_disabled."""
    credential = Credential(TOKEN, "x-coder-token")
    for sent in ([(b"Authorization", b"Bearer sk-own")], [(b"X-Api-Key", b"sk-own")]):
        with pytest.raises(PermissionDenied) as caught:
            headers_after(credential, sent, byok=False)
        assert caught.value.reason == "byok_disabled"


def test_the_token_repeated_in_a_key_header_is_not_an_own_key():
    """The bridge token sent again in Authorization or X-Api-Key is not forwarded as the client's key."""
    credential = Credential(TOKEN, "x-coder-token")
    for sent in ([(b"Authorization", b"Bearer " + TOKEN.encode())], [(b"X-Api-Key", TOKEN.encode())]):
        result, headers = headers_after(credential, sent, byok=True)
        assert result == ("centralized", "sk-central")
        assert headers == {b"authorization": [b"Bearer sk-central"]}


def test_a_non_bearer_authorization_is_not_an_own_key():
    """An Authorization value that is not a Bearer token is not taken as a provider key."""
    credential = Credential(TOKEN, "x-coder-token")
    result, _ = headers_after(credential, [(b"Authorization", b"Basic dXNlcjpwYXNz")], byok=False)
    assert result == ("centralized", "sk-central")


def test_conflicting_key_headers_are_a_bad_request():
    """Two different X-Api-Key values are refused rather than guessed between."""
    credential = Credential(TOKEN, "x-coder-token")
    with pytest.raises(BadRequest):
        headers_after(credential, [(b"X-Api-Key", b"a"), (b"X-Api-Key", b"b")], byok=True)


@pytest.mark.parametrize("central", [None, ""])
def test_no_central_key_is_not_configured(central):
    """Without a configured key (and no own key) the request is refused as not configured, naming the provider."""
    with pytest.raises(NotConfigured) as caught:
        headers_after(Credential(TOKEN, "authorization"), [], central=central, name="work-llm")
    assert str(caught.value) == "No work-llm key is configured on this gateway."


def test_a_provider_that_needs_no_key_gets_no_credential():
    """An OpenAI-compatible server without a configured key is sent no credential at all."""
    result, headers = headers_after(Credential(TOKEN, "authorization"), [], OpenAICompatibleProvider(), central=None)
    assert result == ("centralized", None)
    assert headers == {}
    result, headers = headers_after(Credential(TOKEN, "authorization"), [], OpenAICompatibleProvider(),
                                    central="sk-local")
    assert result == ("centralized", "sk-local")
    assert headers == {b"authorization": [b"Bearer sk-local"]}


# -- the bridge token ------------------------------------------------------------------------


def test_every_header_carrying_the_token_is_removed():
    """The bridge token is removed wherever it appears (cookies, custom headers); the count says how many."""
    headers = Headers({b"Cookie": [b"a=1; s=" + TOKEN.encode()], b"X-Mine": [b"x", TOKEN.encode()],
                       b"X-Safe": [b"y"]})
    assert drop_token(headers, TOKEN) == 2
    assert names(headers) == {b"x-safe": [b"y"]}
    assert drop_token(headers, TOKEN) == 0


def test_query_parameters_carrying_the_token_are_removed():
    """Query parameters holding the token go; the others stay in order; a query without it is unchanged."""
    query = b"a=1&key=" + TOKEN.encode() + b"&b=2"
    assert drop_token_from_query(query, TOKEN) == b"a=1&b=2"
    assert drop_token_from_query(b"a=1&b=2", TOKEN) == b"a=1&b=2"
    assert drop_token_from_query(TOKEN.encode(), TOKEN) == b""


def test_actor_headers():
    """The upstream is told the actor's id, and name when known (UTF-8)."""
    headers = Headers()
    add_actor_headers(headers, Initiator(user_id="u-1", username="zoë"))
    assert names(headers) == {b"x-ai-bridge-actor-id": [b"u-1"],
                              b"x-ai-bridge-actor-metadata-username": ["zoë".encode()]}
    headers = Headers()
    add_actor_headers(headers, Initiator(user_id="u-2"))
    assert names(headers) == {b"x-ai-bridge-actor-id": [b"u-2"]}


def test_forwarded_headers_start_or_extend_the_chain():
    """This hop is appended to X-Forwarded-For/-Proto, or starts them."""
    headers = Headers()
    add_forwarded(headers, Request([]))
    assert names(headers) == {b"x-forwarded-for": [b"10.0.0.7"], b"x-forwarded-proto": [b"http"]}
    headers = Headers({b"X-Forwarded-For": [b"1.1.1.1", b"2.2.2.2"], b"X-Forwarded-Proto": [b"https"]})
    add_forwarded(headers, Request([], secure=True))
    assert names(headers) == {b"x-forwarded-for": [b"1.1.1.1, 2.2.2.2, 10.0.0.7"],
                              b"x-forwarded-proto": [b"https, https"]}


def test_forwarded_without_an_ip_peer_only_says_the_protocol():
    """A client on a UNIX socket has no address to add; the protocol is still recorded."""
    headers = Headers({b"X-Forwarded-For": [b"1.1.1.1"]})
    add_forwarded(headers, Request([], peer=UNIXAddress(None), secure=True))
    assert names(headers) == {b"x-forwarded-for": [b"1.1.1.1"], b"x-forwarded-proto": [b"https"]}


def test_response_headers_copied_less_hop_by_hop_and_length():
    """The upstream's answer headers reach the client, less hop-by-hop ones, those Connection names, and length."""
    source = Headers({b"Content-Type": [b"text/event-stream"], b"Content-Length": [b"10"],
                      b"Connection": [b"close, X-Internal"], b"X-Internal": [b"i"], b"Transfer-Encoding": [b"chunked"],
                      b"Proxy-Foo": [b"p"], b"Request-Id": [b"req_1"], b"Set-Cookie": [b"a=1", b"b=2"]})
    target = Headers({b"Server": [b"bridge"]})
    copy_response_headers(source, target)
    assert names(target) == {b"server": [b"bridge"], b"content-type": [b"text/event-stream"],
                             b"request-id": [b"req_1"], b"set-cookie": [b"a=1", b"b=2"]}


def test_connection_tokens_without_spaces():
    """Connection tokens are comma-separated, with or without spaces."""
    request = Request([(b"Connection", b"X-Secret,x-other"), (b"X-Secret", b"s"), (b"X-Other", b"o"),
                       (b"X-Kept", b"k")])
    assert names(upstream_headers(request, intercepted=False)) == {b"x-kept": [b"k"]}


def test_byok_refusal_message():
    """The client is told in plain words that its own key is not allowed."""
    with pytest.raises(PermissionDenied) as caught:
        headers_after(Credential(TOKEN, "x-coder-token"), [(b"X-Api-Key", b"sk-own")], byok=False)
    assert str(caught.value) == "Using your own provider key is not allowed by this gateway."


def test_tokens_outside_latin1_do_not_break_the_request():
    """A token with characters outside Latin-1 is still looked for, without failing."""
    headers = Headers({b"X-Safe": [b"y"]})
    assert drop_token(headers, "bp_\u20ac") == 0
    assert drop_token_from_query(b"a=1", "bp_\u20ac") == b"a=1"
    assert names(headers) == {b"x-safe": [b"y"]}


def test_forwarded_proto_chain_of_several_values():
    """Several X-Forwarded-Proto values are joined with this hop's at the end."""
    headers = Headers({b"X-Forwarded-Proto": [b"https", b"http"]})
    add_forwarded(headers, Request([]))
    assert headers.getRawHeaders(b"x-forwarded-proto") == [b"https, http, http"]
