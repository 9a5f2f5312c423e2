"""
What counting [limits] in the store costs a request (docs/performance.md,
"Limits counted in the store").

1. The store alone: what a request runs on the store's thread when both
   limits are shared (admit: a slot of the gateway's, a token of the
   initiator's bucket; settle: the slot back), on one connection, timed
   over many requests, on a SQLite file and on PostgreSQL.
2. The whole bridge (twistd, recording to SQLite, the interception log
   line) with limits that never refuse (per_initiator_rps = 1000000,
   max_concurrency = 100000), counted in the process and in the store: wrk
   requests/s at 32 connections and the median latency at 1, in
   interleaved rounds (medians reported).

Usage: .venv/bin/python benchmarks/shared_limits.py [--seconds 4] [--rounds 3] [--postgres URL]
Not part of the test suite; wants the machine to itself.
"""

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ports import free_port, wait_port  # noqa: E402 - benchmarks/ is the script's directory
from run import wrk  # noqa: E402 - benchmarks/run.py

from bridgeproxy.store import Database  # noqa: E402
from bridgeproxy.store.budgets import exclusive  # noqa: E402
from bridgeproxy.store.limits import release_slots, take_slot, take_token  # noqa: E402

PY = sys.executable


def store_alone(url: str, requests: int) -> float:
    """
    Microseconds per request: what the store's thread runs to admit and
    settle a request under both shared limits, as the bridge runs it (one
    transaction each on SQLite; single statements on PostgreSQL).
    """
    db = Database(url)
    db.migrate()
    now = time.time()

    def admit(db):
        assert take_slot(db, "bench", 100_000, now + 60)
        assert take_token(db, "user-1", 1e6, 1e6, now) == 0

    def settle(db):
        release_slots(db, "bench", 1)

    def one():
        if db.dialect == "postgresql":
            admit(db)
            settle(db)
        else:
            exclusive(db, (), admit)
            exclusive(db, (), settle)
    for _ in range(50):
        one()
    started = time.perf_counter()
    for _ in range(requests):
        one()
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed / requests * 1e6


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=5000, help="for the store alone")
    parser.add_argument("--postgres", default=os.environ.get("BRIDGEPROXY_TEST_POSTGRES"))
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bridgebench-limits-"))
    schema = None
    if args.postgres:
        # A schema of its own, dropped at the end: the server's other users never see these tables.
        import psycopg
        schema = "bench_" + uuid.uuid4().hex[:12]
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        args.postgres += ("&" if "?" in args.postgres else "?") + f"options=-csearch_path%3D{schema}"
    try:
        run(args, tmp)
    finally:
        if schema is not None:
            import psycopg
            with psycopg.connect(args.postgres, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")


def run(args, tmp):

    alone = "sqlite:" + str(tmp / "alone.db")
    print(f"store alone, SQLite file: {store_alone(alone, args.requests):.0f} µs per request (admit + settle)",
          flush=True)
    if args.postgres:
        print(f"store alone, PostgreSQL: {store_alone(args.postgres, args.requests):.0f} µs per request", flush=True)

    env = dict(os.environ, BENCH_OPENAI_KEY="sk-bench-central-key-0123456789", PYTHONPATH=str(ROOT))
    procs = []
    up = free_port()
    procs.append(subprocess.Popen([PY, str(ROOT / "benchmarks" / "upstream.py"), str(up)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
    targets = [("process", "process", f"sqlite:{tmp / 'bridge.db'}"), ("store", "store", f"sqlite:{tmp / 'bridge.db'}")]
    if args.postgres:
        targets += [("process-pg", "process", args.postgres), ("store-pg", "store", args.postgres)]
    urls, tokens, admitted, pids = {}, {}, {}, {}
    try:
        for name, shared, database in targets:
            port = free_port()
            config = tmp / f"{name}.toml"
            config.write_text(f"""
listen = "tcp:{port}:interface=127.0.0.1:backlog=4096"
database = "{database}"
[providers.openai]
base_url = "http://127.0.0.1:{up}/v1"
key_env = "BENCH_OPENAI_KEY"
[limits]
per_initiator_rps = 1000000
max_concurrency = 100000
shared = "{shared}"
[recording]
spool_path = "{tmp / (name + '-spool.jsonl')}"
""")
            tokens[name] = subprocess.run(
                [PY, "-m", "bridgeproxy.cli", "keys", "create", "--config", str(config), "--username", "bench"],
                capture_output=True, text=True, env=env, cwd=ROOT, check=True).stdout.strip()
            procs.append(subprocess.Popen(
                [PY, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0]='twistd'; run()",
                 "-n", "--pidfile=", "--logfile", str(tmp / f"{name}.log"), "bridgeproxy", "--config", str(config)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT))
            pids[name] = procs[-1].pid
            urls[name] = f"http://127.0.0.1:{port}/openai/v1/chat/completions"
            wait_port(port)
        for name, _, _ in targets:
            wrk(urls[name], 8, 1, tokens[name])  # warm up
        samples = {name: [] for name, _, _ in targets}
        for round_ in range(args.rounds):
            for name, _, _ in targets:
                before = cpu_seconds(pids[name])
                throughput = wrk(urls[name], 32, args.seconds, tokens[name])
                cpu = (cpu_seconds(pids[name]) - before) / (throughput["rps"] * args.seconds) * 1e6
                latency = wrk(urls[name], 1, args.seconds, tokens[name])
                samples[name].append((throughput["rps"], latency["p50_us"], throughput["non2xx"] + latency["non2xx"],
                                      cpu))
                print(round_, name, samples[name][-1], flush=True)
        for name, _, _ in targets:
            admitted[name] = admission_mean_us(urls[name].replace("/openai/v1/chat/completions", "/metrics"))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    print("| limits counted | bridge CPU per request (µs) | req/s (c=32), median | rounds | p50 latency c=1 (µs) "
          "| admission, mean (µs) | non-2xx |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in samples.items():
        mean = admitted.get(name)
        print(f"| {name} | {statistics.median(r[3] for r in runs):.0f} | {statistics.median(r[0] for r in runs):.0f} | "
              f"{' / '.join(str(round(r[0])) for r in runs)} | {statistics.median(r[1] for r in runs):.0f} | "
              f"{f'{mean:.0f}' if mean is not None else '-'} | {sum(r[2] for r in runs)} |")


def cpu_seconds(pid):
    """User and system CPU time of a process, all its threads (the store's included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def admission_mean_us(url):
    """The bridge's own mean of bridgeproxy_admission_seconds (from the request to the store's answer)."""
    import urllib.request
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found = dict(re.findall(r"^bridgeproxy_admission_seconds_(sum|count) (\S+)$", text, re.M))
    count = float(found.get("count", 0))
    return float(found["sum"]) / count * 1e6 if count else None


if __name__ == "__main__":
    main()
