"""
The dashboard's resources (ui/resource.py, ui/base.py) as a browser meets
them, in memory: the headers of every answer, methods and forms it does not
take, cookies (and their Secure flag behind TLS), the static files, the
sign-in form's round trips, and a page whose store fails.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from bridgeproxy.errors import BadRequest
from bridgeproxy.store import dashboard as queries
from bridgeproxy.ui import base
from bridgeproxy.ui.base import MAX_FORM_BYTES, Refused, arg, read_form, same
from bridgeproxy.ui.resource import COOKIE, SESSION_SECONDS, SIGNIN_COOKIE, Dashboard
from tests.dashboards import Document, cookie_attributes
from tests.dashboards import dashboard as make_dashboard

HEADERS = {
    "content-type": [b"text/html; charset=utf-8"],
    "cache-control": [b"no-store"],
    "content-security-policy": [b"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                                b"frame-ancestors 'none'; base-uri 'none'"],
    "x-content-type-options": [b"nosniff"],
    "x-frame-options": [b"DENY"],
    "referrer-policy": [b"no-referrer"],
}


@pytest.fixture
def dash():
    return make_dashboard()


def problem(answer) -> str:
    return Document(answer.body).all("p", class_="problem")[0].text()


def test_every_page_and_refusal_carries_the_security_headers(dash):
    browser = dash.signed_in()
    for path, status in (("/ui/", 200), ("/ui/signin", 303), ("/ui/nothing", 404), ("/ui/?range=x", 400)):
        answer = browser.get(path)
        assert answer.status == status, path
        for name, value in HEADERS.items():
            assert answer.headers[name] == value, (path, name)
        assert answer.headers["content-length"] == [str(len(answer.body)).encode()]
    page = browser.get("/ui/")
    assert page.body.startswith(b"<!DOCTYPE html>\n<html")


def test_a_refusal_is_a_page_with_the_way_back(dash):
    browser = dash.signed_in()
    doc = Document(browser.get("/ui/?range=x").body)
    assert doc.all("title")[0].text().startswith("Cannot do that")
    assert [a.attrs["href"] for a in doc.all("a") if a.text() == "Back to the overview"] == ["/ui/"]


def test_a_page_whose_store_fails_is_a_500_that_tells_nothing_of_the_store(dash, monkeypatch):
    """The failure is logged with the page's path; the page says to try again, without the store's words."""
    browser = dash.signed_in()
    lines = []

    def observe(event):
        if event.get("log_namespace", "").startswith("bridgeproxy.ui"):
            lines.append(formatEvent(event))

    def boom(*args, **kwargs):
        raise RuntimeError("password=hunter2 connection refused")
    monkeypatch.setattr(queries, "interceptions", boom)
    monkeypatch.setattr(queries, "interception", boom)
    globalLogPublisher.addObserver(observe)
    try:
        answer = browser.get("/ui/interceptions?user=x")
        odd = browser.get("/ui/interceptions/" + "a" * 300)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert odd.status == 500
    assert answer.status == 500
    assert problem(answer) == "The page could not be made: the store did not answer. Try again shortly."
    assert Document(answer.body).all("title")[0].text().startswith("Something went wrong")
    assert b"hunter2" not in answer.body
    assert lines == ["Dashboard page /ui/interceptions failed",
                     "Dashboard page /ui/interceptions/" + "a" * 182 + " failed"]


def test_a_bridge_error_keeps_its_status_and_message(dash, monkeypatch):
    browser = dash.signed_in()

    def refuse(*args, **kwargs):
        raise BadRequest("the store is read-only")
    monkeypatch.setattr(queries, "users", refuse)
    answer = browser.get("/ui/users")
    assert (answer.status, problem(answer)) == (400, "the store is read-only")
    assert Document(answer.body).all("title")[0].text().startswith("Cannot do that")


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_methods_are_405(dash, method):
    browser = dash.signed_in()
    answer = dash.gateway.send(method, "/ui/", None, browser._headers())
    assert (answer.status, problem(answer)) == (405, "Only GET and POST are used here.")


def test_a_page_cannot_be_posted_to_and_an_action_cannot_be_got(dash):
    browser = dash.signed_in()
    answer = browser.post("/ui/users", {"csrf": browser.csrf()})
    assert (answer.status, problem(answer)) == (405, "This page cannot be posted to.")
    for path in ("/ui/keys/revoke", "/ui/users/disable", "/ui/signout"):
        answer = browser.get(path)
        assert (answer.status, problem(answer)) == (405, "This address only takes forms (POST)."), path


def test_a_head_request_is_answered_like_a_get(dash):
    browser = dash.signed_in()
    answer = dash.gateway.send("HEAD", "/ui/users", None, browser._headers())
    assert answer.status == 200 and answer.body == b""


def test_a_post_without_a_session_says_to_sign_in(dash):
    answer = dash.browser().post("/ui/keys/create", {"username": "x"})
    assert (answer.status, problem(answer)) == (403, "Sign in first: your session has ended.")


def test_forms_out_of_date_or_not_forms(dash):
    browser = dash.signed_in()
    answer = browser.post("/ui/keys/create", {"csrf": "old", "username": "x"})
    assert (answer.status, problem(answer)) == (
        403, "This form is out of date (its security token does not match): reload the page and try again.")
    answer = browser.post("/ui/keys/create", {"csrf": browser.csrf(), "username": "x"}, {"Content-Type": "text/plain"})
    assert (answer.status, problem(answer)) == (415, "Send the form as application/x-www-form-urlencoded.")
    answer = browser.post("/ui/keys/create", {"csrf": browser.csrf(), "username": "x"},
                          {"Content-Type": "Application/X-WWW-Form-URLEncoded ; charset=UTF-8"})
    assert answer.status == 201


def test_a_form_too_large_or_with_too_many_fields(dash):
    browser = dash.signed_in()
    csrf = browser.csrf()
    answer = browser.post("/ui/keys/create", {"csrf": csrf, "username": "x", "pad": "y" * MAX_FORM_BYTES})
    assert (answer.status, problem(answer)) == (413, "The form is too large.")
    answer = browser.post("/ui/keys/create", {"csrf": csrf, **{f"f{i}": "1" for i in range(60)}})
    assert (answer.status, problem(answer)) == (400, "The form has too many fields.")


class Request:
    """What read_form and arg read of a request."""

    def __init__(self, body=None, kind=b"application/x-www-form-urlencoded", too_large=False, args=None):
        self.content = None if body is None else __import__("io").BytesIO(body)
        self.kind = kind
        self.too_large = too_large
        self.args = args or {}

    def getHeader(self, name):
        assert name == b"content-type"
        return self.kind


def test_read_form_edges():
    """The first value of each field, blanks kept; the body read from its start; just under the cap is fine."""
    request = Request(b"a=1&a=2&b=&c=%E2%82%AC")
    request.content.read()
    assert read_form(request) == {"a": "1", "b": "", "c": "\u20ac"}
    assert read_form(Request(None)) == {}
    assert read_form(Request(b"a=" + b"x" * (MAX_FORM_BYTES - 2))) == {"a": "x" * (MAX_FORM_BYTES - 2)}
    with pytest.raises(Refused) as raised:
        read_form(Request(b"a=" + b"x" * (MAX_FORM_BYTES - 1)))
    assert (raised.value.status, raised.value.message) == (413, "The form is too large.")
    with pytest.raises(Refused) as raised:
        read_form(Request(b"", too_large=True))
    assert raised.value.status == 413
    with pytest.raises(Refused) as raised:
        read_form(Request(b"a=1", kind=None))
    assert raised.value.status == 415
    assert read_form(Request(b"&".join(b"f%d=1" % i for i in range(50)))) == {f"f{i}": "1" for i in range(50)}
    assert read_form(Request(b"a=\xff")) == {"a": "\ufffd"}


def test_arguments_are_stripped_and_empty_is_none():
    request = Request(args={b"a": [b"  x  ", b"y"], b"b": [b"   "], b"c": [], b"d": [b"\xff"]})
    assert (arg(request, "a"), arg(request, "b"), arg(request, "c"), arg(request, "d"), arg(request, "e")) == (
        "x", None, None, "\ufffd", None)


def test_tokens_are_compared_whole():
    assert same("abc", "abc") and not same("abc", "abd") and not same("", "") and not same(None, "a")
    assert not same("a", None) and same("\udcff", "\udcff")


def test_refused_and_reply():
    refused = Refused(404, "gone")
    assert (refused.status, refused.message, str(refused)) == (404, "gone", "gone")
    reply = base.Reply()
    assert (reply.title, reply.content, reply.status, reply.current, reply.see_other, reply.cookies) == (
        "", None, 200, None, None, [])
    assert base.Reply().cookies is not base.Reply().cookies


# -- cookies and signing in ------------------------------------------------------------------------------


def test_cookies_are_secure_behind_tls():
    ui = Dashboard(SimpleNamespace(clock=None, api=None))
    plain = ui.cookie(SimpleNamespace(isSecure=lambda: False), COOKIE, "v", 60)
    assert plain == b"bridgeproxy_ui=v; Path=/ui/; Max-Age=60; HttpOnly; SameSite=Strict"
    secure = ui.cookie(SimpleNamespace(isSecure=lambda: True), SIGNIN_COOKIE, "w", 0)
    assert secure == b"bridgeproxy_ui_signin=w; Path=/ui/; Max-Age=0; HttpOnly; SameSite=Strict; Secure"
    assert ui.session_seconds == SESSION_SECONDS == 8 * 3600


def test_the_dashboard_follows_the_bridges_clock_and_backend(dash):
    bridge = dash.gateway.bridge
    ui = Dashboard(bridge)
    assert ui.clock is bridge.clock and ui.store is bridge.api.store and ui.identity is bridge.api.identity
    assert ui.keystore is True
    other = object()
    assert Dashboard(bridge, clock=other).clock is other


def test_the_sign_in_form_sets_a_short_lived_cookie_and_signing_in_clears_it(dash):
    browser = dash.browser()
    form = browser.get("/ui/signin")
    line = [c for c in browser.set_cookies if c.startswith("bridgeproxy_ui_signin=")][-1]
    assert cookie_attributes(line)["max-age"] == "600"
    token = Document(form.body).value("csrf")
    assert line.startswith(f"bridgeproxy_ui_signin={token};") and len(token) >= 32
    answer = browser.sign_in(dash.key("root", admin=True))
    assert answer.status == 303
    cleared = [c for c in browser.set_cookies if c.startswith("bridgeproxy_ui_signin=;")]
    assert cleared and "Max-Age=0" in cleared[-1]
    assert browser.get("/ui/signin").headers["location"] == [b"/ui/"]


def test_sign_in_problems_are_shown_in_the_form(dash):
    browser = dash.browser()
    browser.get("/ui/signin")
    assert problem(browser.post("/ui/signin", {"csrf": "x", "key": "k"})) == (
        "The sign-in form expired; enter the key again.")
    user = dash.key("bob")
    for key, message in ((user, "Only administrators can sign in to the dashboard: this key's user is not one."),
                         ("bp_nope", "That key is not valid: it is unknown, expired or revoked."),
                         ("  ", "Enter an administrator's bridge key.")):
        assert problem(browser.sign_in(key)) == message
    disabled = dash.key("old", admin=True)
    dash.store.db.set_user_disabled("old", True)
    assert problem(browser.sign_in(disabled)) == "This user is disabled."


def test_a_session_records_who_signed_in_with_which_key(dash):
    key = dash.key("root", admin=True)
    browser = dash.browser()
    browser.sign_in(key)
    identity = dash.store.db.identify(key)
    [row] = dash.store.db.execute("SELECT user_id, username, key_id, created_at, expires_at FROM ui_sessions")
    assert row == (identity.user_id, "root", identity.key_id, dash.clock.seconds(),
                   dash.clock.seconds() + SESSION_SECONDS)


def test_an_overlong_or_foreign_cookie_is_no_session(dash):
    browser = dash.signed_in()
    cookie = browser.cookies["bridgeproxy_ui"]
    stranger = dash.browser()
    stranger.cookies["bridgeproxy_ui"] = cookie + "x" * (101 - len(cookie))
    assert stranger.get("/ui/").status == 303
    stranger.cookies["bridgeproxy_ui"] = cookie
    assert stranger.get("/ui/").status == 200
    dash.store.db.execute("UPDATE users SET admin = 0 WHERE username = 'root'")
    assert stranger.get("/ui/").status == 303


def test_the_account_box_names_the_user_or_their_id(dash):
    browser = dash.signed_in("root")
    account = Document(browser.get("/ui/").body).all("div", class_="account")[0]
    assert account.text().startswith("Signed in as root")
    assert [f.attrs["action"] for f in account.all("form")] == ["/ui/signout"]
    dash.store.db.execute("UPDATE ui_sessions SET username = NULL")
    user_id = dash.store.db.execute("SELECT user_id FROM ui_sessions")[0][0]
    assert Document(browser.get("/ui/").body).all("strong")[0].text() == user_id


def test_a_signed_in_page_marks_its_place_in_the_navigation(dash):
    browser = dash.signed_in()
    nav = Document(browser.get("/ui/sessions").body).all("nav")[0]
    assert [(a.attrs["href"], a.text(), a.attrs.get("class")) for a in nav.all("a")] == [
        ("/ui/", "Overview", ""), ("/ui/interceptions", "Interceptions", ""), ("/ui/sessions", "Sessions", "current"),
        ("/ui/users", "Users and keys", "")]
    assert Document(dash.browser().get("/ui/signin").body).all("nav") == []


# -- the static files and the tree ---------------------------------------------------------------------


def test_static_files_headers_and_what_is_not_one(dash):
    browser = dash.browser()
    css = browser.get("/ui/static/ui.css")
    assert css.headers["cache-control"] == [b"public, max-age=3600"]
    assert css.headers["x-content-type-options"] == [b"nosniff"]
    again = browser.get("/ui/static/ui.css")
    assert again.body == css.body
    icon = browser.get("/ui/static/favicon.svg")
    assert icon.headers["content-type"] == [b"image/svg+xml"]
    for answer in (browser.post("/ui/static/ui.css", {}), browser.get("/ui/static/"),
                   browser.get("/ui/static/a/ui.css")):
        assert (answer.status, answer.body, answer.headers["content-type"]) == (
            404, b"Not found.\n", [b"text/plain; charset=utf-8"])


def test_ui_without_a_slash_is_sent_to_it(dash):
    answer = dash.browser().get("/ui")
    assert (answer.status, answer.body, answer.headers["content-type"]) == (
        301, b"See /ui/\n", [b"text/plain; charset=utf-8"])


def test_below_a_page_there_is_nothing(dash):
    browser = dash.signed_in()
    for path in ("/ui/sessions/x", "/ui/users/x", "/ui/keys/", "/ui/keys/x", "/ui/keys", "/ui/signin/x"):
        answer = browser.get(path)
        assert (answer.status, problem(answer)) == (404, "There is no such page."), path
    assert browser.get("/ui/users/").status == 200


def test_static_files_answer_head(dash):
    answer = dash.gateway.send("HEAD", "/ui/static/ui.css")
    assert answer.status == 200 and answer.headers["content-type"] == [b"text/css; charset=utf-8"]
