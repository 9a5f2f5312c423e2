# -*- test-case-name: tests.test_ui -*-
"""
What each page of the dashboard shows, and what its actions do.  Each
takes the L{Dashboard}, the request and the signed-in administrator, and
returns a L{Reply} (or a L{Deferred} of one).
"""

from __future__ import annotations

import calendar
import json
import re
import time
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.defer import Deferred
from twisted.web.template import Tag, tags

from bridgeproxy.budgets import report
from bridgeproxy.store import StoreError, dashboard
from bridgeproxy.store.dashboard import DAY, HOUR, MAX_HOURLY, RANGES, STATUSES, Filters, SignIn, window
from bridgeproxy.ui import charts
from bridgeproxy.ui.base import Refused, Reply, arg
from bridgeproxy.ui.html import (
    count, cost, hidden, link, percent, post_button, short, status_badge, table, text, url, utc,
)

if TYPE_CHECKING:  # pragma: no cover
    from bridgeproxy.ui.resource import Dashboard

PAGE_ROWS = 50
_KEY_ID = re.compile(r"^[0-9a-f]{1,64}$")


def _label(value: Optional[str]) -> str:
    return value if value else "(none)"


# -- overview -------------------------------------------------------------------------------------------


def _in_flight(bridge: Any) -> tuple[int, int]:
    """Requests being served by this process now, and how many of them are streams being relayed."""
    exchanges = list(getattr(bridge, "in_flight", ()))
    return len(exchanges), sum(1 for ex in exchanges if ex.streamed and ex.relay is not None)


def overview(ui: "Dashboard", request: Any, sign_in: SignIn) -> Deferred:
    name = arg(request, "range") or "24h"
    if name not in RANGES:
        raise Refused(400, "range must be one of " + ", ".join(RANGES))
    span, bucket = RANGES[name]
    wanted = arg(request, "bucket")
    if wanted is not None:
        if wanted not in ("hour", "day"):
            raise Refused(400, "bucket must be hour or day")
        bucket = HOUR if wanted == "hour" and span <= MAX_HOURLY else DAY
    since, until = window(ui.clock.seconds(), span, bucket)
    d = ui.run(lambda db: dashboard.overview(db, since, until, bucket))
    return d.addCallback(_overview_page, ui, name, bucket)


def _overview_page(data: dict, ui: "Dashboard", name: str, bucket: int) -> Any:
    totals, series = data["totals"], data["series"]
    requests = totals["requests"]
    tokens = sum(totals[k] for k in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"))
    flying, streams = _in_flight(ui.bridge)
    ranges = tags.div(
        tags.span("Range:", class_="muted"),
        [tags.a(key, href=url("/ui/", range=key), class_="current" if key == name else "") for key in RANGES],
        tags.span(" Buckets:", class_="muted"),
        [tags.a(label, href=url("/ui/", range=name, bucket=label), class_="current" if size == bucket else "")
         for label, size in (("hour", HOUR), ("day", DAY)) if size == DAY or RANGES[name][0] <= MAX_HOURLY],
        tags.span(f" {utc(data['since'], False)} to {utc(data['until'], False)} UTC", class_="muted"),
        class_="ranges")

    def card(label: str, value: str, ident: str, title: str = "") -> Tag:
        return tags.div(tags.div(value, class_="value", id=ident), tags.div(label, class_="label"),
                        class_="card", title=title)
    unpriced = totals["unpriced"]
    cards = tags.div(
        card("requests", count(requests), "total-requests"),
        card("input tokens", short(totals["input_tokens"]), "total-input"),
        card("output tokens", short(totals["output_tokens"]), "total-output"),
        card("cache read / write tokens", f"{short(totals['cache_read_tokens'])} / "
             f"{short(totals['cache_write_tokens'])}", "total-cache"),
        card("cost" + (f" ({count(unpriced)} unpriced)" if unpriced else ""), cost(totals["cost_micros"]),
             "total-cost", "In the price table's currency; requests of models without a price are left out."),
        card("error rate", percent(totals["errors"], requests), "error-rate",
             "Requests that failed: an error answer of the provider, a timeout, an unreachable provider, "
             "a stream cut short."),
        card("refusal rate", percent(totals["refused"], requests), "refusal-rate",
             "Requests the gateway refused: no or a bad key, a disabled user, a limit, a path it does not serve."),
        card("streams in flight now", count(streams), "streams-in-flight",
             f"{flying} requests in flight in this process (with several workers: this worker's)"),
        class_="cards")
    chart_list = tags.div(
        charts.bar_chart(_ok_split(series), [("answered", "answered"), ("errors", "errors"), ("refused", "refused")],
                         bucket, title="Requests", formatter=short, name="requests"),
        charts.bar_chart(series, [("input_tokens", "input"), ("output_tokens", "output"),
                                  ("cache_read_tokens", "cache read"), ("cache_write_tokens", "cache write")],
                         bucket, title="Tokens", formatter=short, name="tokens"),
        charts.bar_chart(series, [("cost_micros", "cost")], bucket, title="Cost",
                         formatter=lambda v: cost(int(v)), name="cost"),
        class_="charts")
    tops = tags.div([_top_table(title, dimension, data["top"][dimension], name)
                     for title, dimension in (("Top users", "initiator"), ("Top models", "model"),
                                              ("Top clients", "client"))], class_="tops")
    content = [ranges, cards, chart_list, tags.h2("Who, what and with which client"), tags.p(
        "Tokens include cache reads and writes. Each name opens its interceptions.", class_="muted"), tops,
        tags.p(f"Tokens in this range: {count(tokens)}.", class_="muted")]
    return Reply(title="Overview", content=content, current="/ui/")


def _ok_split(series: list[dict]) -> list[dict]:
    """Each bucket's requests split into answered, errors and refused (the stacks of the requests chart)."""
    return [{**entry, "answered": entry["requests"] - entry["errors"] - entry["refused"]} for entry in series]


def _top_table(title: str, dimension: str, rows: list[dict], range_name: str) -> Tag:
    filter_name = {"initiator": "user", "model": "model", "client": "client"}[dimension]
    body = []
    for row in rows:
        tokens = sum(row[k] for k in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"))
        label = row["label"]
        name: Any = link(label, url("/ui/interceptions", **{filter_name: label})) if label else "(none)"
        body.append([name, count(row["requests"]), short(tokens), cost(row["cost_micros"]),
                     percent(row["errors"], row["requests"])])
    return tags.section(tags.h2(title), table(["name", "requests", "tokens", "cost", "errors"], body,
                                              numeric=(1, 2, 3, 4), id=f"top-{dimension}")
                        if body else tags.p("Nothing in this range.", class_="muted"))


# -- interceptions --------------------------------------------------------------------------------------


def _datetime(value: Optional[str], name: str) -> Optional[float]:
    """A C{YYYY-MM-DD[THH:MM[:SS]]} time in UTC as POSIX seconds (the value of a datetime-local input)."""
    if value is None:
        return None
    for shape in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return float(calendar.timegm(time.strptime(value, shape)))
        except ValueError:
            continue
    raise Refused(400, f"{name} must be a date and time, YYYY-MM-DD HH:MM (UTC)")


def _cursor(value: Optional[str]) -> Optional[tuple[float, str]]:
    """A page cursor as the pager writes it."""
    if value is None:
        return None
    try:
        return dashboard.parse_cursor(value)
    except ValueError:
        raise Refused(400, "after is not a page cursor from this dashboard") from None


def _cursor_text(cursor: Optional[tuple[float, str]]) -> Optional[str]:
    return None if cursor is None else dashboard.cursor_text(cursor)


_FILTER_ARGS = ("user", "model", "client", "provider", "status", "from", "to", "q")


def _filters(request: Any) -> tuple[Filters, dict[str, Optional[str]]]:
    given = {name: arg(request, name) for name in _FILTER_ARGS}
    if given["status"] is not None and given["status"] not in STATUSES:
        raise Refused(400, "status must be one of " + ", ".join(STATUSES))
    if given["q"] is not None and len(given["q"]) > 200:
        raise Refused(400, "the text to search for must be at most 200 characters")
    filters = Filters(initiator=given["user"], model=given["model"], client=given["client"],
                      provider=given["provider"], status=given["status"], since=_datetime(given["from"], "from"),
                      until=_datetime(given["to"], "to"), text=given["q"])
    return filters, given


def _select(name: str, label: str, choices: list[str], chosen: Optional[str]) -> Tag:
    options = [tags.option("any", value="")]
    if chosen and chosen not in choices:
        choices = [chosen] + choices
    for choice in choices:
        attributes = {"selected": "selected"} if choice == chosen else {}
        options.append(tags.option(text(choice), value=text(choice), **attributes))
    return tags.label(label, tags.select(options, name=name, id=f"filter-{name}"))


def _input(name: str, label: str, value: Optional[str], kind: str = "text", **extra: str) -> Tag:
    return tags.label(label, tags.input(type=kind, name=name, value=text(value or ""), id=f"filter-{name}",
                                        **extra))


def interceptions(ui: "Dashboard", request: Any, sign_in: SignIn) -> Deferred:
    filters, given = _filters(request)
    cursor = _cursor(arg(request, "after"))
    since = ui.clock.seconds() - 90 * DAY

    def work(db: Any) -> tuple[Any, dict]:
        return (dashboard.interceptions(db, filters, cursor, PAGE_ROWS, window=dashboard.SEARCH_WINDOW),
                dashboard.labels(db, since))
    d = ui.run(work)
    return d.addCallback(lambda found: _interceptions_page(ui, found[0], found[1], given, cursor))


def _interceptions_page(ui: "Dashboard", page: Any, labels: dict, given: dict, cursor: Any) -> Any:
    providers = sorted(name.decode("ascii", "replace") for name in getattr(ui.bridge, "providers", {}))
    form = tags.form(
        tags.label("User", tags.input(type="text", name="user", value=text(given["user"] or ""), id="filter-user",
                                      list="users", placeholder="name or id")),
        tags.datalist([tags.option(value=text(u)) for u in labels["initiator"]], id="users"),
        _select("model", "Model", labels["model"], given["model"]),
        _select("client", "Client", labels["client"], given["client"]),
        _select("provider", "Provider", providers, given["provider"]),
        _select("status", "Status", list(STATUSES), given["status"]),
        _input("from", "From (UTC)", given["from"], "datetime-local"),
        _input("to", "To (UTC)", given["to"], "datetime-local"),
        _input("q", "Prompt contains", given["q"], "search", maxlength="200"),
        tags.button("Filter", type="submit", id="apply-filters"),
        tags.a("Clear", href="/ui/interceptions"),
        method="get", action="/ui/interceptions", class_="filters")
    rows = []
    for r in page.rows:
        prompt = (r.get("prompt") or "").replace("\n", " ")
        rows.append([
            tags.td(link(utc(r["started_at"]), f"/ui/interceptions/{r['id']}", class_="open"), class_="time"),
            text(r.get("initiator_username") or r.get("initiator_id") or "(none)"),
            text(r["client"]), text(r["provider"]), text(r.get("model") or "—"),
            status_badge(r["status"], r.get("upstream_status")),
            short(r["input_tokens"]), short(r["output_tokens"]),
            short(r["cache_read_tokens"] + r["cache_write_tokens"]), cost(r.get("cost_micros")),
            f"{count(r['duration_ms'])} ms",
            tags.td(tags.span(text(prompt[:160]), class_="clip"), class_="prompt", title=text(prompt[:400])),
        ])
    query = {name: value for name, value in given.items() if value}
    pager = [tags.a("Newest", href=url("/ui/interceptions", **query))] if cursor is not None else []
    if page.next_cursor is not None:
        label = "Search older rows →" if page.scanned is not None and len(page.rows) < PAGE_ROWS else "Older →"
        pager.append(tags.a(label, href=url("/ui/interceptions", **query, after=_cursor_text(page.next_cursor)),
                            id="older"))
    note: Any = ""
    if page.scanned is not None:
        note = tags.p(f"A text search looks at {count(page.scanned)} rows (of those the other filters select) per "
                      f"page: {len(page.rows)} of them match here." + (" Older rows may match too." if
                                                                        page.next_cursor else ""), class_="note")
    content = [form, note,
               table(["started (UTC)", "user", "client", "provider", "model", "status", "in", "out", "cache",
                      "cost", "duration", "prompt"], rows, numeric=(6, 7, 8, 9, 10), id="interceptions",
                     class_="rows")
               if rows else tags.p("No interceptions match.", class_="muted", id="no-interceptions"),
               tags.div(pager, class_="pager")]
    return Reply(title="Interceptions", content=content, current="/ui/interceptions")


def _facts(pairs: list[tuple[str, Any]]) -> Tag:
    return tags.dl([[tags.dt(name), tags.dd(value if isinstance(value, (Tag, list)) else text(
        "—" if value in (None, "") else value))] for name, value in pairs], class_="facts")


def _arguments(value: str) -> str:
    """Tool call arguments, indented when they are JSON."""
    try:
        return json.dumps(json.loads(value), indent=2, ensure_ascii=False)
    except (ValueError, TypeError):
        return value


def interception(interception_id: str) -> Any:
    """The page of one interception (C{/ui/interceptions/<id>})."""
    def make(ui: "Dashboard", request: Any, sign_in: SignIn) -> Deferred:
        d = ui.run(lambda db: dashboard.interception(db, interception_id))
        return d.addCallback(_interception_page)
    return make


def _interception_page(r: Optional[dict]) -> Any:
    if r is None:
        raise Refused(404, "There is no interception with that id.")
    initiator = r.get("initiator_username") or r.get("initiator_id")
    owner = r.get("credential_user_id")
    delegated = owner is not None and owner != r.get("initiator_id")
    who = _facts([
        ("initiator", [link(initiator, url("/ui/interceptions", user=initiator)) if initiator else "(none)",
                       tags.span(f" {r['initiator_id']}", class_="muted") if r.get("initiator_username") else ""]),
        ("credential owner", [text(owner or "—"),
                              tags.span("delegated", class_="badge", id="delegated") if delegated else ""]),
        ("credential", f"{r.get('credential_kind') or '—'} · {r.get('credential_hint') or 'no key'}"),
        ("client", text(r["client"])),
        ("client session", link(r["client_session_id"], url("/ui/session", id=r["client_session_id"]))
         if r.get("client_session_id") else "—"),
        ("user agent", r.get("user_agent")),
    ])
    what = _facts([
        ("provider", r["provider"]), ("route", r["route"]), ("method", r["method"]),
        ("model", r.get("model")), ("streamed", "yes" if r["streamed"] else "no"),
        ("intercepted", "yes" if r["intercepted"] else "no (passthrough)"),
        ("status", status_badge(r["status"], r.get("upstream_status"))),
        ("status to the client", r.get("http_status")), ("provider's status", r.get("upstream_status")),
        ("stop reason", r.get("stop_reason")), ("attempts", r.get("attempts")), ("error", r.get("error")),
    ])
    tokens = _facts([
        ("input", count(r["input_tokens"])), ("output", count(r["output_tokens"])),
        ("cache read", count(r["cache_read_tokens"])), ("cache write", count(r["cache_write_tokens"])),
        ("cost", cost(r.get("cost_micros"))),
        ("started", utc(r["started_at"]) + " UTC"), ("ended", utc(r["ended_at"]) + " UTC"),
        ("time to first byte", f"{count(r['ttfb_ms'])} ms" if r.get("ttfb_ms") is not None else "—"),
        ("duration", f"{count(r['duration_ms'])} ms"),
    ])
    calls = r.get("tool_calls") or []
    tools = [tags.section(tags.h2(f"Tool call {i + 1}: ", tags.code(text(call.get("name")))),
                          tags.p(text(f"id {call.get('id')}"), class_="muted") if call.get("id") else "",
                          tags.pre(text(_arguments(call.get("arguments") or "")), class_="arguments"),
                          class_="panel tool-call") for i, call in enumerate(calls)]
    content = [
        tags.div(tags.section(tags.h2("Who"), who, class_="panel"),
                 tags.section(tags.h2("What"), what, class_="panel"),
                 tags.section(tags.h2("Tokens, cost and time"), tokens, class_="panel"), class_="panels"),
        tags.h2("Prompt"),
        tags.pre(text(r["prompt"]), id="prompt") if r.get("prompt") else tags.p("No prompt was recorded.",
                                                                              class_="muted"),
        tags.h2(f"Tool calls ({len(calls)})"),
        tools or tags.p("The answer called no tool.", class_="muted"),
    ]
    return Reply(title=f"Interception {r['id']}", content=content, current="/ui/interceptions")


# -- sessions ---------------------------------------------------------------------------------------------

SESSION_RANGES = {"24h": DAY, "7d": 7 * DAY, "30d": 30 * DAY}
SESSION_ROWS = 25


def sessions(ui: "Dashboard", request: Any, sign_in: SignIn) -> Deferred:
    name = arg(request, "range") or "7d"
    if name not in SESSION_RANGES:
        raise Refused(400, "range must be one of " + ", ".join(SESSION_RANGES))
    user, client = arg(request, "user"), arg(request, "client")
    cursor = _cursor(arg(request, "after"))
    now = ui.clock.seconds()
    since = now - SESSION_RANGES[name]

    def work(db: Any) -> Any:
        return (dashboard.sessions(db, since=since, initiator=user, client=client, cursor=cursor,
                                   limit=SESSION_ROWS),
                dashboard.labels(db, since))
    d = ui.run(work)
    return d.addCallback(lambda found: _sessions_page(found[0], found[1], name, user, client, cursor, since, now))


def _sessions_page(found: Any, labels: dict, name: str, user: Optional[str], client: Optional[str], cursor: Any,
                   since: float, now: float) -> Any:
    rows, next_cursor = found
    ranges = tags.div(tags.span("Active in the last:", class_="muted"),
                      [tags.a(key, href=url("/ui/sessions", range=key, user=user, client=client),
                              class_="current" if key == name else "") for key in SESSION_RANGES], class_="ranges")
    form = tags.form(
        hidden("range", name),
        tags.label("User", tags.input(type="text", name="user", value=text(user or ""), list="users",
                                      id="filter-user")),
        tags.datalist([tags.option(value=text(u)) for u in labels["initiator"]], id="users"),
        _select("client", "Client", labels["client"], client),
        tags.button("Filter", type="submit"), method="get", action="/ui/sessions", class_="filters")
    start = min((s["first_at"] for s in rows), default=since)
    spans = [{"from": s["first_at"], "to": max(s["ended_at"], s["first_at"]), "label": f"{_label(s['initiator'])} · "
              f"{s['client']}", "class": "status-error" if s["errors"] else "status-ok",
              "tip": f"{s['session_id']}: {s['requests']} requests, {utc(s['first_at'])} to {utc(s['ended_at'])} UTC",
              "id": s["session_id"]} for s in rows]
    picture = charts.timeline(spans, start, max(now, start + 1), title="Sessions over time", lanes=True,
                              href=lambda span: url("/ui/session", id=span["id"]))
    body = [[link(s["session_id"][:40], url("/ui/session", id=s["session_id"])), text(s["client"]),
             text(_label(s["initiator"])), count(s["requests"]),
             short(s["input_tokens"] + s["output_tokens"] + s["cache_read_tokens"] + s["cache_write_tokens"]),
             cost(s["cost_micros"]), count(s["errors"]), utc(s["first_at"]), utc(s["last_at"]),
             _duration(s["ended_at"] - s["first_at"])] for s in rows]
    pager = [tags.a("Most recent", href=url("/ui/sessions", range=name, user=user, client=client))] if cursor else []
    if next_cursor is not None:
        pager.append(tags.a("Older →", href=url("/ui/sessions", range=name, user=user, client=client,
                                                after=_cursor_text(next_cursor)), id="older"))
    content = [ranges, form, tags.p("Requests grouped by the session id their client sends (Claude Code, Codex, "
                                    "Coder Agents), most recently active first.", class_="muted"),
               tags.figure(picture, class_="chart") if rows else "",
               table(["session", "client", "user", "requests", "tokens", "cost", "errors", "first (UTC)",
                      "last (UTC)", "span"], body, numeric=(3, 4, 5, 6), id="sessions", class_="rows")
               if body else tags.p("No client sessions in this range.", class_="muted"),
               tags.div(pager, class_="pager")]
    return Reply(title="Sessions", content=content, current="/ui/sessions")


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def session(ui: "Dashboard", request: Any, sign_in: SignIn) -> Deferred:
    session_id = arg(request, "id")
    if session_id is None:
        raise Refused(400, "Which session? The address needs ?id=")
    d = ui.run(lambda db: dashboard.session(db, session_id))
    return d.addCallback(_session_page)


def _session_page(found: Optional[dict]) -> Any:
    if found is None:
        raise Refused(404, "There is no client session with that id.")
    records = found["interceptions"]
    spans = [{"from": r["started_at"], "to": r["ended_at"], "class": f"status-{r['status']}", "id": r["id"],
              "tip": f"{utc(r['started_at'])} UTC · {r.get('model') or r['route']} · {r['status']} · "
                     f"{r['duration_ms']} ms · {len(r.get('tool_calls') or [])} tool calls"} for r in records]
    picture = charts.timeline(spans, found["first_at"], max(found["ended_at"], found["first_at"] + 1),
                              title="The session's requests", href=lambda span: f"/ui/interceptions/{span['id']}")
    summary = _facts([
        ("client", found["client"]), ("user", _label(found["initiator"])),
        ("requests", count(found["requests"])), ("errors", count(found["errors"])),
        ("tokens (in / out / cache)", f"{count(found['input_tokens'])} / {count(found['output_tokens'])} / "
                                      f"{count(found['cache_read_tokens'] + found['cache_write_tokens'])}"),
        ("cost", cost(found["cost_micros"])),
        ("from", utc(found["first_at"]) + " UTC"), ("to", utc(found["ended_at"]) + " UTC"),
        ("span", _duration(found["ended_at"] - found["first_at"])),
    ])
    body = [[tags.td(link(utc(r["started_at"]), f"/ui/interceptions/{r['id']}"), class_="time"),
             text(r.get("model") or "—"), text(r["route"]), status_badge(r["status"], r.get("upstream_status")),
             str(len(r.get("tool_calls") or [])), short(r["input_tokens"]), short(r["output_tokens"]),
             f"{count(r['duration_ms'])} ms",
             tags.td(tags.span(text((r.get("prompt") or "").replace("\n", " ")[:120]), class_="clip"),
                     class_="prompt")] for r in records]
    more = tags.p(f"Showing the first {len(records)} requests.", class_="muted") \
        if len(records) < found["requests"] else ""
    content = [summary, tags.figure(picture, class_="chart"), more,
               table(["started (UTC)", "model", "route", "status", "tools", "in", "out", "duration", "prompt"],
                     body, numeric=(4, 5, 6, 7), id="session-interceptions", class_="rows")]
    return Reply(title=f"Session {found['session_id'][:60]}", content=content, current="/ui/sessions")


# -- users and keys -------------------------------------------------------------------------------------

_DONE = {"revoked": "Key {key} revoked: requests with it are refused from now on (within the key cache's "
                    "few seconds).",
         "disabled": "User disabled: their requests are refused and their dashboard sessions ended.",
         "enabled": "User enabled again."}


def users(ui: "Dashboard", request: Any, sign_in: SignIn) -> Deferred:
    now = ui.clock.seconds()
    since, until = now - 30 * DAY, now + HOUR
    admission = getattr(ui.bridge.api, "admission", None)

    def work(db: Any) -> tuple[list[dict], Optional[dict[str, dict]]]:
        found = dashboard.users(db, since, until)
        if admission is None:
            return found, None
        # Each user's budget (their own or the default) where they stand in its current period.
        return found, {user["user_id"]: report(db, admission.default, admission.clock.seconds(),
                                               (user["user_id"], user["username"]))[0] for user in found}
    d = ui.run(work)
    return d.addCallback(lambda found: _users_page(ui, request, sign_in, found[0], found[1]))


_PERIODS = {"day": "a day", "week": "a week", "month": "a month"}


def _budget(standing: Optional[dict]) -> Any:
    """A user's budget in a cell: spent of the amount per period, what is left, and whose budget it is."""
    if standing is None or standing.get("source") is None:
        return tags.span("none", class_="muted")
    spent, held, amount = standing["spent_micros"], standing["held_micros"], standing["amount_micros"]
    left = standing["left_micros"]
    return tags.span(
        f"{cost(spent)} of {cost(amount)} {_PERIODS.get(standing['period'], standing['period'])}",
        tags.br(), tags.span(f"{cost(left)} left" + (f", {cost(held)} held" if held else "") +
                             (" · default" if standing["source"] == "default" else ""),
                             class_="muted" if left else "status bad"),
        class_="budget", title=f"until {standing['period_end']}")


def _key_state(key: dict, now: float) -> str:
    if key.get("revoked_at") is not None:
        return f"revoked {utc(key['revoked_at'], False)}"
    if key.get("expires_at") is not None and key["expires_at"] <= now:
        return f"expired {utc(key['expires_at'], False)}"
    if key.get("expires_at") is not None:
        return f"expires {utc(key['expires_at'], False)}"
    return "active"


def _users_page(ui: "Dashboard", request: Any, sign_in: SignIn, found: list[dict],
                budgets: Optional[dict[str, dict]] = None) -> Any:
    now = ui.clock.seconds()
    done = arg(request, "done")
    key = arg(request, "key")
    flash: Any = ""
    if done in _DONE:
        flash = tags.p(_DONE[done].format(key=key if key and _KEY_ID.match(key) else ""), class_="flash", id="done")
    managed = ui.keystore
    create: Any = tags.p("Keys are not managed here: the identity backend in use checks bridge keys itself.",
                         class_="note")
    if managed:
        create = tags.form(
            hidden("csrf", sign_in.csrf),
            tags.label("User name (created if new)", tags.input(type="text", name="username", required="required",
                                                                maxlength="100", list="usernames", id="new-username")),
            tags.datalist([tags.option(value=text(u["username"])) for u in found], id="usernames"),
            tags.label("Expires in days (empty: never)", tags.input(type="number", name="expires_days", min="1",
                                                                   max="3650", id="new-expires")),
            tags.label(tags.span(tags.input(type="checkbox", name="admin", value="1", id="new-admin"),
                                 " administrator")),
            tags.button("Create key", type="submit", id="create-key"),
            method="post", action="/ui/keys/create", class_="create")
    rows = []
    for user in found:
        badges = [tags.span("admin", class_="badge admin") if user["admin"] else "",
                  tags.span("disabled", class_="badge off") if user["disabled"] else ""]
        keys = []
        for k in user["keys"]:
            state = _key_state(k, now)
            revoke: Any = ""
            if managed and (state == "active" or state.startswith("expires")):
                revoke = post_button("/ui/keys/revoke", "Revoke", sign_in.csrf, {"key_id": k["key_id"]}, "danger")
            keys.append(tags.li(tags.code(text(k["hint"])), f" {k['key_id']} · {state} ", revoke,
                                **{"data-key-id": k["key_id"]}))
        usage = user["usage"]
        tokens = sum(usage[n] for n in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"))
        action: Any = ""
        if managed and user["user_id"] != sign_in.user_id:
            action = post_button("/ui/users/disable", "Enable" if user["disabled"] else "Disable", sign_in.csrf,
                                 {"user_id": user["user_id"], "disabled": "0" if user["disabled"] else "1"},
                                 "quiet" if user["disabled"] else "danger")
        row = [[link(user["username"], url("/ui/interceptions", user=user["username"])), badges],
               tags.td(text(user["user_id"]), class_="muted"), tags.ul(keys, class_="keys"),
               count(usage["requests"]), short(tokens), cost(usage["cost_micros"])]
        if budgets is not None:
            row.append(_budget(budgets.get(user["user_id"])))
        rows.append(row + [action])
    content = [flash, tags.h2("Create a key"), create, tags.h2("Users"),
               tags.p("Usage over the last 30 days. Keys are shown by their hint only: a key is shown in full once, "
                      "when it is created.", class_="muted"),
               table(["user", "id", "keys", "requests", "tokens", "cost"]
                     + (["budget (this period)"] if budgets is not None else []) + [""], rows, numeric=(3, 4, 5),
                     id="users")
               if rows else tags.p("No users yet.", class_="muted"),
               tags.p("Budgets are set with ", tags.code("bridgeproxy budgets set"), " (docs/spend.md).",
                      class_="muted") if budgets is not None else ""]
    return Reply(title="Users and keys", content=content, current="/ui/users")


def _managed(ui: "Dashboard") -> None:
    if not ui.keystore:
        raise Refused(409, "Keys are not managed here: the identity backend in use checks bridge keys itself.")


def create_key(ui: "Dashboard", request: Any, sign_in: SignIn, form: dict[str, str]) -> Deferred:
    _managed(ui)
    username = form.get("username", "").strip()
    if not username or len(username) > 100 or not username.isprintable():
        raise Refused(400, "The user name must be 1 to 100 printable characters.")
    admin = form.get("admin") == "1"
    days = form.get("expires_days", "").strip()
    expires_at = None
    if days:
        if not days.isdigit() or not 1 <= int(days) <= 3650:
            raise Refused(400, "Expires in days must be a whole number from 1 to 3650, or empty.")
        expires_at = ui.clock.seconds() + int(days) * DAY

    def made(result: tuple[str, str]) -> Any:
        key_id, token = result
        content = [
            tags.p("Copy the key now: it is shown this once, and only its hash is kept.", class_="note"),
            tags.div(token, class_="secret", id="new-key"),
            _facts([("user", username), ("key id", key_id), ("administrator", "yes" if admin else "no"),
                    ("expires", utc(expires_at) + " UTC" if expires_at else "never")]),
            tags.p(tags.a("Back to users and keys", href="/ui/users", id="back-to-users")),
        ]
        return Reply(title="New key", content=content, current="/ui/users", status=201)

    def failed(failure: Any) -> Any:
        failure.trap(StoreError)
        raise Refused(400, str(failure.value))
    d = ui.run(lambda db: db.create_key(username, admin=admin, expires_at=expires_at))
    return d.addCallbacks(made, failed)


def revoke_key(ui: "Dashboard", request: Any, sign_in: SignIn, form: dict[str, str]) -> Deferred:
    _managed(ui)
    key_id = form.get("key_id", "")
    if not _KEY_ID.match(key_id):
        raise Refused(400, "That is not a key id.")

    def work(db: Any) -> bool:
        if not db.revoke_key(key_id):
            return False
        dashboard.end_sign_ins(db, key_id=key_id)
        return True

    def done(revoked: bool) -> Any:
        if not revoked:
            raise Refused(404, "There is no such key, or it is revoked already.")
        return Reply(see_other=url("/ui/users", done="revoked", key=key_id))
    return ui.run(work).addCallback(done)


def disable_user(ui: "Dashboard", request: Any, sign_in: SignIn, form: dict[str, str]) -> Deferred:
    _managed(ui)
    user_id = form.get("user_id", "")
    disabled = form.get("disabled") == "1"
    if not user_id or len(user_id) > 200:
        raise Refused(400, "Which user?")
    if disabled and user_id == sign_in.user_id:
        raise Refused(400, "You cannot disable your own user: sign in as another administrator to do that.")

    def work(db: Any) -> bool:
        found = dashboard.user_id_of(db, user_id)
        if found is None or not db.set_user_disabled(found, disabled):
            return False
        if disabled:
            dashboard.end_sign_ins(db, user_id=found)
        return True

    def done(changed: bool) -> Any:
        if not changed:
            raise Refused(404, "There is no such user.")
        return Reply(see_other=url("/ui/users", done="disabled" if disabled else "enabled"))
    return ui.run(work).addCallback(done)


__all__ = ["create_key", "disable_user", "interception", "interceptions", "overview", "revoke_key", "session",
           "sessions", "users"]
