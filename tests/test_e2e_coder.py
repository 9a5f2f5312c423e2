"""
`identity_backend = "coder"` over loopback: a fake Coder deployment served
over HTTPS with a CA made for the test, a bridge started as in the other
end-to-end tests, and the official OpenAI SDK sending a Coder token as its
API key.
"""

import json

import openai
import pytest
import pytest_twisted
from twisted.internet import defer, threads

from tests import fakes
from tests.certs import make_ca
from tests.coderfake import FakeCoder, coder_token, listen_tls
from tests.conftest import assert_no_secrets
from tests.payloads import CHAT_CHUNKS, CHAT_JSON

MESSAGES = [{"role": "user", "content": "weather in Paris?"}]


def provider_like(request, received):
    """Answers chat completions as OpenAI does, streamed or not."""
    if json.loads(received.body).get("stream") is True:
        return fakes.sse_answer(CHAT_CHUNKS)(request, received)
    return fakes.json_answer(200, CHAT_JSON)(request, received)


@defer.inlineCallbacks
def deployment(tmp_path, hostname="localhost", **coder_settings):
    """A fake Coder deployment over HTTPS and a bridge checking tokens with it: C{(coder, running, ports)}."""
    ca_path, issue = make_ca(tmp_path)
    cert, key = issue(hostname)
    coder = FakeCoder()
    port = listen_tls(coder, cert, key)
    settings = {"url": f"https://localhost:{port.getHost().port}", "ca_file": str(ca_path), **coder_settings}
    running = yield fakes.start_bridge(tmp_path, {"identity_backend": "coder", "plugins": {"coder": settings}})
    running.ports.append(port)
    running.upstream.handler = provider_like
    return coder, running


def client(running, token):
    return openai.OpenAI(base_url=running.url + "/openai/v1", api_key=token, max_retries=0, timeout=10)


@pytest_twisted.inlineCallbacks
def test_openai_sdk_with_a_coder_token(tmp_path, captured_log):
    """A Coder token as the SDK's key: the deployment sees it, the provider sees the provider key; recorded for the user."""
    coder, running = yield deployment(tmp_path)
    try:
        alice = coder.add_user("alice")
        token = coder.add_token(alice["id"])
        sdk = client(running, token)
        result = yield threads.deferToThread(sdk.chat.completions.create, model="gpt-4o", messages=MESSAGES)
        assert result.choices[0].message.tool_calls[0].function.name == "get_weather"

        def stream():
            return "".join(chunk.choices[0].delta.content or "" for chunk in sdk.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, stream=True) if chunk.choices)
        assert (yield threads.deferToThread(stream)) == "Hello"

        assert [(c.path, c.token) for c in coder.calls] == [(b"/api/v2/users/me", token)]  # cached after one
        for seen in running.upstream.requests:
            assert seen.headers["authorization"] == [f"Bearer {fakes.OPENAI_KEY}"]
            assert token not in json.dumps(seen.headers)
        yield running.flush()
        rows = running.rows()
        assert len(rows) == 2
        assert {(r["initiator_id"], r["initiator_username"], r["credential_user_id"]) for r in rows} == {
            (alice["id"], "alice", alice["id"])}
        assert_no_secrets(captured_log.text(), token, fakes.OPENAI_KEY)
    finally:
        yield running.stop()


@pytest_twisted.inlineCallbacks
def test_unknown_and_suspended_tokens_are_refused(tmp_path, captured_log):
    """An unknown token gets 401, a suspended user's 403 (both ways the deployment says so); nothing goes upstream."""
    coder, running = yield deployment(tmp_path)
    try:
        sam = coder.add_user("sam", status="suspended")
        suspended = coder.add_token(sam["id"])
        dora = coder.add_user("dora", status="dormant")
        dormant = coder.add_token(dora["id"])
        unknown = coder_token()
        with pytest.raises(openai.AuthenticationError) as caught:
            yield threads.deferToThread(client(running, unknown).chat.completions.create,
                                        model="gpt-4o", messages=MESSAGES)
        assert caught.value.status_code == 401
        for token in (suspended, dormant):
            with pytest.raises(openai.PermissionDeniedError):
                yield threads.deferToThread(client(running, token).chat.completions.create,
                                            model="gpt-4o", messages=MESSAGES)
        coder.suspended_as_401 = True
        other = coder.add_token(sam["id"])
        with pytest.raises(openai.PermissionDeniedError):
            yield threads.deferToThread(client(running, other).chat.completions.create,
                                        model="gpt-4o", messages=MESSAGES)
        assert running.upstream.requests == []
        assert_no_secrets(captured_log.text(), suspended, dormant, unknown, other)
    finally:
        yield running.stop()


@pytest_twisted.inlineCallbacks
def test_deployment_down_keeps_known_tokens_working(tmp_path, captured_log):
    """The deployment failing: a token it answered for still works (stale window); an unknown one gets 503."""
    coder, running = yield deployment(tmp_path, cache_seconds=0, stale_seconds=300, retry_seconds=0)
    try:
        alice = coder.add_user("alice")
        token = coder.add_token(alice["id"])
        yield threads.deferToThread(client(running, token).chat.completions.create, model="gpt-4o",
                                    messages=MESSAGES)
        coder.fail_with = 502
        result = yield threads.deferToThread(client(running, token).chat.completions.create, model="gpt-4o",
                                             messages=MESSAGES)
        assert result.id == "chatcmpl-1"
        unknown = coder_token()
        with pytest.raises(openai.InternalServerError) as caught:
            yield threads.deferToThread(client(running, unknown).chat.completions.create,
                                        model="gpt-4o", messages=MESSAGES)
        assert caught.value.status_code == 503
        assert caught.value.response.headers["retry-after"] == "1"
        assert "Coder deployment" in caught.value.response.json()["error"]["message"]
        assert coder.checks() == 3
        assert len(running.upstream.requests) == 2
        text = captured_log.text()
        assert "could not check a token: it sent status 502" in text
        assert "503 (identity_unavailable)" in text
        assert_no_secrets(text, token, unknown)
    finally:
        yield running.stop()


@pytest_twisted.inlineCallbacks
def test_deployment_certificate_for_another_host_is_not_trusted(tmp_path, captured_log):
    """The deployment's certificate is verified (service-identity): one for another name is no answer, 503; no token sent."""
    coder, running = yield deployment(tmp_path, hostname="wrong.example")
    try:
        alice = coder.add_user("alice")
        token = coder.add_token(alice["id"])
        with pytest.raises(openai.InternalServerError):
            yield threads.deferToThread(client(running, token).chat.completions.create,
                                        model="gpt-4o", messages=MESSAGES)
        assert coder.calls == []
        assert running.upstream.requests == []
        assert "could not check a token" in captured_log.text()
        assert_no_secrets(captured_log.text(), token)
    finally:
        yield running.stop()
