"""
The C{coder} identity backend (L{bridgeproxy.coder}) in memory: a fake Coder
deployment reached through L{treq.testing.RequestTraversalAgent}, time on a
L{Clock}.  What a token resolves to and what the client then gets, how long
answers are cached, how concurrent checks share one call, what happens while
the deployment is down, that no token reaches a log line, its settings, and
what the C{bridgeproxy keys} command says in this mode.
"""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from pathlib import Path

import pytest
from treq.testing import RequestTraversalAgent
from twisted.internet import ssl
from twisted.internet.defer import fail, succeed
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols import tls
from twisted.test import iosim
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseFailed, ResponseNeverReceived
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface.verify import verifyObject

from bridgeproxy import chain, cli, coder
from bridgeproxy.coder import Caches, CoderBackend, CoderPlugin, CoderSettings
from bridgeproxy.config import parse
from bridgeproxy.errors import ConfigError, IdentityUnavailable, PermissionDenied
from bridgeproxy.interfaces import IIdentityBackend
from bridgeproxy.metrics import Metrics
from bridgeproxy.types import Identity
from tests import memory
from tests.certs import make_ca
from tests.coderfake import FakeCoder, coder_token

URL = "https://coder.test"
NOW = 1_750_000_000.0
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


class Deployment:
    """A fake deployment, the agent reaching it, a clock and a backend over them."""

    def __init__(self, caches: Caches | None = None, **settings):
        self.fake = FakeCoder()
        self.agent = RequestTraversalAgent(self.fake)
        self.clock = Clock()
        self.clock.advance(NOW)  # the epoch's seconds, as a reactor's clock reads
        self.metrics = Metrics()
        self.settings = CoderSettings(url=URL, **settings)
        self.backend = CoderBackend(self.settings, self.agent, self.clock, self.metrics, caches)

    def user(self, username="alice", **kw) -> tuple[dict, str]:
        user = self.fake.add_user(username, **kw)
        return user, self.fake.add_token(user["id"])

    def identify(self, token):
        """The backend's answer for C{token}, once the deployment answered: a value or a Failure."""
        out = []
        self.backend.identify(token).addBoth(out.append)
        self.agent.flush()
        assert out, "no answer"
        return out[0]

    def lookup(self, user_id):
        out = []
        self.backend.lookup_user(user_id).addBoth(out.append)
        self.agent.flush()
        assert out, "no answer"
        return out[0]


class RefusingAgent:
    """An agent whose every connection is refused (a deployment that is down)."""

    def __init__(self):
        self.requests = 0

    def request(self, method, uri, headers=None, bodyProducer=None):
        self.requests += 1
        return fail(ConnectionRefusedError("Connection was refused by other side: 111"))


class RaisingAgent:
    """An agent that raises instead of answering (a bug below us)."""

    def __init__(self):
        self.requests = 0

    def request(self, method, uri, headers=None, bodyProducer=None):
        self.requests += 1
        raise RuntimeError("boom")


def refused(answer, error_type):
    assert not isinstance(answer, (Identity, type(None))), f"expected a refusal, got {answer!r}"
    assert answer.check(error_type), answer
    return answer.value


# -- what a token resolves to -------------------------------------------------------------------


def test_active_user_is_identified_by_the_token_header():
    """The deployment is asked GET /api/v2/users/me with Coder-Session-Token; its user object becomes the Identity."""
    d = Deployment()
    user, token = d.user("alice")
    identity = d.identify(token)
    assert identity == Identity(user_id=user["id"], username="alice", disabled=False, admin=False)
    [call] = d.fake.calls
    assert (call.method, call.path, call.token) == (b"GET", b"/api/v2/users/me", token)
    assert call.headers["accept"] == ["application/json"]
    assert "authorization" not in call.headers and "cookie" not in call.headers


def test_admin_roles_make_an_admin():
    """A user holding one of admin_roles (default: owner) is an admin for the bridge's API; others are not."""
    d = Deployment(admin_roles=frozenset({"owner", "auditor"}))
    _, owner = d.user("root", roles=("owner", "member"))
    _, auditor = d.user("audrey", roles=("auditor",))
    _, member = d.user("bob", roles=("member",))
    assert [d.identify(t).admin for t in (owner, auditor, member)] == [True, True, False]


@pytest.mark.parametrize("status", ["suspended", "dormant", "some-future-status"])
def test_user_not_active_gets_403_in_the_providers_shape(status):
    """A token whose user is not active is refused with 403 (OpenAI's and Anthropic's shapes); nothing goes upstream."""
    d = Deployment()
    _, token = d.user("carol", status=status)
    assert d.identify(token).disabled is True
    gw = memory.gateway(identities=d.backend)
    answer = gw.send("POST", "/openai/v1/chat/completions", CHAT, {"Authorization": f"Bearer {token}"})
    assert answer.status == 403
    assert answer.json()["error"]["type"] == "permission_error"
    answer = gw.send("POST", "/anthropic/v1/messages", {"model": "claude", "max_tokens": 5, "messages": []},
                     {"X-Api-Key": token})
    assert answer.status == 403
    assert answer.json()["error"]["type"] == "permission_error"
    assert gw.upstream.seen == []


def test_deployment_saying_user_not_active_is_403():
    """A 401 saying "User is not active" (how coderd answers a suspended user's token) is 403, not 401, and is cached."""
    d = Deployment()
    _, token = d.user("dave", status="suspended")
    d.fake.suspended_as_401 = True
    error = refused(d.identify(token), PermissionDenied)
    assert error.status == 403 and "not active" in error.message
    refused(d.identify(token), PermissionDenied)
    assert d.fake.checks() == 1
    gw = memory.gateway(identities=d.backend)
    answer = gw.send("POST", "/openai/v1/chat/completions", CHAT, {"Authorization": f"Bearer {token}"})
    assert (answer.status, answer.json()["error"]["type"]) == (403, "permission_error")


def test_unknown_token_is_401():
    """A token the deployment answers 401 for is unknown: the client gets 401 in the provider's shape."""
    d = Deployment()
    d.user("alice")
    unknown = coder_token()
    assert d.identify(unknown) is None
    gw = memory.gateway(identities=d.backend)
    answer = gw.send("POST", "/openai/v1/chat/completions", CHAT, {"Authorization": f"Bearer {unknown}"})
    assert answer.status == 401
    assert answer.json()["error"]["code"] == "invalid_api_key"
    assert unknown not in answer.body.decode()


@pytest.mark.parametrize("token", ["two words", "caf\u00e9-token", "", "x" * 1025, "line\r\nX-Evil: 1"])
def test_tokens_no_coder_token_looks_like_are_unknown_without_asking(token):
    """A value that cannot be a Coder token (not visible ASCII, empty, huge) is unknown; the deployment is not asked."""
    d = Deployment()
    assert d.identify(token) is None
    assert d.fake.calls == []


def test_identified_request_goes_upstream_with_the_provider_key_and_is_recorded_for_the_user():
    """Through the pipeline: the upstream sees the provider key, never the Coder token; the record names the user."""
    d = Deployment()
    user, token = d.user("alice")
    gw = memory.gateway(identities=d.backend)
    answer = gw.send("POST", "/openai/v1/chat/completions", CHAT, {"Authorization": f"Bearer {token}"})
    assert answer.status == 200
    [seen] = gw.upstream.seen
    assert seen.header("authorization") == f"Bearer {memory.OPENAI_KEY}".encode()
    assert token.encode() not in b"".join(v for vs in seen.headers.values() for v in vs)
    [record] = gw.records
    assert (record.initiator_id, record.initiator_username, record.credential_user_id) == (
        user["id"], "alice", user["id"])


# -- caching ------------------------------------------------------------------------------------


def test_positive_answers_are_cached_for_cache_seconds():
    """A known token is asked about once per cache_seconds, on the injected clock."""
    d = Deployment(cache_seconds=30)
    _, token = d.user()
    d.identify(token)
    d.clock.advance(29.9)
    d.identify(token)
    assert d.fake.checks() == 1
    d.clock.advance(0.1)
    d.identify(token)
    assert d.fake.checks() == 2


def test_negative_answers_have_their_own_time():
    """Unknown tokens are asked about again after negative_cache_seconds; known ones keep cache_seconds."""
    d = Deployment(cache_seconds=60, negative_cache_seconds=2)
    _, token = d.user()
    unknown = coder_token()
    d.identify(token)
    d.identify(unknown)
    d.clock.advance(1)
    d.identify(unknown)
    assert d.fake.checks() == 2
    d.clock.advance(1)
    d.identify(unknown)
    d.identify(token)
    assert d.fake.checks() == 3


def test_a_token_that_became_unknown_is_refused_after_the_cache_time():
    """A token revoked in Coder works until its cached answer expires, then gets 401."""
    d = Deployment(cache_seconds=5)
    _, token = d.user()
    assert d.identify(token) is not None
    del d.fake.tokens[token]
    assert d.identify(token) is not None
    d.clock.advance(5)
    assert d.identify(token) is None


def test_a_flood_of_unknown_tokens_does_not_push_known_ones_out():
    """Unknown tokens fill their own cache: a known token stays cached however many bad ones arrive."""
    d = Deployment(caches=Caches(size=3))
    _, token = d.user()
    d.identify(token)
    for _ in range(10):
        d.identify(coder_token())
    d.identify(token)
    assert d.fake.checks() == 11


def test_a_token_is_one_cache_entry_by_its_exact_value():
    """Tokens that differ only in case are different tokens: each is asked about."""
    d = Deployment()
    _, token = d.user()
    assert d.identify(token) is not None
    assert d.identify(token.swapcase()) is None
    assert d.fake.checks() == 2


# -- one call per token at a time ---------------------------------------------------------------


def test_concurrent_checks_of_one_token_make_one_call():
    """Requests carrying one token while it is being checked share the one call and its answer."""
    d = Deployment()
    user, token = d.user()
    _, other = d.user("bob")
    d.fake.hold = True
    answers = []
    for _ in range(5):
        d.backend.identify(token).addBoth(answers.append)
    d.backend.identify(other).addBoth(answers.append)
    d.agent.flush()
    assert answers == []
    assert d.fake.checks() == 2
    d.fake.release()
    d.agent.flush()
    assert [a.user_id for a in answers].count(user["id"]) == 5 and len(answers) == 6


def test_concurrent_checks_share_an_outage_too():
    """Requests waiting on one check all get 503 when the deployment fails it."""
    d = Deployment()
    _, token = d.user()
    d.fake.hold = True
    answers = []
    for _ in range(3):
        d.backend.identify(token).addBoth(answers.append)
    d.agent.flush()
    d.fake.fail_with = 502
    d.fake.release()
    d.agent.flush()
    assert len(answers) == 3 and all(a.check(IdentityUnavailable) for a in answers)
    assert d.fake.checks() == 1


def test_a_caller_that_gives_up_does_not_disturb_the_others():
    """One waiter cancelled (its client left): the call goes on and the others get the answer."""
    d = Deployment()
    user, token = d.user()
    d.fake.hold = True
    first, second = d.backend.identify(token), d.backend.identify(token)
    answers: list = []
    first.addErrback(lambda f: None)
    first.cancel()
    second.addBoth(answers.append)
    d.agent.flush()
    d.fake.release()
    d.agent.flush()
    assert answers[0].user_id == user["id"]


# -- a deployment that is down ------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 429, 404])
def test_known_token_keeps_working_from_the_cache_within_the_stale_window(status):
    """While the deployment fails (5xx and other nonsense), a known token works for stale_seconds past its cache time."""
    d = Deployment(cache_seconds=10, stale_seconds=100, retry_seconds=0)
    user, token = d.user()
    d.identify(token)
    d.fake.fail_with = status
    d.clock.advance(109)
    assert d.identify(token).user_id == user["id"]
    assert d.metrics.get("coder_stale_answer") == 1
    d.clock.advance(1)
    error = refused(d.identify(token), IdentityUnavailable)
    assert error.status == 503


def test_unknown_token_while_the_deployment_is_down_is_503_in_the_providers_shape():
    """A token never answered for gets 503 with Retry-After, in the provider's shape; nothing goes upstream."""
    d = Deployment(retry_seconds=5)
    d.fake.fail_with = 503
    token = coder_token()
    gw = memory.gateway(identities=d.backend)
    answer = gw.send("POST", "/anthropic/v1/messages", {"model": "claude", "max_tokens": 5, "messages": []},
                     {"X-Api-Key": token})
    assert answer.status == 503
    assert answer.headers["retry-after"] == [b"5"]
    body = answer.json()
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert "Coder deployment" in body["error"]["message"] and token not in answer.body.decode()
    answer = gw.send("POST", "/openai/v1/chat/completions", CHAT, {"Authorization": f"Bearer {token}"})
    assert (answer.status, answer.json()["error"]["type"]) == (503, "server_error")
    assert gw.upstream.seen == []
    assert gw.bridge.metrics.get("refused:503:identity_unavailable") == 2


def test_refused_connections_fall_back_like_errors():
    """A deployment refusing connections: known tokens from the cache, unknown ones 503."""
    d = Deployment(cache_seconds=1, retry_seconds=0)
    user, token = d.user()
    d.identify(token)
    agent = RefusingAgent()
    down = CoderBackend(d.settings, agent, d.clock, caches=d.backend.caches)
    d.clock.advance(2)
    out: list = []
    down.identify(token).addBoth(out.append)
    down.identify(coder_token()).addBoth(out.append)
    assert out[0].user_id == user["id"]
    assert out[1].check(IdentityUnavailable)
    assert agent.requests == 2


def test_an_agent_that_raises_is_an_unreachable_deployment():
    """An agent raising at once is a failed check (503), not a crash, and does not wedge later checks of the token."""
    agent = RaisingAgent()
    backend = CoderBackend(CoderSettings(url=URL, retry_seconds=0), agent, Clock())
    token = coder_token()
    for _ in range(2):
        out: list = []
        backend.identify(token).addBoth(out.append)
        refused(out[0], IdentityUnavailable)
    assert agent.requests == 2


def test_after_a_failure_the_deployment_is_left_alone_for_retry_seconds():
    """During an outage requests do not each wait on the deployment: it is asked again only after retry_seconds."""
    d = Deployment(cache_seconds=0, retry_seconds=5)
    _, token = d.user()
    d.identify(token)
    d.fake.fail_with = 500
    d.identify(token)
    assert d.fake.checks() == 2
    d.clock.advance(4.9)
    assert d.identify(token).username == "alice"  # the last answer stands in, unasked
    refused(d.identify(coder_token()), IdentityUnavailable)
    assert d.fake.checks() == 2
    d.fake.fail_with = None
    d.clock.advance(0.1)
    d.identify(token)
    assert d.fake.checks() == 3


def test_outage_and_recovery_are_logged_once_each(captured_log):
    """An operator sees when the deployment stopped answering (and why) and when it answers again."""
    d = Deployment(retry_seconds=5)
    _, token = d.user()
    d.fake.fail_with = 503
    d.identify(token)
    d.identify(coder_token())
    d.fake.fail_with = None
    d.clock.advance(5)
    d.identify(token)
    d.identify(coder_token())
    lines = [line for line in captured_log.text().splitlines() if line.startswith("Coder deployment")]
    assert lines == [
        f"Coder deployment {URL} could not check a token: it sent status 503; cached answers stand in, "
        "and it is asked again after 5 s",
        f"Coder deployment {URL} answers again",
    ]
    assert d.metrics.get("coder_unreachable") == 1 and d.metrics.get("coder_unavailable") == 2


def test_a_deployment_that_does_not_answer_times_out(captured_log):
    """No answer within timeout: the check is cancelled and the answer is 503 (nothing cached); no timer is left."""
    d = Deployment(timeout=3)
    _, token = d.user()
    d.fake.hold = True
    out: list = []
    d.backend.identify(token).addBoth(out.append)
    d.agent.flush()
    d.clock.advance(2.9)
    assert out == []
    d.clock.advance(0.1)
    d.agent.flush()
    refused(out[0], IdentityUnavailable)
    assert d.clock.getDelayedCalls() == []
    assert "no answer within 3 s" in captured_log.text()


def test_a_body_that_never_ends_times_out_too():
    """Headers came but the body stalls: the timeout still applies."""
    d = Deployment(timeout=3)
    _, token = d.user()
    d.fake.stall_body = True
    out: list = []
    d.backend.identify(token).addBoth(out.append)
    d.agent.flush()
    assert out == []
    d.clock.advance(3)
    d.agent.flush()
    refused(out[0], IdentityUnavailable)


@pytest.mark.parametrize("status,body", [
    (200, b"<html>Sign in to Coder</html>"),
    (200, b'{"id": "not-a-uuid", "username": "x", "status": "active"}'),
    (200, b'["a", "list"]'),
    (200, b'{"id": "3f6c2a1e-9b8d-4c7e-a5f4-0d1e2c3b4a59", "status": "active"}'),
    (302, b""),
])
def test_an_answer_that_is_no_user_object_is_not_trusted(status, body, captured_log):
    """A login page, a malformed user or a redirect (a wrong url) is no answer: 503, logged; a redirect is not followed."""
    d = Deployment()
    _, token = d.user()
    d.fake.body_override = (status, body)
    refused(d.identify(token), IdentityUnavailable)
    assert d.fake.checks() == 1
    assert "could not check a token" in captured_log.text()


def test_an_oversized_answer_is_refused():
    """An answer larger than any user object is cut off and not trusted."""
    d = Deployment()
    _, token = d.user()
    d.fake.body_override = (200, b"{" + b" " * (300 * 1024) + b"}")
    refused(d.identify(token), IdentityUnavailable)


def test_no_token_in_logs_or_errors(captured_log):
    """Through every outcome (known, unknown, suspended, refused, timed out), no token reaches a log line or an error."""
    d = Deployment(timeout=1, cache_seconds=0, retry_seconds=0)
    _, token = d.user()
    _, suspended = d.user("sam", status="suspended")
    unknown, failed, slow = coder_token(), coder_token(), coder_token()
    texts = []
    d.identify(token)
    d.identify(unknown)
    d.fake.suspended_as_401 = True
    texts.append(d.identify(suspended).getErrorMessage())
    d.fake.fail_with = 500
    texts.append(d.identify(failed).getTraceback())
    d.fake.fail_with = None
    d.fake.hold = True
    out: list = []
    d.backend.identify(slow).addBoth(out.append)
    d.agent.flush()
    d.clock.advance(1)
    texts.append(out[0].getTraceback())
    gw = memory.gateway(identities=d.backend)
    d.fake.hold = False
    for t in (token, unknown, suspended, failed):
        gw.send("POST", "/openai/v1/chat/completions", CHAT, {"Authorization": f"Bearer {t}"})
    everything = captured_log.text() + "\n".join(texts)
    assert "could not check a token: no answer within 1 s" in everything
    assert "Refused POST" in everything
    for t in (token, unknown, suspended, failed, slow):
        assert t not in everything
    assert token not in repr(d.backend.__dict__) and unknown not in repr(d.backend.caches.__dict__)


# -- users by id --------------------------------------------------------------------------------


def test_lookup_user_asks_with_the_service_token():
    """With a service token, lookup_user asks GET /api/v2/users/{id} with it, and caches the answer."""
    d = Deployment()
    _, service = d.user("bridge-service", roles=("owner",))
    d2 = _with_service(d, service)
    bob = d.fake.add_user("bob")
    identity = d2.lookup(bob["id"])
    assert (identity.user_id, identity.username, identity.disabled) == (bob["id"], "bob", False)
    [call] = d.fake.calls
    assert (call.path, call.token) == (f"/api/v2/users/{bob['id']}".encode(), service)
    assert d2.lookup(bob["id"]) == identity
    assert len(d.fake.calls) == 1
    assert d2.lookup("6b0e4a52-0c1d-4e2f-8a3b-4c5d6e7f8091") is None
    assert d2.lookup("../me") is None
    assert len(d.fake.calls) == 2
    d2.clock.advance(9)
    assert d2.lookup("6b0e4a52-0c1d-4e2f-8a3b-4c5d6e7f8091") is None
    assert len(d.fake.calls) == 2
    d2.clock.advance(1)
    d2.lookup("6b0e4a52-0c1d-4e2f-8a3b-4c5d6e7f8091")
    assert len(d.fake.calls) == 3


def test_lookup_user_of_a_suspended_delegate_is_disabled():
    """A delegated user suspended in Coder is looked up as disabled (the owner resolver then refuses 403)."""
    d = Deployment()
    _, service = d.user("svc", roles=("owner",))
    d = _with_service(d, service)
    carol = d.fake.add_user("carol", status="suspended")
    assert d.lookup(carol["id"]).disabled is True


def test_lookup_user_without_a_service_token_uses_what_tokens_taught():
    """Without a service token, lookup_user knows the users whose tokens were checked (within the stale window)."""
    d = Deployment(cache_seconds=10, stale_seconds=20)
    user, token = d.user("alice")
    other = d.fake.add_user("bob")
    d.identify(token)
    assert d.lookup(user["id"]).username == "alice"
    assert d.lookup(user["id"].upper()).username == "alice"
    assert d.lookup(other["id"]) is None
    d.clock.advance(15)
    assert d.lookup(user["id"]).username == "alice"  # past cache_seconds, within stale_seconds
    d.clock.advance(15)
    assert d.lookup(user["id"]) is None
    assert d.fake.checks(f"/api/v2/users/{other['id']}".encode()) == 0


def test_lookup_user_falls_back_when_the_service_token_is_refused(captured_log):
    """A refused service token (or a deployment that is down) leaves lookups to what the cache knows; logged."""
    d = Deployment()
    user, token = d.user("alice")
    d = _with_service(d, coder_token())
    d.identify(token)
    d.clock.advance(61)
    assert d.lookup(user["id"]).username == "alice"
    assert "refused the service token (401)" in captured_log.text()


def test_coder_agents_delegation_names_the_owner_from_the_deployment():
    """A delegator's token naming a Coder user in X-Coder-Owner-Id: recorded for that user, by name; a suspended one is 403."""
    d = Deployment()
    agents, service = d.user("coder-agents", roles=("owner",))
    d = _with_service(d, service)
    owner = d.fake.add_user("olivia")
    suspended = d.fake.add_user("sam", status="suspended")
    gw = memory.gateway({"initiator": {"delegators": [agents["id"]]}}, identities=d.backend)
    headers = {"Authorization": f"Bearer {service}", "User-Agent": "coder-agents/v2.24.0 (linux/amd64)"}
    answer = gw.send("POST", "/openai/v1/chat/completions", CHAT, {**headers, "X-Coder-Owner-Id": owner["id"]})
    assert answer.status == 200
    [record] = gw.records
    assert (record.initiator_id, record.initiator_username, record.credential_user_id) == (
        owner["id"], "olivia", agents["id"])
    answer = gw.send("POST", "/openai/v1/chat/completions", CHAT, {**headers, "X-Coder-Owner-Id": suspended["id"]})
    assert answer.status == 403
    assert len(gw.upstream.seen) == 1


def _with_service(d: Deployment, service: str) -> Deployment:
    """C{d}'s deployment and clock, with a backend that has a service token."""
    d.settings = CoderSettings(url=URL, service_token=service)
    d.backend = CoderBackend(d.settings, d.agent, d.clock, d.metrics)
    return d


# -- settings and the plugin --------------------------------------------------------------------


def test_settings_defaults_and_values(tmp_path):
    """[plugins.coder] reads into CoderSettings; relative files are read beside the configuration."""
    ca_path, _ = make_ca(tmp_path)
    (tmp_path / "svc").write_text("svc-token-0123456789\n")
    s = CoderSettings.parse({"url": "https://coder.example.com/", "ca_file": "ca.pem",
                             "cache_seconds": 30, "negative_cache_seconds": 1.5, "stale_seconds": 0,
                             "retry_seconds": 2, "timeout": 4, "admin_roles": ["owner", "auditor"],
                             "service_token_file": "svc"}, {}, str(tmp_path))
    assert (s.url, s.ca_file, s.cache_seconds, s.negative_cache_seconds, s.stale_seconds, s.retry_seconds,
            s.timeout, s.admin_roles, s.service_token) == (
        "https://coder.example.com", str(ca_path), 30.0, 1.5, 0.0, 2.0, 4.0,
        frozenset({"owner", "auditor"}), "svc-token-0123456789")
    assert "svc-token" not in repr(s)
    d = CoderSettings.parse({"url": "https://coder.example.com"}, {"SVC": "from-env-0123"}, ".")
    assert (d.cache_seconds, d.negative_cache_seconds, d.stale_seconds, d.retry_seconds, d.timeout,
            d.admin_roles, d.service_token) == (60.0, 10.0, 300.0, 5.0, 10.0, frozenset({"owner"}), None)
    e = CoderSettings.parse({"url": "https://c.example", "service_token_env": "SVC"}, {"SVC": "from-env-0123"}, ".")
    assert e.service_token == "from-env-0123"


@pytest.mark.parametrize("options,message", [
    ({}, 'plugins.coder.url is required: the Coder deployment\'s address, such as "https://coder.example.com"'),
    ({"url": "coder.example.com"},
     "plugins.coder.url must be an https:// (or http://) address, got 'coder.example.com'"),
    ({"url": "ftp://coder.example.com"}, "plugins.coder.url must be an https:// (or http://) address, got "
                                         "'ftp://coder.example.com'"),
    ({"url": "https://admin:hunter2@coder.example.com"}, "plugins.coder.url must not carry a user name or password"),
    ({"url": "https://coder.example.com/?x=1"},
     "plugins.coder.url must not have a query or fragment, got 'https://coder.example.com/?x=1'"),
    ({"url": "https://c.example/?"}, "plugins.coder.url must not have a query or fragment, got 'https://c.example/?'"),
    ({"url": "https://c.example/#"}, "plugins.coder.url must not have a query or fragment, got 'https://c.example/#'"),
    ({"url": "https://c.example/#x"},
     "plugins.coder.url must not have a query or fragment, got 'https://c.example/#x'"),
    ({"url": "https://coder.example.com:99999"},
     "plugins.coder.url has an invalid port, got 'https://coder.example.com:99999'"),
    ({"url": "https://c.example", "cache_seconds": -1},
     "plugins.coder.cache_seconds must be a number of seconds (0 or more), got -1"),
    ({"url": "https://c.example", "stale_seconds": "5"},
     "plugins.coder.stale_seconds must be a number of seconds (0 or more), got '5'"),
    ({"url": "https://c.example", "timeout": 0},
     "plugins.coder.timeout must be a number of seconds (more than 0), got 0"),
    ({"url": "https://c.example", "retry_seconds": True},
     "plugins.coder.retry_seconds must be a number of seconds (0 or more), got True"),
    ({"url": "https://c.example", "cach_seconds": 5},
     "plugins.coder: unknown key 'cach_seconds' (known: admin_roles, ca_file, cache_seconds, negative_cache_seconds, "
     "retry_seconds, service_token_env, service_token_file, stale_seconds, timeout, url)"),
    ({"url": "https://c.example", "admin_roles": "owner"},
     "plugins.coder.admin_roles must be a list of role names, got 'owner'"),
    ({"url": "https://c.example", "admin_roles": ["owner", ""]},
     "plugins.coder.admin_roles must be a list of role names, got ['owner', '']"),
    ({"url": "https://c.example", "admin_roles": ["owner", 1]},
     "plugins.coder.admin_roles must be a list of role names, got ['owner', 1]"),
    ({"url": "http://c.example", "ca_file": "ca.pem"}, "plugins.coder.ca_file applies to an https url only"),
    ({"url": "https://c.example", "ca_file": 5}, "plugins.coder.ca_file must be a non-empty string, got 5"),
    ({"url": "https://c.example", "ca_file": " "}, "plugins.coder.ca_file must be a non-empty string, got ' '"),
    ({"url": "https://c.example", "ca_file": "missing.pem"},
     "plugins.coder.ca_file: cannot read '{dir}/missing.pem': No such file or directory"),
    ({"url": "https://c.example", "service_token_env": "NOPE"},
     "plugins.coder.service_token_env: the environment variable NOPE is empty"),
    ({"url": "https://c.example", "service_token_env": "A", "service_token_file": "f"},
     "plugins.coder: give service_token_env or service_token_file, not both"),
    ({"url": "https://c.example", "service_token_file": "nope"},
     "plugins.coder.service_token_file: cannot read '{dir}/nope': No such file or directory"),
    ({"url": "https://c.example", "service_token_file": "latin1"},
     "plugins.coder.service_token_file: cannot read '{dir}/latin1': not UTF-8 text"),
    ({"url": "https://c.example", "service_token_file": "blank"},
     "plugins.coder.service_token_file: '{dir}/blank' is empty"),
    ({"url": "https://c.example", "service_token_env": "SPACED"},
     "plugins.coder: the service token holds characters no Coder token has"),
])
def test_settings_errors_name_the_key(options, message, tmp_path):
    """Unusable [plugins.coder] settings stop the start with an error naming the key (and no secret)."""
    (tmp_path / "latin1").write_bytes(b"caf\xe9-token")
    (tmp_path / "blank").write_text(" \n")
    with pytest.raises(ConfigError) as caught:
        CoderSettings.parse(options, {"SPACED": "two words"}, str(tmp_path))
    assert str(caught.value) == message.format(dir=tmp_path)
    assert "hunter2" not in str(caught.value)


def test_settings_keep_a_path_prefix_and_absolute_files(tmp_path):
    """A deployment under a path keeps its path (trailing slashes go); absolute file names are used as given;
    a CA file may carry text before its certificate, in any encoding."""
    ca_path, _ = make_ca(tmp_path)
    ca_path.write_bytes(b"Issuer: Soci\xe9t\xe9 G\xe9n\xe9rale (latin-1)\n" + ca_path.read_bytes())
    (tmp_path / "svc").write_text("svc-token-0123456789")
    s = CoderSettings.parse({"url": " https://tools.example.com/CoderX// ", "ca_file": str(ca_path),
                             "service_token_file": str(tmp_path / "svc")}, {}, "/nowhere")
    assert (s.url, s.ca_file, s.service_token) == ("https://tools.example.com/CoderX", str(ca_path),
                                                   "svc-token-0123456789")


def test_ca_file_that_is_no_certificate(tmp_path):
    """A ca_file that holds no PEM certificate is refused at start."""
    (tmp_path / "ca.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        CoderSettings.parse({"url": "https://c.example", "ca_file": "ca.pem"}, {}, str(tmp_path))


def test_plugin_is_found_and_configured_from_its_table():
    """`identity_backend = "coder"` finds the plugin by name; configured, it provides IIdentityBackend."""
    found = chain.available(IIdentityBackend)
    verifyObject(IIdentityBackend, found["coder"])
    config = parse({"identity_backend": "coder", "plugins": {"coder": {"url": URL, "cache_seconds": 7}}}, environ={})
    fake = FakeCoder()
    plugin = CoderPlugin(agent_factory=lambda reactor, config, settings: RequestTraversalAgent(fake))
    [backend] = chain.select(IIdentityBackend, [config.identity_backend], chain.PluginContext(
        config=config, reactor=Clock(), metrics=Metrics()), "identity_backend", found={"coder": plugin})
    verifyObject(IIdentityBackend, backend)
    assert isinstance(backend, CoderBackend) and backend.settings.cache_seconds == 7


def test_a_reload_keeps_the_cache_of_the_same_deployment():
    """Configured again for the same url (a reload), the backend keeps the answers; for another url it starts afresh."""
    fake = FakeCoder()
    user = fake.add_user("alice")
    token = fake.add_token(user["id"])
    agent = RequestTraversalAgent(fake)
    plugin = CoderPlugin(agent_factory=lambda reactor, config, settings: agent)
    clock = Clock()

    def configured(url):
        config = parse({"identity_backend": "coder", "plugins": {"coder": {"url": url}}}, environ={})
        return plugin.configure(chain.PluginContext(config=config, options=config.plugins["coder"],
                                                    reactor=clock, metrics=Metrics()))
    for backend in (configured(URL), configured(URL), configured("https://other.test")):
        backend.identify(token)
        agent.flush()
    assert fake.checks() == 2


def test_missing_url_stops_the_start():
    """identity_backend = "coder" without [plugins.coder] url is a configuration error at start."""
    config = parse({"identity_backend": "coder"}, environ={})
    with pytest.raises(ConfigError, match="plugins.coder.url is required"):
        chain.select(IIdentityBackend, ["coder"], chain.PluginContext(config=config, reactor=Clock()),
                     "identity_backend")


# -- the bridgeproxy command --------------------------------------------------------------------


def _coder_config(tmp_path: Path) -> str:
    path = tmp_path / "bridge.toml"
    path.write_text(f'database = "sqlite:{tmp_path / "b.db"}"\nidentity_backend = "coder"\n\n'
                    f'[plugins.coder]\nurl = "{URL}"\n')
    return str(path)


@pytest.mark.parametrize("argv,word", [
    (["keys", "create", "--username", "alice"], "keys are managed by the Coder deployment"),
    (["keys", "list"], "keys are managed by the Coder deployment"),
    (["keys", "revoke", "k-1"], "keys are managed by the Coder deployment"),
    (["users", "disable", "alice"], "users are managed by the Coder deployment"),
    (["users", "enable", "alice"], "users are managed by the Coder deployment"),
])
def test_key_commands_say_the_deployment_manages_keys(argv, word, tmp_path, capsys):
    """In Coder mode `bridgeproxy keys ...` (and `users ...`) exits 1 with one line saying where keys are managed."""
    path = _coder_config(tmp_path)
    assert cli.main(argv + ["--config", path]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("bridgeproxy: ") and word in err
    assert 'identity_backend = "coder"' in err
    assert not (tmp_path / "b.db").exists()


def test_other_commands_still_work_in_coder_mode(tmp_path, capsys):
    """The store's own commands (db migrate, interceptions, usage) are unchanged in Coder mode."""
    path = _coder_config(tmp_path)
    assert cli.main(["db", "migrate", "--config", path]) == 0
    assert cli.main(["interceptions", "list", "--json", "--config", path]) == 0
    out, _ = capsys.readouterr()
    assert json.loads(out.split("\n", 1)[1]) == []



# -- what is cached, and for how long ---------------------------------------------------------------


def test_a_checked_token_is_the_newest_entry_and_the_cache_holds_size_entries():
    """A cache of 2: checking a token again makes it the newest; a third token pushes out the oldest only."""
    d = Deployment(caches=Caches(size=2), cache_seconds=10, retry_seconds=0)
    (_, a), (_, b), (_, c) = d.user("a"), d.user("b"), d.user("c")
    d.identify(a)
    d.identify(b)
    d.clock.advance(10)
    d.identify(a)  # expired: asked again, and now the newest
    d.identify(c)  # pushes out b, not a
    d.fake.fail_with = 503
    assert d.identify(a).username == "a"
    assert d.identify(c).username == "c"
    refused(d.identify(b), IdentityUnavailable)


def test_checking_a_token_again_pushes_no_other_out():
    """A full cache of 2: the newer token checked again replaces its own entry, not the older token's."""
    d = Deployment(caches=Caches(size=2), cache_seconds=10, retry_seconds=0)
    (_, a), (_, b) = d.user("a"), d.user("b")
    d.identify(a)
    d.identify(b)
    d.clock.advance(10)
    d.identify(b)
    d.fake.fail_with = 503
    assert d.identify(a).username == "a"
    assert d.identify(b).username == "b"


def test_the_cache_holds_no_more_than_its_size():
    d = Deployment(caches=Caches(size=2))
    tokens = [d.user(name)[1] for name in ("a", "b", "c")]
    for token in tokens:
        d.identify(token)
    for token in tokens[1:]:
        d.identify(token)
    assert d.fake.checks() == 3
    d.identify(tokens[0])
    assert d.fake.checks() == 4


def test_a_revoked_token_is_not_brought_back_by_an_outage():
    """The deployment's last word about a token is what stands in while it is down: a token it said is
    unknown stays unknown, even though it was known before that."""
    d = Deployment(cache_seconds=5, negative_cache_seconds=1, stale_seconds=100, retry_seconds=0)
    _, token = d.user()
    assert d.identify(token) is not None
    del d.fake.tokens[token]
    d.clock.advance(5)
    assert d.identify(token) is None
    d.fake.fail_with = 503
    d.clock.advance(2)
    assert d.identify(token) is None


def test_a_token_that_became_known_is_not_unknown_during_an_outage():
    """Unknown, then known (a token made while its first use was refused): the old "unknown" is forgotten,
    so once the "known" entry is gone too, an outage gives 503, never 401."""
    d = Deployment(caches=Caches(size=1), negative_cache_seconds=1, stale_seconds=100, retry_seconds=0)
    user = d.fake.add_user("alice")
    token = coder_token()
    assert d.identify(token) is None
    d.fake.tokens[token] = user["id"]
    d.clock.advance(1)
    assert d.identify(token).username == "alice"
    _, other = d.user("bob")
    d.identify(other)  # the cache of known tokens holds one: alice's goes
    d.fake.fail_with = 503
    refused(d.identify(token), IdentityUnavailable)


def test_lookups_are_cached_for_cache_seconds():
    d = Deployment()
    _, service = d.user("svc", roles=("owner",))
    d = _with_service(d, service)
    bob = d.fake.add_user("bob")
    d.lookup(bob["id"])
    d.clock.advance(59)
    assert d.lookup(bob["id"]).username == "bob"
    assert len(d.fake.calls) == 1
    d.clock.advance(1)
    d.lookup(bob["id"])
    assert len(d.fake.calls) == 2


def test_lookups_wait_retry_seconds_after_a_failure_and_no_more():
    d = Deployment()
    _, service = d.user("svc", roles=("owner",))
    d = _with_service(d, service)
    d.settings = CoderSettings(url=URL, service_token=service, retry_seconds=5, cache_seconds=0)
    d.backend = CoderBackend(d.settings, d.agent, d.clock, d.metrics)
    bob = d.fake.add_user("bob")
    d.fake.fail_with = 500
    d.lookup(bob["id"])
    d.clock.advance(4.9)
    d.lookup(bob["id"])
    assert len(d.fake.calls) == 1
    d.fake.fail_with = None
    d.clock.advance(0.1)
    assert d.lookup(bob["id"]).username == "bob"
    assert len(d.fake.calls) == 2


def test_lookups_during_an_outage_use_what_is_known(captured_log):
    """The deployment failing a lookup: the user is named from the cache (within the stale window), and the
    outage is logged."""
    d = Deployment()
    user, token = d.user("alice")
    _, service = d.user("svc", roles=("owner",))
    d = _with_service(d, service)
    d.identify(token)
    d.clock.advance(61)
    d.fake.fail_with = 500
    assert d.lookup(user["id"]).username == "alice"
    assert f"Coder deployment {URL} could not check a token: it sent status 500" in captured_log.text()
    assert d.metrics.get("coder_unreachable") == 1


def test_a_lookup_answered_with_another_user_is_not_trusted(captured_log):
    d = Deployment()
    _, service = d.user("svc", roles=("owner",))
    d = _with_service(d, service)
    bob = d.fake.add_user("bob")
    d.fake.body_override = (200, json.dumps(d.fake.users[bob["id"]]).encode())
    assert d.lookup("6b0e4a52-0c1d-4e2f-8a3b-4c5d6e7f8091") is None
    assert "could not check a token: it sent a user object for another id;" in captured_log.text()


def test_a_refused_service_token_is_logged_with_its_status(captured_log):
    d = Deployment()
    user, token = d.user("alice")
    d = _with_service(d, coder_token())
    d.identify(token)
    d.clock.advance(61)
    d.fake.body_override = (403, b'{"message": "Forbidden."}')
    assert d.lookup(user["id"]).username == "alice"
    assert (f"Coder deployment {URL} refused the service token (403): delegated users are named from the cache "
            "only") in captured_log.text().splitlines()


def test_concurrent_lookups_of_different_users_each_get_their_own():
    d = Deployment()
    _, service = d.user("svc", roles=("owner",))
    d = _with_service(d, service)
    bob, carol = d.fake.add_user("bob"), d.fake.add_user("carol")
    d.fake.hold = True
    answers: list = []
    d.backend.lookup_user(bob["id"]).addBoth(answers.append)
    d.backend.lookup_user(carol["id"]).addBoth(answers.append)
    d.agent.flush()
    d.fake.release()
    d.agent.flush()
    assert sorted(a.username for a in answers) == ["bob", "carol"]


# -- refusals -------------------------------------------------------------------------------------------


def test_refusals_say_what_happened_and_when_to_retry():
    """A user not active: 403 (reason user_inactive, counted so); the deployment down: 503 with a Retry-After of
    retry_seconds rounded up, at least 1."""
    d = Deployment(retry_seconds=0)
    _, token = d.user("dave", status="suspended")
    d.fake.suspended_as_401 = True
    error = refused(d.identify(token), PermissionDenied)
    assert (error.message, error.reason) == ("This user is not active in the Coder deployment.", "user_inactive")
    d.fake.fail_with = 503
    error = refused(d.identify(coder_token()), IdentityUnavailable)
    assert error.message == "The Coder deployment that checks API keys cannot be reached; try again shortly."
    assert error.headers == {"Retry-After": "1"}
    d = Deployment(retry_seconds=4.2)
    d.fake.fail_with = 503
    assert refused(d.identify(coder_token()), IdentityUnavailable).headers == {"Retry-After": "5"}


@pytest.mark.parametrize("body", [b"<html>Unauthorized</html>", b'["User is not active"]', b'{"message": 5}'])
def test_a_401_that_says_nothing_readable_is_an_unknown_token(body):
    """Only a 401 whose JSON message says the user is not active is a 403; any other 401 is an unknown token."""
    d = Deployment()
    _, token = d.user()
    d.fake.body_override = (401, body)
    assert d.identify(token) is None


# -- answers that are not a user ------------------------------------------------------------------------


def user_object(**fields):
    user = {"id": "3f6c2a1e-9b8d-4c7e-a5f4-0d1e2c3b4a59", "username": "alice", "status": "active",
            "roles": [{"name": "member"}]}
    user.update(fields)
    return json.dumps({k: v for k, v in user.items() if v is not ...}).encode()


@pytest.mark.parametrize("body, reason", [
    (b"<html>Sign in</html>", "a 200 answer that is not JSON"),
    (b'"alice"', "a 200 answer that is not a user object"),
    (user_object(id="not-a-uuid"), "a user object without a UUID id"),
    (user_object(id="zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"), "a user object without a UUID id"),
    (user_object(id=...), "a user object without a UUID id"),
    (user_object(username=...), "a user object without a username"),
    (user_object(username=""), "a user object without a username"),
    (user_object(username=7), "a user object without a username"),
    (user_object(username="ali\nce"), "a user object without a username"),
    (user_object(username="a" * 257), "a user object without a username"),
    (user_object(status=...), "a user object without a status"),
    (user_object(status=1), "a user object without a status"),
])
def test_what_is_not_a_user_object_is_logged_as_such(body, reason, captured_log):
    """No identity from a body that is not a Coder user; the log says what was wrong with it."""
    d = Deployment()
    _, token = d.user()
    d.fake.body_override = (200, body)
    refused(d.identify(token), IdentityUnavailable)
    assert f"Coder deployment {URL} could not check a token: it sent {reason}; cached answers stand in" in \
        captured_log.text()


@pytest.mark.parametrize("username", ["a" * 256, "Zoë Å"])
def test_long_and_unicode_usernames_are_names(username):
    d = Deployment()
    _, token = d.user()
    d.fake.body_override = (200, user_object(username=username))
    assert d.identify(token).username == username


@pytest.mark.parametrize("roles", [5, "owner", {"name": "owner"}, None, [["owner"]]])
def test_roles_that_are_not_a_list_of_objects_make_no_admin(roles):
    d = Deployment()
    _, token = d.user()
    d.fake.body_override = (200, user_object(roles=roles))
    identity = d.identify(token)
    assert identity.username == "alice" and identity.admin is False


# -- how the answer is read -------------------------------------------------------------------------------


class BodyTransport:
    def __init__(self):
        self.stopped = False

    def stopProducing(self):
        self.stopped = True


class ScriptedResponse:
    """An answer whose body comes in the given pieces, then ends with C{end} (None: never)."""

    version = (b"HTTP", 1, 1)
    phrase = b"OK"
    previousResponse = None
    request = None

    def __init__(self, code, pieces, end):
        self.code, self.pieces, self.end = code, pieces, end
        self.headers = Headers({b"Content-Type": [b"application/json"]})
        self.length = UNKNOWN_LENGTH
        self.transport = BodyTransport()

    def deliverBody(self, protocol):
        protocol.makeConnection(self.transport)
        for piece in self.pieces:
            if self.transport.stopped:
                return
            protocol.dataReceived(piece)
        if self.end is not None and not self.transport.stopped:
            protocol.connectionLost(Failure(self.end))


class ScriptedAgent:
    """An agent answering every request with a new L{ScriptedResponse}, or failing with C{error}."""

    def __init__(self, code=200, pieces=(), end=ResponseDone(), error=None):
        self.code, self.pieces, self.end, self.error = code, pieces, end, error
        self.responses: list[ScriptedResponse] = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        if self.error is not None:
            return fail(self.error)
        response = ScriptedResponse(self.code, self.pieces, self.end)
        self.responses.append(response)
        return succeed(response)


def scripted(**kw):
    agent = ScriptedAgent(**kw)
    clock = Clock()
    return agent, clock, CoderBackend(CoderSettings(url=URL, timeout=3), agent, clock)


def outcome(backend, token=None):
    out: list = []
    backend.identify(token or coder_token()).addBoth(out.append)
    return out


def in_pieces(data, size):
    return [data[i:i + size] for i in range(0, len(data), size)]


def test_a_body_in_many_pieces_is_read_whole():
    _, _, backend = scripted(pieces=in_pieces(user_object(), 7))
    assert outcome(backend)[0].username == "alice"


def test_a_body_ended_by_the_connection_closing_is_whole():
    """No length and no chunks: the body ends when the deployment closes the connection (PotentialDataLoss)."""
    _, _, backend = scripted(pieces=[user_object()], end=PotentialDataLoss())
    assert outcome(backend)[0].username == "alice"


def test_an_answer_of_exactly_the_limit_is_read_and_one_byte_more_is_not(captured_log):
    """256 KiB is the most a user object may take, counted over every piece; the transfer stops at once past it."""
    whole = user_object()
    exact = whole[:-1] + b" " * (256 * 1024 - len(whole)) + b"}"
    _, _, backend = scripted(pieces=in_pieces(exact, 64 * 1024))
    assert outcome(backend)[0].username == "alice"
    agent, _, backend = scripted(pieces=in_pieces(b" " + exact, 64 * 1024))
    refused(outcome(backend)[0], IdentityUnavailable)
    assert agent.responses[0].transport.stopped
    assert "could not check a token: it sent an answer larger than 262144 bytes;" in captured_log.text()


def test_a_body_cut_short_is_no_answer(captured_log):
    """The connection lost in the middle of the body: no identity, and the log says the connection was lost."""
    _, _, backend = scripted(pieces=[user_object()[:20]],
                             end=ResponseFailed([Failure(ConnectionLost("reset by peer"))]))
    refused(outcome(backend)[0], IdentityUnavailable)
    assert ("could not check a token: ConnectionLost: Connection to the other side was lost in a non-clean "
            "fashion: reset by peer.;") in captured_log.text()


def test_a_body_that_stalls_is_stopped_at_the_timeout(captured_log):
    agent, clock, backend = scripted(pieces=[b'{"id": '], end=None)
    out = outcome(backend)
    clock.advance(2.9)
    assert out == [] and not agent.responses[0].transport.stopped
    clock.advance(0.1)
    refused(out[0], IdentityUnavailable)
    assert agent.responses[0].transport.stopped
    assert "could not check a token: no answer within 3 s;" in captured_log.text()


@pytest.mark.parametrize("error, reason", [
    (ConnectionRefusedError("111"), "ConnectionRefusedError: Connection was refused by other side: 111."),
    (ResponseNeverReceived([Failure(ConnectionLost("closed"))]),
     "ConnectionLost: Connection to the other side was lost in a non-clean fashion: closed."),
    (ValueError(), "ValueError"),
    (RuntimeError("x" * 300 + "\nsecond line"), "RuntimeError: " + "x" * 200),
])
def test_why_the_deployment_could_not_be_asked_is_logged_on_one_line(error, reason, captured_log):
    """The log names the error (the first of a client's wrapped reasons), on one line of at most 200 characters."""
    _, _, backend = scripted(error=error)
    refused(outcome(backend)[0], IdentityUnavailable)
    assert f"Coder deployment {URL} could not check a token: {reason}; cached answers stand in" in \
        captured_log.text().splitlines()[0]


def test_a_cookie_set_by_the_deployment_never_travels_with_the_next_check():
    """A cookie from one user's check must not authenticate the next user's."""
    class CookieCoder(FakeCoder):
        def render_GET(self, request):
            request.addCookie(b"coder_session_token", b"the-first-users-session", path=b"/", secure=True)
            return super().render_GET(request)
    d = Deployment()
    d.fake = CookieCoder()
    d.agent = RequestTraversalAgent(d.fake)
    d.backend = CoderBackend(d.settings, d.agent, d.clock, d.metrics)
    _, first = d.user("alice")
    _, second = d.user("bob")
    d.identify(first)
    assert d.identify(second).username == "bob"
    assert [call.headers.get("cookie") for call in d.fake.calls] == [None, None]


def test_a_redirect_is_not_followed(captured_log):
    """A deployment answering with a redirect (a wrong url, a login page) is not followed to a user elsewhere."""
    class Redirecting(FakeCoder):
        def render_GET(self, request):
            if request.path == b"/api/v2/users/me":
                request.setResponseCode(302)
                request.setHeader(b"location", b"https://coder.test/elsewhere")
                return b""
            self.calls.append(request.path)
            return user_object()
    d = Deployment()
    d.fake = Redirecting()
    d.agent = RequestTraversalAgent(d.fake)
    d.backend = CoderBackend(d.settings, d.agent, d.clock, d.metrics)
    refused(d.identify(coder_token()), IdentityUnavailable)
    assert d.fake.calls == []
    assert "could not check a token: it sent status 302;" in captured_log.text()


# -- the agent the plugin makes -------------------------------------------------------------------------


class Threads(MemoryReactorClock):
    """A MemoryReactorClock whose thread pool answers every name lookup with 10.0.0.7 at once."""

    def getThreadPool(self):
        return self

    def callInThreadWithCallback(self, on_result, func, *args, **kw):
        on_result(True, [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", 443))])

    def callFromThread(self, f, *args, **kw):
        f(*args, **kw)


class Received(Protocol):
    """What the deployment's end of the connection reads."""


def reach_deployment(tmp_path, monkeypatch, ca_file):
    """Connect the agent coder.make_agent makes for https://coder.test to a TLS server, in memory; returns
    (what the server received, the connection's (address, port, timeout), the request's outcome)."""
    ca_path, issue = make_ca(tmp_path)
    cert_path, key_path = issue("coder.test")
    settings = CoderSettings(url=URL, timeout=7, ca_file=str(ca_path) if ca_file else None)
    reactor = Threads()
    # TLS gathers small writes until the next turn of the reactor: of this one (as Twisted's own tests do).
    monkeypatch.setattr(tls, "_get_default_clock", lambda: reactor)
    agent = coder.make_agent(reactor, parse({}, environ={}), settings)
    outcome: list = []
    agent.request(b"GET", b"https://coder.test/api/v2/users/me").addBoth(outcome.append)
    [(host, port, factory, timeout, _)] = reactor.tcpClients
    certificate = ssl.PrivateCertificate.loadPEM(cert_path.read_text() + key_path.read_text())
    received: list[bytes] = []
    server = tls.TLSMemoryBIOFactory(certificate.options(), False, Factory.forProtocol(Received),
                                     clock=reactor).buildProtocol(None)
    server.wrappedProtocol.dataReceived = received.append
    client = factory.buildProtocol(None)
    pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client))
    reactor.advance(0)
    pump.flush()
    return b"".join(received), (host, port, timeout), outcome


def test_the_agent_verifies_the_deployment_against_ca_file_and_times_out_with_the_check(tmp_path, monkeypatch):
    """The deployment's certificate is checked against ca_file (host name included); the connection times
    out after the plugin's timeout."""
    received, connection, _ = reach_deployment(tmp_path, monkeypatch, ca_file=True)
    assert received.startswith(b"GET /api/v2/users/me HTTP/1.1\r\n")
    assert connection == ("10.0.0.7", 443, 7)


def test_the_agent_without_ca_file_trusts_only_the_systems_cas(tmp_path, monkeypatch):
    """Without ca_file, a certificate from a private CA is refused: nothing is sent."""
    received, _, outcome = reach_deployment(tmp_path, monkeypatch, ca_file=False)
    assert received == b""
    assert "certificate verify failed" in outcome[0].getErrorMessage()


# -- the plugin ---------------------------------------------------------------------------------------


def test_the_plugin_is_no_backend_until_configured():
    plugin = CoderPlugin()
    for call in (plugin.identify, plugin.lookup_user):
        with pytest.raises(NotImplementedError, match=r"^configure\(\) first$"):
            call("x")


def configure(plugin, options, reactor=None, metrics=None, source_path=None):
    config = parse({"identity_backend": "coder", "plugins": {"coder": options}}, environ={})
    config = replace(config, source_path=source_path)
    return plugin.configure(chain.PluginContext(config=config, options=config.plugins["coder"],
                                                reactor=reactor or Clock(), metrics=metrics))


def test_the_plugin_reads_files_beside_the_configuration_and_variables_from_its_environment(tmp_path, monkeypatch):
    """service_token_file is read beside the configuration file (else in the working directory);
    service_token_env from the environment given (else the process's)."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "svc").write_text("beside-the-config-0123")
    (tmp_path / "svc").write_text("in-the-working-directory-0123")
    plugin = CoderPlugin(environ={"SVC": "from-the-given-environ-0123"}, agent_factory=lambda *a: None)
    backend = configure(plugin, {"url": URL, "service_token_file": "svc"},
                        source_path=str(tmp_path / "conf" / "bridge.toml"))
    assert backend.settings.service_token == "beside-the-config-0123"
    monkeypatch.chdir(tmp_path)
    assert configure(plugin, {"url": URL, "service_token_file": "svc"}).settings.service_token == \
        "in-the-working-directory-0123"
    assert configure(plugin, {"url": URL, "service_token_env": "SVC"}).settings.service_token == \
        "from-the-given-environ-0123"
    monkeypatch.setenv("SVC", "from-the-process-0123")
    plugin = CoderPlugin(agent_factory=lambda *a: None)
    assert configure(plugin, {"url": URL, "service_token_env": "SVC"}).settings.service_token == \
        "from-the-process-0123"


def test_the_plugin_builds_its_agent_and_counts_in_the_bridges_metrics():
    """The agent factory gets the bridge's reactor, configuration and the plugin's settings; checks are
    counted in the bridge's metrics."""
    fake = FakeCoder()
    user = fake.add_user("alice")
    calls = []

    def factory(reactor, config, settings):
        calls.append((reactor, config, settings))
        return RequestTraversalAgent(fake)
    reactor, metrics = Clock(), Metrics()
    backend = configure(CoderPlugin(agent_factory=factory), {"url": URL, "timeout": 4}, reactor=reactor,
                        metrics=metrics)
    [(given_reactor, config, settings)] = calls
    assert given_reactor is reactor and config.identity_backend == "coder" and settings == backend.settings
    assert settings.timeout == 4
    backend.identify(fake.add_token(user["id"]))
    backend._http._agent.flush()
    assert metrics.get("coder_check:200") == 1


def test_a_plain_http_deployment_is_warned_about(captured_log):
    plugin = CoderPlugin(agent_factory=lambda *a: None)
    configure(plugin, {"url": "https://coder.test"})
    assert "plain http" not in captured_log.text()
    configure(plugin, {"url": "http://coder.test"})
    assert "plugins.coder.url is plain http: users' Coder tokens cross the network unencrypted" in \
        captured_log.text().splitlines()
