"""
A login burst: N streaming requests opened at the same moment.

Every socket is created first, then all N connects are issued back to back
(no ramp), and each request is sent as soon as its connection is up.  A
bare epoll loop (no Twisted, no SDK) so that the client is not what is
measured: the `direct` row of benchmarks/burst_run.py shows its own floor.

Time to first byte is measured from the moment each connect() was issued to
the first SSE event ("data: "), so a connection that waited in (or was
dropped from) the server's accept queue counts as it would for a client.

Usage: python benchmarks/burst.py HOST:PORT PATH N [TOKEN] [--timeout S] > JSON
"""

import argparse
import errno
import json
import resource
import select
import socket
import statistics
import time

BODY = b'{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}'


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def ms(value):
    return round(1000 * value, 2) if value is not None else None


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)) if hard != resource.RLIM_INFINITY
                                                    else need, hard))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("target", help="HOST:PORT")
    parser.add_argument("path")
    parser.add_argument("n", type=int)
    parser.add_argument("token", nargs="?", default="")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before unfinished streams fail")
    args = parser.parse_args()
    host, port = args.target.rsplit(":", 1)
    address = (host, int(port))
    raise_nofile(args.n + 64)
    auth = b"Authorization: Bearer %s\r\n" % args.token.encode() if args.token else b""
    request = (b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n%s"
               b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (args.path.encode(), auth, len(BODY), BODY))

    poller = select.epoll(sizehint=args.n)
    EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
    # Everything that can be done before the burst is done before it.
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(args.n)]
    for s in socks:
        s.setblocking(False)
    by_fd = {}
    start = {}
    connected = {}
    first = {}
    data = {}
    failures = {"connect": 0, "reset": 0, "status": 0, "incomplete": 0, "timeout": 0}
    ttfb, connect_times = [], []
    events = 0
    ok = 0

    began = time.perf_counter()
    for s in socks:
        fd = s.fileno()
        by_fd[fd] = s
        start[fd] = time.perf_counter()
        err = s.connect_ex(address)
        if err not in (0, errno.EINPROGRESS):
            failures["connect"] += 1
            s.close()
            del by_fd[fd]
            continue
        poller.register(fd, EPOLLOUT)
    issued = time.perf_counter() - began

    def finish(fd, now, reason=None):
        nonlocal events, ok
        s = by_fd.pop(fd)
        poller.unregister(fd)
        s.close()
        body = b"".join(data.pop(fd, ()))
        if reason is not None:
            failures[reason] += 1
            return
        if not body.startswith(b"HTTP/1.1 200"):
            failures["status"] += 1
        elif b"[DONE]" not in body:
            failures["incomplete"] += 1
        else:
            ok += 1
            events += body.count(b"data: ")
            ttfb.append(first[fd] - start[fd])

    deadline = began + args.timeout
    while by_fd:
        now = time.perf_counter()
        if now > deadline:
            for fd in list(by_fd):
                finish(fd, now, "timeout")
            break
        for fd, _mask in poller.poll(min(1.0, deadline - now)):
            now = time.perf_counter()
            s = by_fd.get(fd)
            if s is None:
                continue
            if fd not in connected:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    finish(fd, now, "connect")
                    continue
                connected[fd] = now
                connect_times.append(now - start[fd])
                s.send(request)  # small: fits in an empty socket buffer
                data[fd] = []
                poller.modify(fd, EPOLLIN)
                continue
            try:
                chunk = s.recv(65536)
            except ConnectionError:
                finish(fd, now, "reset")
                continue
            except BlockingIOError:
                continue
            if not chunk:
                finish(fd, now, None)
                continue
            parts = data[fd]
            parts.append(chunk)
            if fd not in first and (b"data: " in chunk or b"data: " in b"".join(parts[-2:])):
                first[fd] = now
    wall = time.perf_counter() - began
    print(json.dumps({
        "streams": args.n, "ok": ok, "failures": args.n - ok, "failure_kinds": {k: v for k, v in failures.items() if v},
        "events": events,
        "connects_issued_ms": ms(issued),
        "connect_p99_ms": ms(pct(connect_times, 0.99)),
        "connect_max_ms": ms(max(connect_times)) if connect_times else None,
        "ttfb_p50_ms": ms(statistics.median(ttfb)) if ttfb else None,
        "ttfb_p99_ms": ms(pct(ttfb, 0.99)),
        "ttfb_max_ms": ms(max(ttfb)) if ttfb else None,
        "wall_s": round(wall, 2),
    }))


if __name__ == "__main__":
    main()
