"""
treq forwards every upstream request, and adds nothing of its own: no
cookie an upstream set (it would travel to every other user), no redirect
followed, no Accept-Encoding.
"""

from tests import memory
from tests.memory import TOKEN

BEARER = {"Authorization": f"Bearer {TOKEN}"}
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def test_an_upstream_cookie_is_never_sent_back():
    """A Set-Cookie from the upstream reaches the client that got it, and never the next request upstream."""
    g = memory.gateway()

    def with_cookie(request):
        request.setHeader(b"set-cookie", b"__cf_bm=abc123; Path=/; Domain=upstream.test")
        request.setHeader(b"content-type", b"application/json")
        return b"{}"
    g.upstream.handler = with_cookie
    first = g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    assert first.headers["set-cookie"] == [b"__cf_bm=abc123; Path=/; Domain=upstream.test"]
    g.send("POST", "/openai/v1/chat/completions", CHAT, BEARER)
    assert [s.header("cookie") for s in g.upstream.seen] == [None, None]


def test_a_clients_own_cookie_is_forwarded_as_sent():
    """A cookie the client sends reaches the upstream unchanged (it is the client's)."""
    g = memory.gateway()
    g.send("GET", "/openai/v1/models", None, {**BEARER, "Cookie": "session=client-own"})
    assert g.upstream.seen[0].header("cookie") == b"session=client-own"


def test_redirects_are_relayed_not_followed():
    """An upstream 3xx reaches the client as it is; the bridge does not follow it."""
    g = memory.gateway()

    def redirect(request):
        request.setResponseCode(307)
        request.setHeader(b"location", b"http://elsewhere.test/v1/models")
        return b""
    g.upstream.handler = redirect
    answer = g.send("GET", "/openai/v1/models", None, BEARER)
    assert answer.status == 307 and answer.headers["location"] == [b"http://elsewhere.test/v1/models"]
    assert len(g.upstream.seen) == 1


def test_accept_encoding_is_the_clients_only():
    """Intercepted routes send no Accept-Encoding upstream; a passthrough sends exactly the client's."""
    g = memory.gateway()
    g.send("POST", "/openai/v1/chat/completions", CHAT, {**BEARER, "Accept-Encoding": "gzip, br"})
    g.send("GET", "/openai/v1/models", None, {**BEARER, "Accept-Encoding": "gzip, br"})
    g.send("GET", "/openai/v1/models", None, BEARER)
    assert [s.header("accept-encoding") for s in g.upstream.seen] == [None, b"gzip, br", None]


def test_a_url_the_client_would_not_send_as_given_is_refused():
    """Below treq, a URL the HTTP client would cut (a fragment) or rewrite (an empty parameter) is refused
    with 400 and never sent: what is forwarded is exactly what the pipeline checked."""
    from twisted.web.http_headers import Headers

    from bridgeproxy.errors import BadRequest
    from bridgeproxy.proxy.upstream import Upstream
    g = memory.gateway()
    upstream = Upstream(g.upstream_agent, g.clock)
    for url in (b"http://upstream.test/v1/files/#/content", b"http://upstream.test/v1/models/..;"):
        failures = []
        upstream.request(b"GET", url, Headers(), None).addErrback(failures.append)
        assert failures and failures[0].check(BadRequest)
        assert failures[0].value.message == "Refused path: it would not reach the provider as it was checked."
    assert g.upstream.seen == []
    answers = []
    upstream.request(b"GET", b"http://upstream.test/v1/models", Headers(), None).addCallback(answers.append)
    g.pump()
    assert answers[0].code == 200 and g.upstream.seen[0].uri == b"/v1/models"


def test_the_path_rules_refuse_what_a_client_would_rewrite():
    """The path rules themselves refuse fragments, parameters, bad escapes and bytes outside a path."""
    from bridgeproxy.proxy.routing import unsafe_path
    for path in (b"/v1/files/#/content", b"/v1/models/..;", b"/v1/models;x", b"/v1/%zz", b"/v1/a b", b'/v1/"x"'):
        assert unsafe_path(path) is not None, path
    for path in (b"/v1/models/gpt-4o", b"/v1/models/ft:gpt-4o:acme:x@y", b"/v1/a%20b", b"/v1/r_1~(x)!*'$&+,="):
        assert unsafe_path(path) is None, path


def test_every_accept_encoding_the_client_sent_reaches_a_passthrough():
    """A client's several Accept-Encoding headers all reach a passthrough upstream, and nothing is added."""
    g = memory.gateway()
    g.send("GET", "/openai/v1/models", None, {**BEARER, "Accept-Encoding": ["br", "deflate"]})
    g.send("GET", "/openai/v1/models", None, {**BEARER, "Accept-Encoding": "identity"})
    assert [s.headers.get(b"accept-encoding") for s in g.upstream.seen] == [[b"br", b"deflate"], [b"identity"]]


def test_a_url_in_the_query_string_is_sent_as_it_is():
    """A query parameter that is itself a URL (its own `://`) does not confuse the check of what is sent."""
    g = memory.gateway()
    answer = g.send("GET", "/openai/v1/models?after=https://x.example/y&limit=2", None, BEARER)
    assert answer.status == 200
    assert g.upstream.seen[0].uri == b"/v1/models?after=https://x.example/y&limit=2"


def test_a_url_without_a_path_is_sent_for_the_root():
    """An upstream URL with no path at all (a bare host) is sent as `/`, not refused."""
    from twisted.web.http_headers import Headers

    from bridgeproxy.proxy.upstream import Upstream
    g = memory.gateway()
    answers = []
    Upstream(g.upstream_agent, g.clock).request(b"GET", b"http://upstream.test", Headers(), None).addBoth(
        answers.append)
    g.pump()
    assert answers[0].code == 200 and g.upstream.seen[0].uri == b"/"
