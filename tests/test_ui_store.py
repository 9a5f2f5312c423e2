"""
The dashboard's store: migration 5 (rollups kept by triggers, the indexes,
sign-in sessions) and the queries of bridgeproxy/store/dashboard.py, on
SQLite, and on PostgreSQL when BRIDGEPROXY_TEST_POSTGRES is set.
"""

from __future__ import annotations

import pytest

from bridgeproxy.store import Database
from bridgeproxy.store import dashboard as q
from bridgeproxy.store.schema import INTERCEPTION_COLUMNS, MIGRATIONS, ROLLUP_SUMS, statements
from bridgeproxy.types import RECORD_KEYS, record_row
from tests.dashboards import START, record
from tests.pg import drop_pg_schema, pg_schema

H = 3600


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request, tmp_path):
    if request.param == "sqlite":
        found = Database(f"sqlite:{tmp_path}/store.db")
        found.migrate()
        yield found
        found.close()
        return
    url, schema = pg_schema()
    found = Database(url)
    found.migrate()
    yield found
    found.close()
    drop_pg_schema(schema)


def direct(db, dimension: str, since: float = 0, until: float = 1e12) -> dict:
    """The sums per label computed from the interceptions themselves (what the rollups must equal)."""
    label = {"total": "''", "initiator": "COALESCE(initiator_username, initiator_id, '')",
             "model": "COALESCE(model, '')", "client": "client"}[dimension]
    rows = db.execute(
        f"SELECT {label}, COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cache_read_tokens), "
        "SUM(cache_write_tokens), SUM(COALESCE(cost_micros, 0)), "
        "SUM(CASE WHEN cost_micros IS NULL AND input_tokens + output_tokens + cache_read_tokens + cache_write_tokens "
        "> 0 THEN 1 ELSE 0 END), SUM(CASE WHEN status NOT IN ('ok', 'refused') OR (status = 'ok' AND "
        "COALESCE(upstream_status, 0) >= 400) THEN 1 ELSE 0 END), SUM(CASE WHEN status = 'refused' THEN 1 ELSE 0 END) "
        f"FROM interceptions WHERE started_at >= ? AND started_at < ? GROUP BY {label}" if dimension != "total" else
        f"SELECT {label}, COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cache_read_tokens), "
        "SUM(cache_write_tokens), SUM(COALESCE(cost_micros, 0)), "
        "SUM(CASE WHEN cost_micros IS NULL AND input_tokens + output_tokens + cache_read_tokens + cache_write_tokens "
        "> 0 THEN 1 ELSE 0 END), SUM(CASE WHEN status NOT IN ('ok', 'refused') OR (status = 'ok' AND "
        "COALESCE(upstream_status, 0) >= 400) THEN 1 ELSE 0 END), SUM(CASE WHEN status = 'refused' THEN 1 ELSE 0 END) "
        "FROM interceptions WHERE started_at >= ? AND started_at < ?", (since, until))
    return {row[0]: dict(zip(ROLLUP_SUMS, (int(v or 0) for v in row[1:]))) for row in rows if row[1]}


def mixed() -> list:
    """Rows over three hours, users, models, clients and outcomes (priced, unpriced, refused, errors)."""
    found = []
    for i in range(40):
        found.append(record(
            id=f"r-{i:02d}", started_at=START + (i % 3) * H + i, initiator_username=["alice", "bob", None][i % 3],
            initiator_id=None if i % 3 == 2 else f"00000000-0000-4000-8000-00000000000{i % 3}",
            model=["gpt-4o", "gpt-5", None, "claude"][i % 4], client=["Claude Code", "Codex"][i % 2],
            status=["ok", "ok", "refused", "error", "ok"][i % 5], upstream_status=[200, 500, None, 502, 200][i % 5],
            input_tokens=i, output_tokens=2 * i, cache_read_tokens=i % 7, cache_write_tokens=i % 5,
            cost_micros=None if i % 6 == 0 else 10 * i, client_session_id=f"s-{i % 4}" if i % 5 else None))
    return found


def test_the_rollups_sum_what_is_inserted_once(db):
    """usage_hours holds the same sums as the rows, per dimension; a batch inserted again is not counted twice."""
    rows = mixed()
    db.insert_interceptions(rows[:25])
    db.insert_interceptions(rows)  # 25 of them again: skipped
    for dimension in ("total", "initiator", "model", "client"):
        by_label = q.usage_by(db, dimension, 0, 1e12) if dimension != "total" else {
            "": q.overview(db, START, START + 3 * H)["totals"]}
        assert by_label == direct(db, dimension), dimension
    assert q.overview(db, START, START + 3 * H)["totals"]["requests"] == 40


def test_pruning_counts_rows_out(db):
    """Rows deleted (retention) leave the rollups equal to what remains; emptied hours and sessions are gone."""
    db.insert_interceptions(mixed())
    assert db.prune(START + H) == 14
    assert q.overview(db, START - H, START + 4 * H)["totals"] == direct(db, "total")[""]
    assert q.usage_by(db, "model", 0, 1e12) == direct(db, "model")
    assert db.execute("SELECT COUNT(*) FROM usage_hours WHERE bucket = ?", (int(START // H),)) == [(0,)]
    sessions, _ = q.sessions(db)
    for found in sessions:
        mine = [r for r in db.interceptions(limit=100) if r["client_session_id"] == found["session_id"]]
        assert found["requests"] == len(mine)
        assert found["first_at"] == min(r["started_at"] for r in mine)
        assert found["last_at"] == max(r["started_at"] for r in mine)
    db.prune(START + 10 * H)
    assert db.execute("SELECT COUNT(*) FROM usage_hours") == [(0,)]
    assert db.execute("SELECT COUNT(*) FROM client_sessions") == [(0,)]


def test_migrating_a_store_with_rows_backfills_the_rollups(tmp_path):
    """A store of version 4 with interceptions gets rollups equal to its rows, then counts new ones too."""
    url = f"sqlite:{tmp_path}/old.db"
    old = Database(url)
    old.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    old.execute("INSERT INTO schema_version (version) VALUES (4)")
    for number in range(1, 5):
        for statement in statements(MIGRATIONS[number - 1], "sqlite"):
            old.execute(statement)
    rows = mixed()
    columns = [c for c in INTERCEPTION_COLUMNS if c != "ttfb_ms"]  # the columns of version 4
    for r in rows[:30]:
        data = dict(zip(RECORD_KEYS, record_row(r)))
        old.execute(f"INSERT INTO interceptions ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                    [data[c] for c in columns])
    assert old.migrate() == [5, 6]  # 5 the dashboard, 6 budgets
    assert q.usage_by(old, "initiator", 0, 1e12) == direct(old, "initiator")
    assert q.sessions(old)[0] and sum(s["requests"] for s in q.sessions(old)[0]) == 24
    old.insert_interceptions(rows)
    assert q.usage_by(old, "client", 0, 1e12) == direct(old, "client")
    assert q.overview(old, START, START + 3 * H)["totals"] == direct(old, "total")[""]
    old.close()


def test_overview_series_in_hours_and_days(db):
    """The series has every bucket of the range, empty ones too; day buckets sum their hours (UTC)."""
    db.insert_interceptions(mixed())
    hours = q.overview(db, START - H, START + 4 * H)
    assert [b["start"] for b in hours["series"]] == [START + k * H for k in range(-1, 4)]
    assert [b["requests"] for b in hours["series"]] == [0, 14, 13, 13, 0]
    assert hours["bucket"] == H
    day_start = START // 86400 * 86400
    days = q.overview(db, day_start - 86400, day_start + 86400, q.DAY)
    assert [b["start"] for b in days["series"]] == [day_start - 86400, day_start]
    assert [b["requests"] for b in days["series"]] == [0, 40]
    assert days["top"]["initiator"][0] == {"label": "alice", **direct(db, "initiator")["alice"]}
    # Ten requests each: the ties are broken by name.
    assert [(t["label"], t["requests"]) for t in days["top"]["model"]] == [
        ("", 10), ("claude", 10), ("gpt-4o", 10), ("gpt-5", 10)]


def test_keyset_pages_with_every_filter(db):
    """Pages follow one another without a gap or a repeat, under each filter alone and together."""
    db.insert_interceptions(mixed())
    for filters in (q.Filters(), q.Filters(initiator="bob"), q.Filters(model="gpt-5"), q.Filters(client="Codex"),
                    q.Filters(status="ok"), q.Filters(provider="openai"), q.Filters(session="s-1"),
                    q.Filters(since=START + H, until=START + 2 * H),
                    q.Filters(initiator="00000000-0000-4000-8000-000000000001", client="Codex")):
        everything = q.interceptions(db, filters, limit=1000).rows
        walked, cursor = [], None
        while True:
            page = q.interceptions(db, filters, cursor, limit=3)
            walked += page.rows
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert [r["id"] for r in walked] == [r["id"] for r in everything]
        assert walked == sorted(walked, key=lambda r: (r["started_at"], r["id"]), reverse=True)
        where, params = filters.where(db)
        assert len(everything) == db.execute(f"SELECT COUNT(*) FROM interceptions{where}", params)[0][0]
    assert {r["initiator_username"] for r in q.interceptions(db, q.Filters(initiator="bob")).rows} == {"bob"}


def test_text_search_is_literal_and_case_insensitive(db):
    """%, _ and \\ in the text are themselves; letters match in either case; the offset pages without it."""
    db.insert_interceptions([record(id="a", prompt="100% done"), record(id="b", prompt="100 percent"),
                             record(id="c", prompt="snake_case"), record(id="d", prompt="snakeXcase"),
                             record(id="e", prompt="C:\\path"), record(id="f", prompt="SHOUTING")])
    for text, expected in (("100%", {"a"}), ("e_c", {"c"}), ("\\p", {"e"}), ("shout", {"f"}), ("nothing", set())):
        page = q.interceptions(db, q.Filters(text=text))
        assert {r["id"] for r in page.rows} == expected, text
        assert page.scanned == 6
    assert len(q.interceptions(db, q.Filters(), limit=2, offset=5).rows) == 1


def test_the_filters_use_their_indexes():
    """On SQLite, each filter of the table reads its own index, newest first, without sorting the table."""
    db = Database("sqlite::memory:")
    db.migrate()
    db.insert_interceptions(mixed())
    db.execute("ANALYZE")
    cursor = (START, "zzz")
    for filters, index in ((q.Filters(), "interceptions_time"), (q.Filters(model="gpt-5"), "interceptions_model"),
                           (q.Filters(initiator="bob"), "interceptions_username"),
                           (q.Filters(initiator="00000000-0000-4000-8000-000000000001"), "interceptions_initiator"),
                           (q.Filters(status="error"), "interceptions_status"),
                           (q.Filters(session="s-1"), "interceptions_session"),
                           (q.Filters(client="Codex"), "interceptions_client")):
        where, params = filters.where(db, cursor)
        plan = " ".join(row[-1] for row in db.execute(
            f"EXPLAIN QUERY PLAN SELECT id FROM interceptions{where} ORDER BY started_at DESC, id DESC LIMIT 51",
            params))
        assert index in plan and "TEMP B-TREE" not in plan, (filters, plan)
    plan = " ".join(r[-1] for r in db.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM client_sessions ORDER BY last_at DESC, session_id DESC LIMIT 26"))
    assert "client_sessions_recent" in plan


def test_sessions_page_by_last_activity(db):
    """Sessions come most recently active first, a page at a time, filtered by user and client."""
    db.insert_interceptions(mixed())
    everything, _ = q.sessions(db, limit=100)
    assert [s["last_at"] for s in everything] == sorted((s["last_at"] for s in everything), reverse=True)
    first, cursor = q.sessions(db, limit=2)
    second, end = q.sessions(db, cursor=cursor, limit=2)
    assert [s["session_id"] for s in first + second] == [s["session_id"] for s in everything] and end is None
    assert {s["client"] for s in q.sessions(db, client="Codex")[0]} == {"Codex"}
    detail = q.session(db, "s-1")
    assert detail["requests"] == len(detail["interceptions"]) == 8
    assert [r["started_at"] for r in detail["interceptions"]] == sorted(r["started_at"] for r in detail["interceptions"])
    assert q.session(db, "none") is None


def test_users_with_their_keys_and_usage(db):
    """Each key store user with key hints (never a key or its hash) and their usage."""
    key_id, token = db.create_key("alice")
    db.insert_interceptions(mixed())
    found = {u["username"]: u for u in q.users(db, 0, 1e12)}
    assert set(found) == {"alice"}
    assert found["alice"]["usage"] == direct(db, "initiator")["alice"]
    [key] = found["alice"]["keys"]
    assert key["key_id"] == key_id and token not in str(found) and "key_hash" not in key


def test_sign_ins(db):
    """A sign-in is found by its cookie until it expires; it can be ended alone, per user or per key."""
    a = q.SignIn("u1", "root", "k1", "csrf-a", START, START + 100)
    b = q.SignIn("u2", "ops", "k2", "csrf-b", START, START + 100)
    q.add_sign_in(db, "cookie-a", a)
    q.add_sign_in(db, "cookie-b", b)
    assert q.find_sign_in(db, "cookie-a", START + 99) == a
    assert q.find_sign_in(db, "cookie-a", START + 100) is None
    assert q.find_sign_in(db, "cookie-x", START) is None
    assert "cookie-a" not in str(db.execute("SELECT * FROM ui_sessions"))
    assert q.end_sign_ins(db, key_id="k2") == 1 and q.find_sign_in(db, "cookie-b", START) is None
    q.end_sign_in(db, "cookie-a")
    assert q.find_sign_in(db, "cookie-a", START) is None
    q.add_sign_in(db, "cookie-c", q.SignIn("u1", "root", "k1", "c", START + 200, START + 300))
    assert db.execute("SELECT COUNT(*) FROM ui_sessions") == [(1,)]  # the expired ones went
    assert q.end_sign_ins(db, user_id="u1") == 1


def test_cursors_round_trip():
    """A cursor written for a URL reads back exactly; anything else is refused."""
    cursor = (1795514400.123456, "3f6c2a1e-9b8d-4c7e-a5f4-0d1e2c3b4a59")
    assert q.parse_cursor(q.cursor_text(cursor)) == cursor
    for bad in ("", "1.5", "~x", "nan~x", "inf~x", "x~y"):
        with pytest.raises(ValueError):
            q.parse_cursor(bad)
