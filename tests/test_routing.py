"""
Path safety and the passthrough allow-list (L{bridgeproxy.proxy.routing}):
which paths are refused before routing and with what reason, which rules
parse, and which method/path pairs a rule lets through.
"""

from __future__ import annotations

import pytest

from bridgeproxy.errors import ConfigError
from bridgeproxy.proxy.routing import Passthrough, PassthroughRule, unsafe_path


@pytest.mark.parametrize("path, reason", [
    (b"v1/models", "the path must start with '/'"),
    (b"", "the path must start with '/'"),
    (b"/v1/a\x00b", "the path contains a NUL byte"),
    (b"/v1/a%00b", "the path contains a NUL byte"),
    (b"/v1/a\\b", "the path contains a backslash"),
    (b"/v1/a%5cb", "the path contains a backslash"),
    (b"/v1/a%5Cb", "the path contains a backslash"),
    (b"/v1/a%2fb", "the path contains an encoded slash"),
    (b"/v1/a%2Fb", "the path contains an encoded slash"),
    (b"//v1/models", "the path contains an empty segment ('//')"),
    (b"/v1//models", "the path contains an empty segment ('//')"),
    (b"/v1/./models", "the path contains a '.' or '..' segment"),
    (b"/v1/../admin", "the path contains a '.' or '..' segment"),
    (b"/v1/%2e%2e/admin", "the path contains a '.' or '..' segment"),
    (b"/v1/%2E./admin", "the path contains a '.' or '..' segment"),
    (b"/v1/models/..", "the path contains a '.' or '..' segment"),
    (b"/v1/a\x1fb", "the path contains a control character"),
    (b"/v1/a\x7fb", "the path contains a control character"),
    (b"/v1/a\tb", "the path contains a control character"),
    (b"/v1/a b", "the path contains a character that is not allowed in a path"),
    (b"/v1/files/#/content", "the path contains a character that is not allowed in a path"),
    (b"/v1/files;x=1", "the path contains a character that is not allowed in a path"),
    (b"/v1/a?b", "the path contains a character that is not allowed in a path"),
    (b"/v1/caf\xc3\xa9", "the path contains a character that is not allowed in a path"),
    (b"/v1/a%2", "the path contains a malformed percent-escape"),
    (b"/v1/a%zz", "the path contains a malformed percent-escape"),
    (b"/v1/a%", "the path contains a malformed percent-escape"),
])
def test_unsafe_paths_are_refused_with_the_rule_they_break(path, reason):
    """Each kind of dangerous path is refused, naming the rule (never echoing the path)."""
    assert unsafe_path(path) == reason


@pytest.mark.parametrize("path", [
    b"/", b"/v1/models", b"/v1/models/", b"/v1/models/gpt-4o", b"/v1/a.b", b"/v1/...", b"/v1/..a",
    b"/v1/%2e%2e%2e", b"/v1/a%20b", b"/v1/a%Fb", b"/v1/~x", b"/v1/AZaz09-._~!$&'()*+,=:@",
])
def test_ordinary_paths_are_safe(path):
    """Ordinary paths, a trailing slash, dots inside names, escapes and RFC 3986 path characters are allowed."""
    assert unsafe_path(path) is None


def test_a_nul_is_reported_before_other_problems():
    """With several problems the first rule that applies is named (NUL before backslash)."""
    assert unsafe_path(b"/a\\b\x00") == "the path contains a NUL byte"
    assert unsafe_path(b"/a\\b%2f") == "the path contains a backslash"
    assert unsafe_path(b"/a%2fb//c") == "the path contains an encoded slash"
    assert unsafe_path(b"//..") == "the path contains an empty segment ('//')"


def rule(text: str) -> PassthroughRule:
    return PassthroughRule.parse(text)


def test_rule_parsing():
    """A rule is METHODS and a pattern; methods are upper-cased, '*' is any method; the text is kept."""
    r = rule("get,Delete /v1/responses/*")
    assert r.methods == frozenset({b"GET", b"DELETE"})
    assert r.pattern == (b"v1", b"responses", b"*")
    assert r.text == "get,Delete /v1/responses/*"
    assert rule("* /v1/x/").methods is None
    assert rule("* /v1/x/").pattern == (b"v1", b"x")
    assert rule("GET , POST /v1/x".replace(" , ", ",")).methods == frozenset({b"GET", b"POST"})


@pytest.mark.parametrize("text, message", [
    ("/v1/models", "must be 'METHODS /path/pattern'"),
    ("GET v1/models", "must be 'METHODS /path/pattern'"),
    ("GET /v1 /x", "must be 'METHODS /path/pattern'"),
    ("", "must be 'METHODS /path/pattern'"),
    ("GET,PO5T /v1/x", "methods must be '*' or names like GET,POST"),
    ("GET, /v1/x", "methods must be '*' or names like GET,POST"),
    ("GET /v1/modèles", "the path must be ASCII"),
    ("GET /v1/../x", "the path contains a '.' or '..' segment"),
    ("GET /v1//x", "the path contains an empty segment"),
    ("GET /v1/**/x", "'**' may only end a pattern"),
])
def test_bad_rules_are_configuration_errors_that_quote_the_rule(text, message):
    """A malformed rule is a configuration error that quotes the rule and says what is wrong."""
    with pytest.raises(ConfigError) as caught:
        rule(text)
    assert message in str(caught.value)
    assert repr(text) in str(caught.value)


def test_method_filter():
    """A rule with methods allows only those; '*' allows any."""
    r = rule("GET,DELETE /v1/responses/*")
    assert r.allows(b"GET", b"/v1/responses/r1")
    assert r.allows(b"DELETE", b"/v1/responses/r1")
    assert not r.allows(b"POST", b"/v1/responses/r1")
    assert rule("* /v1/x").allows(b"PATCH", b"/v1/x")


def test_single_star_is_exactly_one_non_empty_segment():
    """'*' matches one segment: not none, not two, not an empty one."""
    r = rule("GET /v1/models/*")
    assert r.allows(b"GET", b"/v1/models/gpt-4o")
    assert r.allows(b"GET", b"/v1/models/gpt-4o/")
    assert not r.allows(b"GET", b"/v1/models")
    assert not r.allows(b"GET", b"/v1/models/")
    assert not r.allows(b"GET", b"/v1/models/a/b")
    assert not r.allows(b"GET", b"/v1/other/gpt-4o")


def test_literal_patterns_match_exactly():
    """A literal pattern matches its own path (trailing slash ignored), not a longer or shorter one."""
    r = rule("GET /v1/models")
    assert r.allows(b"GET", b"/v1/models")
    assert r.allows(b"GET", b"/v1/models/")
    assert not r.allows(b"GET", b"/v1/models/x")
    assert not r.allows(b"GET", b"/v1")
    assert not r.allows(b"GET", b"/v1/modelsx")


def test_final_double_star_is_any_number_of_segments():
    """A final '**' matches zero or more segments below its head, not a sibling or a parent."""
    r = rule("* /v1/conversations/**")
    assert r.allows(b"GET", b"/v1/conversations")
    assert r.allows(b"GET", b"/v1/conversations/")
    assert r.allows(b"POST", b"/v1/conversations/c1")
    assert r.allows(b"DELETE", b"/v1/conversations/c1/items/i2")
    assert not r.allows(b"GET", b"/v1")
    assert not r.allows(b"GET", b"/v1/conversationsX/c1")
    assert not r.allows(b"GET", b"/v2/conversations/c1")


def test_star_and_double_star_together():
    """'*' inside a '**' pattern still stands for one non-empty segment."""
    r = rule("GET /v1/*/items/**")
    assert r.allows(b"GET", b"/v1/c1/items")
    assert r.allows(b"GET", b"/v1/c1/items/a/b")
    assert not r.allows(b"GET", b"/v1/c1/other/a")
    assert not r.allows(b"GET", b"/v1/c1")


def test_root_double_star_allows_everything():
    """'/**' allows every path."""
    r = rule("GET /**")
    assert r.allows(b"GET", b"/")
    assert r.allows(b"GET", b"/anything/at/all")


def test_allow_list_is_any_rule():
    """A path passes the allow-list when any rule allows it; an empty list allows nothing."""
    allow = Passthrough.parse(["GET /v1/models", "POST /v1/messages/count_tokens"])
    assert len(allow.rules) == 2
    assert allow.allows(b"GET", b"/v1/models")
    assert allow.allows(b"POST", b"/v1/messages/count_tokens")
    assert not allow.allows(b"POST", b"/v1/models")
    assert not allow.allows(b"GET", b"/v1/messages/count_tokens")
    assert not Passthrough([]).allows(b"GET", b"/v1/models")


def test_the_providers_default_allow_lists_parse():
    """Both built-in providers' allow-lists are valid rules that allow what they document."""
    from bridgeproxy.providers.anthropic import AnthropicProvider
    from bridgeproxy.providers.openai import OpenAIProvider
    openai = Passthrough.parse(OpenAIProvider.passthrough)
    assert openai.allows(b"GET", b"/v1/models/gpt-4o")
    assert openai.allows(b"POST", b"/v1/responses/r1/cancel")
    assert openai.allows(b"GET", b"/v1/responses/r1/input_items")
    assert not openai.allows(b"POST", b"/v1/responses/r1")
    assert not openai.allows(b"POST", b"/v1/files")
    anthropic = Passthrough.parse(AnthropicProvider.passthrough)
    assert anthropic.allows(b"POST", b"/api/event_logging/batch")
    assert not anthropic.allows(b"GET", b"/v1/messages/count_tokens")


def test_trailing_slash_after_one_segment():
    """A single segment with a trailing slash matches the rule for that segment."""
    assert rule("GET /v1").allows(b"GET", b"/v1/")
    assert rule("GET /v1").pattern == rule("GET /v1/").pattern == (b"v1",)


def test_star_never_matches_the_root():
    """'/*' does not allow '/' (there is no segment there)."""
    assert not rule("GET /*").allows(b"GET", b"/")
    assert rule("GET /*").allows(b"GET", b"/x")
