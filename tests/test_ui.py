"""
The dashboard in memory (tests/dashboards.py): who may see it, the session
cookie and the CSRF tokens, hostile text shown as text, paging and
filtering, key management with its effect on the gateway, the overview's
figures.  No sockets and no browser; time is the gateway's Clock.
"""

from __future__ import annotations

import re

import pytest

from bridgeproxy.store import dashboard as queries
from bridgeproxy.ui.resource import SESSION_SECONDS
from tests import memory, payloads
from tests.dashboards import START, Document, cookie_attributes, record
from tests.dashboards import dashboard as make_dashboard

PAGES = ("/ui/", "/ui/interceptions", "/ui/sessions", "/ui/users", "/ui/session?id=s", "/ui/interceptions/x")
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def dash():
    return make_dashboard()


# -- who may see it ------------------------------------------------------------------------------------


def test_every_page_sends_a_stranger_to_the_sign_in_form(dash):
    """Without a session, each page answers 303 to /ui/signin and shows nothing of the store."""
    dash.add(record(prompt="secret plans"))
    browser = dash.browser()
    for path in PAGES:
        answer = browser.get(path)
        assert answer.status == 303, path
        assert answer.headers["location"] == [b"/ui/signin"]
        assert b"secret plans" not in answer.body


def test_actions_without_a_session_are_refused(dash):
    """A POST to an action without a session is 403 and changes nothing."""
    browser = dash.browser()
    for path, fields in (("/ui/keys/create", {"username": "eve"}), ("/ui/keys/revoke", {"key_id": "ab"}),
                         ("/ui/users/disable", {"user_id": "x", "disabled": "1"}), ("/ui/signout", {})):
        answer = browser.post(path, {"csrf": "guess", **fields})
        assert answer.status == 403, path
    assert dash.store.db.list_keys() == []


def test_an_administrator_signs_in_with_a_session_cookie(dash):
    """An admin key opens a session: an HttpOnly, SameSite=Strict cookie for /ui/ that expires, holding no key."""
    key = dash.key("root", admin=True)
    browser = dash.browser()
    answer = browser.sign_in(key)
    assert answer.status == 303 and answer.headers["location"] == [b"/ui/"]
    line = [c for c in browser.set_cookies if c.startswith("bridgeproxy_ui=")][-1]
    attributes = cookie_attributes(line)
    assert {"httponly", "samesite", "path", "max-age"} <= set(attributes)
    assert attributes["samesite"] == "Strict" and attributes["path"] == "/ui/"
    assert attributes["max-age"] == str(SESSION_SECONDS)
    value = browser.cookies["bridgeproxy_ui"]
    assert key not in line and len(value) >= 40
    # The store keeps only its hash.
    stored = dash.store.db.execute("SELECT id_hash FROM ui_sessions")
    assert stored == [(queries.session_hash(value),)]
    page = browser.get("/ui/")
    assert page.status == 200
    assert "Signed in as root" in Document(page.body).all("div", class_="account")[0].text()


def test_keys_that_may_not_sign_in(dash):
    """A user's key is refused (403), so are an unknown key (401) and a disabled admin (403); no session either way."""
    user = dash.key("bob")
    disabled = dash.key("old-admin", admin=True)
    dash.store.db.set_user_disabled("old-admin", True)
    for key, status, says in ((user, 403, b"Only administrators"), ("bp_nope", 401, b"not valid"),
                              (disabled, 403, b"disabled"), ("", 400, b"Enter")):
        browser = dash.browser()
        answer = browser.sign_in(key)
        assert answer.status == status and says in answer.body
        assert "bridgeproxy_ui" not in browser.cookies
        if key:
            assert key.encode() not in answer.body  # never echoed back into the form
    assert dash.store.db.execute("SELECT COUNT(*) FROM ui_sessions") == [(0,)]


def test_sign_in_needs_its_form(dash):
    """A sign-in POST without the token of the form the browser was given (a cross-site login) is refused."""
    key = dash.key("root", admin=True)
    browser = dash.browser()
    answer = browser.post("/ui/signin", {"csrf": "forged", "key": key})
    assert answer.status == 403 and "bridgeproxy_ui" not in browser.cookies
    browser.get("/ui/signin")
    answer = browser.post("/ui/signin", {"key": key})
    assert answer.status == 403 and "bridgeproxy_ui" not in browser.cookies


def test_the_session_expires(dash):
    """Eight hours after signing in, the session is over."""
    browser = dash.signed_in()
    assert browser.get("/ui/").status == 200
    dash.clock.advance(SESSION_SECONDS - 1)
    assert browser.get("/ui/").status == 200
    dash.clock.advance(2)
    assert browser.get("/ui/").status == 303


def test_signing_out_ends_the_session_for_good(dash):
    """Sign-out clears the cookie and forgets the session: the old cookie replayed is not signed in."""
    browser = dash.signed_in()
    cookie = browser.cookies["bridgeproxy_ui"]
    answer = browser.post("/ui/signout", {"csrf": browser.csrf()})
    assert answer.status == 303 and answer.headers["location"] == [b"/ui/signin?out=1"]
    assert any(line.startswith("bridgeproxy_ui=;") and "Max-Age=0" in line for line in browser.set_cookies)
    assert "bridgeproxy_ui" not in browser.cookies
    replay = dash.browser()
    replay.cookies["bridgeproxy_ui"] = cookie
    assert replay.get("/ui/").status == 303
    assert b"Signed out" in browser.get("/ui/signin?out=1").body


def test_a_user_no_longer_admin_or_disabled_is_signed_out(dash):
    """Each page asks the identity backend again: a disabled administrator's session stops working."""
    browser = dash.signed_in("root")
    dash.store.db.set_user_disabled("root", True)
    assert browser.get("/ui/").status == 303


# -- CSRF -------------------------------------------------------------------------------------------------


def test_every_form_carries_the_sessions_csrf_token(dash):
    """Each POST form on the pages holds the session's token, and only that one."""
    dash.key("bob")
    browser = dash.signed_in()
    token = browser.csrf()
    forms = Document(browser.get("/ui/users").body).all("form", method="post")
    assert len(forms) >= 4  # create, revoke x2, disable, sign out
    for form in forms:
        tokens = [n.attrs["value"] for n in form.walk() if n.tag == "input" and n.attrs.get("name") == "csrf"]
        assert tokens == [token]


@pytest.mark.parametrize("token", [None, "", "wrong", "other-session"])
def test_actions_need_the_csrf_token(dash, token):
    """Creating a key, revoking one, disabling a user and signing out are refused without the session's token."""
    bob = dash.key("bob")
    key_id = dash.store.db.list_keys()[0]["key_id"]
    bob_id = dash.store.db.list_keys()[0]["user_id"]
    other = dash.signed_in("other-admin")
    browser = dash.signed_in()
    if token == "other-session":
        token = other.csrf()
    extra = {} if token is None else {"csrf": token}
    for path, fields in (("/ui/keys/create", {"username": "eve"}), ("/ui/keys/revoke", {"key_id": key_id}),
                         ("/ui/users/disable", {"user_id": bob_id, "disabled": "1"}), ("/ui/signout", {})):
        answer = browser.post(path, {**extra, **fields})
        assert answer.status == 403, path
        assert b"out of date" in answer.body
    assert [k["username"] for k in dash.store.db.list_keys()] == ["bob", "other-admin", "root"]
    assert dash.store.db.identify(bob) is not None and not dash.store.db.lookup_user(bob_id).disabled
    assert browser.get("/ui/").status == 200


def test_a_form_must_be_a_form(dash):
    """A POST that is not URL-encoded (JSON, a text/plain cross-site form) is refused with 415."""
    browser = dash.signed_in()
    answer = browser.post("/ui/keys/create", {"csrf": browser.csrf(), "username": "eve"},
                          {"Content-Type": "text/plain"})
    assert answer.status == 415
    assert [k["username"] for k in dash.store.db.list_keys()] == ["root"]


# -- hostile text is text ----------------------------------------------------------------------------------

HOSTILE = '<script>alert("p")</script><img src=x onerror=alert(1)>"\'&amp;'


def test_prompts_tool_arguments_and_names_are_escaped(dash):
    """Everything recorded is shown as the text it is, on every page that shows it: no element comes from it."""
    dash.add(record(id="r-1", prompt=HOSTILE, initiator_username='<b id="x">bob</b>', model='m"><svg onload=1>',
                    client='Cl<i>ent', client_session_id='s"><script>1</script>', error=HOSTILE,
                    tool_calls=[("<tool>", '{"cmd": "</pre><script>alert(2)</script>"}', "c'1")]))
    browser = dash.signed_in()
    pages = ["/ui/", "/ui/interceptions", "/ui/interceptions/r-1", "/ui/sessions",
             "/ui/session?id=" + 's%22%3E%3Cscript%3E1%3C%2Fscript%3E', "/ui/interceptions?q=%3Cscript%3E"]
    for path in pages:
        answer = browser.get(path)
        assert answer.status == 200, path
        doc = Document(answer.body)
        assert doc.all("script") == [] and doc.all("img") == [] and doc.all("b") == [] and doc.all("i") == []
        assert [n for n in doc.root.walk() if any(a.startswith("on") for a in n.attrs)] == []
        assert b"<script>" not in answer.body
    detail = Document(browser.get("/ui/interceptions/r-1").body)
    assert detail.by_id("prompt").text() == HOSTILE
    assert '</pre><script>alert(2)</script>' in detail.all("pre", class_="arguments")[0].text()


def test_every_page_is_sent_with_a_strict_content_security_policy(dash):
    """Pages forbid scripts, frames and anything from elsewhere; none is cached."""
    browser = dash.signed_in()
    for path in ("/ui/", "/ui/signin", "/ui/users"):
        headers = browser.get(path).headers
        policy = headers["content-security-policy"][0]
        assert b"default-src 'none'" in policy and b"frame-ancestors 'none'" in policy
        assert b"script-src" not in policy
        assert headers["cache-control"] == [b"no-store"] and headers["x-content-type-options"] == [b"nosniff"]


# -- interceptions: paging and filters ---------------------------------------------------------------------


def _older(body: bytes):
    found = Document(body).all("a", id="older")
    return found[0].attrs["href"] if found else None


def test_pages_walk_every_row_once_newest_first(dash):
    """120 rows (ties on the start time included) come out 50, 50, 20, newest first, each once."""
    rows = [record(id=f"id-{i:03d}", started_at=START - (i // 3)) for i in range(120)]
    dash.add(*rows)
    browser = dash.signed_in()
    seen, path, sizes = [], "/ui/interceptions", []
    while path:
        answer = browser.get(path)
        ids = re.findall(rb'href="/ui/interceptions/(id-\d+)"', answer.body)
        sizes.append(len(ids))
        seen += [i.decode() for i in ids]
        path = _older(answer.body)
    assert sizes == [50, 50, 20]
    expected = sorted(rows, key=lambda r: (r.started_at, r.id), reverse=True)
    assert seen == [r.id for r in expected]


@pytest.mark.parametrize("query, expected", [
    ("model=gpt-5", {"b"}), ("user=bob", {"b", "c"}), ("client=Codex", {"c"}), ("provider=anthropic", {"d"}),
    ("status=refused", {"c"}), ("q=PaRsEr", {"a", "d"}), ("q=100%25", {"e"}),
    ("from=2026-11-24T09:00&to=2026-11-24T09:30", {"b"}), ("user=bob&model=gpt-4o", {"c"}),
])
def test_filters(dash, query, expected):
    """Each filter of the table selects what it says (the prompt search is case-insensitive, % is literal)."""
    dash.add(record(id="a", prompt="fix the parser"),
             record(id="b", model="gpt-5", initiator_username="bob", started_at=START - 3600 + 60),
             record(id="c", initiator_username="bob", client="Codex", status="refused"),
             record(id="d", provider="anthropic", prompt="the Parser again"),
             record(id="e", prompt="100% sure", started_at=START + 5))
    browser = dash.signed_in()
    answer = browser.get("/ui/interceptions?" + query)
    assert answer.status == 200
    assert {i.decode() for i in re.findall(rb'href="/ui/interceptions/([a-e])"', answer.body)} == expected


def test_a_text_search_pages_through_windows(dash, monkeypatch):
    """A search looks at a window of rows per page, says so, and its next page continues where it stopped."""
    monkeypatch.setattr(queries, "SEARCH_WINDOW", 10)
    dash.add(*[record(id=f"n-{i:02d}", started_at=START - i, prompt="needle" if i in (3, 25) else "hay")
               for i in range(30)])
    browser = dash.signed_in()
    found, path, pages = [], "/ui/interceptions?q=needle", 0
    while path:
        answer = browser.get(path)
        pages += 1
        assert b"looks at 10 rows" in answer.body
        found += [i.decode() for i in re.findall(rb'href="/ui/interceptions/(n-\d+)"', answer.body)]
        path = _older(answer.body)
    assert found == ["n-03", "n-25"] and pages == 3


@pytest.mark.parametrize("query", ["status=bogus", "after=nonsense", "after=1.5", "from=yesterday", "q=" + "x" * 201])
def test_bad_arguments_are_a_clear_400(dash, query):
    """A filter the table cannot use is answered with a page saying which one, not a crash."""
    browser = dash.signed_in()
    answer = browser.get("/ui/interceptions?" + query)
    assert answer.status == 400
    name = query.split("=")[0]
    assert name.encode() in answer.body or b"text to search" in answer.body


# -- the detail -----------------------------------------------------------------------------------------------


def test_the_detail_shows_who_what_and_every_tool_call(dash):
    """Delegation, the masked credential hint, tokens, cost, timings, the prompt and each tool call's arguments."""
    dash.add(record(id="d-1", initiator_id="11111111-2222-4333-8444-555555555555", initiator_username="alice",
                    credential_user_id="99999999-2222-4333-8444-555555555555", credential_kind="central",
                    credential_hint="sk-c...ef", client_session_id="sess-9", input_tokens=1234, output_tokens=56,
                    cache_read_tokens=7, cost_micros=1_234_500, ttfb_ms=87, prompt="do the thing",
                    tool_calls=[("read_file", '{"path":"a.py"}', "t1"), ("bash", "not json", None)]))
    browser = dash.signed_in()
    doc = Document(browser.get("/ui/interceptions/d-1").body)
    text = doc.text()
    assert doc.by_id("delegated").text() == "delegated"
    for shown in ("99999999-2222-4333-8444-555555555555", "central · sk-c...ef", "1,234", "1.2345", "87 ms",
                  "1,500 ms", "sess-9", "do the thing", "read_file", "bash", "not json"):
        assert shown in text, shown
    arguments = [n.text() for n in doc.all("pre", class_="arguments")]
    assert arguments == ['{\n  "path": "a.py"\n}', "not json"]
    assert browser.get("/ui/interceptions/nope").status == 404


def test_a_request_through_the_gateway_is_shown_with_its_tool_call(dash):
    """A real request through the gateway in memory: its detail shows the model's tool call and time to first byte."""
    key = dash.key("alice")
    dash.gateway.upstream.handler = memory.json_answer(200, payloads.CHAT_JSON)
    answer = dash.gateway.send("POST", "/openai/v1/chat/completions", CHAT, {"Authorization": f"Bearer {key}"})
    assert answer.status == 200
    [made] = dash.gateway.bridge.recorder.records
    assert made.ttfb_ms is not None and made.ttfb_ms >= 0
    browser = dash.signed_in()
    doc = Document(browser.get(f"/ui/interceptions/{made.id}").body)
    assert "get_weather" in doc.text() and '"city": "Paris"' in doc.all("pre", class_="arguments")[0].text()


# -- sessions ---------------------------------------------------------------------------------------------------


def test_sessions_are_listed_with_their_requests_on_a_timeline(dash):
    """A client session's page draws one bar per request, each a link to its detail."""
    dash.add(*[record(id=f"s-{i}", client_session_id="cc-1", started_at=START + 10 * i) for i in range(3)],
             record(id="other", client_session_id="cx-2", client="Codex"))
    browser = dash.signed_in()
    listing = Document(browser.get("/ui/sessions").body)
    assert [a.text() for a in listing.by_id("sessions").walk() if a.tag == "a"] == ["cc-1", "cx-2"]
    page = Document(browser.get("/ui/session?id=cc-1").body)
    bars = page.all("rect", class_="span status-ok")
    assert len(bars) == 3
    assert sorted(a.attrs["href"] for a in page.all("a") if a.attrs.get("href", "").startswith("/ui/interceptions/s-")) \
        == sorted([f"/ui/interceptions/s-{i}" for i in range(3)] * 2)
    assert browser.get("/ui/session?id=unknown").status == 404


# -- users and keys ------------------------------------------------------------------------------------------------


def test_create_a_key_use_it_revoke_it(dash):
    """A key made on the page is shown once and works at the gateway; revoked, the gateway answers 401."""
    browser = dash.signed_in()
    made = browser.post("/ui/keys/create", {"csrf": browser.csrf(), "username": "carol", "expires_days": "30"})
    assert made.status == 201
    token = Document(made.body).by_id("new-key").text()
    assert token.startswith("bp_") and made.headers["cache-control"] == [b"no-store"]
    headers = {"Authorization": f"Bearer {token}"}
    assert dash.gateway.send("POST", "/openai/v1/chat/completions", CHAT, headers).status == 200
    users = browser.get("/ui/users")
    assert token.encode() not in users.body
    key_id = [k["key_id"] for k in dash.store.db.list_keys() if k["username"] == "carol"][0]
    item = Document(users.body).all("li", data_key_id=key_id)[0]
    assert "expires" in item.text()
    revoked = browser.post("/ui/keys/revoke", {"csrf": browser.csrf(), "key_id": key_id})
    assert revoked.status == 303
    assert b"revoked" in browser.get(revoked.headers["location"][0].decode()).body
    assert dash.gateway.send("POST", "/openai/v1/chat/completions", CHAT, headers).status == 401
    again = browser.post("/ui/keys/revoke", {"csrf": browser.csrf(), "key_id": key_id})
    assert again.status == 404


def test_revoking_the_key_of_a_session_ends_it(dash):
    """Sessions made with a key end when it is revoked."""
    admin_key = dash.key("second", admin=True)
    other = dash.browser()
    other.sign_in(admin_key)
    browser = dash.signed_in()
    key_id = dash.store.db.identify(admin_key).key_id
    browser.post("/ui/keys/revoke", {"csrf": browser.csrf(), "key_id": key_id})
    assert other.get("/ui/").status == 303 and browser.get("/ui/").status == 200


def test_disable_a_user(dash):
    """A disabled user is refused at the gateway (403); enabled again, served; nobody can disable themselves."""
    key = dash.key("bob")
    bob_id = dash.store.db.identify(key).user_id
    browser = dash.signed_in()
    headers = {"Authorization": f"Bearer {key}"}
    assert browser.post("/ui/users/disable", {"csrf": browser.csrf(), "user_id": bob_id, "disabled": "1"}).status == 303
    assert dash.gateway.send("POST", "/openai/v1/chat/completions", CHAT, headers).status == 403
    assert browser.post("/ui/users/disable", {"csrf": browser.csrf(), "user_id": bob_id, "disabled": "0"}).status == 303
    assert dash.gateway.send("POST", "/openai/v1/chat/completions", CHAT, headers).status == 200
    root_id = dash.store.db.execute("SELECT id FROM users WHERE username = 'root'")[0][0]
    answer = browser.post("/ui/users/disable", {"csrf": browser.csrf(), "user_id": root_id, "disabled": "1"})
    assert answer.status == 400 and not dash.store.db.lookup_user(root_id).disabled


def test_no_page_or_link_holds_a_full_key(dash):
    """Every key appears on no page and in no link but the one page that showed it once."""
    keys = [dash.key("alice"), dash.key("bob", admin=True)]
    browser = dash.signed_in()
    keys.append(Document(browser.post("/ui/keys/create", {"csrf": browser.csrf(), "username": "c"}).body)
                .by_id("new-key").text())
    dash.add(record(prompt="x"))
    queue, seen = ["/ui/"], set()
    while queue:
        path = queue.pop()
        if path in seen or not path.startswith("/ui/"):
            continue
        seen.add(path)
        answer = browser.get(path)
        assert not [k for k in keys if k.encode() in answer.body or k in path], path
        queue += [link for link in Document(answer.body).links() if link not in seen]
    assert {"/ui/users", "/ui/interceptions", "/ui/sessions"} <= seen


# -- the overview ----------------------------------------------------------------------------------------------------


def test_the_overview_draws_what_was_recorded(dash):
    """Its bars, totals and rates are the store's figures, per hour; a stream being relayed shows as in flight."""
    dash.add(record(started_at=START - 2 * 3600, input_tokens=10, output_tokens=1),
             record(started_at=START, status="refused", input_tokens=0, output_tokens=0, cost_micros=None),
             record(started_at=START + 60, status="ok", upstream_status=500, input_tokens=5, output_tokens=0),
             record(started_at=START + 120, model="mystery", cost_micros=None))
    key = dash.key("streamer")
    dash.gateway.upstream.handler = memory.sse_answer(payloads.CHAT_CHUNKS[:1], end="hang")
    dash.gateway.open("POST", "/openai/v1/chat/completions", {**CHAT, "stream": True},
                      {"Authorization": f"Bearer {key}"})
    browser = dash.signed_in()
    doc = Document(browser.get("/ui/").body)
    assert doc.by_id("total-requests").text() == "4"
    assert doc.by_id("error-rate").text() == "25.0%" and doc.by_id("refusal-rate").text() == "25.0%"
    assert doc.by_id("streams-in-flight").text() == "1"
    bars = {int(g.attrs["data-start"]): g.attrs for g in doc.all("g", class_="bucket")
            if g.parent.attrs.get("data-chart") == "requests"}
    assert len(bars) == 24
    now = {k: int(v) for k, v in bars[int(START)].items() if k in ("data-answered", "data-errors", "data-refused")}
    assert now == {"data-answered": 1, "data-errors": 1, "data-refused": 1}
    assert bars[int(START) - 7200]["data-answered"] == "1"
    assert "unpriced" in doc.text()
    tops = Document(browser.get("/ui/").body).by_id("top-model").text()
    assert "mystery" in tops
    assert browser.get("/ui/?range=90d&bucket=hour").status == 200
    assert browser.get("/ui/?range=1y").status == 400


def test_the_static_files_come_from_the_package(dash):
    """The style sheet and icon are served without a session, from package data; /ui redirects to /ui/."""
    browser = dash.browser()
    css = browser.get("/ui/static/ui.css")
    assert css.status == 200 and css.headers["content-type"] == [b"text/css; charset=utf-8"]
    assert b"--accent" in css.body
    assert browser.get("/ui/static/favicon.svg").body.startswith(b"<svg")
    assert browser.get("/ui/static/../api.py").status == 400  # the gateway refuses such a path first
    assert browser.get("/ui/static/nothing.js").status == 404
    answer = browser.get("/ui")
    assert answer.status == 301 and answer.headers["location"] == [b"/ui/"]


def test_unknown_pages_are_the_dashboards_404(dash):
    """An unknown path under /ui/ is an HTML 404 of the dashboard (after sign-in), not the gateway's JSON."""
    browser = dash.signed_in()
    for path in ("/ui/nothing", "/ui/users/nothing", "/ui/interceptions/a/b"):
        answer = browser.get(path)
        assert answer.status == 404 and answer.headers["content-type"] == [b"text/html; charset=utf-8"], path



def test_the_users_page_shows_each_budget(dash):
    """The budget column: a user's own budget, spent and left this period; a user without one has none."""
    from bridgeproxy.store.budgets import set_budget
    key = dash.key("carol")
    carol = dash.store.db.identify(key).user_id
    set_budget(dash.store.db, carol, 25_000_000, "month", "carol")
    dash.store.db.execute("INSERT INTO budget_spend (user_id, day, username, spent_micros) VALUES (?, ?, ?, ?)",
                          (carol, int(START // 86400), "carol", 5_000_000))
    browser = dash.signed_in()
    doc = Document(browser.get("/ui/users").body)
    assert "budget (this period)" in doc.by_id("users").text()
    cells = {tr.all("a")[0].text(): tr for tr in doc.by_id("users").walk() if tr.tag == "tr" and tr.all("a")}
    assert "5.0000 of 25.0000 a month" in cells["carol"].text() and "20.0000 left" in cells["carol"].text()
    assert "none" in cells["root"].text()
