"""
The bridgeproxy benchmark: one run, every target measured side by side on
this machine, results as ratios against the baselines of the same run.

Targets (each a separate process in front of the same fake upstream):
  direct    the fake upstream itself
  hello     a twisted.web hello-world server, no upstream call (the server-side floor)
  rproxy    twisted.web.proxy.ReverseProxyResource
  agent-floor  a minimal relay over twisted.web.client.Agent (no auth, no recording)
  nginx     nginx as a keep-alive reverse proxy (when installed)
  bridge    twistd bridgeproxy, full pipeline, recording to SQLite
  bridge-norec  the same with recording off
  bridge-2w  the same as bridge with workers = 2 (SO_REUSEPORT worker processes)
  bridge-pg  the same as bridge, recording to PostgreSQL (when one is given)
  bridge-twisted  the same as bridge with [upstream] client = "twisted" (Agent beneath treq)

Streams: benchmarks/streams.py, two shapes: --streams (2,000) opened over
--stream-ramp, 20 events 500 ms apart, all open at once (the bridge's resident
memory per open stream is sampled meanwhile); and --fast-streams (500) × 20
events 50 ms apart, through direct, rproxy ("naive Twisted"), nginx and the
bridges.  benchmarks/cancel.py: how soon a client's disconnect mid-stream
cancels the upstream request.  The report ends with the issue's targets as
ratios of this run.
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
    parser.add_argument("--fast-streams", type=int, default=500)
    parser.add_argument("--fast-gap-ms", type=float, default=50)
    parser.add_argument("--fast-ramp", type=float, default=1.0)
    parser.add_argument("--cancels", type=int, default=40)
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

    ports = {name: free_port() for name in ("upstream", "hello", "rproxy", "floor", "nginx", "bridge", "bridge-norec",
                                            "bridge-2w", "bridge-pg", "bridge-twisted")}
    pids = {}
    try:
        spawn([PY, str(ROOT / "benchmarks" / "upstream.py"), str(ports["upstream"]),
               str(args.stream_events), str(args.stream_gap_ms)])
        spawn([PY, str(ROOT / "benchmarks" / "hello.py"), str(ports["hello"])])
        spawn([PY, str(ROOT / "benchmarks" / "reverse_proxy_baseline.py"), str(ports["rproxy"]), str(ports["upstream"])])
        spawn([PY, str(ROOT / "benchmarks" / "agent_floor.py"), str(ports["floor"]), str(ports["upstream"])])
        have_nginx = bool(shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"))
        if have_nginx:
            spawn([shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(nginx_conf(tmp, ports["nginx"], ports["upstream"]))])
        token = None
        bridges = [("bridge", "true", f"sqlite:{tmp / 'bridge.db'}"),
                   ("bridge-norec", "false", f"sqlite:{tmp / 'bridge.db'}"),
                   ("bridge-2w", "true", f"sqlite:{tmp / 'bridge.db'}"),
                   ("bridge-twisted", "true", f"sqlite:{tmp / 'bridge.db'}")]
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
[upstream]
client = "{'twisted' if name == 'bridge-twisted' else 'httptools'}"
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
            pids[name] = spawn(
                [PY, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0]='twistd'; run()",
                 "-n", "--pidfile=", "--logfile", str(tmp / f"{name}.log"), "bridgeproxy", "--config", str(config)],
                cwd=ROOT).pid
        for name, port in ports.items():
            if (name != "nginx" or have_nginx) and (name != "bridge-pg" or args.postgres):
                wait_port(port)

        targets = [("direct", f"http://127.0.0.1:{ports['upstream']}/v1/chat/completions", None),
                   ("hello", f"http://127.0.0.1:{ports['hello']}/v1/chat/completions", None),
                   ("rproxy", f"http://127.0.0.1:{ports['rproxy']}/chat/completions", None),
                   ("agent-floor", f"http://127.0.0.1:{ports['floor']}/chat/completions", None)]
        if have_nginx:
            targets.append(("nginx", f"http://127.0.0.1:{ports['nginx']}/chat/completions", None))
        targets += [("bridge", f"http://127.0.0.1:{ports['bridge']}/openai/v1/chat/completions", token),
                    ("bridge-norec", f"http://127.0.0.1:{ports['bridge-norec']}/openai/v1/chat/completions", token),
                    ("bridge-2w", f"http://127.0.0.1:{ports['bridge-2w']}/openai/v1/chat/completions", token)]
        if args.postgres:
            targets.append(("bridge-pg", f"http://127.0.0.1:{ports['bridge-pg']}/openai/v1/chat/completions", pg_token))
        targets.append(("bridge-twisted", f"http://127.0.0.1:{ports['bridge-twisted']}/openai/v1/chat/completions",
                        token))
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
            sampler = RssSampler(pids.get(name))
            out = subprocess.run([PY, str(ROOT / "benchmarks" / "streams.py"), f"127.0.0.1:{port}", path,
                                  str(args.streams), str(args.stream_ramp)] + ([tok] if tok else [])
                                 + ["--events", str(args.stream_events), "--gap-ms", str(args.stream_gap_ms)],
                                 capture_output=True, text=True, timeout=300, env=env).stdout
            streams[name] = json.loads(out.strip().splitlines()[-1])
            streams[name].update(sampler.stop(streams[name]["peak_open"]))
            print("streams", name, json.dumps(streams[name]), flush=True)

        fast = {}
        fast_targets = [("direct", ports["upstream"], "/v1/chat/completions", None),
                        ("rproxy", ports["rproxy"], "/chat/completions", None)]
        if have_nginx:
            fast_targets.append(("nginx", ports["nginx"], "/chat/completions", None))
        fast_targets += [("bridge", ports["bridge"], "/openai/v1/chat/completions", token),
                         ("bridge-twisted", ports["bridge-twisted"], "/openai/v1/chat/completions", token)]
        # A p99 of 500 streams is its 5 worst: rounds interleave the targets, the median is reported.
        fast_runs: dict[str, list] = {name: [] for name, _, _, _ in fast_targets}
        for round_ in range(args.repeat):
            for name, port, path, tok in fast_targets:
                out = subprocess.run([PY, str(ROOT / "benchmarks" / "streams.py"), f"127.0.0.1:{port}", path,
                                      str(args.fast_streams), str(args.fast_ramp)] + ([tok] if tok else [])
                                     + ["--events", "20", "--gap-ms", str(args.fast_gap_ms)],
                                     capture_output=True, text=True, timeout=300, env=env).stdout
                fast_runs[name].append(json.loads(out.strip().splitlines()[-1]))
                print("fast-streams", round_, name, json.dumps(fast_runs[name][-1]), flush=True)
        for name, runs in fast_runs.items():
            fast[name] = {key: (sum(r[key] for r in runs) if key == "failures" else
                                statistics.median(r[key] for r in runs if r[key] is not None)
                                if any(r[key] is not None for r in runs) else None)
                          for key in ("failures", "ttfb_p50_ms", "ttfb_p99_ms", "gap_p50_ms", "gap_p99_ms",
                                      "events_per_s")}
            fast[name]["ttfb_p99_all"] = [r["ttfb_p99_ms"] for r in runs]

        cancels = {}
        for name in ("bridge", "bridge-twisted"):
            out = subprocess.run([PY, str(ROOT / "benchmarks" / "cancel.py"), f"127.0.0.1:{ports[name]}",
                                  "/openai/v1/chat/completions", str(ports["upstream"]), str(args.cancels), token],
                                 capture_output=True, text=True, timeout=120, env=env).stdout
            cancels[name] = json.loads(out.strip().splitlines()[-1])
            print("cancel", name, json.dumps(cancels[name]), flush=True)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()

    report = render(results, streams, fast, cancels, args)
    print(report)
    if args.out:
        Path(args.out).write_text(report)


class RssSampler:
    """The highest resident memory of a process while a scenario runs, against its level before."""

    def __init__(self, pid):
        import threading
        self.pid, self.base, self.peak, self.running = pid, rss_kb(pid), 0, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        if pid:
            self.thread.start()

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, rss_kb(self.pid) or 0)
            time.sleep(0.1)

    def stop(self, streams):
        self.running = False
        if not self.pid:
            return {}
        self.thread.join()
        return {"rss_base_kb": self.base, "rss_peak_kb": self.peak,
                "kb_per_stream": round((self.peak - self.base) / streams, 1) if streams else None}


def rss_kb(pid):
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def ratio(a, b):
    return a / b if a is not None and b else None


def targets_table(results, streams, fast, cancels):
    """The issue's targets, as ratios of this run: (what, measured, target, met)."""
    bridge, direct = results["bridge"], results["direct"]
    added = lambda name: results[name]["p50_us_c1"] - direct["p50_us_c1"]  # noqa: E731
    rows = [
        ("req/s c32, bridge / rproxy", ratio(bridge["rps"], results["rproxy"]["rps"]), ">= 1.5", 1.5, True),
        ("req/s c32, bridge / agent-floor", ratio(bridge["rps"], results["agent-floor"]["rps"]), ">= 1.3", 1.3, True),
        ("req/s c32, bridge / hello", ratio(bridge["rps"], results["hello"]["rps"]), ">= 0.5", 0.5, True),
        ("added latency c1, bridge / agent-floor", ratio(added("bridge"), added("agent-floor")), "<= 1.0", 1.0, False),
    ]
    if "bridge" in fast and "rproxy" in fast:
        b, n = fast["bridge"], fast["rproxy"]
        rows += [
            ("fast streams: failures (bridge)", b["failures"], "= 0", 0, False),
            ("fast streams: gap p99, bridge / naive", ratio(b["gap_p99_ms"], n["gap_p99_ms"]), "<= 1.5", 1.5, False),
            ("fast streams: TTFB p99, bridge / naive", ratio(b["ttfb_p99_ms"], n["ttfb_p99_ms"]), "<= 2", 2.0, False),
            ("fast streams: events/s, bridge / naive", ratio(b["events_per_s"], n["events_per_s"]), ">= 0.95", 0.95,
             True),
        ]
    if streams.get("bridge", {}).get("kb_per_stream") is not None:
        rows.append(("open streams: RSS per stream (KB)", streams["bridge"]["kb_per_stream"], "<= 30", 30, False))
    if cancels.get("bridge", {}).get("max_ms") is not None:
        rows.append(("disconnect to upstream cancel, max (ms)", cancels["bridge"]["max_ms"], "<= 10", 10, False))
    return [(what, value, target, value is not None and (value >= bound if higher else value <= bound))
            for what, value, target, bound, higher in rows]


def render(results, streams, fast, cancels, args):
    direct = results["direct"]
    lines = [
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
        f"wrk -t1, {args.seconds}s per measurement, {args.repeat} interleaved rounds, "
        f"Python {sys.version.split()[0]}.",
        "",
        "| target | req/s (c=32), median | rounds | vs rproxy | vs agent-floor | vs hello | p50 latency c=1 (µs) "
        "| added vs direct (µs) | non-2xx |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        added = (r["p50_us_c1"] - direct["p50_us_c1"]) if r["p50_us_c1"] and direct["p50_us_c1"] else None
        lines.append(f"| {name} | {r['rps']:.0f} | {' / '.join(map(str, r['rps_all']))} | "
                     f"{r['rps'] / results['rproxy']['rps']:.2f}× | {r['rps'] / results['agent-floor']['rps']:.2f}× | "
                     f"{r['rps'] / results['hello']['rps']:.2f}× | "
                     f"{r['p50_us_c1']:.0f} | {'' if name == 'direct' else f'{added:.0f}'} | {r['non2xx']} |")
    lines += ["", f"Open streams: {args.streams} opened over {args.stream_ramp:.0f} s, {args.stream_events} events "
              f"each, one every {args.stream_gap_ms:.0f} ms.", "",
              "| target | peak open | failures | TTFB p50 (ms) | TTFB p99 (ms) | gap p50 (ms) | gap p99 (ms) "
              "| gap max (ms) | RSS growth per open stream (KB) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, s in streams.items():
        lines.append(f"| {name} | {s['peak_open']} | {s['failures']} | {s['ttfb_p50_ms']} | {s['ttfb_p99_ms']} | "
                     f"{s['gap_p50_ms']} | {s['gap_p99_ms']} | {s['gap_max_ms']} | {s.get('kb_per_stream', '')} |")
    lines += ["", f"Fast streams: {args.fast_streams} opened over {args.fast_ramp:g} s, 20 events each, one every "
              f"{args.fast_gap_ms:g} ms; medians of {args.repeat} interleaved rounds (failures: the sum).", "",
              "| target | failures | TTFB p50 (ms) | TTFB p99 (ms) | TTFB p99 rounds | gap p50 (ms) | gap p99 (ms) "
              "| events/s |",
              "|---|---|---|---|---|---|---|---|"]
    for name, s in fast.items():
        lines.append(f"| {name} | {s['failures']} | {s['ttfb_p50_ms']} | {s['ttfb_p99_ms']} | "
                     f"{' / '.join(map(str, s['ttfb_p99_all']))} | {s['gap_p50_ms']} | {s['gap_p99_ms']} | "
                     f"{s['events_per_s']} |")
    lines += ["", f"Client disconnect mid-stream → upstream connection closed ({args.cancels} streams):", "",
              "| target | cut | cancelled | p50 (ms) | max (ms) |", "|---|---|---|---|---|"]
    for name, c in cancels.items():
        lines.append(f"| {name} | {c['cut']} | {c['cancelled']} | {c['p50_ms']} | {c['max_ms']} |")
    lines += ["", "Targets (this run):", "", "| target | measured | wanted | met |", "|---|---|---|---|"]
    for what, value, target, met in targets_table(results, streams, fast, cancels):
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"| {what} | {shown} | {target} | {'yes' if met else 'NO'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
