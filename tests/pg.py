"""PostgreSQL for the tests: the server scripts/test starts, one throw-away schema per test."""

import os
import uuid

import pytest

PG_URL = os.environ.get("BRIDGEPROXY_TEST_POSTGRES")


def pg_schema() -> tuple[str, str]:
    """
    A fresh schema on the test server: C{(url using it, schema)}.  Fails in
    CI when there is no server (scripts/test starts one); skips loudly elsewhere.
    """
    if not PG_URL:
        if os.environ.get("CI"):
            pytest.fail("BRIDGEPROXY_TEST_POSTGRES is not set in CI: .ci/run must start PostgreSQL")
        pytest.skip("PostgreSQL NOT TESTED: set BRIDGEPROXY_TEST_POSTGRES (bash .ci/run does)")
    import psycopg
    schema = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}", schema


def drop_pg_schema(schema: str) -> None:
    import psycopg
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
