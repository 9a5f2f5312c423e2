# -*- test-case-name: tests.test_ui_store -*-
"""
The schema, as numbered migrations shared by SQLite and PostgreSQL.

Each migration is a list of statements in the common subset of both
dialects, or a L{PerDialect} pair where they differ (triggers).
C{schema_version} holds the number of the last one applied; a migration is
applied in one transaction with the bump of that number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from bridgeproxy.types import RECORD_KEYS


@dataclass(frozen=True)
class PerDialect:
    """Statements that differ between the dialects: each one's own list."""

    sqlite: tuple[str, ...]
    postgresql: tuple[str, ...]

# -- the dashboard's rollups (migration 5) --------------------------------------------------------
#
# The overview and the sessions page sum a million interceptions in no time
# because triggers keep the sums as rows are inserted (and pruned):
# ``usage_hours`` holds, per UTC hour, one row for all requests and one per
# initiator, model and client; ``client_sessions`` one row per client
# session.  A row the insert skips (an id already stored) fires nothing, so
# a retried batch is not counted twice.

#: The sums kept per rollup row, in column order.
ROLLUP_SUMS = ("requests", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
               "cost_micros", "unpriced", "errors", "refused")
#: What usage_hours keeps a row per (besides C{total}): the dimension and its label.
ROLLUP_DIMENSIONS = {
    "initiator": "COALESCE({p}initiator_username, {p}initiator_id, '')",
    "model": "COALESCE({p}model, '')",
    "client": "{p}client",
}
#: Statuses that count as errors (besides C{ok} with an upstream error status) and as refusals.
ERROR_CONDITION = ("({p}status NOT IN ('ok', 'refused') OR ({p}status = 'ok' "
                   "AND COALESCE({p}upstream_status, 0) >= 400))")
SESSION_SUMS = ("requests", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                "cost_micros", "errors")


def _measures(p: str) -> dict[str, str]:
    """Each rollup sum's value for one row (C{p}: the row's prefix, C{NEW.}, C{OLD.} or none)."""
    tokens = " + ".join(f"{p}{name}" for name in ROLLUP_SUMS[1:5])
    return {
        "requests": "1",
        "input_tokens": f"{p}input_tokens",
        "output_tokens": f"{p}output_tokens",
        "cache_read_tokens": f"{p}cache_read_tokens",
        "cache_write_tokens": f"{p}cache_write_tokens",
        "cost_micros": f"COALESCE({p}cost_micros, 0)",
        "unpriced": f"CASE WHEN {p}cost_micros IS NULL AND {tokens} > 0 THEN 1 ELSE 0 END",
        "errors": f"CASE WHEN {ERROR_CONDITION.format(p=p)} THEN 1 ELSE 0 END",
        "refused": f"CASE WHEN {p}status = 'refused' THEN 1 ELSE 0 END",
    }


def _hour(dialect: str, p: str) -> str:
    if dialect == "postgresql":
        return f"CAST(FLOOR({p}started_at / 3600) AS BIGINT)"
    return f"CAST({p}started_at / 3600 AS INTEGER)"


def _labels(p: str) -> list[tuple[str, str]]:
    return [("total", "''")] + [(name, label.format(p=p)) for name, label in ROLLUP_DIMENSIONS.items()]


def _sessions_select(source: str) -> str:
    """Per client session in C{source}: its columns of client_sessions, summed."""
    sums = _measures("r.")
    return (f"SELECT r.client_session_id AS session_id, MIN(r.client) AS client, "
            f"MIN({ROLLUP_DIMENSIONS['initiator'].format(p='r.')}) AS initiator, MIN(r.started_at) AS first_at, "
            f"MAX(r.started_at) AS last_at, MAX(r.ended_at) AS ended_at, "
            + ", ".join(f"SUM({sums[name]}) AS {name}" for name in SESSION_SUMS)
            + f" FROM {source} AS r WHERE r.client_session_id IS NOT NULL GROUP BY r.client_session_id")


_SESSION_COLUMNS = "session_id, client, initiator, first_at, last_at, ended_at, " + ", ".join(SESSION_SUMS)
_USAGE_COLUMNS = "bucket, dimension, label, " + ", ".join(ROLLUP_SUMS)


def _usage_select(source: str) -> str:
    """PostgreSQL: per hour, dimension and label in C{source}, its row of usage_hours."""
    sums = _measures("r.")
    labels = ", ".join(f"('{dimension}', {label})" for dimension, label in _labels("r."))
    return ("SELECT bucket, dimension, label, " + ", ".join(f"SUM({name}) AS {name}" for name in ROLLUP_SUMS)
            + f" FROM (SELECT {_hour('postgresql', 'r.')} AS bucket, d.dimension, d.label, "
            + ", ".join(f"{sums[name]} AS {name}" for name in ROLLUP_SUMS)
            + f" FROM {source} AS r CROSS JOIN LATERAL (VALUES {labels}) AS d (dimension, label)) AS x "
            "GROUP BY bucket, dimension, label")


def _rollup_backfill(dialect: str) -> list[str]:
    """Sum the rows already stored (the triggers count the rows inserted from now on)."""
    sessions = f"INSERT INTO client_sessions ({_SESSION_COLUMNS}) {_sessions_select('interceptions')}"
    sums = _measures("")
    hour = _hour(dialect, "")
    statements = []
    for dimension, label in _labels(""):
        group = hour if dimension == "total" else f"{hour}, {label}"
        statements.append(
            f"INSERT INTO usage_hours ({_USAGE_COLUMNS}) SELECT {hour}, '{dimension}', {label}, "
            + ", ".join(f"SUM({sums[name]})" for name in ROLLUP_SUMS)
            + f" FROM interceptions GROUP BY {group}")
    return statements + [sessions]


def _add_usage() -> str:
    return " ON CONFLICT (bucket, dimension, label) DO UPDATE SET " + ", ".join(
        f"{name} = usage_hours.{name} + excluded.{name}" for name in ROLLUP_SUMS)


def _add_session(least: str, greatest: str) -> str:
    return (" ON CONFLICT (session_id) DO UPDATE SET "
            f"first_at = {least}(client_sessions.first_at, excluded.first_at), "
            f"last_at = {greatest}(client_sessions.last_at, excluded.last_at), "
            f"ended_at = {greatest}(client_sessions.ended_at, excluded.ended_at), "
            + ", ".join(f"{name} = client_sessions.{name} + excluded.{name}" for name in SESSION_SUMS))


def _sqlite_triggers() -> tuple[str, ...]:
    """SQLite: row triggers (one writer at a time: no lock order to keep)."""
    new = _measures("NEW.")
    dimensions = " UNION ALL ".join(
        f"SELECT '{dimension}' AS dimension, {label} AS label" if i == 0 else f"SELECT '{dimension}', {label}"
        for i, (dimension, label) in enumerate(_labels("NEW.")))
    add = [
        f"INSERT INTO usage_hours ({_USAGE_COLUMNS}) SELECT {_hour('sqlite', 'NEW.')}, d.dimension, d.label, "
        + ", ".join(new[name] for name in ROLLUP_SUMS) + f" FROM ({dimensions}) AS d WHERE true"
        + _add_usage(),
        f"INSERT INTO client_sessions ({_SESSION_COLUMNS}) SELECT NEW.client_session_id, NEW.client, "
        f"{ROLLUP_DIMENSIONS['initiator'].format(p='NEW.')}, NEW.started_at, NEW.started_at, NEW.ended_at, "
        + ", ".join(new[name] for name in SESSION_SUMS) + " WHERE NEW.client_session_id IS NOT NULL"
        + _add_session("MIN", "MAX"),
    ]
    old = _measures("OLD.")
    hour = _hour("sqlite", "OLD.")
    which = " OR ".join(f"(dimension = '{dimension}' AND label = {label})" for dimension, label in _labels("OLD."))

    def again(aggregate: str, column: str) -> str:
        return (f"{column} = COALESCE((SELECT {aggregate} FROM interceptions "
                f"WHERE client_session_id = OLD.client_session_id), client_sessions.{column})")
    remove = [
        "UPDATE usage_hours SET " + ", ".join(f"{name} = {name} - {old[name]}" for name in ROLLUP_SUMS)
        + f" WHERE bucket = {hour} AND ({which})",
        f"DELETE FROM usage_hours WHERE bucket = {hour} AND requests <= 0",
        "UPDATE client_sessions SET " + ", ".join(f"{name} = {name} - {old[name]}" for name in SESSION_SUMS)
        + ", " + ", ".join((again("MIN(started_at)", "first_at"), again("MAX(started_at)", "last_at"),
                            again("MAX(ended_at)", "ended_at")))
        + " WHERE session_id = OLD.client_session_id",
        "DELETE FROM client_sessions WHERE session_id = OLD.client_session_id AND requests <= 0",
    ]
    return tuple(
        f"CREATE TRIGGER interceptions_rollup_{name} AFTER {event} ON interceptions BEGIN "
        + "; ".join(body) + "; END"
        for name, event, body in (("add", "INSERT", add), ("remove", "DELETE", remove)))


def _postgresql_triggers() -> tuple[str, ...]:
    """
    PostgreSQL: statement triggers over the transition tables, so that an
    INSERT of many rows updates each rollup row once, in key order (two
    instances recording at once then take the rows' locks in the same order).
    """
    again = ", ".join(
        f"{column} = COALESCE((SELECT {aggregate}(i.{source}) FROM interceptions AS i "
        f"WHERE i.client_session_id = s.session_id), s.{column})"
        for column, aggregate, source in (("first_at", "MIN", "started_at"), ("last_at", "MAX", "started_at"),
                                          ("ended_at", "MAX", "ended_at")))
    add = [
        f"INSERT INTO usage_hours ({_USAGE_COLUMNS}) {_usage_select('new_rows')} "
        "ORDER BY bucket, dimension, label" + _add_usage(),
        f"INSERT INTO client_sessions ({_SESSION_COLUMNS}) {_sessions_select('new_rows')} ORDER BY 1"
        + _add_session("LEAST", "GREATEST"),
    ]
    remove = [
        "UPDATE usage_hours AS u SET " + ", ".join(f"{name} = u.{name} - x.{name}" for name in ROLLUP_SUMS)
        + f" FROM ({_usage_select('old_rows')}) AS x "
        "WHERE u.bucket = x.bucket AND u.dimension = x.dimension AND u.label = x.label",
        f"DELETE FROM usage_hours WHERE requests <= 0 AND bucket IN "
        f"(SELECT {_hour('postgresql', 'r.')} FROM old_rows AS r)",
        "UPDATE client_sessions AS s SET " + ", ".join(f"{name} = s.{name} - x.{name}" for name in SESSION_SUMS)
        + f", {again} FROM ({_sessions_select('old_rows')}) AS x WHERE s.session_id = x.session_id",
        "DELETE FROM client_sessions WHERE requests <= 0 AND session_id IN "
        "(SELECT r.client_session_id FROM old_rows AS r)",
    ]
    found = []
    for name, event, table, body in (("add", "INSERT", "NEW TABLE AS new_rows", add),
                                     ("remove", "DELETE", "OLD TABLE AS old_rows", remove)):
        found.append(f"CREATE OR REPLACE FUNCTION bridgeproxy_rollup_{name}() RETURNS trigger LANGUAGE plpgsql "
                     "AS $$ BEGIN " + "; ".join(body) + "; RETURN NULL; END $$")
        found.append(f"CREATE TRIGGER interceptions_rollup_{name} AFTER {event} ON interceptions "
                     f"REFERENCING {table} FOR EACH STATEMENT EXECUTE FUNCTION bridgeproxy_rollup_{name}()")
    return tuple(found)


def _dashboard_migration() -> list[Union[str, PerDialect]]:
    sums = ", ".join(f"{name} BIGINT NOT NULL DEFAULT 0" for name in ROLLUP_SUMS)
    session_sums = ", ".join(f"{name} BIGINT NOT NULL DEFAULT 0" for name in SESSION_SUMS)
    return [
        "ALTER TABLE interceptions ADD COLUMN ttfb_ms INTEGER",
        # Keyset paging (newest first, the id breaking ties) under each filter.
        "DROP INDEX interceptions_started",
        "DROP INDEX interceptions_initiator",
        "DROP INDEX interceptions_client",
        "CREATE INDEX interceptions_time ON interceptions (started_at, id)",
        "CREATE INDEX interceptions_initiator ON interceptions (initiator_id, started_at, id)",
        "CREATE INDEX interceptions_client ON interceptions (client, started_at, id)",
        "CREATE INDEX interceptions_model ON interceptions (model, started_at, id)",
        "CREATE INDEX interceptions_status ON interceptions (status, started_at, id)",
        "CREATE INDEX interceptions_username ON interceptions (initiator_username, started_at, id)",
        "CREATE INDEX interceptions_session ON interceptions (client_session_id, started_at, id)",
        f"""CREATE TABLE usage_hours (
            bucket BIGINT NOT NULL,
            dimension TEXT NOT NULL,
            label TEXT NOT NULL,
            {sums},
            PRIMARY KEY (bucket, dimension, label)
        )""",
        f"""CREATE TABLE client_sessions (
            session_id TEXT PRIMARY KEY,
            client TEXT NOT NULL,
            initiator TEXT NOT NULL,
            first_at DOUBLE PRECISION NOT NULL,
            last_at DOUBLE PRECISION NOT NULL,
            ended_at DOUBLE PRECISION NOT NULL,
            {session_sums}
        )""",
        "CREATE INDEX client_sessions_recent ON client_sessions (last_at, session_id)",
        PerDialect(sqlite=tuple(_rollup_backfill("sqlite")), postgresql=tuple(_rollup_backfill("postgresql"))),
        PerDialect(sqlite=_sqlite_triggers(), postgresql=_postgresql_triggers()),
        # The dashboard's sign-in sessions: only a hash of the cookie's value is kept.
        """CREATE TABLE ui_sessions (
            id_hash TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            username TEXT,
            key_id TEXT,
            csrf TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
        # Statistics for the query planner, so that it picks the most selective index.
        PerDialect(sqlite=("PRAGMA analysis_limit=1000", "ANALYZE"), postgresql=("ANALYZE interceptions",)),
    ]


def statements(migration: list[Union[str, PerDialect]], dialect: str) -> list[str]:
    """The statements of C{migration} for C{dialect} (C{"sqlite"} or C{"postgresql"}), in order."""
    found: list[str] = []
    for step in migration:
        if isinstance(step, PerDialect):
            found.extend(getattr(step, dialect))
        else:
            found.append(step)
    return found


MIGRATIONS: list[list[Union[str, PerDialect]]] = [
    # 1: users, keys, interceptions
    [
        """CREATE TABLE users (
            id TEXT PRIMARY KEY,
            username TEXT NOT NULL UNIQUE,
            disabled INTEGER NOT NULL DEFAULT 0,
            admin INTEGER NOT NULL DEFAULT 0,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id),
            key_hash TEXT NOT NULL UNIQUE,
            hint TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION,
            revoked_at DOUBLE PRECISION
        )""",
        """CREATE TABLE interceptions (
            id TEXT PRIMARY KEY,
            started_at DOUBLE PRECISION NOT NULL,
            ended_at DOUBLE PRECISION NOT NULL,
            duration_ms INTEGER NOT NULL,
            provider TEXT NOT NULL,
            route TEXT NOT NULL,
            intercepted INTEGER NOT NULL,
            method TEXT NOT NULL,
            model TEXT,
            streamed INTEGER NOT NULL,
            client TEXT NOT NULL,
            client_session_id TEXT,
            user_agent TEXT,
            initiator_id TEXT,
            initiator_username TEXT,
            credential_user_id TEXT,
            credential_kind TEXT,
            credential_hint TEXT,
            upstream_status INTEGER,
            input_tokens BIGINT NOT NULL DEFAULT 0,
            output_tokens BIGINT NOT NULL DEFAULT 0,
            cache_read_tokens BIGINT NOT NULL DEFAULT 0,
            cache_write_tokens BIGINT NOT NULL DEFAULT 0,
            prompt TEXT,
            tool_calls TEXT NOT NULL DEFAULT '[]',
            stop_reason TEXT,
            error TEXT,
            status TEXT NOT NULL
        )""",
        "CREATE INDEX interceptions_started ON interceptions (started_at)",
        "CREATE INDEX interceptions_initiator ON interceptions (initiator_id, started_at)",
        "CREATE INDEX interceptions_client ON interceptions (client, started_at)",
    ],
    # 2: the status the client got, apart from what the upstream answered
    [
        "ALTER TABLE interceptions ADD COLUMN http_status INTEGER",
    ],
    # 3: what a request cost (micro-units; NULL when its model has no price)
    [
        "ALTER TABLE interceptions ADD COLUMN cost_micros BIGINT",
    ],
    # 4: how many times a request was sent upstream (retries)
    [
        "ALTER TABLE interceptions ADD COLUMN attempts INTEGER",
    ],
    # 5: the dashboard: time to first byte, indexes for its filters, rollups kept by triggers, sign-in sessions
    _dashboard_migration(),
    # 6: budgets: each user's own amount per period, what was spent per UTC day (epoch day
    # numbers), and the holds requests in flight have on what is left (until expires_at)
    [
        """CREATE TABLE budgets (
            user_id TEXT PRIMARY KEY,
            username TEXT,
            amount_micros BIGINT NOT NULL,
            period TEXT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE budget_spend (
            user_id TEXT NOT NULL,
            day INTEGER NOT NULL,
            username TEXT,
            spent_micros BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (user_id, day)
        )""",
        """CREATE TABLE budget_holds (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            day INTEGER NOT NULL,
            amount_micros BIGINT NOT NULL,
            holder TEXT NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX budget_holds_user ON budget_holds (user_id, day)",
        "CREATE INDEX budget_holds_holder ON budget_holds (holder)",
    ],
]

LATEST = len(MIGRATIONS)

#: The interceptions table's columns, as the record declares them.
INTERCEPTION_COLUMNS = RECORD_KEYS
