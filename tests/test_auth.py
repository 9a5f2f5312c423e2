"""
The built-in credential extractors (L{bridgeproxy.auth}): which credential
a request carries, where it was found, and which ambiguous requests are
refused.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from twisted.web.http_headers import Headers

from bridgeproxy.auth import (
    PROVIDER_KEY_SOURCES,
    ApiKeyExtractor,
    BearerExtractor,
    CoderTokenExtractor,
    bearer_token,
    extract_credential,
    header_key,
    single_header,
)
from bridgeproxy.errors import BadRequest
from bridgeproxy.types import Credential


def request(*headers):
    r = SimpleNamespace(requestHeaders=Headers())
    for name, value in headers:
        r.requestHeaders.addRawHeader(name, value)
    return r


def test_header_key_is_lower_case_bytes():
    """Header names are looked up as Twisted stores them, whatever case they are configured in."""
    assert header_key("X-Coder-Token") == b"x-coder-token"
    assert header_key("X-Coder-Token") == b"x-coder-token"  # the cached answer is the same
    assert single_header(request((b"x-mixed-case", b"v")), "X-MIXED-Case") == "v"


def test_single_header_trims_and_ignores_blanks():
    """A header's value is trimmed; absent, empty or blank headers are None."""
    assert single_header(request((b"X-A", b"  v  ")), "X-A") == "v"
    assert single_header(request(), "X-A") is None
    assert single_header(request((b"X-A", b"")), "X-A") is None
    assert single_header(request((b"X-A", b"   ")), "X-A") is None


def test_repeated_header_with_the_same_value_is_fine():
    """A header sent twice with the same value (or with blank copies) is that value."""
    assert single_header(request((b"X-A", b"v"), (b"X-A", b" v ")), "X-A") == "v"
    assert single_header(request((b"X-A", b" "), (b"X-A", b"v"), (b"X-A", b"")), "X-A") == "v"


def test_repeated_header_with_different_values_is_refused():
    """Different values for one header are a 400 naming the header: guessing is how a forged header wins."""
    with pytest.raises(BadRequest) as caught:
        single_header(request((b"X-A", b"one"), (b"X-A", b"two")), "X-A")
    assert str(caught.value) == "the X-A header was sent more than once with different values"


def test_latin1_values():
    """Header bytes are read as Latin-1, never failing to decode."""
    assert single_header(request((b"X-A", b"caf\xe9")), "X-A") == "café"


@pytest.mark.parametrize("value, token", [
    ("Bearer abc", "abc"), ("bearer abc", "abc"), ("BEARER  abc ", "abc"),
    ("Basic abc", None), ("Bearer", None), ("Bearer a b", None), ("abc", None), ("", None), (None, None),
])
def test_bearer_token(value, token):
    """Only C{Bearer <one token>} (scheme in any case) gives a token."""
    assert bearer_token(value) == token


def test_coder_token_extractor_tries_its_headers_in_order():
    """The first configured header with a value wins; the source is its lower-cased name."""
    extractor = CoderTokenExtractor(["X-First", "X-Second"])
    assert extractor.extract(request((b"X-Second", b"two"), (b"X-First", b"one"))) == Credential("one", "x-first")
    assert extractor.extract(request((b"X-Second", b"two"))) == Credential("two", "x-second")
    assert extractor.extract(request((b"X-First", b" "), (b"X-Second", b"two"))) == Credential("two", "x-second")
    assert extractor.extract(request((b"Authorization", b"Bearer t"))) is None


def test_coder_token_extractor_defaults_and_configuration():
    """By default the coder token is X-Coder-Token; configured, the names come from [auth]."""
    assert CoderTokenExtractor().extract(request((b"X-Coder-Token", b"t"))) == Credential("t", "x-coder-token")
    context = SimpleNamespace(config=SimpleNamespace(auth=SimpleNamespace(coder_token_headers=("X-Mine",))))
    configured = CoderTokenExtractor().configure(context)
    assert configured.headers == ("X-Mine",)
    assert configured.extract(request((b"X-Mine", b"t"))) == Credential("t", "x-mine")
    assert configured.extract(request((b"X-Coder-Token", b"t"))) is None
    assert CoderTokenExtractor.name == "coder-token"


def test_bearer_extractor():
    """The bearer extractor finds C{Authorization: Bearer} tokens only."""
    extractor = BearerExtractor()
    assert extractor.extract(request((b"Authorization", b"Bearer tok"))) == Credential("tok", "authorization")
    assert extractor.extract(request((b"Authorization", b"Basic dXNlcg=="))) is None
    assert extractor.extract(request()) is None
    assert extractor.name == "authorization-bearer"


def test_api_key_extractor():
    """The X-Api-Key extractor takes the whole (trimmed) value."""
    extractor = ApiKeyExtractor()
    assert extractor.extract(request((b"X-Api-Key", b" k e y "))) == Credential("k e y", "x-api-key")
    assert extractor.extract(request()) is None
    assert extractor.name == "x-api-key"


def test_provider_key_sources():
    """Tokens found in Authorization or X-Api-Key are in the provider's key headers; others are not."""
    assert PROVIDER_KEY_SOURCES == frozenset({"authorization", "x-api-key"})


class Fixed:
    def __init__(self, credential):
        self.credential = credential
        self.calls = 0

    def extract(self, request):
        self.calls += 1
        return self.credential


def test_chain_first_credential_wins_and_stops():
    """The chain returns the first credential with a token, and asks no further extractor."""
    first, second, third = Fixed(None), Fixed(Credential("t", "s")), Fixed(Credential("u", "v"))
    assert extract_credential([first, second, third], request()) == Credential("t", "s")
    assert (first.calls, second.calls, third.calls) == (1, 1, 0)


def test_chain_skips_empty_tokens():
    """A credential with an empty token (a plugin's mistake) does not count."""
    assert extract_credential([Fixed(Credential("", "s")), Fixed(Credential("u", "v"))], request()) == \
        Credential("u", "v")
    assert extract_credential([Fixed(Credential("", "s"))], request()) is None
    assert extract_credential([], request()) is None


def test_built_in_chain_order():
    """With the built-in chain, a coder token beats a bearer token, which beats an API key."""
    chain = [CoderTokenExtractor(), BearerExtractor(), ApiKeyExtractor()]
    everything = request((b"X-Api-Key", b"k"), (b"Authorization", b"Bearer b"), (b"X-Coder-Token", b"c"))
    assert extract_credential(chain, everything) == Credential("c", "x-coder-token")
    assert extract_credential(chain, request((b"X-Api-Key", b"k"), (b"Authorization", b"Bearer b"))) == \
        Credential("b", "authorization")
    assert extract_credential(chain, request((b"X-Api-Key", b"k"))) == Credential("k", "x-api-key")
