"""
The dashboard on a store of a million interceptions: how long each page
takes to load.

A SQLite store is filled with N interceptions (default 1,000,000) spread
over D days (default 30) up to now: 50 users, 6 models of 2 providers, 4
clients, client sessions of about 20 requests, 92% answered, 3% refused, 5%
errors, prompts of 20 to 300 words, tool calls on half of them.  The rows go
in through Database.insert_interceptions, so the dashboard's triggers keep
their rollups as they would in service (the insert rate is reported).

Then `twistd bridgeproxy` serves that store, an administrator signs in, and
each page is loaded --repeat times, one at a time, over loopback
(http.client, the whole answer read): the median and the slowest are
reported, in milliseconds, as a Markdown table.

Usage: .venv/bin/python benchmarks/dashboard.py [--rows 1000000] [--days 30] [--store PATH] [--repeat 15]
A store at --store that already holds the rows is reused (filling 1M rows takes a few minutes).
Not part of the test suite.
"""

import argparse
import http.client
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote, urlencode

from ports import free_port, wait_port  # noqa: E402 - benchmarks/ is the script's directory

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridgeproxy.store import Database  # noqa: E402
from bridgeproxy.types import Interception, ToolCall  # noqa: E402

WORDS = ("the a function test file read write change bug fix add refactor module class return value error python "
         "twisted request parser stream header token model client session retry timeout cache").split()
MODELS = (("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("openai", "gpt-5"), ("anthropic", "claude-sonnet-4-6"),
          ("anthropic", "claude-opus-4-1"), ("anthropic", "claude-haiku-4-5"))
CLIENTS = ("Claude Code", "Codex", "Coder Agents", "Unknown")


def fill(db: Database, rows: int, days: float, seed: int = 1) -> float:
    """Insert C{rows} interceptions ending now; return the seconds the inserts took (not making the rows)."""
    rnd = random.Random(seed)
    users = [(str(uuid.UUID(int=rnd.getrandbits(128), version=4)), f"user{i:02d}") for i in range(50)]
    for uid, name in users:
        db.ensure_user(name, uid)
    now = time.time()
    start = now - days * 86400
    sessions: dict = {}
    batch = []
    began = time.perf_counter()
    inserting = 0.0
    for i in range(rows):
        at = start + (now - start) * i / rows
        uid, name = rnd.choice(users)
        provider, model = rnd.choice(MODELS)
        client = rnd.choice(CLIENTS)
        session = None
        if client != "Unknown":
            session = sessions.get((uid, client))
            if session is None or rnd.random() < 0.05:
                session = sessions[(uid, client)] = str(uuid.uuid4())
        r = rnd.random()
        status = "ok" if r < 0.92 else "refused" if r < 0.95 else "error" if r < 0.98 else "incomplete"
        inp, out = rnd.randint(100, 20000), rnd.randint(10, 2000)
        batch.append(Interception(
            id=str(uuid.UUID(int=rnd.getrandbits(128), version=4)), started_at=at, ended_at=at + rnd.random() * 30,
            provider=provider, route="chat" if provider == "openai" else "messages", intercepted=True, method="POST",
            model=model, streamed=rnd.random() < 0.7, client=client, client_session_id=session, user_agent="bench",
            initiator_id=uid, initiator_username=name, credential_user_id=uid, credential_kind="central",
            credential_hint="sk-...xyz", upstream_status=200 if status == "ok" else 500,
            http_status=200 if status == "ok" else 403 if status == "refused" else 502, input_tokens=inp,
            output_tokens=out, cache_read_tokens=rnd.randint(0, 50000), cache_write_tokens=rnd.randint(0, 1000),
            prompt=" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(20, 300))),
            tool_calls=tuple(ToolCall("bash", json.dumps({"cmd": "ls -l"}), f"call_{i}_{n}")
                             for n in range(rnd.choice((0, 0, 1, 2)))),
            status=status, cost_micros=inp * 3 + out * 15, attempts=1, ttfb_ms=rnd.randint(200, 3000)))
        if len(batch) == 1000:
            t0 = time.perf_counter()
            db.insert_interceptions(batch)
            inserting += time.perf_counter() - t0
            batch = []
            if (i + 1) % 100_000 == 0:
                print(f"  {i + 1:,} rows, {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    db.insert_interceptions(batch)
    return inserting + time.perf_counter() - t0


class Client:
    """One keep-alive connection to the bridge with the session cookie."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: bytes = b"", headers: dict = None) -> tuple[int, dict, bytes]:
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        self.conn.request(method, path, body=body or None, headers=sent)
        response = self.conn.getresponse()
        data = response.read()
        for line in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = line.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        return response.status, dict(response.headers), data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--store", default=None, help="the SQLite file (default: a temporary one)")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bridgeproxy-dashboard-")
    path = args.store or os.path.join(work, "store.db")
    db = Database(f"sqlite:{path}")
    started = time.perf_counter()
    applied = db.migrate()
    migrated = time.perf_counter() - started
    have = db.execute("SELECT COUNT(*) FROM interceptions")[0][0]
    if have < args.rows:
        print(f"filling {args.rows - have:,} interceptions into {path}", file=sys.stderr)
        took = fill(db, args.rows - have, args.days)
        print(f"  inserts: {took / (args.rows - have) * 1e6:.0f} µs per row (batches of 1,000; rollups and "
              "indexes kept)", file=sys.stderr)
    elif applied:
        print(f"migrated {have:,} rows to the dashboard's schema in {migrated:.1f} s", file=sys.stderr)
    count = db.execute("SELECT COUNT(*) FROM interceptions")[0][0]
    _, token = db.create_key(f"bench-admin-{uuid.uuid4().hex[:6]}", admin=True)
    sample = db.execute("SELECT id, client_session_id FROM interceptions WHERE client_session_id IS NOT NULL "
                        "ORDER BY started_at DESC LIMIT 1")[0]
    deep = db.execute("SELECT started_at, id FROM interceptions ORDER BY started_at LIMIT 1 OFFSET ?",
                      (count // 10,))[0]
    db.close()

    port = free_port()
    config = os.path.join(work, "bench.toml")
    with open(config, "w") as f:
        f.write(f'listen = "tcp:{port}:interface=127.0.0.1"\ndatabase = "sqlite:{path}"\n')
    server = subprocess.Popen([str(ROOT / ".venv/bin/twistd"), "-n", "--pidfile=", "bridgeproxy", "--config", config],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
    try:
        wait_port(port, 120)
        client = Client(port)
        status, _, page = client.request("GET", "/ui/signin")
        csrf = re.search(rb'name="csrf" value="([^"]+)"', page).group(1).decode()
        status, _, _ = client.request("POST", "/ui/signin", urlencode({"csrf": csrf, "key": token}).encode(),
                                      {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 303, status
        cursor = quote(f"{deep[0]!r}~{deep[1]}")
        pages = [
            ("overview, 24 h (hourly)", "/ui/?range=24h"),
            ("overview, 7 days (daily)", "/ui/?range=7d"),
            ("overview, 30 days (daily)", "/ui/?range=30d"),
            ("overview, 30 days (hourly: 720 bars)", "/ui/?range=30d&bucket=hour"),
            ("interceptions, first page", "/ui/interceptions"),
            ("interceptions, a page 27 days back (cursor)", f"/ui/interceptions?after={cursor}"),
            ("interceptions, user + model + status", "/ui/interceptions?user=user07&model=gpt-5&status=error"),
            ("interceptions, user + model (no match)", "/ui/interceptions?user=user07&model=nothing"),
            ("interceptions, prompt text (common word)", "/ui/interceptions?q=refactor"),
            ("interceptions, prompt text (no match: one 20,000-row window)", "/ui/interceptions?q=zzzz"),
            ("interception detail", f"/ui/interceptions/{sample[0]}"),
            ("sessions, 7 days", "/ui/sessions"),
            ("sessions, 30 days", "/ui/sessions?range=30d"),
            ("one session (timeline)", f"/ui/session?id={quote(sample[1])}"),
            ("users and keys", "/ui/users"),
        ]
        size = os.path.getsize(path)
        print(f"\n{count:,} interceptions over {args.days:g} days, SQLite store of {size / 1e9:.2f} GB; "
              f"each page loaded {args.repeat} times, one at a time, after one warm-up load\n")
        print("| page | median (ms) | slowest (ms) | size (kB) |")
        print("|---|---:|---:|---:|")
        for name, target in pages:
            status, _, body = client.request("GET", target)
            assert status == 200, (target, status)
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                status, _, body = client.request("GET", target)
                times.append((time.perf_counter() - t0) * 1000)
                assert status == 200, (target, status)
            print(f"| {name} | {statistics.median(times):.1f} | {max(times):.1f} | {len(body) / 1000:.0f} |")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
