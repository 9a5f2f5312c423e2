"""
The AI proxy's cost, against the direct bridge path of the same process in
the same run.

One `twistd bridgeproxy` (recording to SQLite, as the main benchmark's
`bridge` target) listens for direct requests and, with [aiproxy], for
proxied ones; both reach the same fake upstream (benchmarks/upstream.py).
The client is one asyncio process with raw sockets (no HTTP library), the
same code for both paths:

  direct      POST /openai/v1/chat/completions, Authorization: Bearer KEY,
              on kept-alive connections
  tunnel      CONNECT api.openai.com:443 with the key in Proxy-Authorization,
              TLS (the proxy's leaf), then POST /v1/chat/completions on the
              kept-alive tunnel
  new tunnel  TCP connect + CONNECT + TLS handshake (a leaf already minted)
              + one request, closed; against a new direct connection + one
              request

Reported, each as a ratio to the direct path: the bridge process's CPU time
per request (read from /proc while the kept-alive load runs: the cost the
target is about, and the figure least moved by other work on the machine),
requests/s with C connections, the median latency of one request at a time
(it includes the client's own TLS work), and the new-tunnel times (wall
clock, and the bridge's CPU per new connection).
Target: a request in an established tunnel costs <= 1.3x a direct one.

Usage: .venv/bin/python benchmarks/aiproxy.py [--seconds 5] [--connections 16] [--repeat 3]
Not part of the test suite (it takes a minute and wants the machine to itself).
"""

import argparse
import asyncio
import base64
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ports import free_port, wait_port  # noqa: E402 - benchmarks/ is the script's directory

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
HOST = "api.openai.com"
BODY = b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}'


def request_bytes(path: str, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY


async def read_answer(reader: asyncio.StreamReader) -> int:
    """One response with a Content-Length; its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Target:
    """How to open a connection and what to send on it, for one path."""

    def __init__(self, name, port, key, ca_path=None):
        self.name = name
        self.port = port
        self.key = key
        if ca_path:
            self.context = ssl.create_default_context(cafile=ca_path)
            self.request = request_bytes("/v1/chat/completions")
        else:
            self.context = None
            self.request = request_bytes("/openai/v1/chat/completions", f"Authorization: Bearer {key}\r\n")

    async def open(self):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        if self.context is None:
            return reader, writer
        auth = base64.b64encode(f"bench:{self.key}".encode()).decode()
        writer.write(f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n"
                     f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"CONNECT refused: {head!r}")
        await writer.start_tls(self.context, server_hostname=HOST)
        return reader, writer

    async def one(self, reader, writer) -> int:
        writer.write(self.request)
        return await read_answer(reader)


async def throughput(target: Target, connections: int, seconds: float, pid: int = 0) -> dict:
    done = 0
    errors = 0
    deadline = time.monotonic() + seconds

    async def worker():
        nonlocal done, errors
        reader, writer = await target.open()
        while time.monotonic() < deadline:
            if await target.one(reader, writer) == 200:
                done += 1
            else:
                errors += 1
        writer.close()
    start, cpu = time.monotonic(), cpu_seconds(pid) if pid else 0.0
    await asyncio.gather(*(worker() for _ in range(connections)))
    cpu_us = (cpu_seconds(pid) - cpu) * 1e6 / max(done, 1) if pid else 0.0
    return {"rps": done / (time.monotonic() - start), "errors": errors, "cpu_us": cpu_us}


async def latency(target: Target, seconds: float) -> dict:
    reader, writer = await target.open()
    times = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.perf_counter()
        await target.one(reader, writer)
        times.append(time.perf_counter() - start)
    writer.close()
    return {"p50_us": statistics.median(times) * 1e6}


async def fresh(target: Target, count: int, pid: int = 0) -> dict:
    """A new connection (and tunnel) for each request, one at a time."""
    times = []
    cpu = cpu_seconds(pid) if pid else 0.0
    for _ in range(count):
        start = time.perf_counter()
        reader, writer = await target.open()
        await target.one(reader, writer)
        writer.close()
        times.append(time.perf_counter() - start)
    cpu_us = (cpu_seconds(pid) - cpu) * 1e6 / count if pid else 0.0
    return {"p50_us": statistics.median(times) * 1e6, "cpu_us": cpu_us}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--fresh", type=int, default=300, help="new connections per round for the new-tunnel cost")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="aiproxybench-"))
    env = dict(os.environ, BENCH_OPENAI_KEY="sk-bench-central-key-0123456789", PYTHONPATH=str(ROOT))
    procs = []
    up_port, bridge_port, proxy_port = free_port(), free_port(), free_port()
    subprocess.run([PY, "-m", "bridgeproxy.cli", "ca", "create", "--out", str(tmp / "ca")], check=True, env=env,
                   cwd=ROOT, capture_output=True)
    config = tmp / "bridge.toml"
    config.write_text(f"""
listen = "tcp:{bridge_port}:interface=127.0.0.1:backlog=4096"
database = "sqlite:{tmp / 'bridge.db'}"
[providers.openai]
base_url = "http://127.0.0.1:{up_port}/v1"
key_env = "BENCH_OPENAI_KEY"
[recording]
spool_path = "{tmp / 'spool.jsonl'}"
[aiproxy]
listen = "tcp:{proxy_port}:interface=127.0.0.1"
ca_cert = "{tmp / 'ca' / 'ca.pem'}"
ca_key = "{tmp / 'ca' / 'ca-key.pem'}"
[aiproxy.domains]
"{HOST}" = "openai"
""")
    key = subprocess.run([PY, "-m", "bridgeproxy.cli", "keys", "create", "--config", str(config), "--username",
                          "bench"], capture_output=True, text=True, env=env, cwd=ROOT, check=True).stdout.strip()
    try:
        procs.append(subprocess.Popen([PY, str(ROOT / "benchmarks" / "upstream.py"), str(up_port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        bridge = subprocess.Popen(
            [PY, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0]='twistd'; run()",
             "-n", "--pidfile=", "--logfile", str(tmp / "bridge.log"), "bridgeproxy", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
        procs.append(bridge)
        for port in (up_port, bridge_port, proxy_port):
            wait_port(port)
        results = asyncio.run(measure(args, bridge.pid, Target("direct", bridge_port, key),
                                      Target("tunnel", proxy_port, key, str(tmp / "ca" / "ca.pem"))))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    report = render(results, args)
    print(report)
    if args.out:
        Path(args.out).write_text(report)


async def measure(args, pid: int, direct: Target, tunnel: Target) -> dict:
    for target in (direct, tunnel):  # warm up: connections, caches, the leaf
        await throughput(target, 4, 1)
        await fresh(target, 10)
    samples: dict = {"direct": [], "tunnel": []}
    for round_ in range(args.repeat):
        for target in (direct, tunnel):
            busy = await throughput(target, args.connections, args.seconds, pid)
            one = await latency(target, args.seconds)
            new = await fresh(target, args.fresh, pid)
            samples[target.name].append((busy, one, new))
            print(round_, target.name, json.dumps({"rps": round(busy["rps"]), "cpu_us": round(busy["cpu_us"]),
                                                    "errors": busy["errors"], "p50_us": round(one["p50_us"]),
                                                    "new_p50_us": round(new["p50_us"]),
                                                    "new_cpu_us": round(new["cpu_us"])}), flush=True)
    return {name: {"rps": statistics.median(s[0]["rps"] for s in runs),
                   "rps_all": [round(s[0]["rps"]) for s in runs],
                   "cpu_us": statistics.median(s[0]["cpu_us"] for s in runs),
                   "errors": sum(s[0]["errors"] for s in runs),
                   "p50_us": statistics.median(s[1]["p50_us"] for s in runs),
                   "new_p50_us": statistics.median(s[2]["p50_us"] for s in runs),
                   "new_cpu_us": statistics.median(s[2]["cpu_us"] for s in runs)}
            for name, runs in samples.items()}


def render(results: dict, args) -> str:
    d, t = results["direct"], results["tunnel"]
    lines = [
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
        f"{args.connections} connections, {args.seconds:g}s per measurement, {args.repeat} interleaved rounds, "
        f"Python {sys.version.split()[0]}.",
        "",
        "| path | bridge CPU per request (µs) | req/s (kept alive), median | rounds | "
        "p50 latency, one at a time (µs) | new connection + 1 request: p50 (µs) | its bridge CPU (µs) | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in (("direct", d), ("tunnel", t)):
        lines.append(f"| {name} | {r['cpu_us']:.0f} | {r['rps']:.0f} | {' / '.join(map(str, r['rps_all']))} | "
                     f"{r['p50_us']:.0f} | {r['new_p50_us']:.0f} | {r['new_cpu_us']:.0f} | {r['errors']} |")
    lines += [
        "",
        f"- a request in an established tunnel: {t['cpu_us'] / d['cpu_us']:.2f}x the bridge CPU of a direct one, "
        f"{d['rps'] / t['rps']:.2f}x by throughput, {t['p50_us'] / d['p50_us']:.2f}x by latency (target <= 1.3x);",
        f"- a new tunnel (CONNECT + TLS handshake + one request): {t['new_cpu_us'] / d['new_cpu_us']:.2f}x the "
        f"bridge CPU of a new direct connection with one request ({t['new_cpu_us'] / d['cpu_us']:.2f}x a direct "
        f"request on a kept-alive connection); {t['new_p50_us'] / d['new_p50_us']:.2f}x its wall-clock time "
        f"({t['new_p50_us'] - d['new_p50_us']:.0f} µs more).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
