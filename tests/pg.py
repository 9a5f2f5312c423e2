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


class OwnServer:
    """
    A PostgreSQL server of one test's own, for a test that stops its server
    mid-load: the shared one serves the other test process meanwhile.
    Made with the binaries scripts/test found (C{BRIDGEPROXY_PG_BINDIR}).
    """

    def __init__(self) -> None:
        import shutil
        import subprocess
        import tempfile

        from tests.procs import free_port
        bindir = os.environ.get("BRIDGEPROXY_PG_BINDIR")
        if not bindir:
            if os.environ.get("CI"):
                pytest.fail("BRIDGEPROXY_PG_BINDIR is not set in CI: .ci/run must start PostgreSQL")
            pytest.skip("PostgreSQL restart NOT TESTED: run through bash scripts/test, which finds the server")
        self._run = subprocess.run
        self._bindir = bindir
        self._runas = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        self.datadir = tempfile.mkdtemp(prefix="bridgeproxy-pg-own-")
        if os.getuid() == 0:
            shutil.chown(self.datadir, "postgres")
        self.port = free_port()
        self._pg("initdb", "-D", self.datadir, "-U", "bridge", "--auth=trust", "-E", "UTF8")
        self.start()
        self._pg("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "bridge", "bridge")
        self.url = f"postgresql://bridge@127.0.0.1:{self.port}/bridge"

    def _pg(self, program: str, *args: str) -> None:
        self._run(self._runas + [f"{self._bindir}/{program}", *args], check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        self._pg("pg_ctl", "-D", self.datadir, "-w", "-l", f"{self.datadir}/server.log", "-o",
                 f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        self._pg("pg_ctl", "-D", self.datadir, "-w", "-m", "fast", "stop")

    def remove(self) -> None:
        import shutil
        try:
            self.stop()
        except Exception:
            pass  # stopped already
        shutil.rmtree(self.datadir, ignore_errors=True)
