"""
TLS on both sides, with a CA made for the test: the bridge listening with an
`ssl:` endpoint, and the upstream's certificate verified (service-identity),
a wrong hostname refused with 502.
"""

import json

import pytest
import pytest_twisted
from twisted.internet import reactor, ssl
from twisted.internet.endpoints import serverFromString
from twisted.web import server
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from tests import fakes
from tests.certs import make_ca
from tests.http import call

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def tls_upstream(upstream, cert_path, key_path):
    cert = ssl.PrivateCertificate.loadPEM(cert_path.read_text() + key_path.read_text())
    return reactor.listenSSL(0, server.Site(upstream), cert.options(), interface="127.0.0.1")


@pytest.mark.parametrize("client", ["httptools", "twisted"])
@pytest_twisted.inlineCallbacks
def test_tls_listener_and_verified_upstream(tmp_path, captured_log, client):
    """A client reaches the bridge over TLS; the bridge verifies the upstream's certificate against ca_file."""
    ca_path, issue = make_ca(tmp_path)
    good_cert, good_key = issue("localhost")
    upstream = fakes.FakeUpstream()
    up_port = tls_upstream(upstream, good_cert, good_key)
    base = f"https://localhost:{up_port.getHost().port}"
    running = yield fakes.start_bridge(tmp_path, {
        "providers": {"openai": {"base_url": base + "/v1", "key_env": "T_OPENAI_KEY"}},
        "upstream": {"ca_file": str(ca_path), "client": client}})
    tls_port = yield serverFromString(
        reactor, f"ssl:0:interface=127.0.0.1:privateKey={good_key}:certKey={good_cert}").listen(running.app.site)
    running.ports.append(tls_port)
    try:
        token = running.create_key("alice")
        trust = ssl.Certificate.loadPEM(ca_path.read_bytes())
        client = Agent(reactor, BrowserLikePolicyForHTTPS(trustRoot=trust), pool=HTTPConnectionPool(reactor, False))
        response, body = yield call(client, "POST", f"https://localhost:{tls_port.getHost().port}/openai/v1/chat/completions",
                                    CHAT, {"Authorization": f"Bearer {token}"})
        assert response.code == 200
        assert upstream.requests[0].headers["authorization"] == [f"Bearer {fakes.OPENAI_KEY}"]
    finally:
        yield running.stop()
        yield up_port.stopListening()


@pytest.mark.parametrize("client", ["httptools", "twisted"])
@pytest_twisted.inlineCallbacks
def test_upstream_with_wrong_hostname_is_refused(tmp_path, agent, captured_log, client):
    """An upstream whose certificate names another host is refused (502); nothing reaches it."""
    ca_path, issue = make_ca(tmp_path)
    wrong_cert, wrong_key = issue("wrong.example")
    upstream = fakes.FakeUpstream()
    up_port = tls_upstream(upstream, wrong_cert, wrong_key)
    running = yield fakes.start_bridge(tmp_path, {
        "providers": {"openai": {"base_url": f"https://localhost:{up_port.getHost().port}/v1", "key_env": "T_OPENAI_KEY"}},
        "upstream": {"ca_file": str(ca_path), "client": client}})
    try:
        token = running.create_key("alice")
        response, body = yield call(agent, "POST", running.url + "/openai/v1/chat/completions", CHAT,
                                    {"Authorization": f"Bearer {token}"})
        assert response.code == 502
        assert json.loads(body)["error"]["type"] == "server_error"
        assert upstream.requests == []
    finally:
        yield running.stop()
        yield up_port.stopListening()
