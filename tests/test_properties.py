"""
Generated hostile input (hypothesis) thrown at the whole pipeline in memory:
paths, methods, header values and bodies.  Whatever comes in, the gateway
never answers 500 or a traceback, never lets the bridge token reach the
upstream or a log line, never lets its provider keys reach a log line or a
client, and never forwards a path outside the intercepted routes and the
allow-list.
"""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import formatEvent, globalLogPublisher

from bridgeproxy.providers.anthropic import AnthropicProvider
from bridgeproxy.providers.openai import OpenAIProvider
from bridgeproxy.proxy.routing import Passthrough, unsafe_path
from tests import memory
from tests.memory import ANTHROPIC_KEY, OPENAI_KEY, TOKEN

SECRETS = (TOKEN, OPENAI_KEY, ANTHROPIC_KEY)
ALLOWED = Passthrough.parse(OpenAIProvider.passthrough + AnthropicProvider.passthrough)
INTERCEPTED = {b"/v1/chat/completions", b"/v1/responses", b"/v1/messages"}

SEGMENTS = st.sampled_from([
    ".", "..", "%2e", "%2E%2e", "%2e.", "%2f", "%2F", "%5c", "\\", "", "%00", "%20", "~", "#", "..;", ";x", "%zz",
    "v1", "v2", "models", "chat", "completions", "responses", "messages", "count_tokens", "files",
    "fine_tuning", "jobs", "organization", "admin_api_keys", "conversations", "items", "api",
    "event_logging", "batch", "resp_1", "cancel", "input_items", "healthz", "metrics", "aibridge",
]) | st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12)
PREFIXES = st.sampled_from(["/openai", "/anthropic", "/api/v2/aibridge/openai", "/api/v2/aibridge/anthropic",
                            "/api/v1", "/api/v2/aibridge", "", "/x"])
PATHS = st.builds(lambda prefix, segments, query: prefix + "/" + "/".join(segments) + query,
                  PREFIXES, st.lists(SEGMENTS, max_size=6),
                  st.sampled_from(["", "?limit=2", f"?key={TOKEN}", "?a=%2e%2e"]))
METHODS = st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"])
#: Requests a real client sends, so that about half of the examples reach the upstream.
KNOWN = st.sampled_from([
    ("POST", "/openai/v1/chat/completions"), ("POST", "/openai/v1/responses"), ("POST", "/anthropic/v1/messages"),
    ("GET", "/openai/v1/models"), ("GET", "/anthropic/v1/models/claude-x"), ("GET", "/openai/v1/responses/r1"),
    ("POST", "/anthropic/v1/messages/count_tokens"), ("POST", "/api/v2/aibridge/openai/v1/chat/completions"),
    ("DELETE", "/openai/v1/conversations/c1/items/i1"), ("POST", "/anthropic/api/event_logging/batch"),
])
TAILS = st.sampled_from([""] * 8 + ["/", "?limit=2", "/x", "/..", "/%2e%2e", "%2fx", "//x", "\\x", "/#/x", "/..;",
                                   ";p"])
PLAUSIBLE = st.builds(lambda known, tail: (known[0], known[1] + tail), KNOWN, TAILS)
REQUEST_LINES = st.one_of(PLAUSIBLE, PLAUSIBLE, st.tuples(METHODS, PATHS))
HOSTILE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                         blacklist_characters="\r\n"), max_size=40)
CREDENTIALS = st.sampled_from([f"Bearer {TOKEN}", TOKEN, f"  {TOKEN}  ", f"bearer {TOKEN} x",
                               f"Basic {TOKEN}", "Bearer sk-client-own-key-0123456789"])
HEADER_NAMES = st.sampled_from([
    "Authorization", "X-Api-Key", "X-Coder-Token", "User-Agent", "X-Coder-Owner-Id", "Upgrade",
    "Connection", "Content-Type", "Anthropic-Beta", "X-Forwarded-For", "Accept-Encoding", "Originator",
    "X-Cursor-Client-Version", "Keep-Alive", "TE", "Expect", "Cookie",
])
HEADERS = st.builds(
    lambda credential, others: {**others, **credential},
    st.one_of(st.dictionaries(st.sampled_from(["Authorization", "X-Api-Key", "X-Coder-Token"]),
                                           st.lists(CREDENTIALS, min_size=1, max_size=1), min_size=1, max_size=2), st.just({})),
    st.dictionaries(HEADER_NAMES, st.lists(CREDENTIALS | HOSTILE, min_size=1, max_size=2), max_size=4))
JSON_BODIES = st.fixed_dictionaries({"model": st.sampled_from(["gpt-4o", "claude-x", "", 3]),
                           "stream": st.sampled_from([True, False, "yes", None]),
                           "messages": st.sampled_from([[], [{"role": "user", "content": "hi"}], "x", None])})
BODIES = st.one_of(st.none(), st.binary(max_size=64), JSON_BODIES, JSON_BODIES)
UPSTREAM_STATUS = st.sampled_from([200, 400, 401, 429, 503])


def echo_keys(status):
    """An upstream that repeats the credentials it was sent in its answer (some providers do, in errors)."""
    def handler(request):
        sent = [v.decode("latin-1") for name in (b"authorization", b"x-api-key")
                for v in request.requestHeaders.getRawHeaders(name, [])]
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        if status == 200:
            return b'{"ok": true}'
        return json.dumps({"error": {"message": f"Incorrect API key provided: {sent}", "type": "x"}}).encode()
    return handler


def raw_request(method, path, headers, body):
    data = b""
    if body is not None:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
    lines = [f"{method} {path} HTTP/1.1".encode("latin-1"), b"Host: bridge.test", b"Connection: close",
             b"Content-Length: %d" % len(data)]
    for name, values in headers.items():
        for value in values:
            lines.append(name.encode() + b": " + value.encode("latin-1"))
    return b"\r\n".join(lines) + b"\r\n\r\n" + data


def check(method, path, headers, body, status):
    """Serve one generated request; assert every property; return the gateway."""
    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        g = memory.gateway()
        g.upstream.handler = echo_keys(status)
        answer = g.send_raw(raw_request(method, path, headers, body))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert answer is not None
    assert answer.status != 500, answer.raw
    assert b"Traceback" not in answer.raw
    assert OPENAI_KEY.encode() not in answer.raw and ANTHROPIC_KEY.encode() not in answer.raw
    for seen in g.upstream.seen:
        upstream_path = seen.uri.split(b"?")[0]
        assert unsafe_path(upstream_path) is None
        assert (seen.method == b"POST" and upstream_path.rstrip(b"/") in INTERCEPTED) or \
            ALLOWED.allows(seen.method, upstream_path), seen.uri
        assert TOKEN.encode() not in seen.uri
        assert TOKEN.encode() not in b"".join(v for values in seen.headers.values() for v in values)
    text = "\n".join(formatEvent(e) + json.dumps({k: str(v) for k, v in e.items() if not k.startswith("log_")})
                     for e in events)
    for secret in SECRETS:
        assert secret not in text
    return g


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(line=REQUEST_LINES, headers=HEADERS, body=BODIES, status=UPSTREAM_STATUS)
def test_hostile_requests(line, headers, body, status):
    """Any path, method, headers and body: no 500, no traceback, no bridge token upstream, no secret in a
    log or (the gateway's keys) an answer, no forwarded path outside the intercepted routes and the allow-list."""
    check(line[0], line[1], headers, body, status)


SAFE_TAILS = st.sampled_from(["", "/", "?limit=2", f"?key={TOKEN}&limit=2", "/x", "/x/y"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(known=KNOWN, tail=SAFE_TAILS, credential=st.sampled_from(["Authorization", "X-Api-Key", "X-Coder-Token"]),
       others=st.dictionaries(HEADER_NAMES, st.lists(CREDENTIALS | HOSTILE, min_size=1, max_size=1), max_size=4),
       body=JSON_BODIES, status=UPSTREAM_STATUS)
def test_plausible_requests_with_hostile_headers(known, tail, credential, others, body, status):
    """Requests shaped like a client's, with hostile header values (the bridge token repeated anywhere):
    the same properties, over requests that mostly reach the upstream."""
    value = f"Bearer {TOKEN}" if credential == "Authorization" else TOKEN
    headers = {**{k: v for k, v in others.items() if k != "Upgrade"}, credential: [value]}
    check(known[0], known[1] + tail, headers, body, status)
