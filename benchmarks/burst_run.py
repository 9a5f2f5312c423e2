"""
The login-burst benchmark (issue 13): N clients open a stream at the same
moment, against each target in turn, on this machine, in one run.

Targets (each a separate process in front of the same fake upstream,
which sends EVENTS events GAP_MS apart):
  direct    the fake upstream itself (the client's own floor: tens of ms)
  rproxy    twisted.web.proxy.ReverseProxyResource listening with backlog
            1024: naive Twisted, the baseline the ratios are taken against
  bridge    twistd bridgeproxy, recording to SQLite, a key made with the CLI,
            listening with backlog 4096 (--bridge-backlog default: its own)

With a backlog of 1024, 2,000 simultaneous SYNs can overflow rproxy's accept
queue: the connections dropped are retried by the kernel after 1 s, which
shows as a "connect p99" near 1,000 ms and a TTFB p99 just over it.
--also-rproxy-backlog 4096 adds ReverseProxyResource without that effect
(rproxy-4096); the last column compares with the better of the two.

Each round starts every process afresh (cold connection pools and key cache,
as at a morning login), warms each target with a few small requests, then
runs benchmarks/burst.py against the targets one after the other.

More bridges can be measured side by side, e.g. an out-of-tree prototype:
  --bridge base=/tmp/clone --bridge proto=/tmp/burst-proto --bridge-python /tmp/venv/bin/python
(twistd bridgeproxy from each tree; the Python must be a virtualenv without
bridgeproxy installed, or twistd loads the installed plugin modules).
--profile NAME records a py-spy profile of that target's burst.

Usage: .venv/bin/python benchmarks/burst_run.py [--rounds 3] [--also-rproxy-backlog 4096]
       [--streams 2000] [--bridge-backlog 4096|default] [--bridge NAME=TREE ...] [--out FILE]
Needs no wrk; raises its own open-files limit (as run.sh's ulimit -n).  Not
part of the test suite: a round takes about a minute and wants the machine
to itself.
"""

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from ports import free_port, wait_port  # noqa: E402 - benchmarks/ is the script's directory

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
#: The bridge's [auth] cache_seconds default.
KEY_CACHE_SECONDS = 5.0
SMALL = b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}'


def serve_rproxy(listen, upstream, backlog):
    """The naive baseline: ReverseProxyResource, no access log, the given backlog."""
    from twisted.internet import reactor
    from twisted.web import proxy, server
    site = server.Site(proxy.ReverseProxyResource("127.0.0.1", upstream, b"/v1"))
    site.log = lambda request: None
    reactor.listenTCP(listen, site, interface="127.0.0.1", backlog=backlog)
    reactor.run()


def raise_nofile():
    """As run.sh's `ulimit -n 16384`: the children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 16384 if hard == resource.RLIM_INFINITY else min(hard, 16384)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_seconds(pid):
    """User + system CPU time of process C{pid} so far (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuSampler(threading.Thread):
    """Samples a process's CPU time every 20 ms, to tell what the set-up of a burst cost it."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.samples, self.stopped = pid, [], threading.Event()

    def run(self):
        while not self.stopped.is_set():
            try:
                self.samples.append((time.monotonic(), cpu_seconds(self.pid)))
            except OSError:
                return
            time.sleep(0.02)

    def used(self, start, end):
        """CPU seconds used between the monotonic times C{start} and C{end} (nearest samples)."""
        def at(t):
            return min(self.samples, key=lambda s: abs(s[0] - t))[1]
        return at(end) - at(start) if self.samples else None


def warm(url, token):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    for _ in range(3):
        with urllib.request.urlopen(urllib.request.Request(url, SMALL, headers), timeout=10) as r:
            r.read()


def one_round(args, bridges, tmp, round_):
    procs = []
    env = dict(os.environ, BENCH_OPENAI_KEY="sk-bench-central-key-0123456789")

    def spawn(cmd, cwd=None, extra_env=None):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd,
                             env=dict(env, **(extra_env or {})))
        procs.append(p)
        return p

    ports = {"upstream": free_port(), "rproxy": free_port()}
    targets = [("direct", "upstream", "/v1/chat/completions", None, None),
               ("rproxy", "rproxy", "/chat/completions", None, None)]
    for backlog in args.also_rproxy_backlog:
        ports[f"rproxy-{backlog}"] = free_port()
        targets.append((f"rproxy-{backlog}", f"rproxy-{backlog}", "/chat/completions", None, None))
    results = {}
    pids = {}
    warmed = {}
    profilers = []
    try:
        spawn([PY, str(ROOT / "benchmarks" / "upstream.py"), str(ports["upstream"]), str(args.events),
               str(args.gap_ms)], extra_env={"PYTHONPATH": str(ROOT)})
        pids["direct"] = procs[-1].pid
        spawn([PY, str(Path(__file__).resolve()), "--serve-rproxy", str(ports["rproxy"]), str(ports["upstream"]),
               str(args.rproxy_backlog)], extra_env={"PYTHONPATH": str(ROOT)})
        pids["rproxy"] = procs[-1].pid
        for backlog in args.also_rproxy_backlog:
            spawn([PY, str(Path(__file__).resolve()), "--serve-rproxy", str(ports[f"rproxy-{backlog}"]),
                   str(ports["upstream"]), str(backlog)], extra_env={"PYTHONPATH": str(ROOT)})
            pids[f"rproxy-{backlog}"] = procs[-1].pid
        for name, tree in bridges:
            ports[name] = free_port()
            backlog = "" if args.bridge_backlog == "default" else f":backlog={args.bridge_backlog}"
            config = tmp / f"{name}-{round_}.toml"
            config.write_text(f"""
listen = "tcp:{ports[name]}:interface=127.0.0.1{backlog}"
workers = 1
database = "sqlite:{tmp / f'{name}-{round_}.db'}"
[providers.openai]
base_url = "http://127.0.0.1:{ports['upstream']}/v1"
key_env = "BENCH_OPENAI_KEY"
[recording]
enabled = true
spool_path = "{tmp / f'{name}-{round_}-spool.jsonl'}"
""")
            tree_env = {"PYTHONPATH": str(tree)}
            token = subprocess.run([args.bridge_python, "-m", "bridgeproxy.cli", "keys", "create", "--config", str(config),
                                    "--username", "bench"], capture_output=True, text=True, cwd=tree,
                                   env=dict(env, **tree_env), check=True).stdout.strip()
            spawn([args.bridge_python, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0]='twistd'; run()",
                   "-n", "--pidfile=", "--logfile", str(tmp / f"{name}-{round_}.log"), "bridgeproxy",
                   "--config", str(config)], cwd=tree, extra_env=tree_env)
            pids[name] = procs[-1].pid
            targets.append((name, name, "/openai/v1/chat/completions", token, tree))
        for port in ports.values():
            wait_port(port)
        for name, port_name, path, token, _ in targets:
            # Imports, first connections, the upstream's first answers.
            warm(f"http://127.0.0.1:{ports[port_name]}{path}", token)
            warmed[name] = time.monotonic()
        # Every other round the targets after `direct` go in reverse order, so
        # that none is always the one measured last (or first) in a round.
        order = targets if round_ % 2 == 0 else targets[:1] + targets[:0:-1]
        for name, port_name, path, token, _ in order:
            time.sleep(args.pause)
            if token:  # a bridge: its key cache must be cold, as at a morning login
                time.sleep(max(0.0, warmed[name] + KEY_CACHE_SECONDS + 1 - time.monotonic()))
            if args.profile and name in args.profile:
                profiler = subprocess.Popen(
                    [args.py_spy, "record", "--nonblocking", "-r", str(args.profile_rate), "-f", "raw", "-d",
                     str(args.profile_seconds or int(args.events * args.gap_ms / 1000) + 8),
                     "-o", str(Path(args.profile_dir) / f"{name}-{round_}.txt"),
                     "--pid", str(pids[name])],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                profilers.append(profiler)
                time.sleep(1.0)
            sampler = CpuSampler(pids[name])
            sampler.start()
            time.sleep(0.1)
            began = time.monotonic()
            out = subprocess.run([PY, str(ROOT / "benchmarks" / "burst.py"), f"127.0.0.1:{ports[port_name]}", path,
                                  str(args.streams)] + ([token] if token else []),
                                 capture_output=True, text=True, timeout=300)
            ended = time.monotonic()
            sampler.stopped.set()
            sampler.join()
            if args.profile and name in args.profile:
                profiler.wait(60)
            try:
                results[name] = json.loads(out.stdout.strip().splitlines()[-1])
            except (IndexError, ValueError):
                raise SystemExit(f"burst.py against {name} failed: {out.stderr[-2000:]}")
            # The server's CPU time until the p99 stream had its first event
            # (the set-up of the burst; burst.py's own start-up, ~0.1 s, is
            # idle time for the server), and over the whole burst.
            p99 = results[name]["ttfb_p99_ms"]
            setup = sampler.used(began, began + 0.15 + p99 / 1000) if p99 is not None else None
            results[name]["cpu_setup_ms"] = round(1000 * setup) if setup is not None else None
            results[name]["cpu_total_s"] = round(sampler.used(began, ended), 2)
            print(f"round {round_ + 1} {name} {json.dumps(results[name])}", flush=True)
    finally:
        for p in profilers + procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return results


def render(rounds, args, nofile):
    lines = [
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]}, ulimit -n {nofile}. Burst: {args.streams} streams opened at once, "
        f"{args.events} events each, {args.gap_ms:.0f} ms apart; rproxy backlog {args.rproxy_backlog}, "
        f"bridge backlog {args.bridge_backlog}. A connect p99 near 1000 ms means SYNs dropped by a full "
        f"accept queue (retried after 1 s).",
        "",
        "| round | target | ok | failures | connect p99 (ms) | TTFB p50 (ms) | TTFB p99 (ms) | TTFB max (ms) "
        "| wall (s) | p50 / rproxy | p99 / rproxy | p99 / best naive | server CPU to p99 (ms) | server CPU total (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, results in enumerate(rounds):
        naive = results.get("rproxy")
        best = min((r["ttfb_p99_ms"] for n, r in results.items() if n.startswith("rproxy") and r["ttfb_p99_ms"]),
                   default=None)
        for name, r in results.items():
            ratio50 = ratio99 = ratio_best = ""
            if best and r["ttfb_p99_ms"] is not None:
                ratio_best = f"{r['ttfb_p99_ms'] / best:.2f}×"
            if naive and naive["ttfb_p50_ms"] and r["ttfb_p50_ms"] is not None:
                ratio50 = f"{r['ttfb_p50_ms'] / naive['ttfb_p50_ms']:.2f}×"
                ratio99 = f"{r['ttfb_p99_ms'] / naive['ttfb_p99_ms']:.2f}×"
            kinds = ", ".join(f"{k} {v}" for k, v in r.get("failure_kinds", {}).items())
            lines.append(f"| {i + 1} | {name} | {r['ok']} | {r['failures']}{f' ({kinds})' if kinds else ''} | "
                         f"{r['connect_p99_ms']} | {r['ttfb_p50_ms']} | {r['ttfb_p99_ms']} | {r['ttfb_max_ms']} | {r['wall_s']} | "
                         f"{ratio50} | {ratio99} | {ratio_best} | {r.get('cpu_setup_ms')} | {r.get('cpu_total_s')} |")
    if len(rounds) > 1:
        lines += ["", f"Medians over the {len(rounds)} rounds (each ratio taken within its round):", "",
                  "| target | TTFB p99 (ms) | p99 / rproxy | p99 / best naive | server CPU to p99 / best naive's |",
                  "|---|---|---|---|---|"]
        for name in rounds[0]:
            if name == "direct" or name.startswith("rproxy"):
                continue
            p99s, by_rproxy, by_best, by_cpu = [], [], [], []
            for results in rounds:
                r = results.get(name)
                if not r or r["ttfb_p99_ms"] is None:
                    continue
                p99s.append(r["ttfb_p99_ms"])
                naive = [(n, x) for n, x in results.items() if n.startswith("rproxy") and x["ttfb_p99_ms"]]
                if "rproxy" in results and results["rproxy"]["ttfb_p99_ms"]:
                    by_rproxy.append(r["ttfb_p99_ms"] / results["rproxy"]["ttfb_p99_ms"])
                if naive:
                    best_name, best_result = min(naive, key=lambda item: item[1]["ttfb_p99_ms"])
                    by_best.append(r["ttfb_p99_ms"] / best_result["ttfb_p99_ms"])
                    if r.get("cpu_setup_ms") and best_result.get("cpu_setup_ms"):
                        by_cpu.append(r["cpu_setup_ms"] / best_result["cpu_setup_ms"])

            def median(values, unit="×"):
                return f"{statistics.median(values):.2f}{unit}" if values else ""
            lines.append(f"| {name} | {median(p99s, '')} | {median(by_rproxy)} | {median(by_best)} | {median(by_cpu)} |")
    return "\n".join(lines) + "\n"


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--serve-rproxy":
        serve_rproxy(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--events", type=int, default=6)
    parser.add_argument("--gap-ms", type=float, default=1500)
    parser.add_argument("--rounds", type=int, default=1, help="each round starts every process afresh")
    parser.add_argument("--rproxy-backlog", type=int, default=1024)
    parser.add_argument("--also-rproxy-backlog", type=int, action="append", default=[], metavar="BACKLOG",
                        help="also measure ReverseProxyResource with this backlog (as rproxy-BACKLOG; "
                             "informative, the ratios stay against rproxy)")
    parser.add_argument("--bridge-backlog", default="4096",
                        help="backlog= on the bridge's listen string, or 'default' for the bridge's own")
    parser.add_argument("--bridge", action="append", default=[], metavar="NAME=TREE",
                        help="measure twistd bridgeproxy from TREE as target NAME (default: bridge=this tree)")
    parser.add_argument("--bridge-python", default=PY,
                        help="the Python the bridges run with.  For a TREE other than the one installed in "
                             "it, use a virtualenv without bridgeproxy installed: twistd would load the "
                             "installed twisted/plugins/bridgeproxy_*.py before the tree's")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between bursts")
    parser.add_argument("--profile", action="append", default=[], metavar="NAME",
                        help="record a py-spy profile (raw, for flamegraph.pl) of target NAME's burst")
    parser.add_argument("--profile-seconds", type=int, default=0,
                        help="how long to profile from 1 s before the burst (default: the whole burst)")
    parser.add_argument("--profile-dir", default=tempfile.gettempdir())
    parser.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--py-spy", default=str(Path(PY).parent / "py-spy"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    bridges = [tuple(b.split("=", 1)) for b in args.bridge] or [("bridge", str(ROOT))]
    bridges = [(name, Path(tree).resolve()) for name, tree in bridges]
    nofile = raise_nofile()
    if nofile < args.streams * 2 + 256:
        print(f"warning: ulimit -n is {nofile}, the proxies need about {args.streams * 2 + 256}", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="bridgeburst-"))
    rounds = [one_round(args, bridges, tmp, i) for i in range(args.rounds)]
    report = render(rounds, args, nofile)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n" + json.dumps(rounds) + "\n")


if __name__ == "__main__":
    main()
