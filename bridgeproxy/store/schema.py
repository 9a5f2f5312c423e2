"""
The schema, as numbered migrations shared by SQLite and PostgreSQL.

Each migration is a list of statements in the common subset of both
dialects.  C{schema_version} holds the number of the last one applied; a
migration is applied in one transaction with the bump of that number.
"""

from bridgeproxy.types import RECORD_KEYS

MIGRATIONS: list[list[str]] = [
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
    # 5: budgets: each user's own amount per period, what was spent per UTC day (epoch day
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
    # 6: [limits] counted for the whole gateway: a token bucket per initiator, and the
    # requests in flight: the gateway's total, and each process's (a row that counts until expires_at)
    [
        """CREATE TABLE limit_buckets (
            key TEXT PRIMARY KEY,
            tokens DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE limit_slots (
            holder TEXT PRIMARY KEY,
            in_flight INTEGER NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
        # The gateway's total (holder ''): it never expires.
        "INSERT INTO limit_slots (holder, in_flight, expires_at) VALUES ('', 0, 1e18)",
    ],
]

LATEST = len(MIGRATIONS)

#: The interceptions table's columns, as the record declares them.
INTERCEPTION_COLUMNS = RECORD_KEYS
