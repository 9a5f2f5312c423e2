"""
Several workers on one port, in memory: the supervisor's decisions (what
it starts, when it restarts a worker, how a rolling reload replaces them,
what it logs) on a reactor that spawns fake processes on a clock, and a
worker's own start-up (what it reads, binds, says and logs) on a
MemoryReactorClock.  No process is started and nothing sleeps.
"""

import errno
import gc
import io
import json
import os
import signal
import socket
import sys

import pytest
from twisted.logger import globalLogBeginner

from bridgeproxy import tap, workers
from bridgeproxy.errors import ConfigError
from tests.wired import logged, Reactor, SyncStore

# -- the listen endpoint ------------------------------------------------------------------


class Proc:
    """/proc/sys/net/core/somaxconn holding C{text} (or missing, for None)."""

    def __init__(self, text):
        self.text = text

    def __call__(self, path, *args, **kwargs):
        if path != "/proc/sys/net/core/somaxconn" or self.text is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return io.BytesIO(self.text.encode())


@pytest.mark.parametrize("somaxconn,backlog", [("4096\n", 4096), ("1025", 1025), ("128\n", 1024),
                                               ("not a number", 1024), (None, 1024)])
def test_the_backlog_is_1024_or_the_systems_larger_one(monkeypatch, somaxconn, backlog):
    """The listen backlog is the system's somaxconn when larger than 1024, else 1024."""
    monkeypatch.setattr(workers, "open", Proc(somaxconn), raising=False)
    assert workers.listen_backlog() == backlog


def test_the_backlog_follows_this_systems_somaxconn():
    """On this machine, the backlog is its somaxconn or 1024."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            somaxconn = int(f.read())
    except OSError:
        pytest.skip("no /proc/sys/net/core/somaxconn here")
    assert workers.listen_backlog() == max(1024, somaxconn)


@pytest.mark.parametrize("listen,address", [
    ("tcp:8080", ("0.0.0.0", 8080, 4096)),
    ("tcp:8080:interface=127.0.0.1", ("127.0.0.1", 8080, 4096)),
    ("tcp:8080:backlog=64:interface=10.0.0.1", ("10.0.0.1", 8080, 64)),
    ("tcp:8080:interface=\\:\\:1", ("::1", 8080, 4096)),
    ("tcp:8080:interface=a=b", ("a=b", 8080, 4096)),   # the value is all after the first "="
])
def test_the_address_workers_share(monkeypatch, listen, address):
    """A tcp endpoint gives the address and backlog the workers bind (escaped IPv6 colons included)."""
    monkeypatch.setattr(workers, "open", Proc("4096"), raising=False)
    assert workers.tcp_address(listen) == address


@pytest.mark.parametrize("listen,message", [
    ("unix:/run/bridge.sock", "workers need a 'tcp:PORT:interface=ADDR' listen endpoint, got 'unix:/run/bridge.sock'"),
    ("tcp", "workers need a 'tcp:PORT:interface=ADDR' listen endpoint, got 'tcp'"),
    ("tcp6:8080", "workers need a 'tcp:PORT:interface=ADDR' listen endpoint, got 'tcp6:8080'"),
    ("tcp:http", "listen: not a port number in 'tcp:http'"),
    ("tcp:0", "workers need a fixed port and only interface/backlog options, got 'tcp:0'"),
    ("tcp:8080:reuse=1", "workers need a fixed port and only interface/backlog options, got 'tcp:8080:reuse=1'"),
    ("tcp:8080:backlog=many", "listen: backlog must be a whole number in 'tcp:8080:backlog=many'"),
])
def test_an_endpoint_workers_cannot_share_is_refused(listen, message):
    """Endpoints workers cannot share (not tcp, no fixed port, other options) are refused in one line."""
    with pytest.raises(ConfigError) as caught:
        workers.tcp_address(listen)
    assert str(caught.value) == message


@pytest.mark.parametrize("interface,family", [("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)])
def test_a_reuseport_socket_shares_its_port(interface, family):
    """Two such sockets listen on one port (as two workers do), without blocking the reactor."""
    first = workers.reuseport_socket(interface, 0, 16)
    try:
        port = first.getsockname()[1]
        second = workers.reuseport_socket(interface, port, 16)
        try:
            assert (first.family, second.family) == (family, family)
            assert second.getsockname()[:2] == (interface, port)
            assert first.getblocking() is False
            assert first.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
            plain = socket.socket(family, socket.SOCK_STREAM)
            with pytest.raises(OSError):
                plain.bind((interface, port))
            plain.close()
            client = socket.create_connection((interface, port), timeout=5)  # it listens
            client.close()
        finally:
            second.close()
    finally:
        first.close()


def test_an_adopted_port_listens_on_the_workers_socket_and_stops():
    """A worker listens on its own socket through the reactor, then closes its copy; stopping stops the port."""
    reactor = Reactor()
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    fileno = sock.fileno()
    factory = object()
    port = workers.AdoptedPort(reactor, sock, factory)
    assert port.stopService() is None   # never started: nothing to close
    port.startService()
    assert port.running and reactor.adoptedPorts == [(fileno, socket.AF_INET6, factory)]
    assert sock.fileno() == -1   # the reactor's port holds its own copy
    port.port.stopListening = lambda: "stopped"
    assert port.stopService() == "stopped" and not port.running


# -- the supervisor -----------------------------------------------------------------------


def supervisor(count=2, path="/etc/bridgeproxy.toml", **kw):
    reactor = Reactor()
    sup = workers.Supervisor(reactor, path, count, "tcp:8080:interface=127.0.0.1", **kw)
    return sup, reactor


def processes(reactor):
    return [protocol.transport for protocol, *_ in reactor.spawned]


def test_the_supervisor_starts_its_workers(captured_log):
    """The supervisor starts one process per worker, with the listen endpoint, its index, the log format and the
    file."""
    sup, reactor = supervisor(log_format="json")
    sup.startService()
    assert len(reactor.spawned) == 2
    for index, (protocol, executable, args, env, fds) in enumerate(reactor.spawned):
        assert executable == sys.executable
        assert args == [sys.executable, "-m", "bridgeproxy.workers", "--listen", "tcp:8080:interface=127.0.0.1",
                        "--index", str(index), "--log-format", "json", "--ready-fd", "3",
                        "--config", "/etc/bridgeproxy.toml"]
        assert env == dict(os.environ)
        assert fds == {0: "w", 1: 1, 2: 2, 3: "r"}
        assert sup.workers[index] is protocol and protocol.index == index
    assert "Started worker 0 (pid 1001)" in logged(captured_log)
    assert "Started worker 1 (pid 1002)" in logged(captured_log)


def test_without_a_file_workers_read_the_defaults():
    """Without a file, workers are started without --config, in text logging by default."""
    sup, reactor = supervisor(count=1, path=None)
    sup.startService()
    [(_, _, args, _, _)] = reactor.spawned
    assert "--config" not in args and args[-2:] == ["--ready-fd", "3"] and "text" in args


def test_a_worker_that_dies_is_restarted_a_second_later(captured_log):
    """A worker that dies is logged and restarted a second later, in its place."""
    sup, reactor = supervisor()
    sup.startService()
    first = processes(reactor)[0]
    first.end(1)
    assert sup.restarts == 1 and 0 not in sup.workers
    assert "Worker 0 exited (A process has ended with a probable error condition: process ended with exit " \
           "code 1.); restarting it" in logged(captured_log)
    reactor.advance(0.9)
    assert len(reactor.spawned) == 2
    reactor.advance(0.1)
    assert len(reactor.spawned) == 3 and reactor.spawned[2][2][6] == "0"
    assert sup.workers[0] is reactor.spawned[2][0]


def test_a_worker_that_dies_while_stopping_is_not_restarted():
    """Stopping terminates every worker and waits for all of them; none is restarted."""
    sup, reactor = supervisor()
    sup.startService()
    a, b = processes(reactor)
    d = sup.stopService()
    assert (a.signals, b.signals) == (["TERM"], ["TERM"])
    assert not d.called
    a.end(0)
    assert not d.called
    b.end(0)
    assert d.called
    reactor.advance(5)
    assert len(reactor.spawned) == 2 and sup.restarts == 0


def test_a_restart_due_after_stopping_starts_nothing():
    """A restart scheduled before stopping starts nothing."""
    sup, reactor = supervisor()
    sup.startService()
    processes(reactor)[0].end(1)
    sup.stopService()
    reactor.advance(1)
    assert len(reactor.spawned) == 2


def test_stopping_with_every_worker_gone_is_at_once():
    """Stopping with no worker left is done at once."""
    sup, reactor = supervisor(count=1)
    sup.startService()
    sup.running = 0   # (as if stopping: the exit is not restarted)
    processes(reactor)[0].end(0)
    sup.running = 1
    assert sup.stopService().called
    assert workers.Supervisor(Reactor(), None, 1, "tcp:1").stopService().called


def test_a_worker_is_ready_when_it_says_so_on_its_pipe():
    """A worker is serving once it writes 'ready' on its pipe (descriptor 3), not on any other."""
    sup, reactor = supervisor(count=1)
    sup.startService()
    worker, process = sup.workers[0], processes(reactor)[0]
    process.say(1, b"ready\n")
    process.say(4, b"ready\n")
    process.say(3, b"starting\n")
    assert not worker.ready.called
    process.say(3, b"ready\n")
    assert worker.ready.called
    process.say(3, b"ready\n")   # said twice: once is enough
    assert worker.pid == 1001


def test_a_worker_that_exits_before_it_is_ready(captured_log):
    """Its exit is logged once, as a restart: the wait for it to serve is not an unhandled error too."""
    sup, reactor = supervisor(count=1)
    sup.startService()
    worker = sup.workers[0]
    processes(reactor)[0].end(3)
    assert worker.ready.called and worker.ended.called and worker.pid == 1001
    assert sup.restarts == 1
    del worker
    reactor.spawned.clear()
    gc.collect()
    assert "Unhandled error in Deferred" not in captured_log.text()
    reactor.advance(1)
    processes(reactor)[0].end(1)
    assert sup.restarts == 2


def test_terminating_a_worker_already_gone_is_quiet():
    """Terminating a worker that is already gone is not an error."""
    sup, reactor = supervisor(count=1)
    sup.startService()
    process = processes(reactor)[0]
    process.gone = True
    sup.workers[0].terminate()
    assert process.signals == []


# -- rolling reload -------------------------------------------------------------------------


@pytest.fixture
def checked(monkeypatch):
    """tap.check and tap.read_config as a reload calls them, recorded; the configuration read is C{config}."""
    seen = []
    state = {"config": tap.parse({"listen": "tcp:8080:interface=127.0.0.1", "workers": 2}, environ={})}

    def read_config(path, overrides):
        seen.append(("read", path, overrides))
        if isinstance(state["config"], Exception):
            raise state["config"]
        return state["config"]

    def check(config, reactor):
        seen.append(("check", config, reactor))
    monkeypatch.setattr(tap, "read_config", read_config)
    monkeypatch.setattr(tap, "check", check)
    state["seen"] = seen
    return state


def test_a_reload_replaces_the_workers_one_at_a_time(checked, captured_log):
    """SIGHUP starts a new worker, waits until it serves, then retires the old one; one at a time, each logged."""
    sup, reactor = supervisor(overrides={"workers": 2})
    sup.startService()
    old_a, old_b = processes(reactor)
    sup.reload()
    assert checked["seen"][0] == ("read", "/etc/bridgeproxy.toml", {"workers": 2})
    assert checked["seen"][1][0] == "check" and checked["seen"][1][2] is reactor
    assert len(reactor.spawned) == 3
    new_a = processes(reactor)[2]
    assert "Reload: started worker 0 (pid 1003) to replace pid 1001" in logged(captured_log)
    assert old_a.signals == [] and sup.starting == {reactor.spawned[2][0]}
    new_a.say(3, b"ready\n")
    assert old_a.signals == ["TERM"] and old_b.signals == []
    assert sup.workers[0] is reactor.spawned[2][0] and sup.starting == {reactor.spawned[3][0]}
    retired = reactor.spawned[0][0]
    assert retired.retired and sup.retiring == {retired}
    old_a.end(0)
    assert "Worker 0 (pid 1001) replaced by a reload has exited" in logged(captured_log)
    assert sup.retiring == set() and sup.restarts == 0
    reactor.advance(5)
    assert len(reactor.spawned) == 4   # the retired worker is not restarted
    processes(reactor)[3].say(3, b"ready")
    assert old_b.signals == ["TERM"] and sup.workers[1] is reactor.spawned[3][0]
    assert "Reloaded configuration from /etc/bridgeproxy.toml: 2 workers replaced" in logged(captured_log)
    assert not sup._reloading


def test_a_reload_while_one_is_under_way_follows_it(checked, captured_log):
    """A reload asked for during one runs once that one is done."""
    sup, reactor = supervisor(count=1)
    sup.startService()
    sup.reload()
    sup.reload()
    assert "Reload already under way; another follows it" in logged(captured_log)
    assert len(reactor.spawned) == 2
    processes(reactor)[1].say(3, b"ready")
    assert len(reactor.spawned) == 3   # the second reload started at once
    processes(reactor)[2].say(3, b"ready")
    assert len(reactor.spawned) == 3 and not sup._reloading
    assert logged(captured_log).count("Reloaded configuration from /etc/bridgeproxy.toml: 1 workers replaced") == 2


def test_a_new_worker_that_does_not_start_stops_the_reload(checked, captured_log):
    """A new worker that exits before serving stops the reload; the running workers stay."""
    sup, reactor = supervisor()
    sup.startService()
    sup.reload()
    new = processes(reactor)[2]
    new.end(1)
    assert ("Reload stopped: the new worker 0 did not start (it exited: A process has ended with a probable "
            "error condition: process ended with exit code 1.); the running workers are kept") in logged(captured_log)
    assert [p.signals for p in processes(reactor)[:2]] == [[], []]
    assert sup.workers[0] is reactor.spawned[0][0] and len(reactor.spawned) == 3
    assert sup.starting == set() and not sup._reloading and sup.restarts == 0
    reactor.advance(5)
    assert len(reactor.spawned) == 3


def test_a_new_worker_that_takes_too_long_stops_the_reload(checked, captured_log):
    """A new worker not serving after 30 s is ended and the reload stops."""
    sup, reactor = supervisor()
    sup.startService()
    sup.reload()
    new = processes(reactor)[2]
    reactor.advance(29.9)
    assert new.signals == []
    reactor.advance(0.1)
    assert new.signals == ["TERM"]
    assert ("Reload stopped: the new worker 0 did not start (not serving after 30s); the running workers are "
            "kept") in logged(captured_log)
    new.end(0)
    assert sup.workers[0] is reactor.spawned[0][0] and sup.restarts == 0


def test_stopping_during_a_reload_ends_the_new_worker_quietly(checked, captured_log):
    """Stopping during a reload ends the new worker too, without reporting a failed reload."""
    sup, reactor = supervisor()
    sup.startService()
    sup.reload()
    new = processes(reactor)[2]
    d = sup.stopService()
    assert [p.signals for p in processes(reactor)] == [["TERM"], ["TERM"], ["TERM"]]
    for process in processes(reactor):
        process.end(0)
    assert d.called
    assert "Reload stopped" not in captured_log.text()
    assert new.signals == ["TERM"]


def test_a_new_worker_ready_after_stopping_is_ended(checked, captured_log):
    """A new worker that serves after the supervisor stopped is ended, not kept."""
    sup, reactor = supervisor()
    sup.startService()
    old = dict(sup.workers)
    sup.reload()
    new = processes(reactor)[2]
    sup.stopService()
    new.say(3, b"ready")
    assert new.signals == ["TERM", "TERM"]
    assert sup.workers == old and len(reactor.spawned) == 3
    assert "Reloaded configuration" not in captured_log.text()


def test_a_bad_file_changes_nothing(checked, captured_log):
    """A file that does not load, or a plugin that breaks, is logged and no worker is replaced."""
    sup, reactor = supervisor()
    sup.startService()
    checked["config"] = ConfigError("workers must be greater than 0, got 0")
    sup.reload()
    assert ("Reload failed, workers keep the previous configuration: workers must be greater than 0, got 0"
            in logged(captured_log))
    checked["config"] = RuntimeError("a plugin broke")
    sup.reload()
    assert logged(captured_log)[-1] == "Reload failed, workers keep the previous configuration"
    assert "a plugin broke" in captured_log.text()   # with its traceback
    assert len(reactor.spawned) == 2 and not sup._reloading


def test_listen_and_workers_changes_need_a_restart(checked, captured_log):
    """Changed listen or workers are reported as needing a restart; the rest of the file is rolled out."""
    sup, reactor = supervisor()
    sup.startService()
    checked["config"] = tap.parse({"listen": "tcp:9090", "workers": 4}, environ={})
    sup.reload()
    assert "Reload: listen, workers changed but need a restart; ignored" in logged(captured_log)
    assert len(reactor.spawned) == 3   # the rest of the file applies, to the same two workers
    checked["config"] = tap.parse({"listen": "tcp:8080:interface=127.0.0.1", "workers": 3}, environ={})
    processes(reactor)[2].say(3, b"ready")
    processes(reactor)[3].say(3, b"ready")
    sup.reload()
    assert "Reload: workers changed but need a restart; ignored" in logged(captured_log)


def test_a_reload_before_starting_or_after_stopping_does_nothing(checked):
    """A reload before the start or after the stop does nothing."""
    sup, reactor = supervisor()
    sup.reload()
    assert checked["seen"] == [] and reactor.spawned == []
    sup.startService()
    sup.stopService()
    sup.reload()
    assert checked["seen"] == [] and len(reactor.spawned) == 2


def test_a_reload_checks_the_real_file(tmp_path, captured_log):
    """(Without stand-ins: the file is read and its plugins checked, the store left alone.)"""
    path = tmp_path / "bridge.toml"
    path.write_text(f'database = "sqlite:{tmp_path / "never.db"}"\nidentity_backend = "ldap"\n')
    sup, reactor = supervisor(path=str(path))
    sup.startService()
    sup.reload()
    assert ("Reload failed, workers keep the previous configuration: identity_backend: no IIdentityBackend "
            "plugin is called 'ldap' (available: coder, keystore)") in logged(captured_log)
    path.write_text(f'database = "sqlite:{tmp_path / "never.db"}"\n')
    sup.reload()
    assert len(reactor.spawned) == 3 and not (tmp_path / "never.db").exists()


# -- a worker's own start -----------------------------------------------------------------


@pytest.fixture
def worker_env(monkeypatch):
    """What a worker's main() touches, in memory: the reactor, the log beginner, the socket, the store."""
    reactor = Reactor()
    import twisted.internet
    monkeypatch.setattr(twisted.internet, "reactor", reactor)
    began = []
    monkeypatch.setattr(globalLogBeginner, "beginLoggingTo",
                        lambda observers, redirectStandardIO=True: began.append((observers, redirectStandardIO)))
    bound = []

    def reuseport_socket(interface, port, backlog):
        bound.append((interface, port, backlog))
        if isinstance(reactor.bind_error, OSError):
            raise reactor.bind_error
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    monkeypatch.setattr(workers, "reuseport_socket", reuseport_socket)
    monkeypatch.setattr(tap, "AsyncStore", SyncStore)
    previous = signal.getsignal(signal.SIGHUP)
    reactor.began, reactor.bound, reactor.bind_error = began, bound, None
    yield reactor
    signal.signal(signal.SIGHUP, previous)


def test_a_worker_serves_on_its_own_socket_and_says_so(worker_env, tmp_path, captured_log, capsys):
    """A worker binds its own socket, serves the whole bridge with its own spool, logs and tells the supervisor."""
    path = tmp_path / "bridge.toml"
    path.write_text(f'listen = "tcp:1"\n[recording]\nspool_path = "{tmp_path / "spool.jsonl"}"\n')
    read, write = os.pipe()
    os.set_blocking(read, False)   # nothing written is an error, not a wait
    try:
        workers.main(["--config", str(path), "--listen", "tcp:8080:interface=127.0.0.1:backlog=32",
                      "--index", "2", "--log-format", "json", "--ready-fd", str(write)])
        assert os.read(read, 100) == b"ready\n"
    finally:
        os.close(read)
    with pytest.raises(OSError):
        os.close(write)   # the worker closed its end
    reactor = worker_env
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    assert reactor.bound == [("127.0.0.1", 8080, 32)]
    [(fileno, family, site)] = reactor.adoptedPorts
    assert family == socket.AF_INET
    assert f"Worker 2 (pid {os.getpid()}) serving on tcp:8080:interface=127.0.0.1:backlog=32" in logged(captured_log)
    [(observers, redirect)] = reactor.began
    assert redirect is False and len(observers) == 1
    observers[0]({"log_format": "hello {who}", "who": "there", "log_time": 0, "log_level": None,
                  "log_namespace": "x"})
    assert json.loads(capsys.readouterr().out.strip().lstrip("\x1e"))["who"] == "there"
    # The whole bridge: its configuration (the worker's listen, its own spool) and a stop before shutdown.
    [(stop, args, kwargs)] = reactor.triggers["before"]["shutdown"]
    top = stop.__self__
    assert top.app.config.listen == "tcp:8080:interface=127.0.0.1:backlog=32"
    assert top.app.config.recording.spool_path == f"{tmp_path / 'spool.jsonl'}.2"
    assert top.running and top.app.store.started == 1
    assert site is top.app.site
    stop()
    assert not top.running


def test_a_worker_without_a_file_or_a_supervisor(worker_env, captured_log, capsys):
    """A worker runs the defaults without a file, and logs text by default."""
    workers.main(["--listen", "tcp:8081"])
    reactor = worker_env
    assert reactor.bound == [("0.0.0.0", 8081, workers.listen_backlog())]
    [(stop, _, _)] = reactor.triggers["before"]["shutdown"]
    assert stop.__self__.app.config.recording.spool_path == "bridgeproxy-spool.jsonl.0"
    assert f"Worker 0 (pid {os.getpid()}) serving on tcp:8081" in logged(captured_log)
    [(observers, _)] = reactor.began
    observers[0]({"log_format": "hello", "log_time": 0, "log_level": None, "log_namespace": "x"})
    assert capsys.readouterr().out.endswith("hello\n")   # text, not JSON


def test_a_worker_keeps_an_empty_spool_path(worker_env, tmp_path):
    """An empty spool path stays empty in a worker."""
    path = tmp_path / "bridge.toml"
    path.write_text('[recording]\nspool_path = ""\n')
    workers.main(["--config", str(path), "--listen", "tcp:8081", "--index", "1"])
    [(stop, _, _)] = worker_env.triggers["before"]["shutdown"]
    assert stop.__self__.app.config.recording.spool_path == ""


def test_a_supervisor_gone_is_not_an_error(worker_env, captured_log):
    """A worker whose supervisor pipe is gone still serves."""
    read, write = os.pipe()
    os.close(read)
    os.close(write)
    workers.main(["--listen", "tcp:8081", "--ready-fd", str(write)])
    assert f"Worker 0 (pid {os.getpid()}) serving on tcp:8081" in logged(captured_log)


def test_a_worker_that_cannot_start_says_why_in_one_line(worker_env, tmp_path):
    """A bad file, endpoint or port in use is one line naming the worker."""
    path = tmp_path / "bridge.toml"
    path.write_text("workers = 0\n")
    with pytest.raises(SystemExit) as caught:
        workers.main(["--config", str(path), "--listen", "tcp:8081", "--index", "3"])
    assert str(caught.value) == "bridgeproxy worker 3: workers must be greater than 0, got 0"
    with pytest.raises(SystemExit) as caught:
        workers.main(["--listen", "unix:/run/b.sock", "--index", "3"])
    assert str(caught.value) == ("bridgeproxy worker 3: workers need a 'tcp:PORT:interface=ADDR' listen endpoint, "
                                 "got 'unix:/run/b.sock'")
    worker_env.bind_error = OSError(errno.EADDRINUSE, "Address already in use")
    with pytest.raises(SystemExit) as caught:
        workers.main(["--listen", "tcp:8081", "--index", "3"])
    assert str(caught.value) == "bridgeproxy worker 3: cannot listen on tcp:8081: Address already in use"
    assert worker_env.adoptedPorts == []


def test_a_worker_needs_its_listen_endpoint(worker_env, capsys):
    """A worker without --listen, or with an unknown log format, is a usage error."""
    with pytest.raises(SystemExit) as caught:
        workers.main(["--index", "1"])
    assert caught.value.code == 2 and "--listen" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        workers.main(["--listen", "tcp:8081", "--log-format", "xml"])


def test_a_workers_log_lines_carry_its_index_as_a_number(worker_env, captured_log):
    """(In JSON logs, `index` is a number.)"""
    workers.main(["--listen", "tcp:8081", "--index", "4", "--log-format", "text"])
    [event] = [e for e in captured_log.events if e.get("log_format", "").startswith("Worker {index}")]
    assert event["index"] == 4 and event["pid"] == os.getpid() and event["listen"] == "tcp:8081"


def test_a_workers_usage(worker_env, capsys):
    """The worker's --help names it and its options."""
    with pytest.raises(SystemExit) as caught:
        workers.main(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: bridgeproxy-worker ")
    assert " descriptor to write 'ready' to once serving (the supervisor's pipe) " in " ".join(out.split()) + " "
    with pytest.raises(SystemExit):
        workers.main(["--index", "1"])
    assert capsys.readouterr().err.startswith("usage: bridgeproxy-worker ")
