# -*- test-case-name: tests.test_ui_store -*-
"""
The dashboard's queries (C{/ui/} and the C{/api/v1} views behind it), on a
L{Database}.  Each one stays fast on a store of a million interceptions:

  - the overview, the top lists and the users' usage read the hourly
    rollups (C{usage_hours}), never the interceptions themselves;
  - the interceptions table is paged by key (C{started_at}, C{id}, newest
    first) over an index that starts with the filtered column;
  - a text search looks at a bounded window of rows per page;
  - the sessions list reads C{client_sessions}, kept by the same triggers.

Like the rest of L{bridgeproxy.store}, everything here blocks: call it on
the store's thread.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Optional

from bridgeproxy.store.database import Database
from bridgeproxy.store.schema import INTERCEPTION_COLUMNS, ROLLUP_SUMS, SESSION_SUMS
from bridgeproxy.types import row_dict

HOUR = 3600
DAY = 86400
#: The overview's ranges: their length, and the bucket they are drawn in by default.
RANGES = {"24h": (DAY, HOUR), "7d": (7 * DAY, DAY), "30d": (30 * DAY, DAY), "90d": (90 * DAY, DAY)}
#: Hour buckets are offered up to this range (longer ones would be thousands of bars).
MAX_HOURLY = 30 * DAY
#: How many rows one page of a text search reads at most (the rest is on the next page).
SEARCH_WINDOW = 20_000
#: The statuses an interception can end with (C{docs/operations.md}).
STATUSES = ("ok", "refused", "error", "incomplete", "timeout", "upstream_unreachable", "client_disconnected",
            "shutdown")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_TOKEN_SUMS = ROLLUP_SUMS[1:5]


@dataclass(frozen=True)
class Filters:
    """
    What the interceptions table is filtered by; L{None} is no filter.

    @ivar initiator: a user's id (a UUID) or name.
    @ivar since: the earliest start (POSIX seconds), included.
    @ivar until: the latest start, excluded.
    @ivar text: words to look for in the prompts (case-insensitive).
    @ivar session: a client session id.
    """

    initiator: Optional[str] = None
    model: Optional[str] = None
    client: Optional[str] = None
    provider: Optional[str] = None
    status: Optional[str] = None
    since: Optional[float] = None
    until: Optional[float] = None
    text: Optional[str] = None
    session: Optional[str] = None

    def where(self, db: Database, cursor: Optional[tuple[float, str]] = None,
              text: bool = True) -> tuple[str, list[Any]]:
        """The WHERE clause (with its leading C{" WHERE "}, or empty) and its parameters."""
        clauses: list[str] = []
        params: list[Any] = []
        if self.initiator:
            clauses.append("initiator_id = ?" if _UUID.match(self.initiator) else "initiator_username = ?")
            params.append(self.initiator)
        for column in ("model", "client", "provider", "status"):
            value = getattr(self, column)
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.session:
            clauses.append("client_session_id = ?")
            params.append(self.session)
        if self.since is not None:
            clauses.append("started_at >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("started_at < ?")
            params.append(self.until)
        if cursor is not None:
            # Written so that the index's range starts at the cursor: (a, b) < (x, y).
            clauses.append("started_at <= ? AND (started_at < ? OR id < ?)")
            params += [cursor[0], cursor[0], cursor[1]]
        if text and self.text:
            clauses.append(like(db))
            params.append(pattern(self.text))
        return ((" WHERE " + " AND ".join(clauses)) if clauses else ""), params


def window(now: float, span: float, bucket: int) -> tuple[float, float]:
    """The range of C{span} seconds that ends with the bucket holding C{now}, in whole buckets."""
    until = (now // bucket + 1) * bucket
    return until - span, until


def cursor_text(cursor: tuple[float, str]) -> str:
    """A page cursor as text (C{<started_at>~<id>}), for a URL."""
    return f"{cursor[0]!r}~{cursor[1]}"


def parse_cursor(value: str) -> tuple[float, str]:
    """
    The cursor L{cursor_text} wrote.

    @raise ValueError: when C{value} is not one.
    """
    started, sep, ident = value.partition("~")
    found = float(started)
    if not sep or not ident or found != found or found in (float("inf"), float("-inf")):
        raise ValueError("not a page cursor")
    return found, ident


def like(db: Database) -> str:
    """A case-insensitive match of the prompt against one C{?} pattern (with C{\\} escaping)."""
    operator = "ILIKE" if db.dialect == "postgresql" else "LIKE"
    return f"prompt {operator} ? ESCAPE '\\'"


def pattern(text: str) -> str:
    """A LIKE pattern that finds C{text} anywhere, its own C{%}, C{_} and C{\\} taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@dataclass(frozen=True)
class Page:
    """
    One page of interceptions, newest first.

    @ivar next_cursor: where the next page starts (C{(started_at, id)} of
        the last row read), L{None} on the last page.
    @ivar scanned: for a text search, how many rows this page read (at most
        L{SEARCH_WINDOW}); L{None} otherwise.
    """

    rows: list[dict[str, Any]]
    next_cursor: Optional[tuple[float, str]]
    scanned: Optional[int] = None


_SELECT = f"SELECT {', '.join(INTERCEPTION_COLUMNS)} FROM interceptions"
_ORDER = " ORDER BY started_at DESC, id DESC"


def interceptions(db: Database, filters: Filters, cursor: Optional[tuple[float, str]] = None,
                  limit: int = 50, window: Optional[int] = None, offset: int = 0) -> Page:
    """
    A page of the interceptions C{filters} selects, after C{cursor}.

    Without a text search, the page is read straight off the index of its
    most selective filter.  With one, the next C{window} rows matching the
    other filters are looked at: a page then holds the matches among them
    (maybe none), and its cursor continues after the last row looked at.

    @param window: how many rows a text search looks at (default L{SEARCH_WINDOW}).
    @param offset: rows to skip first (without a text search).
    """
    if not filters.text:
        where, params = filters.where(db, cursor)
        rows = db.execute(f"{_SELECT}{where}{_ORDER} LIMIT ? OFFSET ?", (*params, limit + 1, offset))
        found = [row_dict(row) for row in rows[:limit]]
        more = len(rows) > limit
        return Page(found, _cursor(found[-1]) if more else None)
    window = window or SEARCH_WINDOW
    where, params = filters.where(db, cursor, text=False)
    flag = f"CASE WHEN {like(db)} THEN 1 ELSE 0 END"
    window_rows = db.execute(f"SELECT started_at, id, {flag} FROM interceptions{where}{_ORDER} LIMIT ?",
                             (pattern(filters.text), *params, window + 1))
    more = len(window_rows) > window
    window_rows = window_rows[:window]
    hits = [(started, ident) for started, ident, hit in window_rows if hit]
    next_cursor: Optional[tuple[float, str]] = None
    if len(hits) > limit:
        hits, next_cursor = hits[:limit], hits[limit - 1]
    elif more:
        next_cursor = (window_rows[-1][0], window_rows[-1][1])
    found = []
    if hits:
        marks = ", ".join("?" for _ in hits)
        rows = db.execute(f"{_SELECT} WHERE id IN ({marks}){_ORDER}", [ident for _, ident in hits])
        found = [row_dict(row) for row in rows]
    return Page(found, next_cursor, scanned=len(window_rows))


def _cursor(row: dict[str, Any]) -> tuple[float, str]:
    return (row["started_at"], row["id"])


def interception(db: Database, interception_id: str) -> Optional[dict[str, Any]]:
    """One interception by id, or L{None}."""
    rows = db.execute(f"{_SELECT} WHERE id = ?", (interception_id,))
    return row_dict(rows[0]) if rows else None


# -- the overview -------------------------------------------------------------------------------


def _sums(values: Any) -> dict[str, int]:
    return {name: int(value or 0) for name, value in zip(ROLLUP_SUMS, values)}


def overview(db: Database, since: float, until: float, bucket: int = HOUR, top: int = 10) -> dict[str, Any]:
    """
    What the overview shows for the hours from C{since} to C{until}
    (rounded out to whole UTC hours):

      - C{series}: one entry per C{bucket} (L{HOUR} or L{DAY}, UTC), empty
        ones included, each with its C{start} and the sums of
        L{ROLLUP_SUMS} (requests, tokens, C{cost_micros}, C{unpriced},
        C{errors}, C{refused});
      - C{totals}: the same sums over the whole range;
      - C{top}: per C{initiator}, C{model} and C{client}, the C{top}
        labels with the most requests, each with its sums.
    """
    first, last = int(since // HOUR), -(-int(until) // HOUR)
    columns = ", ".join(ROLLUP_SUMS)
    hours = db.execute(f"SELECT bucket, {columns} FROM usage_hours WHERE dimension = 'total' "
                       "AND bucket >= ? AND bucket < ?", (first, last))
    step = bucket // HOUR
    start = first - first % step if step > 1 else first
    series: dict[int, dict[str, int]] = {}
    for b in range(start, last, step):
        series[b] = dict.fromkeys(ROLLUP_SUMS, 0)
    totals = dict.fromkeys(ROLLUP_SUMS, 0)
    for row in hours:
        sums = _sums(row[1:])
        entry = series[int(row[0]) - int(row[0]) % step]
        for name, value in sums.items():
            entry[name] += value
            totals[name] += value
    tops = {}
    summed = ", ".join(f"SUM({name})" for name in ROLLUP_SUMS)
    for dimension in ("initiator", "model", "client"):
        rows = db.execute(
            f"SELECT label, {summed} FROM usage_hours WHERE dimension = ? AND bucket >= ? AND bucket < ? "
            "GROUP BY label ORDER BY 2 DESC, label LIMIT ?", (dimension, first, last, top))
        tops[dimension] = [{"label": row[0], **_sums(row[1:])} for row in rows]
    return {
        "since": first * HOUR, "until": last * HOUR, "bucket": bucket,
        "series": [{"start": b * HOUR, **sums} for b, sums in series.items()],
        "totals": totals, "top": tops,
    }


def usage_by(db: Database, dimension: str, since: float, until: float) -> dict[str, dict[str, int]]:
    """The sums of L{ROLLUP_SUMS} per label of C{dimension} (C{initiator}, C{model}, C{client})."""
    summed = ", ".join(f"SUM({name})" for name in ROLLUP_SUMS)
    rows = db.execute(f"SELECT label, {summed} FROM usage_hours WHERE dimension = ? AND bucket >= ? "
                      "AND bucket < ? GROUP BY label", (dimension, int(since // HOUR), -(-int(until) // HOUR)))
    return {row[0]: _sums(row[1:]) for row in rows}


def labels(db: Database, since: float) -> dict[str, list[str]]:
    """The users, models and clients seen since C{since} (for the filters' choices), sorted."""
    rows = db.execute("SELECT DISTINCT dimension, label FROM usage_hours WHERE dimension <> 'total' "
                      "AND bucket >= ?", (int(since // HOUR),))
    found: dict[str, list[str]] = {"initiator": [], "model": [], "client": []}
    for dimension, label in rows:
        if label:
            found[dimension].append(label)
    return {dimension: sorted(values) for dimension, values in found.items()}


# -- client sessions ------------------------------------------------------------------------------

_SESSION_COLUMNS = ("session_id", "client", "initiator", "first_at", "last_at", "ended_at") + SESSION_SUMS


def _session(row: tuple) -> dict[str, Any]:
    data = dict(zip(_SESSION_COLUMNS, row))
    for name in SESSION_SUMS:
        data[name] = int(data[name] or 0)
    return data


def sessions(db: Database, since: Optional[float] = None, until: Optional[float] = None,
             initiator: Optional[str] = None, client: Optional[str] = None,
             cursor: Optional[tuple[float, str]] = None, limit: int = 50) -> tuple[list[dict], Optional[tuple]]:
    """
    Client sessions active from C{since} to C{until} (their last request),
    most recent first, a page at a time: C{(sessions, next cursor)}.
    """
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (("initiator", initiator), ("client", client)):
        if value:
            clauses.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        clauses.append("last_at >= ?")
        params.append(since)
    if until is not None:
        clauses.append("first_at < ?")
        params.append(until)
    if cursor is not None:
        clauses.append("last_at <= ? AND (last_at < ? OR session_id < ?)")
        params += [cursor[0], cursor[0], cursor[1]]
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    rows = db.execute(f"SELECT {', '.join(_SESSION_COLUMNS)} FROM client_sessions{where} "
                      "ORDER BY last_at DESC, session_id DESC LIMIT ?", (*params, limit + 1))
    found = [_session(row) for row in rows[:limit]]
    more = len(rows) > limit
    return found, ((found[-1]["last_at"], found[-1]["session_id"]) if more else None)


def session(db: Database, session_id: str, limit: int = 1000) -> Optional[dict[str, Any]]:
    """A client session and its first C{limit} interceptions, oldest first; L{None} if unknown."""
    rows = db.execute(f"SELECT {', '.join(_SESSION_COLUMNS)} FROM client_sessions WHERE session_id = ?",
                      (session_id,))
    if not rows:
        return None
    found = _session(rows[0])
    records = db.execute(f"{_SELECT} WHERE client_session_id = ? ORDER BY started_at, id LIMIT ?",
                         (session_id, limit))
    found["interceptions"] = [row_dict(row) for row in records]
    return found


# -- users and keys ------------------------------------------------------------------------------------


def users(db: Database, since: float, until: float) -> list[dict[str, Any]]:
    """
    Every user of the key store with their keys (hints only) and their
    usage from C{since} to C{until}, by name.
    """
    usage = usage_by(db, "initiator", since, until)
    keys: dict[str, list[dict[str, Any]]] = {}
    for key in db.list_keys():
        keys.setdefault(key["user_id"], []).append(
            {name: key[name] for name in ("key_id", "hint", "created_at", "expires_at", "revoked_at")})
    rows = db.execute("SELECT id, username, disabled, admin, created_at FROM users ORDER BY username")
    empty = dict.fromkeys(ROLLUP_SUMS, 0)
    return [{"user_id": uid, "username": name, "disabled": bool(disabled), "admin": bool(admin),
             "created_at": created, "keys": keys.get(uid, []),
             "usage": usage.get(name) or usage.get(uid) or dict(empty)}
            for uid, name, disabled, admin, created in rows]


def user_id_of(db: Database, username_or_id: str) -> Optional[str]:
    """The id of the user with this name or id, or L{None}."""
    rows = db.execute("SELECT id FROM users WHERE id = ? OR username = ?", (username_or_id, username_or_id))
    return rows[0][0] if rows else None


# -- the dashboard's sign-in sessions ---------------------------------------------------------------


def session_hash(cookie: str) -> str:
    """The stored form of a sign-in cookie's value (a stolen copy of the table signs nobody in)."""
    return hashlib.sha256(cookie.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class SignIn:
    """An administrator's signed-in session of the dashboard."""

    user_id: str
    username: Optional[str]
    key_id: Optional[str]
    csrf: str
    created_at: float
    expires_at: float


def add_sign_in(db: Database, cookie: str, sign_in: SignIn) -> None:
    """Keep a new sign-in (and forget the expired ones)."""
    db.execute("DELETE FROM ui_sessions WHERE expires_at <= ?", (sign_in.created_at,))
    db.execute("INSERT INTO ui_sessions (id_hash, user_id, username, key_id, csrf, created_at, expires_at) "
               "VALUES (?, ?, ?, ?, ?, ?, ?)",
               (session_hash(cookie), sign_in.user_id, sign_in.username, sign_in.key_id, sign_in.csrf,
                sign_in.created_at, sign_in.expires_at))


def find_sign_in(db: Database, cookie: str, now: float) -> Optional[SignIn]:
    """The sign-in a cookie's value belongs to, unless unknown or expired."""
    rows = db.execute("SELECT user_id, username, key_id, csrf, created_at, expires_at FROM ui_sessions "
                      "WHERE id_hash = ? AND expires_at > ?", (session_hash(cookie), now))
    return SignIn(*rows[0]) if rows else None


def end_sign_in(db: Database, cookie: str) -> None:
    """Forget one sign-in (signing out)."""
    db.execute("DELETE FROM ui_sessions WHERE id_hash = ?", (session_hash(cookie),))


def end_sign_ins(db: Database, *, user_id: Optional[str] = None, key_id: Optional[str] = None) -> int:
    """Forget every sign-in of a user, or made with a key (disabled, revoked); return how many."""
    column, value = ("user_id", user_id) if user_id is not None else ("key_id", key_id)
    count = db.execute(f"SELECT COUNT(*) FROM ui_sessions WHERE {column} = ?", (value,))[0][0]
    db.execute(f"DELETE FROM ui_sessions WHERE {column} = ?", (value,))
    return int(count)


__all__ = ["DAY", "HOUR", "MAX_HOURLY", "RANGES", "SEARCH_WINDOW", "STATUSES", "Filters", "Page", "cursor_text",
           "parse_cursor", "window", "SignIn", "add_sign_in", "end_sign_in",
           "end_sign_ins", "find_sign_in", "interception", "interceptions", "labels", "overview",
           "pattern", "session", "session_hash", "sessions", "usage_by", "user_id_of", "users"]
