"""
The dashboard in a real browser (headless Chromium, tests/browsers.py)
against a real bridge on loopback, fed by requests sent through the
gateway in the test: sign in, the overview's charts, filtering the
interceptions, a detail with its tool calls, a session's timeline, creating
and revoking a key (the revoked key is then refused by the gateway), signing
out; a key that is not an administrator's is refused.  Each page is
screenshotted (into the test's directory; into docs/ui/ with
BRIDGEPROXY_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

import os
import time
import uuid

import pytest_twisted

from bridgeproxy.store.budgets import set_budget
from bridgeproxy.types import Interception, ToolCall
from tests import fakes, payloads
from tests.browsers import chrome
from tests.http import call

HOSTILE = "<script>document.title='owned'</script><img src=x onerror=alert(1)> what does a.py do?"
ERROR_BODY = {"error": {"message": "The server had an error", "type": "server_error", "param": None, "code": None}}


def _answer(request, received):
    """The fake provider: a chat completion with a tool call, a message with tool_use, a 500 for 'gpt-broken'."""
    body = received.json() if received.body else {}
    if body.get("model") == "gpt-broken":
        return fakes.json_answer(500, ERROR_BODY)(request, received)
    if received.uri.startswith(b"/v1/messages"):
        return fakes.json_answer(200, payloads.MESSAGE_JSON)(request, received)
    return fakes.json_answer(200, payloads.CHAT_JSON)(request, received)


def _history(now: float) -> list[Interception]:
    """
    Older requests, written to the store directly (2 hours to 7 days back),
    so that the charts and screenshots show a week of use; nothing asserted
    below counts them.
    """
    users = [("dana", "Claude Code", "anthropic", "claude-sonnet-4-5"), ("erik", "Codex", "openai", "gpt-5"),
             ("fay", "Coder Agents", "anthropic", "claude-opus-4-1"), ("dana", "Claude Code", "openai", "gpt-4o-mini")]
    found = []
    for hour in range(2, 24 * 7):
        at = now - hour * 3600
        busy = 1 + (hour * 7919) % 5 + (4 if 8 <= time.gmtime(at).tm_hour <= 18 else 0)
        for n in range(busy):
            name, client, provider, model = users[(hour + n) % len(users)]
            status = "refused" if (hour + n) % 23 == 0 else "error" if (hour + n) % 17 == 0 else "ok"
            found.append(Interception(
                id=str(uuid.uuid4()), started_at=at + n * 60, ended_at=at + n * 60 + 4 + n, provider=provider,
                route="messages" if provider == "anthropic" else "chat", intercepted=True, method="POST",
                model=model, streamed=True, client=client, client_session_id=f"{name}-{client}-{hour // 6}",
                user_agent=None, initiator_id=None, initiator_username=name, credential_user_id=None,
                credential_kind="central", credential_hint="sk-...ef", upstream_status=200 if status == "ok" else 500,
                http_status=200, input_tokens=800 + 50 * n, output_tokens=120 + 10 * n,
                cache_read_tokens=4000 + 100 * hour % 900, cache_write_tokens=200, prompt="refactor the parser",
                tool_calls=(ToolCall("bash", '{"cmd": "pytest -q"}', f"call_{hour}_{n}"),), status=status,
                cost_micros=(800 + 50 * n) * 3 + (120 + 10 * n) * 15, attempts=1, ttfb_ms=300 + 10 * n))
    return found


def _bucket_sum(driver, chart: str, keys: tuple[str, ...], since: float) -> int:
    """The sum of C{keys} over the bars of C{chart} that start at or after C{since}, as the page draws them."""
    total = 0
    for bar in driver.find_elements("css selector", f'svg[data-chart="{chart}"] g.bucket'):
        if int(bar.get_attribute("data-start")) >= since:
            total += sum(int(bar.get_attribute(f"data-{key}") or 0) for key in keys)
    return total


@pytest_twisted.inlineCallbacks
def test_dashboard_in_a_browser(tmp_path, agent, captured_log):
    """An administrator signs in, reads every page drawn from real traffic, manages keys, and signs out."""
    browser = chrome()
    upstream = fakes.FakeUpstream()
    upstream.handler = _answer
    bridge = yield fakes.start_bridge(tmp_path, upstream=upstream)
    shots = str(tmp_path / "screenshots")
    try:
        admin = bridge.create_key("root", admin=True)
        alice = bridge.create_key("alice")
        bob = bridge.create_key("bob")
        started = time.time()
        this_hour = started // 3600 * 3600
        db = bridge.db()
        try:
            db.insert_interceptions(_history(started))
            set_budget(db, db.identify(alice).user_id, 10_000_000, "month", "alice")
        finally:
            db.close()

        # -- traffic through the gateway -------------------------------------------------------------
        claude = {"Authorization": f"Bearer {alice}", "User-Agent": "claude-cli/2.0.31 (external, cli)",
                  "X-Claude-Code-Session-Id": "cc-session-1", "anthropic-version": "2023-06-01"}
        codex = {"Authorization": f"Bearer {bob}", "User-Agent": "codex_cli_rs/0.50.0", "session-id": "codex-7"}
        sent = []
        for prompt in (HOSTILE, "and now fix it"):
            response, _ = yield call(agent, "POST", bridge.url + "/anthropic/v1/messages", {
                "model": "claude-sonnet-4-6", "max_tokens": 100,
                "messages": [{"role": "user", "content": prompt}]}, claude)
            sent.append(response.code)
        for model in ("gpt-4o", "gpt-4o", "gpt-broken"):
            response, _ = yield call(agent, "POST", bridge.url + "/openai/v1/chat/completions", {
                "model": model, "messages": [{"role": "user", "content": "weather in Paris?"}]}, codex)
            sent.append(response.code)
        response, _ = yield call(agent, "POST", bridge.url + "/openai/v1/no/such/route", {"model": "gpt-4o"}, codex)
        sent.append(response.code)
        assert sent == [200, 200, 200, 200, 500, 404]
        yield bridge.flush()
        rows = [r for r in bridge.rows() if r["started_at"] >= started]
        assert len(rows) == 6
        input_tokens = sum(r["input_tokens"] for r in rows)

        # -- a key that is not an administrator's is refused ------------------------------------------
        yield browser.get(bridge.url + "/ui/")
        assert (yield browser.do(lambda d: d.current_url)).endswith("/ui/signin")

        def sign_in(key):
            def work(d):
                d.find_element("id", "key").send_keys(key)
                d.find_element("id", "sign-in").click()
            return work

        def main_text(d):
            return d.find_element("css selector", "main").text
        text = yield browser.submit(sign_in(alice), main_text)
        assert "Only administrators can sign in" in text
        assert "bridgeproxy_ui" not in [c["name"] for c in (yield browser.do(lambda d: d.get_cookies()))]
        yield browser.screenshot(shots, "signin")

        # -- the administrator signs in: the overview's charts hold the traffic just sent -----------
        yield browser.submit(sign_in(admin))
        cookies = yield browser.do(lambda d: d.get_cookies())
        session = [c for c in cookies if c["name"] == "bridgeproxy_ui"]
        assert len(session) == 1 and session[0]["httpOnly"] and session[0]["sameSite"] == "Strict"
        assert session[0]["value"] != admin
        assert (yield browser.do(lambda d: d.current_url)).endswith("/ui/")
        drawn = yield browser.do(lambda d: _bucket_sum(d, "requests", ("answered", "errors", "refused"),
                                                       this_hour))
        assert drawn == 6
        errors = yield browser.do(lambda d: _bucket_sum(d, "requests", ("errors",), this_hour))
        refused = yield browser.do(lambda d: _bucket_sum(d, "requests", ("refused",), this_hour))
        assert (errors, refused) == (1, 1)
        tokens = yield browser.do(lambda d: _bucket_sum(d, "tokens", ("input-tokens",), this_hour))
        assert tokens == input_tokens > 0
        bars = yield browser.do(lambda d: len(d.find_elements("css selector", 'svg[data-chart="tokens"] rect.input_tokens')))
        assert bars > 1
        top_users = yield browser.do(lambda d: d.find_element("id", "top-initiator").text)
        assert "alice" in top_users and "bob" in top_users
        yield browser.screenshot(shots, "overview")

        # -- interceptions: filtered by model, then by prompt text ------------------------------------
        yield browser.get(bridge.url + "/ui/interceptions")
        yield browser.screenshot(shots, "interceptions")

        def filter_model(d):
            from selenium.webdriver.support.ui import Select
            Select(d.find_element("id", "filter-model")).select_by_value("claude-sonnet-4-6")
            d.find_element("id", "apply-filters").click()

        def table_rows(d):
            return [row.text for row in d.find_elements("css selector", "#interceptions tbody tr")]
        listed = yield browser.submit(filter_model, table_rows)
        assert len(listed) == 2 and all("claude-sonnet-4-6" in row for row in listed)

        def search(d):
            box = d.find_element("id", "filter-q")
            box.clear()
            box.send_keys("onerror")
            d.find_element("id", "apply-filters").click()
        found = yield browser.submit(search, table_rows)
        assert len(found) == 1

        # -- the detail: the hostile prompt is text, the tool call and its arguments are shown ------
        def open_first(d):
            d.find_element("css selector", "#interceptions tbody tr a.open").click()

        def detail_page(d):
            return {"title": d.title, "prompt": d.find_element("id", "prompt").text,
                    "scripts": len(d.find_elements("css selector", "main script, main img")),
                    "tools": [e.text for e in d.find_elements("css selector", ".tool-call")]}
        detail = yield browser.submit(open_first, detail_page)
        assert detail["prompt"] == HOSTILE and detail["scripts"] == 0 and "owned" not in detail["title"]
        assert len(detail["tools"]) == 1 and "read_file" in detail["tools"][0]
        assert '"path": "a.py"' in detail["tools"][0]
        yield browser.screenshot(shots, "interception")

        # -- sessions: Claude Code's session as a timeline of its two requests ------------------------
        yield browser.get(bridge.url + "/ui/sessions")
        listed = yield browser.do(lambda d: d.find_element("id", "sessions").text)
        assert "cc-session-1" in listed and "codex-7" in listed
        yield browser.screenshot(shots, "sessions")
        yield browser.get(bridge.url + "/ui/session?id=cc-session-1")
        spans = yield browser.do(lambda d: len(d.find_elements("css selector", "svg.timeline rect.span")))
        assert spans == 2
        yield browser.screenshot(shots, "session")

        # -- users and keys: create a key, use it, revoke it, and it is refused ---------------------
        yield browser.get(bridge.url + "/ui/users")

        def create(d):
            d.find_element("id", "new-username").send_keys("carol")
            d.find_element("id", "create-key").click()
        carol = yield browser.submit(create, lambda d: d.find_element("id", "new-key").text)
        assert carol.startswith("bp_")
        chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        response, _ = yield call(agent, "POST", bridge.url + "/openai/v1/chat/completions", chat,
                                 {"Authorization": f"Bearer {carol}"})
        assert response.code == 200
        yield browser.submit(lambda d: d.find_element("id", "back-to-users").click())
        yield browser.screenshot(shots, "users")
        page = yield browser.do(lambda d: d.page_source)
        assert carol not in page
        alice_row = yield browser.do(lambda d: d.find_element("xpath", "//tr[.//a[text()='alice']]").text)
        assert "of 10.0000 a month" in alice_row

        def revoke(d):
            key = d.find_element("xpath", "//tr[.//a[text()='carol']]//li[@data-key-id]")
            key.find_element("css selector", "button").click()
        done = yield browser.submit(revoke, lambda d: d.find_element("id", "done").text)
        assert "revoked" in done
        response, body = yield call(agent, "POST", bridge.url + "/openai/v1/chat/completions", chat,
                                    {"Authorization": f"Bearer {carol}"})
        assert response.code == 401, body

        # -- signing out ends the session --------------------------------------------------------------
        yield browser.submit(lambda d: d.find_element("css selector", ".account button").click())
        assert "Signed out" in (yield browser.do(lambda d: d.find_element("css selector", "main").text))
        yield browser.get(bridge.url + "/ui/users")
        assert (yield browser.do(lambda d: d.current_url)).endswith("/ui/signin")

        # -- no URL, and no page but the one that showed it once, held a full key ---------------------
        keys = (admin, alice, bob, carol)
        assert not [u for u in browser.visited if any(k in u for k in keys)]
        showing = [u for u, source in browser.sources if any(k in source for k in keys)]
        assert showing == [bridge.url + "/ui/keys/create"]
        assert not [k for k in keys if k in captured_log.text()]
    finally:
        yield browser.quit()
        yield bridge.stop()


@pytest_twisted.inlineCallbacks
def test_a_non_admin_cannot_reach_any_page(tmp_path):
    """Signed in as nobody, every page leads to the sign-in form; a user's key is refused there; no cookie is set."""
    browser = chrome()
    bridge = yield fakes.start_bridge(tmp_path)
    try:
        user = bridge.create_key("mallory")
        for path in ("/ui/", "/ui/interceptions", "/ui/sessions", "/ui/users", "/ui/session?id=x"):
            yield browser.get(bridge.url + path)
            assert (yield browser.do(lambda d: d.current_url)).endswith("/ui/signin"), path

        def sign_in(d):
            d.find_element("id", "key").send_keys(user)
            d.find_element("id", "sign-in").click()
        problem = yield browser.submit(sign_in, lambda d: d.find_element("css selector", ".problem").text)
        assert "Only administrators" in problem
        assert "bridgeproxy_ui" not in [c["name"] for c in (yield browser.do(lambda d: d.get_cookies()))]
        yield browser.get(bridge.url + "/ui/users")
        assert (yield browser.do(lambda d: d.current_url)).endswith("/ui/signin")
        source = yield browser.do(lambda d: d.page_source)
        assert user not in source
    finally:
        yield browser.quit()
        yield bridge.stop()


def test_screenshots_are_committed():
    """docs/ui/ holds a screenshot of each page the browser test visits (refreshed with BRIDGEPROXY_UPDATE_SCREENSHOTS=1)."""
    from tests.browsers import DOCS_SCREENSHOTS
    names = sorted(os.listdir(DOCS_SCREENSHOTS))
    assert names == sorted(f"{n}.png" for n in ("signin", "overview", "interceptions", "interception", "sessions",
                                                "session", "users"))
    for name in names:
        with open(os.path.join(DOCS_SCREENSHOTS, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"

