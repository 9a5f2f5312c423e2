"""
The dashboard's pages as an administrator gets them, byte for byte: a
store with a bit of everything (users with and without budgets, keys
active, expiring, expired and revoked, requests ok, refused, failed and
unpriced, tool calls, delegation, client sessions), on the gateway's Clock,
each page compared with the one kept in C{tests/pages/}.  Every figure,
label, link, chart bar and form a page shows is there: a change to any of
them shows as a diff.

After changing a page on purpose, write the pages again and review the diff
(C{git diff tests/pages}):

    BRIDGEPROXY_WRITE_PAGES=1 .venv/bin/python -m pytest -q tests/test_ui_pages.py

Then the refusals of the pages and actions, each with its status and the
message the administrator reads.
"""

from __future__ import annotations

import itertools
import os
import secrets
import uuid
from pathlib import Path
from urllib.parse import urlencode

import pytest
from twisted.web import server

from bridgeproxy.store import dashboard as queries
from bridgeproxy.store.budgets import set_budget
from bridgeproxy.ui import pages
from tests import memory, payloads
from tests.dashboards import START, Document, record
from tests.dashboards import dashboard as make_dashboard

PAGES = Path(__file__).parent / "pages"
H = 3600
ALICE = "3f6c2a1e-9b8d-4c7e-a5f4-0d1e2c3b4a59"
BOB = "8f3e1c7a-2b4d-4e6f-8a9b-0c1d2e3f4a5b"
CAROL = "c0c0c0c0-1111-4222-8333-444444444444"
ROOT = "00000000-0000-4000-8000-000000000001"


@pytest.fixture
def steady(monkeypatch):
    """Ids and tokens the store and the dashboard draw at random come from counters instead."""
    numbers = itertools.count(1)
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=(next(numbers) << 64) + 1))
    tokens = itertools.count(1)
    monkeypatch.setattr(secrets, "token_urlsafe", lambda n=32: f"tok{next(tokens):0{max(8, n)}d}")


def check(name: str, body: bytes) -> None:
    """C{body} is the page kept as C{tests/pages/<name>.html} (one tag a line there, for readable diffs)."""
    shown = body.replace(b"><", b">\n<").decode("utf-8")
    path = PAGES / f"{name}.html"
    if os.environ.get("BRIDGEPROXY_WRITE_PAGES"):
        PAGES.mkdir(exist_ok=True)
        path.write_text(shown, "utf-8")
    assert shown.splitlines() == path.read_text("utf-8").splitlines(), name


def populate(dash) -> None:
    """Users, keys, budgets and requests: the store every page below shows."""
    db = dash.store.db
    db.ensure_user("root", ROOT, admin=True)
    db.ensure_user("alice", ALICE)
    db.ensure_user("bob", BOB)
    db.ensure_user("carol", CAROL)
    db.create_key("alice")
    db.create_key("bob", expires_at=START + 10 * 86400)
    expired, _ = db.create_key("carol", expires_at=START - 86400)
    revoked, _ = db.create_key("carol")
    db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (START - 2 * H, revoked))
    db.set_user_disabled("bob", True)
    set_budget(db, ALICE, 25_000_000, "month", "alice", now=START)
    set_budget(db, CAROL, 1_000_000, "day", "carol", now=START)
    day = int(START // 86400)
    db.execute("INSERT INTO budget_spend (user_id, day, username, spent_micros) VALUES (?, ?, ?, ?)",
               (ALICE, day, "alice", 5_000_000))
    db.execute("INSERT INTO budget_spend (user_id, day, username, spent_micros) VALUES (?, ?, ?, ?)",
               (CAROL, day, "carol", 1_000_000))
    db.execute("INSERT INTO budget_holds (id, user_id, day, amount_micros, holder, expires_at) "
               "VALUES (?, ?, ?, ?, ?, ?)", ("h-1", ALICE, day, 1_500_000, "elsewhere", START + 600))
    db.execute("INSERT INTO budget_spend (user_id, day, username, spent_micros) VALUES (?, ?, ?, ?)",
               (BOB, day, "bob", 250_000))
    dash.add(
        record(id="r-01", started_at=START - 600, initiator_id=ALICE, initiator_username="alice",
               credential_user_id="99999999-2222-4333-8444-555555555555", client_session_id="cc-1",
               input_tokens=1200, output_tokens=340, cache_read_tokens=50, cache_write_tokens=10,
               cost_micros=12_345, prompt="fix the parser\nplease", ttfb_ms=1234, stop_reason="tool_calls",
               tool_calls=[("read_file", '{"path":"a.py"}', "t1"), ("bash", "ls -l", None)]),
        record(id="r-02", started_at=START - 3 * H, initiator_id=BOB, initiator_username="bob",
               credential_user_id=BOB, client="Codex", client_session_id="cx-2", model="gpt-5", status="error",
               upstream_status=502, http_status=502, cost_micros=None, error="upstream said no",
               input_tokens=1_500_000, output_tokens=0, attempts=3),
        record(id="r-03", started_at=START - 26 * H, initiator_id=BOB, initiator_username="bob",
               credential_user_id=BOB, client="Codex", client_session_id="cx-2", provider="anthropic",
               route="messages", model="claude-sonnet-4-5", status="refused", upstream_status=None,
               http_status=429, input_tokens=0, output_tokens=0, cost_micros=None, ttfb_ms=None, prompt=None),
        record(id="r-04", started_at=START - 5 * 86400, initiator_id=None, initiator_username=None,
               credential_user_id=None, credential_kind=None, credential_hint=None, client="curl",
               user_agent=None, route="models", method="GET", intercepted=False, model=None, upstream_status=500,
               http_status=500, input_tokens=0, output_tokens=0, cost_micros=None, prompt=None, ttfb_ms=None),
        record(id="r-05", started_at=START - 1200, ended_at=START - 1200 + 75, initiator_id=ALICE,
               initiator_username="alice", credential_user_id=ALICE, client_session_id="cc-1", streamed=True,
               prompt="word " * 100, input_tokens=2_300_000_000, output_tokens=4321,
               cost_micros=2_000_000_000),
        record(id="r-06", started_at=START - 40 * 86400, initiator_id=CAROL, initiator_username="carol",
               credential_user_id=CAROL, status="timeout", upstream_status=None, http_status=504,
               cost_micros=700, client_session_id="old-1"),
        record(id="r-07", started_at=START - 2 * 86400 - 7 * H, ended_at=START - 2 * 86400 - 7 * H + 2 * H + 300,
               initiator_id=CAROL, initiator_username="carol", credential_user_id=CAROL, client="Codex",
               client_session_id="cx-9", model="gpt-5", status="incomplete", cost_micros=90),
    )


@pytest.fixture
def dash(steady):
    found = make_dashboard({"budgets": {"default_amount": 2, "default_period": "week"}})
    populate(found)
    return found


@pytest.fixture
def browser(dash):
    return dash.signed_in("root")


@pytest.mark.parametrize("name, path", [
    ("overview", "/ui/"),
    ("overview-7d", "/ui/?range=7d"),
    ("overview-24h-days", "/ui/?range=24h&bucket=day"),
    ("interceptions", "/ui/interceptions"),
    ("interceptions-filtered", "/ui/interceptions?user=bob&client=Codex&model=gpt-5&provider=openai&status=error"
                               "&from=2026-11-23&to=2026-11-24T10:00"),
    ("interceptions-unknown-choice", "/ui/interceptions?model=gpt-9&provider=nowhere"),
    ("interceptions-none", "/ui/interceptions?q=nothing+like+it"),
    ("interception", "/ui/interceptions/r-01"),
    ("interception-bare", "/ui/interceptions/r-04"),
    ("interception-refused", "/ui/interceptions/r-03"),
    ("sessions", "/ui/sessions"),
    ("sessions-30d", "/ui/sessions?range=30d&user=carol"),
    ("sessions-none", "/ui/sessions?range=24h&client=nobody"),
    ("session", "/ui/session?id=cc-1"),
    ("session-long", "/ui/session?id=cx-9"),
    ("users", "/ui/users"),
])
def test_pages(browser, name, path):
    """Each page of the dashboard shows the store as it is."""
    answer = browser.get(path)
    assert answer.status == 200, answer.body
    check(name, answer.body)


@pytest.mark.parametrize("path, buckets, offered", [
    ("/ui/?range=30d&bucket=hour", 720, ["hour", "day"]),
    ("/ui/?range=30d", 30, ["hour", "day"]),
    ("/ui/?range=90d&bucket=hour", 90, ["day"]),
    ("/ui/?range=90d", 90, ["day"]),
])
def test_hours_are_offered_up_to_thirty_days(browser, path, buckets, offered):
    """Hour bars up to a 30-day range; a longer one is drawn (and offered) in days only."""
    doc = Document(browser.get(path).body)
    bars = [g for g in doc.all("g", class_="bucket") if g.parent.attrs.get("data-chart") == "requests"]
    assert len(bars) == buckets
    assert [a.text() for a in doc.all("div", class_="ranges")[0].all("a")][4:] == offered


@pytest.mark.parametrize("query, flash", [
    ("done=revoked&key=0123abcd", "Key 0123abcd revoked: requests with it are refused from now on (within the key "
                                  "cache's few seconds)."),
    ("done=revoked&key=%3Cb%3E", "Key  revoked: requests with it are refused from now on (within the key cache's "
                                 "few seconds)."),
    ("done=revoked", "Key  revoked: requests with it are refused from now on (within the key cache's few seconds)."),
    ("done=disabled", "User disabled: their requests are refused and their dashboard sessions ended."),
    ("done=enabled", "User enabled again."),
    ("done=exploded", None),
])
def test_the_users_page_says_what_was_done(browser, query, flash):
    """After an action, the users page says what it did (a key id only when it is one)."""
    found = Document(browser.get("/ui/users?" + query).body).all("p", class_="flash")
    assert [p.text() for p in found] == ([flash] if flash else [])
    assert all(p.attrs["id"] == "done" for p in found)


def test_pages_of_an_empty_store(steady):
    """With nothing recorded, each page says so instead of drawing empty tables."""
    dash = make_dashboard()
    browser = dash.signed_in("root")
    for name, path in (("empty-overview", "/ui/"), ("empty-interceptions", "/ui/interceptions"),
                       ("empty-sessions", "/ui/sessions"), ("empty-users", "/ui/users")):
        answer = browser.get(path)
        assert answer.status == 200
        check(name, answer.body)


def test_paging(browser, monkeypatch):
    """Older pages link back to the newest; a text search says how many rows it looked at and goes on."""
    monkeypatch.setattr(pages, "PAGE_ROWS", 2)
    first = browser.get("/ui/interceptions?client=Claude+Code")
    check("paged-first", first.body)
    older = Document(first.body).by_id("older").attrs["href"]
    check("paged-older", browser.get(older).body)
    monkeypatch.setattr(queries, "SEARCH_WINDOW", 3)
    searched = browser.get("/ui/interceptions?q=e")
    check("searched-first", searched.body)
    check("searched-older", browser.get(Document(searched.body).by_id("older").attrs["href"]).body)
    monkeypatch.setattr(pages, "SESSION_ROWS", 1)
    listed = browser.get("/ui/sessions?range=30d")
    check("sessions-paged", listed.body)
    check("sessions-older", browser.get(Document(listed.body).by_id("older").attrs["href"]).body)


def test_a_new_key(browser, dash):
    """A key made on the page: shown once, with its user, expiry and whether it is an administrator's."""
    made = browser.post("/ui/keys/create", {"csrf": browser.csrf(), "username": " erin ", "expires_days": "30",
                                            "admin": "1"})
    assert made.status == 201
    check("new-key", made.body)
    plain = browser.post("/ui/keys/create", {"csrf": browser.csrf(), "username": "frank", "expires_days": " "})
    assert plain.status == 201
    check("new-key-plain", plain.body)
    keys = {k["username"]: k for k in dash.store.db.list_keys()}
    assert keys["erin"]["admin"] and keys["erin"]["expires_at"] == START + 30 * 86400
    assert not keys["frank"]["admin"] and keys["frank"]["expires_at"] is None


def test_the_sign_in_page(dash):
    """The form, the form after signing out, and the form again after a wrong key."""
    browser = dash.browser()
    check("signin", browser.get("/ui/signin").body)
    check("signin-out", browser.get("/ui/signin?out=1").body)
    wrong = browser.sign_in("bp_wrong")
    assert wrong.status == 401
    check("signin-wrong", wrong.body)


def test_an_error_page(browser):
    """A refusal is a page of its own: what went wrong, and the way back."""
    answer = browser.get("/ui/interceptions/nope")
    assert answer.status == 404
    check("not-found", answer.body)


# -- refusals ---------------------------------------------------------------------------------------------


def problem(answer) -> str:
    return Document(answer.body).all("p", class_="problem")[0].text()


@pytest.mark.parametrize("path, status, message", [
    ("/ui/?range=1y", 400, "range must be one of 24h, 7d, 30d, 90d"),
    ("/ui/?bucket=week", 400, "bucket must be hour or day"),
    ("/ui/interceptions?status=fine", 400, "status must be one of ok, refused, error, incomplete, timeout, "
                                           "upstream_unreachable, client_disconnected, shutdown"),
    ("/ui/interceptions?q=" + "x" * 201, 400, "the text to search for must be at most 200 characters"),
    ("/ui/interceptions?from=yesterday", 400, "from must be a date and time, YYYY-MM-DD HH:MM (UTC)"),
    ("/ui/interceptions?to=2026-13-01", 400, "to must be a date and time, YYYY-MM-DD HH:MM (UTC)"),
    ("/ui/interceptions?after=12~", 400, "after is not a page cursor from this dashboard"),
    ("/ui/sessions?after=x~y", 400, "after is not a page cursor from this dashboard"),
    ("/ui/sessions?range=90d", 400, "range must be one of 24h, 7d, 30d"),
    ("/ui/session", 400, "Which session? The address needs ?id="),
    ("/ui/session?id=nope", 404, "There is no client session with that id."),
    ("/ui/interceptions/nope", 404, "There is no interception with that id."),
    ("/ui/nothing", 404, "There is no such page."),
    ("/ui/keys/create", 405, "This address only takes forms (POST)."),
])
def test_pages_refuse_what_they_cannot_show(browser, path, status, message):
    """Each argument a page cannot use is answered with its status and a message saying which and why."""
    answer = browser.get(path)
    assert (answer.status, problem(answer)) == (status, message)
    assert Document(answer.body).all("title")[0].text().startswith("Cannot do that")


@pytest.mark.parametrize("to, fields, status, message", [
    ("create", {"username": ""}, 400, "The user name must be 1 to 100 printable characters."),
    ("create", {"username": "x" * 101}, 400, "The user name must be 1 to 100 printable characters."),
    ("create", {"username": "tab\there"}, 400, "The user name must be 1 to 100 printable characters."),
    ("create", {"username": "erin", "expires_days": "0"}, 400,
     "Expires in days must be a whole number from 1 to 3650, or empty."),
    ("create", {"username": "erin", "expires_days": "3651"}, 400,
     "Expires in days must be a whole number from 1 to 3650, or empty."),
    ("create", {"username": "erin", "expires_days": "1.5"}, 400,
     "Expires in days must be a whole number from 1 to 3650, or empty."),
    ("revoke", {"key_id": "not-hex"}, 400, "That is not a key id."),
    ("revoke", {}, 400, "That is not a key id."),
    ("revoke", {"key_id": "abcdef"}, 404, "There is no such key, or it is revoked already."),
    ("disable", {"user_id": "", "disabled": "1"}, 400, "Which user?"),
    ("disable", {"user_id": "x" * 201, "disabled": "1"}, 400, "Which user?"),
    ("disable", {"user_id": ROOT, "disabled": "1"}, 400,
     "You cannot disable your own user: sign in as another administrator to do that."),
    ("disable", {"user_id": "nobody", "disabled": "1"}, 404, "There is no such user."),
    ("disable", {"user_id": "nobody", "disabled": "0"}, 404, "There is no such user."),
])
def test_actions_refuse_what_they_cannot_do(browser, dash, to, fields, status, message):
    """A form an action cannot take changes nothing and says why."""
    before = (dash.store.db.list_keys(), dash.store.db.execute("SELECT id, disabled FROM users ORDER BY id"))
    path = {"create": "/ui/keys/create", "revoke": "/ui/keys/revoke", "disable": "/ui/users/disable"}[to]
    answer = browser.post(path, {"csrf": browser.csrf(), **fields})
    assert (answer.status, problem(answer)) == (status, message)
    assert (dash.store.db.list_keys(), dash.store.db.execute("SELECT id, disabled FROM users ORDER BY id")) == before


def test_a_name_taken_by_another_id_is_refused(browser, dash, monkeypatch):
    """The store's refusal to make a key is the page's 400, in the store's words."""
    def refuse(*args, **kwargs):
        from bridgeproxy.store import StoreError
        raise StoreError("user 'erin' exists with another id")
    monkeypatch.setattr(type(dash.store.db), "create_key", refuse)
    answer = browser.post("/ui/keys/create", {"csrf": browser.csrf(), "username": "erin"})
    assert (answer.status, problem(answer)) == (400, "user 'erin' exists with another id")


def test_disable_and_enable_by_name_end_the_users_sessions(browser, dash):
    """A user disabled by name is disabled, their dashboard sessions end; enabling ends none."""
    other = dash.signed_in("second")
    answer = browser.post("/ui/users/disable", {"csrf": browser.csrf(), "user_id": "second", "disabled": "1"})
    assert answer.status == 303 and answer.headers["location"] == [b"/ui/users?done=disabled"]
    assert other.get("/ui/").status == 303
    again = dash.browser()
    assert again.sign_in(dash.key("third", admin=True)).status == 303
    answer = browser.post("/ui/users/disable", {"csrf": browser.csrf(), "user_id": "third", "disabled": "0"})
    assert answer.status == 303 and answer.headers["location"] == [b"/ui/users?done=enabled"]
    assert again.get("/ui/").status == 200
    assert dash.store.db.execute("SELECT COUNT(*) FROM ui_sessions") == [(2,)]


def test_a_revoked_key_redirects_with_its_id(browser, dash):
    """Revoking answers with the users page saying which key."""
    key_id = [k["key_id"] for k in dash.store.db.list_keys() if k["username"] == "alice"][0]
    answer = browser.post("/ui/keys/revoke", {"csrf": browser.csrf(), "key_id": key_id})
    assert answer.headers["location"] == [f"/ui/users?done=revoked&key={key_id}".encode()]
    flash = Document(browser.get(answer.headers["location"][0].decode()).body).by_id("done").text()
    assert flash.startswith(f"Key {key_id} revoked")


def test_keys_not_managed_here(steady):
    """With an identity backend other than the key store, the users page makes no keys and the actions say 409."""
    dash = make_dashboard()
    browser = dash.signed_in("root")
    csrf = browser.csrf()
    dash.gateway.bridge.api.identity.name = "coder"
    check("users-unmanaged", browser.get("/ui/users").body)
    for path in ("/ui/keys/create", "/ui/keys/revoke", "/ui/users/disable"):
        answer = browser.post(path, {"csrf": csrf, "username": "x", "key_id": "ab", "user_id": "x"})
        assert (answer.status, problem(answer)) == (
            409, "Keys are not managed here: the identity backend in use checks bridge keys itself."), path


def test_without_budgets_the_users_page_has_no_budget_column(steady):
    """A bridge without admission (no store to count in) shows no budgets."""
    dash = make_dashboard()
    dash.gateway.bridge.api.admission = None
    browser = dash.signed_in("root")
    check("users-no-budgets", browser.get("/ui/users").body)


# -- edges of what the pages read ------------------------------------------------------------------------


@pytest.mark.parametrize("since, until", [
    ("2026-11-24T07:00:00", "2026-11-24T07:00:01"), ("2026-11-24T07:00", "2026-11-24T07:01"),
    ("2026-11-24 07:00:00", "2026-11-24 07:00:01"), ("2026-11-24 07:00", "2026-11-24 07:01"),
])
def test_every_shape_of_date_and_time_filters(browser, since, until):
    """The datetime-local input's shapes and the typed ones (a space for the T) all read as UTC."""
    answer = browser.get("/ui/interceptions?" + urlencode({"from": since, "to": until}))
    assert answer.status == 200
    assert [a.attrs["href"] for a in Document(answer.body).all("a", class_="open")] == ["/ui/interceptions/r-02"]


def test_a_search_of_two_hundred_characters_is_fine(browser):
    assert browser.get("/ui/interceptions?q=" + "x" * 200).status == 200


def test_requests_in_flight_and_streams_among_them(dash, browser):
    """The overview counts this process's requests in flight, and the streams being relayed among them."""
    key = dash.key("streamer")
    auth = {"Authorization": f"Bearer {key}"}
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    dash.gateway.upstream.handler = memory.sse_answer(payloads.CHAT_CHUNKS[:1], end="hang")
    dash.gateway.open("POST", "/openai/v1/chat/completions", {**chat, "stream": True}, auth)
    dash.gateway.upstream.handler = lambda request: server.NOT_DONE_YET
    dash.gateway.open("POST", "/openai/v1/chat/completions", {**chat, "stream": True}, auth)
    dash.gateway.open("POST", "/openai/v1/chat/completions", chat, auth)
    doc = Document(browser.get("/ui/").body)
    card = doc.by_id("streams-in-flight")
    assert card.text() == "1"
    assert card.parent.attrs["title"] == "3 requests in flight in this process (with several workers: this worker's)"


def test_the_filters_offer_what_was_seen_in_ninety_days(dash, browser):
    dash.add(record(id="o-1", started_at=START - 89 * 86400, model="recent-enough", client="Old Client"),
             record(id="o-2", started_at=START - 91 * 86400, model="too-old"))
    doc = Document(browser.get("/ui/interceptions").body)
    models = [o.attrs["value"] for o in doc.by_id("filter-model").all("option")]
    assert "recent-enough" in models and "too-old" not in models


def test_usage_on_the_users_page_is_the_last_thirty_days(dash, browser):
    dash.add(record(id="u-1", started_at=START - 29 * 86400, initiator_username="carol", input_tokens=1, output_tokens=0),
             record(id="u-2", started_at=START - 31 * 86400, initiator_username="carol", input_tokens=1000,
                    output_tokens=0),
             record(id="u-3", started_at=START + 1800, initiator_username="carol", input_tokens=10, output_tokens=0))
    rows = {tr.all("a")[0].text(): tr for tr in Document(browser.get("/ui/users").body).by_id("users").walk()
            if tr.tag == "tr" and tr.all("a")}
    cells = [td.text() for td in rows["carol"].all("td")]
    assert cells[3:5] == ["3", "131"]  # r-06 is 40 days old: out; r-07, u-1 and u-3 in


@pytest.mark.parametrize("seconds, shown", [
    (-5, "0 s"), (0, "0 s"), (59.9, "59 s"), (60, "1 min 0 s"), (3599, "59 min 59 s"), (3600, "1 h 0 min"),
    (7 * 3600 + 61, "7 h 1 min"),
])
def test_spans_of_sessions(seconds, shown):
    assert pages._duration(seconds) == shown


def test_a_session_with_more_requests_than_shown(dash, browser, monkeypatch):
    """A session's page shows its first requests and says so when there are more."""
    real = queries.session
    monkeypatch.setattr(queries, "session", lambda db, session_id: real(db, session_id, limit=1))
    doc = Document(browser.get("/ui/session?id=cc-1").body)
    assert "Showing the first 1 requests." in doc.text()
    assert len(doc.by_id("session-interceptions").all("tr")) == 2


def test_a_key_expiring_this_second_is_expired(dash, browser):
    key_id, _ = dash.store.db.create_key("erin", expires_at=START)
    later, _ = dash.store.db.create_key("erin", expires_at=START + 1)
    doc = Document(browser.get("/ui/users").body)
    assert doc.all("li", data_key_id=key_id)[0].text().startswith("bp_t...")
    assert f"{key_id} · expired 2026-11-24 10:00" in doc.all("li", data_key_id=key_id)[0].text()
    assert f"{later} · expires 2026-11-24 10:00" in doc.all("li", data_key_id=later)[0].text()
    assert doc.all("li", data_key_id=key_id)[0].all("form") == []
    assert len(doc.all("li", data_key_id=later)[0].all("form")) == 1


@pytest.mark.parametrize("days, expires", [("1", START + 86400), ("3650", START + 3650 * 86400)])
def test_keys_expire_in_one_to_3650_days(browser, dash, days, expires):
    answer = browser.post("/ui/keys/create", {"csrf": browser.csrf(), "username": "x" * 100, "expires_days": days})
    assert answer.status == 201
    assert [k["expires_at"] for k in dash.store.db.list_keys() if k["username"] == "x" * 100] == [expires]


def test_the_longest_key_id_and_user_id_are_looked_up(browser):
    """A key id of 64 hex digits and a user id of 200 characters are looked for (and not found), not refused."""
    answer = browser.post("/ui/keys/revoke", {"csrf": browser.csrf(), "key_id": "a" * 64})
    assert answer.status == 404
    answer = browser.post("/ui/keys/revoke", {"csrf": browser.csrf(), "key_id": "a" * 65})
    assert answer.status == 400
    answer = browser.post("/ui/users/disable", {"csrf": browser.csrf(), "user_id": "u" * 200, "disabled": "1"})
    assert answer.status == 404


def test_tool_arguments_keep_their_characters(dash, browser):
    dash.add(record(id="t-1", tool_calls=[("write", '{"text":"caf\\u00e9 \\u2713"}', "c1")]))
    doc = Document(browser.get("/ui/interceptions/t-1").body)
    assert doc.all("pre", class_="arguments")[0].text() == '{\n  "text": "café ✓"\n}'


def test_a_short_session_is_drawn_over_a_second(dash, browser):
    """A session of one half-second request without a model: its bar's tip names the route; the axis spans 1 s."""
    dash.add(record(id="q-1", client_session_id="quick", started_at=START, ended_at=START + 0.5, model=None,
                    route="embeddings"))
    doc = Document(browser.get("/ui/session?id=quick").body)
    [bar] = doc.all("rect", class_="span status-ok")
    assert bar.all("title")[0].text() == "2026-11-24 10:00:00 UTC · embeddings · ok · 500 ms · 0 tool calls"
    assert [t.text() for t in doc.all("text", class_="axis")][-1] == "10:00:01.000"


def test_a_session_of_nobody_in_particular(dash, browser):
    """A session without a user: '(none)' in the list and on its page; its rows show what was not recorded."""
    long_id = "s" * 70
    dash.add(record(id="n-1", client_session_id=long_id, started_at=START - 60, initiator_id=None,
                    initiator_username=None, model=None, prompt=None, status="ok", upstream_status=502))
    listing = Document(browser.get("/ui/sessions").body)
    row = [tr for tr in listing.by_id("sessions").all("tr") if long_id[:40] in tr.text()][0]
    assert [td.text() for td in row.all("td")][1:3] == ["Claude Code", "(none)"]
    page = browser.get("/ui/session?id=" + long_id)
    doc = Document(page.body)
    assert doc.all("h1")[0].text() == "Session " + "s" * 60
    assert "user(none)" in doc.all("dl", class_="facts")[0].text()
    cells = [td.text() for td in doc.by_id("session-interceptions").all("td")]
    assert cells[1:4] == ["—", "chat", "ok · upstream 502"] and cells[-1] == ""


def test_a_session_with_more_requests_than_shown_says_so_quietly(dash, browser, monkeypatch):
    real = queries.session
    monkeypatch.setattr(queries, "session", lambda db, session_id: real(db, session_id, limit=1))
    notes = Document(browser.get("/ui/session?id=cc-1").body).all("p", class_="muted")
    assert [p.text() for p in notes] == ["Showing the first 1 requests."]


def test_disabling_without_saying_whom(browser):
    answer = browser.post("/ui/users/disable", {"csrf": browser.csrf(), "disabled": "1"})
    assert (answer.status, problem(answer)) == (400, "Which user?")


def test_details_of_other_requests(dash, browser):
    """A user known by id only, a stream, an error, a tool call without arguments, a trailing slash, a bad id."""
    dash.add(record(id="x-1", initiator_username=None, initiator_id=BOB, streamed=True, error="it broke",
                    tool_calls=[("ping", None, None)]))
    doc = Document(browser.get("/ui/interceptions/x-1").body)
    facts = dict(zip([dt.text() for dt in doc.all("dt")], [dd.text() for dd in doc.all("dd")]))
    assert (facts["initiator"], facts["streamed"], facts["error"]) == (BOB, "yes", "it broke")
    assert [a.attrs["href"] for a in doc.all("a") if a.text() == BOB] == [f"/ui/interceptions?user={BOB}"]
    assert [p.text() for p in doc.all("pre", class_="arguments")] == [""]
    assert Document(browser.get("/ui/interceptions/").body).by_id("interceptions")
    assert browser.get("/ui/interceptions/%FF").status == 404


def test_the_sessions_list_in_figures_and_its_pages_keep_the_filters(dash, browser, monkeypatch):
    dash.add(record(id="f-1", client_session_id="f" * 50, started_at=START - 30, initiator_username="zed",
                    input_tokens=1, output_tokens=2, cache_read_tokens=30, cache_write_tokens=400),
             record(id="f-2", client_session_id="g" * 50, started_at=START - 40, initiator_username="zed"))
    doc = Document(browser.get("/ui/sessions?user=zed").body)
    [row, _] = [tr for tr in doc.by_id("sessions").all("tr") if tr.all("td")]
    cells = [td.text() for td in row.all("td")]
    assert cells[0] == "f" * 40 and cells[4] == "433"
    monkeypatch.setattr(pages, "SESSION_ROWS", 1)
    first = Document(browser.get("/ui/sessions?user=zed&client=Claude+Code").body)
    older = first.by_id("older").attrs["href"]
    assert older.startswith("/ui/sessions?range=7d&user=zed&client=Claude+Code&after=")
    newest = [a.attrs["href"] for a in Document(browser.get(older).body).all("a") if a.text() == "Most recent"]
    assert newest == ["/ui/sessions?range=7d&user=zed&client=Claude+Code"]
