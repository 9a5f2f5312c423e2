"""
The bridgeproxy benchmark: one run, every target measured side by side on
this machine, results as ratios against the baselines of the same run.

Targets (each a separate process in front of the same fake upstream):
  direct    the fake upstream itself
  rproxy    twisted.web.proxy.ReverseProxyResource
  agent-floor  a minimal relay over twisted.web.client.Agent (no auth, no recording)
  nginx     nginx as a keep-alive reverse proxy (when installed)
  bridge    twistd bridgeproxy, full pipeline, recording to SQLite
  bridge-norec  the same with recording off
  bridge-2w  the same as bridge with workers = 2 (SO_REUSEPORT worker processes)
  bridge-pg  the same as bridge, recording to PostgreSQL (when one is given)

Load: wrk (Debian package `wrk`) for requests/s (-c 32) and latency (-c 1);
benchmarks/streams.py for N concurrent streams.

A login burst (N streams opened at the same moment, issue 13) is its own
scenario, without wrk: .venv/bin/python benchmarks/burst_run.py (see there).

Usage: bash benchmarks/run.sh [--seconds 5] [--streams 2000] [--out FILE]
(starts a throw-away PostgreSQL like the tests do, then runs this script)
Not part of the test suite: it takes minutes and wants the machine to itself.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ports import free_port, wait_port  # noqa: E402 - benchmarks/ is the script's directory

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BODY = '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}'


def wrk(url, connections, seconds, token):
    script = Path(tempfile.mkdtemp()) / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{BODY}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        + (f'wrk.headers["Authorization"] = "Bearer {token}"\n' if token else ""))
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    p50 = re.search(r"\s50%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 1, "ms": 1000, "s": 1_000_000}
    return {"rps": rps, "p50_us": float(p50.group(1)) * scale[p50.group(2)] if p50 else None,
            "non2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else ""}


def nginx_conf(tmp, listen, upstream):
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  upstream up {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{listen} backlog=4096;
    location / {{
      proxy_pass http://up/v1/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
""")
    return conf


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--stream-events", type=int, default=20)
    parser.add_argument("--stream-gap-ms", type=float, default=500)
    parser.add_argument("--stream-ramp", type=float, default=5.0,
                        help="seconds over which the streams are opened")
    parser.add_argument("--out", default=None)
    parser.add_argument("--postgres", default=os.environ.get("BRIDGEPROXY_TEST_POSTGRES"),
                        help="a PostgreSQL URL: adds a bridge recording to PostgreSQL")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")

    tmp = Path(tempfile.mkdtemp(prefix="bridgebench-"))
    procs = []
    env = dict(os.environ, BENCH_OPENAI_KEY="sk-bench-central-key-0123456789", PYTHONPATH=str(ROOT))

    def spawn(cmd, **kw):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, **kw)
        procs.append(p)
        return p

    ports = {name: free_port() for name in ("upstream", "rproxy", "floor", "nginx", "bridge", "bridge-norec",
                                            "bridge-2w", "bridge-pg")}
    try:
        spawn([PY, str(ROOT / "benchmarks" / "upstream.py"), str(ports["upstream"]),
               str(args.stream_events), str(args.stream_gap_ms)])
        spawn([PY, str(ROOT / "benchmarks" / "reverse_proxy_baseline.py"), str(ports["rproxy"]), str(ports["upstream"])])
        spawn([PY, str(ROOT / "benchmarks" / "agent_floor.py"), str(ports["floor"]), str(ports["upstream"])])
        have_nginx = bool(shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"))
        if have_nginx:
            spawn([shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(nginx_conf(tmp, ports["nginx"], ports["upstream"]))])
        token = None
        bridges = [("bridge", "true", f"sqlite:{tmp / 'bridge.db'}"),
                   ("bridge-norec", "false", f"sqlite:{tmp / 'bridge.db'}"),
                   ("bridge-2w", "true", f"sqlite:{tmp / 'bridge.db'}")]
        if args.postgres:
            bridges.append(("bridge-pg", "true", args.postgres))
        pg_token = None
        for name, recording, database in bridges:
            config = tmp / f"{name}.toml"
            config.write_text(f"""
listen = "tcp:{ports[name]}:interface=127.0.0.1:backlog=4096"
workers = {2 if name == "bridge-2w" else 1}
database = "{database}"
[providers.openai]
base_url = "http://127.0.0.1:{ports['upstream']}/v1"
key_env = "BENCH_OPENAI_KEY"
[recording]
enabled = {recording}
spool_path = "{tmp / (name + '-spool.jsonl')}"
""")
            if token is None or name == "bridge-pg":
                made = subprocess.run([PY, "-m", "bridgeproxy.cli", "keys", "create", "--config", str(config),
                                       "--username", "bench"], capture_output=True, text=True, env=env,
                                      cwd=ROOT, check=True).stdout.strip()
                if name == "bridge-pg":
                    pg_token = made
                else:
                    token = made
            spawn([PY, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0]='twistd'; run()",
                   "-n", "--pidfile=", "--logfile", str(tmp / f"{name}.log"), "bridgeproxy", "--config", str(config)],
                  cwd=ROOT)
        for name, port in ports.items():
            if (name != "nginx" or have_nginx) and (name != "bridge-pg" or args.postgres):
                wait_port(port)

        targets = [("direct", f"http://127.0.0.1:{ports['upstream']}/v1/chat/completions", None),
                   ("rproxy", f"http://127.0.0.1:{ports['rproxy']}/chat/completions", None),
                   ("agent-floor", f"http://127.0.0.1:{ports['floor']}/chat/completions", None)]
        if have_nginx:
            targets.append(("nginx", f"http://127.0.0.1:{ports['nginx']}/chat/completions", None))
        targets += [("bridge", f"http://127.0.0.1:{ports['bridge']}/openai/v1/chat/completions", token),
                    ("bridge-norec", f"http://127.0.0.1:{ports['bridge-norec']}/openai/v1/chat/completions", token),
                    ("bridge-2w", f"http://127.0.0.1:{ports['bridge-2w']}/openai/v1/chat/completions", token)]
        if args.postgres:
            targets.append(("bridge-pg", f"http://127.0.0.1:{ports['bridge-pg']}/openai/v1/chat/completions", pg_token))
        for _, url, tok in targets:
            wrk(url, 8, 1, tok)  # warm up: connections, caches
        # Rounds interleave the targets, so that a noisy moment of a shared
        # machine hits all of them; the median of the rounds is reported.
        samples: dict[str, list] = {name: [] for name, _, _ in targets}
        for round_ in range(args.repeat):
            for name, url, tok in targets:
                throughput = wrk(url, 32, args.seconds, tok)
                latency = wrk(url, 1, args.seconds, tok)
                samples[name].append((throughput, latency))
                print(round_, name, throughput["rps"], latency["p50_us"], flush=True)
        results = {}
        for name, runs in samples.items():
            results[name] = {
                "rps": statistics.median(t["rps"] for t, _ in runs),
                "rps_all": [round(t["rps"]) for t, _ in runs],
                "p50_us_c1": statistics.median(lat["p50_us"] for _, lat in runs),
                "non2xx": sum(t["non2xx"] + lat["non2xx"] for t, lat in runs),
            }

        streams = {}
        stream_targets = [("direct", ports["upstream"], "/v1/chat/completions", None),
                          ("bridge", ports["bridge"], "/openai/v1/chat/completions", token),
                          ("bridge-norec", ports["bridge-norec"], "/openai/v1/chat/completions", token)]
        if args.postgres:
            stream_targets.append(("bridge-pg", ports["bridge-pg"], "/openai/v1/chat/completions", pg_token))
        for name, port, path, tok in stream_targets:
            out = subprocess.run([PY, str(ROOT / "benchmarks" / "streams.py"), f"127.0.0.1:{port}", path,
                                  str(args.streams), str(args.stream_ramp)] + ([tok] if tok else []),
                                 capture_output=True, text=True, timeout=300, env=env).stdout
            streams[name] = json.loads(out.strip().splitlines()[-1])
            print("streams", name, json.dumps(streams[name]), flush=True)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()

    report = render(results, streams, args)
    print(report)
    if args.out:
        Path(args.out).write_text(report)


def render(results, streams, args):
    direct = results["direct"]
    lines = [
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
        f"wrk -t1, {args.seconds}s per measurement, {args.repeat} interleaved rounds, "
        f"Python {sys.version.split()[0]}.",
        "",
        "| target | req/s (c=32), median | rounds | vs rproxy | p50 latency c=1 (µs) | added vs direct (µs) | non-2xx |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        added = (r["p50_us_c1"] - direct["p50_us_c1"]) if r["p50_us_c1"] and direct["p50_us_c1"] else None
        lines.append(f"| {name} | {r['rps']:.0f} | {' / '.join(map(str, r['rps_all']))} | "
                     f"{r['rps'] / results['rproxy']['rps']:.2f}× | "
                     f"{r['p50_us_c1']:.0f} | {'' if name == 'direct' else f'{added:.0f}'} | {r['non2xx']} |")
    lines += ["", f"Streams: {args.streams} opened over {args.stream_ramp:.0f} s, {args.stream_events} events each, "
              f"one every {args.stream_gap_ms:.0f} ms.", "",
              "| target | peak open | failures | TTFB p50 (ms) | TTFB p99 (ms) | gap p50 (ms) | gap p99 (ms) | gap max (ms) |",
              "|---|---|---|---|---|---|---|---|"]
    for name, s in streams.items():
        lines.append(f"| {name} | {s['peak_open']} | {s['failures']} | {s['ttfb_p50_ms']} | {s['ttfb_p99_ms']} | {s['gap_p50_ms']} | "
                     f"{s['gap_p99_ms']} | {s['gap_max_ms']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
