# -*- test-case-name: tests.test_ui,tests.test_ui_browser -*-
"""
The administrators' dashboard, C{/ui/}: the resource tree, signing in and
out, and the actions that change something.

    /ui/                     overview (charts, top lists, rates, in flight)
    /ui/interceptions        the filtered, paged table
    /ui/interceptions/<id>   one interception
    /ui/sessions             client sessions, as a timeline
    /ui/session?id=<id>      one client session
    /ui/users                users and keys
    /ui/signin, /ui/signout  signing in with an administrator's bridge key, and out
    /ui/keys/create, /ui/keys/revoke, /ui/users/disable     (POST, with the CSRF token)
    /ui/static/<file>        the style sheet and the icon (package data)

A signed-in browser holds only a random session cookie (HttpOnly,
SameSite=Strict, for C{/ui/}, expiring); the store keeps its hash, the
user, the key it was made with and the session's CSRF token.  Every page is
checked against the identity backend again: a user who is disabled or is no
longer an administrator is signed out.
"""

from __future__ import annotations

import secrets
from importlib import resources
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.template import tags

from bridgeproxy.errors import BridgeError
from bridgeproxy.proxy.records import printable
from bridgeproxy.store import dashboard
from bridgeproxy.store.dashboard import SignIn
from bridgeproxy.ui import pages
from bridgeproxy.ui.base import Refused, Reply, arg, read_form, same
from bridgeproxy.ui.html import PageElement, flatten, post_button, text, write_page

#: How long a sign-in lasts.
SESSION_SECONDS = 8 * 3600
#: The session cookie, and the one that ties the sign-in form to its browser.
COOKIE = b"bridgeproxy_ui"
SIGNIN_COOKIE = b"bridgeproxy_ui_signin"


class Dashboard:
    """
    What the dashboard's resources share: the bridge (its API's identity
    backend and store, the requests in flight), the clock, the session length.
    """

    log = Logger()

    def __init__(self, bridge: Any, clock: Any = None, session_seconds: float = SESSION_SECONDS):
        self.bridge = bridge
        self.clock = clock if clock is not None else bridge.clock
        self.session_seconds = session_seconds

    @property
    def store(self) -> Any:
        return self.bridge.api.store

    @property
    def identity(self) -> Any:
        # Looked up each time: a reload may replace the backend.
        return self.bridge.api.identity

    @property
    def keystore(self) -> bool:
        """Whether bridge keys are the store's own (the C{keystore} backend): only then are they managed here."""
        return getattr(self.identity, "name", None) == "keystore"

    def run(self, work: Callable[[Any], Any]) -> Deferred:
        return self.store.run(work)

    def authenticate(self, request: Any) -> "Deferred[Optional[SignIn]]":
        """The request's signed-in administrator, or L{None}."""
        cookie = request.getCookie(COOKIE)
        if not cookie or len(cookie) > 100:
            return succeed(None)
        value = cookie.decode("ascii", "replace")
        now = self.clock.seconds()
        d = self.run(lambda db: dashboard.find_sign_in(db, value, now))

        def still_admin(sign_in: Optional[SignIn]) -> Any:
            if sign_in is None:
                return None
            return self.identity.lookup_user(sign_in.user_id).addCallback(
                lambda user: sign_in if user is not None and user.admin and not user.disabled else None)
        return d.addCallback(still_admin)

    def cookie(self, request: Any, name: bytes, value: str, max_age: int) -> bytes:
        secure = b"; Secure" if request.isSecure() else b""
        return (name + b"=" + value.encode("ascii") + b"; Path=/ui/; Max-Age=%d; HttpOnly; SameSite=Strict" % max_age
                + secure)


class Handler(Resource):
    """
    A page or an action of the dashboard: authenticates the request (unless
    C{public}), calls C{get} or C{post}, and writes the L{Reply} as a page.
    """

    isLeaf = True
    public = False
    log = Logger()

    def __init__(self, ui: Dashboard):
        super().__init__()
        self.ui = ui

    def get(self, request: Any, sign_in: Optional[SignIn]) -> Any:
        raise Refused(405, "This address only takes forms (POST).")

    def post(self, request: Any, sign_in: Optional[SignIn], form: dict[str, str]) -> Any:
        raise Refused(405, "This page cannot be posted to.")

    def render(self, request: Any) -> Any:
        d = maybeDeferred(self._handle, request)
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _handle(self, request: Any) -> Deferred:
        if request.postpath:
            raise Refused(404, "There is no such page.")
        if request.method not in (b"GET", b"HEAD", b"POST"):
            raise Refused(405, "Only GET and POST are used here.")
        d = succeed(None) if self.public else self.ui.authenticate(request)
        return d.addCallback(self._signed_in, request)

    def _signed_in(self, sign_in: Optional[SignIn], request: Any) -> Deferred:
        if sign_in is None and not self.public:
            if request.method == b"POST":
                raise Refused(403, "Sign in first: your session has ended.")
            return self._write(request, Reply(see_other="/ui/signin"), None)
        if request.method == b"POST":
            form = read_form(request)
            if not self.public and not same(form.get("csrf"), sign_in.csrf if sign_in else None):
                raise Refused(403, "This form is out of date (its security token does not match): reload the page "
                                   "and try again.")
            d = maybeDeferred(self.post, request, sign_in, form)
        else:
            d = maybeDeferred(self.get, request, sign_in)
        return d.addCallback(lambda reply: self._write(request, reply, sign_in))

    def _write(self, request: Any, reply: Reply, sign_in: Optional[SignIn]) -> Any:
        for cookie in reply.cookies:
            request.responseHeaders.addRawHeader(b"Set-Cookie", cookie)
        if reply.see_other is not None:
            write_page(request, 303, b"", {b"Location": reply.see_other.encode("ascii")})
            return None
        account = None
        if sign_in is not None:
            account = tags.div(tags.span("Signed in as ", tags.strong(text(sign_in.username or sign_in.user_id))),
                               post_button("/ui/signout", "Sign out", sign_in.csrf), class_="account")
        page = PageElement(reply.title, reply.content, reply.current if sign_in is not None else None, account)
        return flatten(page).addCallback(lambda body: write_page(request, reply.status, body))

    def _failed(self, failure: Any, request: Any) -> None:
        if failure.check(Refused):
            status, message = failure.value.status, failure.value.message
        elif failure.check(BridgeError):
            status, message = failure.value.status, failure.value.message
        else:
            self.log.failure("Dashboard page {path} failed", failure, path=printable(request.path))
            status, message = 500, "The page could not be made: the store did not answer. Try again shortly."
        page = PageElement("Something went wrong" if status >= 500 else "Cannot do that",
                           [tags.p(text(message), class_="problem"), tags.p(tags.a("Back to the overview",
                                                                                  href="/ui/"))])
        flatten(page).addCallback(lambda body: write_page(request, status, body)).addErrback(
            lambda f: self.log.failure("Dashboard error page failed", f))


# -- signing in and out ---------------------------------------------------------------------------------


class SignInPage(Handler):
    """C{/ui/signin}: the form (GET), and checking an administrator's key (POST)."""

    public = True

    def _form(self, request: Any, problem: Optional[str] = None, status: int = 200, done: bool = False) -> Reply:
        token = secrets.token_urlsafe(24)
        cookie = self.ui.cookie(request, SIGNIN_COOKIE, token, 600)
        content = tags.div(
            tags.p("Signed out.", class_="flash") if done else "",
            tags.p(text(problem), class_="problem") if problem else "",
            tags.p("Sign in with an administrator's bridge key (", tags.code("bridgeproxy keys create --admin"),
                   "). The key is checked once and not kept; the browser keeps only a session cookie."),
            tags.form(
                tags.input(type="hidden", name="csrf", value=token),
                tags.label("Bridge key", tags.input(type="password", name="key", autocomplete="off",
                                                     required="required", autofocus="autofocus", id="key")),
                tags.button("Sign in", type="submit", id="sign-in"),
                method="post", action="/ui/signin"),
            class_="signin")
        return Reply(title="Sign in", content=content, status=status, cookies=[cookie])

    def get(self, request: Any, sign_in: Optional[SignIn]) -> Any:
        d = self.ui.authenticate(request)
        return d.addCallback(lambda found: Reply(see_other="/ui/") if found is not None else
                             self._form(request, done=arg(request, "out") is not None))

    def post(self, request: Any, sign_in: Optional[SignIn], form: dict[str, str]) -> Any:
        cookie = request.getCookie(SIGNIN_COOKIE)
        if not same(form.get("csrf"), cookie.decode("ascii", "replace") if cookie else None):
            return self._form(request, "The sign-in form expired; enter the key again.", 403)
        token = form.get("key", "").strip()
        if not token:
            return self._form(request, "Enter an administrator's bridge key.", 400)
        # Checked once, never stored: only the identity it names is kept, in the session.
        return maybeDeferred(self.ui.identity.identify, token).addCallback(self._identified, request)

    def _identified(self, identity: Any, request: Any) -> Any:
        if identity is None:
            return self._form(request, "That key is not valid: it is unknown, expired or revoked.", 401)
        if identity.disabled:
            return self._form(request, "This user is disabled.", 403)
        if not identity.admin:
            return self._form(request, "Only administrators can sign in to the dashboard: this key's user "
                                       "is not one.", 403)
        now = self.ui.clock.seconds()
        cookie = secrets.token_urlsafe(32)
        sign_in = SignIn(user_id=identity.user_id, username=identity.username, key_id=identity.key_id,
                         csrf=secrets.token_urlsafe(32), created_at=now, expires_at=now + self.ui.session_seconds)
        d = self.ui.run(lambda db: dashboard.add_sign_in(db, cookie, sign_in))
        cookies = [self.ui.cookie(request, COOKIE, cookie, int(self.ui.session_seconds)),
                   self.ui.cookie(request, SIGNIN_COOKIE, "", 0)]
        return d.addCallback(lambda _: Reply(see_other="/ui/", cookies=cookies))


class SignOut(Handler):
    """C{/ui/signout} (POST): ends the session, here and in the store."""

    def post(self, request: Any, sign_in: Optional[SignIn], form: dict[str, str]) -> Any:
        value = (request.getCookie(COOKIE) or b"").decode("ascii", "replace")
        d = self.ui.run(lambda db: dashboard.end_sign_in(db, value))
        return d.addCallback(lambda _: Reply(see_other="/ui/signin?out=1",
                                             cookies=[self.ui.cookie(request, COOKIE, "", 0)]))


# -- pages ------------------------------------------------------------------------------------------------


class Page(Handler):
    """A page whose reply C{make(ui, request, sign_in)} builds (L{bridgeproxy.ui.pages})."""

    def __init__(self, ui: Dashboard, make: Callable[..., Any]):
        super().__init__(ui)
        self.make = make

    def get(self, request: Any, sign_in: Optional[SignIn]) -> Any:
        return self.make(self.ui, request, sign_in)


class Action(Handler):
    """A POST that changes something; C{act(ui, request, sign_in, form)} answers it."""

    def __init__(self, ui: Dashboard, act: Callable[..., Any]):
        super().__init__(ui)
        self.act = act

    def post(self, request: Any, sign_in: Optional[SignIn], form: dict[str, str]) -> Any:
        return self.act(self.ui, request, sign_in, form)


_STATIC = {"ui.css": b"text/css; charset=utf-8", "favicon.svg": b"image/svg+xml"}


class Static(Resource):
    """C{/ui/static/<file>}: the files shipped in the package, read once."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self._files: dict[str, bytes] = {}

    def render(self, request: Any) -> Any:
        name = b"/".join(request.postpath).decode("latin-1")
        if name not in _STATIC or request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"Not found.\n"
        body = self._files.get(name)
        if body is None:
            body = self._files[name] = resources.files("bridgeproxy.ui").joinpath("static", name).read_bytes()
        request.setHeader(b"Content-Type", _STATIC[name])
        request.setHeader(b"Cache-Control", b"public, max-age=3600")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        return body


class _Folder(Resource):
    """A node of the tree: named children; anything else is the dashboard's 404 page."""

    def __init__(self, ui: Dashboard, index: Optional[Resource] = None):
        super().__init__()
        self.ui = ui
        self.index = index
        self.missing = Page(ui, _missing)

    def getChild(self, path: bytes, request: Any) -> Resource:
        if path == b"" and self.index is not None:
            return self.index
        return self.missing

    def render(self, request: Any) -> Any:
        if self.index is not None:
            return self.index.render(request)
        return self.missing.render(request)


class _Interceptions(_Folder):
    """C{/ui/interceptions}: the table, and one page per interception below it."""

    def getChild(self, path: bytes, request: Any) -> Resource:
        if path == b"":
            return super().getChild(path, request)
        return Page(self.ui, pages.interception(path.decode("utf-8", "replace")))


def _missing(ui: Dashboard, request: Any, sign_in: SignIn) -> Reply:
    raise Refused(404, "There is no such page.")


class UIResource(_Folder):
    """
    C{/ui}: the dashboard.  Mounted by the root resource when the bridge
    has its own endpoints (L{bridgeproxy.api.BridgeAPI}).

    @param clock: what sessions expire by (default: the bridge's clock).
    """

    def __init__(self, bridge: Any, clock: Any = None, session_seconds: float = SESSION_SECONDS):
        ui = Dashboard(bridge, clock, session_seconds)
        super().__init__(ui, Page(ui, pages.overview))
        interceptions = _Interceptions(ui, Page(ui, pages.interceptions))
        keys = _Folder(ui)
        keys.putChild(b"create", Action(ui, pages.create_key))
        keys.putChild(b"revoke", Action(ui, pages.revoke_key))
        users = _Folder(ui, Page(ui, pages.users))
        users.putChild(b"disable", Action(ui, pages.disable_user))
        for name, child in ((b"interceptions", interceptions), (b"sessions", Page(ui, pages.sessions)),
                            (b"session", Page(ui, pages.session)), (b"users", users), (b"keys", keys),
                            (b"signin", SignInPage(ui)), (b"signout", SignOut(ui)), (b"static", Static())):
            self.putChild(name, child)
        self.ui = ui

    def render(self, request: Any) -> Any:
        # /ui without its slash: the pages' relative links need it.
        request.setResponseCode(301)
        request.setHeader(b"Location", b"/ui/")
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"See /ui/\n"

__all__ = ["COOKIE", "SESSION_SECONDS", "SIGNIN_COOKIE", "Dashboard", "UIResource"]
