"""
The dashboard's queries (store/dashboard.py) at their edges, on SQLite in
memory: the first and last second of a range, a page exactly full, a text
search whose window ends mid-page, a user known by name or by id, a sign-in
expiring this second.
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest

from bridgeproxy.store import dashboard as q
from tests.dashboards import START, record
from tests.syncstore import SyncStore

H = 3600
UUID = "3f6c2a1e-9b8d-4c7e-a5f4-0d1e2c3b4a59"


@pytest.fixture
def db():
    return SyncStore().db


def ids(page):
    return [r["id"] for r in page.rows]


def test_the_filters_bounds_and_kinds_of_user(db):
    """since is included, until is not; a user is an id when it is a UUID (in either case), else a name."""
    db.insert_interceptions([
        record(id="a", started_at=START), record(id="b", started_at=START + 10),
        record(id="c", started_at=START + 20, initiator_id=UUID.upper(), initiator_username="bob"),
        record(id="d", started_at=START + 5, initiator_id=None, initiator_username=UUID),
        record(id="e", started_at=START + 6, client_session_id="s-9")])
    assert ids(q.interceptions(db, q.Filters(since=START + 10))) == ["c", "b"]
    assert ids(q.interceptions(db, q.Filters(until=START + 10))) == ["e", "d", "a"]
    assert ids(q.interceptions(db, q.Filters(initiator=UUID.upper()))) == ["c"]
    assert ids(q.interceptions(db, q.Filters(initiator="bob"))) == ["c"]
    assert ids(q.interceptions(db, q.Filters(session="s-9"))) == ["e"]
    assert q.Filters().where(db) == ("", [])
    assert q.Filters(model="m", text="x").where(db, text=False) == (" WHERE model = ?", ["m"])


def test_a_page_exactly_full_has_no_next(db):
    db.insert_interceptions([record(id=f"r-{i}", started_at=START + i) for i in range(4)])
    assert q.interceptions(db, q.Filters(), limit=4).next_cursor is None
    page = q.interceptions(db, q.Filters(), limit=3)
    assert ids(page) == ["r-3", "r-2", "r-1"] and page.next_cursor == (START + 1, "r-1") and page.scanned is None
    assert ids(q.interceptions(db, q.Filters(), page.next_cursor, limit=3)) == ["r-0"]
    assert ids(q.interceptions(db, q.Filters(), limit=2, offset=1)) == ["r-2", "r-1"]


def test_a_text_search_continues_after_its_last_match_or_its_window(db):
    """More matches than a page: the cursor is the page's last match; a window ending first: its last row."""
    db.insert_interceptions([record(id=f"r-{i}", started_at=START - i, prompt="needle" if i % 2 else "hay")
                             for i in range(10)])
    page = q.interceptions(db, q.Filters(text="NEEDLE"), limit=2, window=8)
    assert ids(page) == ["r-1", "r-3"] and page.next_cursor == (START - 3, "r-3") and page.scanned == 8
    page = q.interceptions(db, q.Filters(text="needle"), limit=9, window=4)
    assert ids(page) == ["r-1", "r-3"] and page.next_cursor == (START - 3, "r-3") and page.scanned == 4
    page = q.interceptions(db, q.Filters(text="needle"), (START - 3, "r-3"), limit=9, window=6)
    assert ids(page) == ["r-5", "r-7", "r-9"] and page.next_cursor is None and page.scanned == 6
    page = q.interceptions(db, q.Filters(text="needle"), limit=5, window=10)
    assert ids(page) == ["r-1", "r-3", "r-5", "r-7", "r-9"] and page.next_cursor is None
    page = q.interceptions(db, q.Filters(text="nothing"), limit=5)
    assert page.rows == [] and page.next_cursor is None and page.scanned == 10


def test_the_default_search_window(db, monkeypatch):
    monkeypatch.setattr(q, "SEARCH_WINDOW", 3)
    db.insert_interceptions([record(id=f"r-{i:02d}", started_at=START - i) for i in range(55)])
    assert q.interceptions(db, q.Filters(text="hello")).scanned == 3
    page = q.interceptions(db, q.Filters())
    assert len(page.rows) == 50 and page.next_cursor == (START - 49, "r-49")


def test_like_and_pattern():
    """Case-insensitive on both dialects (PostgreSQL's ILIKE); the text's own wildcards escaped."""
    assert q.like(SimpleNamespace(dialect="postgresql")) == "prompt ILIKE ? ESCAPE '\\'"
    assert q.like(SimpleNamespace(dialect="sqlite")) == "prompt LIKE ? ESCAPE '\\'"
    assert q.pattern("a%b_c\\d") == "%a\\%b\\_c\\\\d%"


def test_windows_end_with_the_bucket_holding_now():
    assert q.window(START + 1, q.DAY, q.HOUR) == (START + H - q.DAY, START + H)
    assert q.window(START, q.DAY, q.HOUR) == (START + H - q.DAY, START + H)
    assert q.window(START - 1, 2 * q.HOUR, q.HOUR) == (START - 2 * H, START)
    day = START // q.DAY * q.DAY
    assert q.window(START, 7 * q.DAY, q.DAY) == (day + q.DAY - 7 * q.DAY, day + q.DAY)
    assert q.RANGES == {"24h": (86400, 3600), "7d": (7 * 86400, 86400), "30d": (30 * 86400, 86400),
                        "90d": (90 * 86400, 86400)}
    assert q.MAX_HOURLY == 30 * 86400 and q.SEARCH_WINDOW == 20_000


def test_cursors_keep_every_digit_and_refuse_infinities():
    assert q.cursor_text((1.5, "a~b")) == "1.5~a~b" and q.parse_cursor("1.5~a~b") == (1.5, "a~b")
    assert q.parse_cursor(q.cursor_text((0.1 + 0.2, "x"))) == (0.1 + 0.2, "x")
    for bad in ("-inf~x", "1~", "nan~y"):
        with pytest.raises(ValueError, match="^not a page cursor$"):
            q.parse_cursor(bad)


def test_the_overview_rounds_out_to_whole_hours_and_aligns_days(db):
    """A range from mid-hour to mid-hour covers both hours; day buckets start at UTC midnight."""
    day = START // q.DAY * q.DAY
    db.insert_interceptions([record(id="a", started_at=START - H + 10), record(id="b", started_at=START + H + 5),
                             record(id="c", started_at=START + 2 * H), record(id="d", started_at=day - 1)])
    found = q.overview(db, START - H + 1800, START + H + 1)
    assert (found["since"], found["until"], found["bucket"]) == (START - H, START + 2 * H, q.HOUR)
    assert [(b["start"], b["requests"]) for b in found["series"]] == [(START - H, 1), (START, 0), (START + H, 1)]
    assert found["totals"]["requests"] == 2
    days = q.overview(db, day - 5 * H, day + 2 * q.DAY, q.DAY)
    assert [(b["start"], b["requests"]) for b in days["series"]] == [(day - q.DAY, 1), (day, 3), (day + q.DAY, 0)]
    assert days["since"] == day - 5 * H


def test_the_top_lists_are_cut_and_ordered(db):
    db.insert_interceptions([record(model=m, started_at=START) for m in ("x", "y", "y", "z", "z", "z")])
    found = q.overview(db, START, START + H, top=2)
    assert [(t["label"], t["requests"]) for t in found["top"]["model"]] == [("z", 3), ("y", 2)]
    assert set(found["top"]) == {"initiator", "model", "client"}
    assert len(q.overview(db, START, START + H)["top"]["model"]) == 3


def test_usage_and_labels_by_hour(db):
    db.insert_interceptions([record(id="a", started_at=START - 1, model="old", client="Old"),
                             record(id="b", started_at=START + H - 1, model="new", initiator_username=None,
                                    initiator_id=None),
                             record(id="c", started_at=START + H, model="later")])
    assert set(q.usage_by(db, "model", START, START + H)) == {"new"}
    assert set(q.usage_by(db, "model", START - 1, START + 1)) == {"old", "new"}
    assert q.usage_by(db, "model", START, START + H)["new"]["requests"] == 1
    assert q.labels(db, START) == {"initiator": ["alice"], "model": ["later", "new"], "client": ["Claude Code"]}
    assert q.labels(db, START - 1)["client"] == ["Claude Code", "Old"]


def test_sessions_by_their_activity(db):
    """A session counts in a range if its last request is after the start and its first before the end."""
    db.insert_interceptions([
        record(id="a1", client_session_id="a", started_at=START), record(id="a2", client_session_id="a",
                                                                          started_at=START + 100),
        record(id="b1", client_session_id="b", started_at=START + 200, initiator_username="bob", client="Codex")])
    def names(**kwargs):
        return [s["session_id"] for s in q.sessions(db, **kwargs)[0]]
    assert names() == ["b", "a"]
    assert names(since=START + 101) == ["b"] and names(since=START + 100) == ["b", "a"]
    assert names(until=START + 200) == ["a"] and names(until=START + 201) == ["b", "a"]
    assert names(initiator="bob") == ["b"] and names(client="Claude Code") == ["a"]
    first, cursor = q.sessions(db, limit=1)
    assert cursor == (first[0]["last_at"], "b")
    assert [s["session_id"] for s in q.sessions(db, cursor=cursor)[0]] == ["a"]
    assert q.sessions(db, limit=2)[1] is None
    found = q.session(db, "a", limit=1)
    assert [r["id"] for r in found["interceptions"]] == ["a1"] and found["requests"] == 2
    assert (found["client"], found["initiator"], found["first_at"]) == ("Claude Code", "alice", START)
    assert isinstance(found["cost_micros"], int)


def test_users_with_usage_by_name_or_id(db):
    """Usage is found under the user's name, else their id; admins and disabled users say so."""
    db.ensure_user("bob", "u-bob", admin=True)
    db.ensure_user("carol", "u-carol")
    db.ensure_user("dave", "u-dave")
    db.set_user_disabled("carol", True)
    key_id, _ = db.create_key("bob", expires_at=START + 9)
    db.insert_interceptions([record(id="1", started_at=START, initiator_username="bob", initiator_id="u-bob"),
                             record(id="2", started_at=START, initiator_username=None, initiator_id="u-carol")])
    found = q.users(db, START, START + H)
    assert [u["username"] for u in found] == ["bob", "carol", "dave"]
    bob, carol, dave = found
    assert (bob["admin"], bob["disabled"], carol["admin"], carol["disabled"]) == (True, False, False, True)
    assert bob["usage"]["requests"] == 1 and carol["usage"]["requests"] == 1
    assert dave["usage"] == dict.fromkeys(bob["usage"], 0)
    assert set(bob["keys"][0]) == {"key_id", "hint", "created_at", "expires_at", "revoked_at"}
    assert bob["keys"][0]["key_id"] == key_id and bob["keys"][0]["expires_at"] == START + 9
    assert dave["keys"] == [] and bob["user_id"] == "u-bob" and isinstance(bob["created_at"], float)
    assert q.user_id_of(db, "carol") == "u-carol" and q.user_id_of(db, "u-dave") == "u-dave"
    assert q.user_id_of(db, "nobody") is None


def test_sign_ins_expire_on_their_second(db):
    assert q.session_hash("c") == hashlib.sha256(b"c").hexdigest()
    assert q.session_hash("\udcff") == hashlib.sha256(b"\xff").hexdigest()
    q.add_sign_in(db, "a", q.SignIn("u", None, None, "x", START, START + 10))
    q.add_sign_in(db, "b", q.SignIn("u", None, None, "y", START + 10, START + 20))
    assert db.execute("SELECT COUNT(*) FROM ui_sessions") == [(1,)]  # "a" expired at START + 10
    assert q.find_sign_in(db, "b", START + 19.5) == q.SignIn("u", None, None, "y", START + 10, START + 20)
    q.add_sign_in(db, "c", q.SignIn("v", "v", "k", "z", START + 10, START + 30))
    q.end_sign_in(db, "c")
    assert q.find_sign_in(db, "c", START) is None and q.find_sign_in(db, "b", START) is not None
    assert q.end_sign_ins(db, user_id="nobody") == 0 and q.end_sign_ins(db, key_id=None) == 0
    assert q.end_sign_ins(db, user_id="u") == 1


def test_a_session_shows_its_first_thousand_requests(db):
    db.insert_interceptions([record(id=f"b-{i:04d}", client_session_id="big", started_at=START + i)
                             for i in range(1001)])
    found = q.session(db, "big")
    assert found["requests"] == 1001 and len(found["interceptions"]) == 1000
    assert found["interceptions"][-1]["id"] == "b-0999"


def test_sessions_walk_one_at_a_time_without_coming_back(db):
    """Most recent first, one a page: a session seen is never on a later page, whatever its id."""
    db.insert_interceptions([record(id="1", client_session_id="a", started_at=START + 300),
                             record(id="2", client_session_id="b", started_at=START + 200),
                             record(id="3", client_session_id="c", started_at=START + 100)])
    seen, cursor = [], None
    while True:
        found, cursor = q.sessions(db, cursor=cursor, limit=1)
        seen += [s["session_id"] for s in found]
        if cursor is None:
            break
    assert seen == ["a", "b", "c"]


def test_the_sessions_list_holds_fifty(db):
    db.insert_interceptions([record(id=f"{i}", client_session_id=f"s-{i:02d}", started_at=START + i) for i in range(51)])
    found, cursor = q.sessions(db)
    assert len(found) == 50 and cursor == (found[-1]["last_at"], "s-01")
