"""
The `bridgeproxy` command as an operator meets it: one-line errors with the
documented exit statuses and no secret, `--config` on either side of the
command, `--version`, clean help, key expiry and states, and JSON output
with JSON types.  Most tests run L{cli.main} in-process; a few run the real
command in a subprocess from another directory to prove "no traceback" end
to end.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import bridgeproxy
from bridgeproxy import cli
from bridgeproxy.store import Database
from bridgeproxy.types import Interception, ToolCall
from tests.pg import drop_pg_schema, pg_schema

ROOT = Path(__file__).resolve().parent.parent
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
PASSWORD = "s3cret-Pa55"


# -- helpers ---------------------------------------------------------------------


def write_config(directory: Path, database: str, name: str = "bridge.toml") -> str:
    """A configuration file in C{directory} naming C{database}; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"database = {json.dumps(database)}\n"
                    f"[recording]\nspool_path = {json.dumps(str(directory / 'spool.jsonl'))}\n")
    return str(path)


def sqlite_config(tmp_path: Path) -> str:
    return write_config(tmp_path, f"sqlite:{tmp_path / 'bridge.db'}")


def run(argv: list[str]) -> tuple[int, str]:
    """C{cli.main(argv)}: (exit status, stdout)."""
    out = io.StringIO()
    return cli.main(argv, out), out.getvalue()


def usage_error(argv: list[str]) -> SystemExit:
    """C{cli.main(argv)} must end as a command-line error; the exception."""
    with pytest.raises(SystemExit) as caught:
        cli.main(argv, io.StringIO())
    return caught.value


def one_error_line(stderr: str) -> str:
    """C{stderr} must be exactly one line starting C{bridgeproxy: }; that line."""
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), stderr
    assert lines[0].startswith("bridgeproxy: "), stderr
    return lines[0]


def json_out(argv: list[str]) -> object:
    code, out = run(argv)
    assert code == 0
    return json.loads(out)


def create_key(config: str, *extra: str) -> str:
    """A new key's token, created through the command."""
    code, out = run(["keys", "create", "--config", config, *extra])
    assert code == 0
    return out.strip()


def subprocess_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The real command (this checkout's code) run from C{cwd}."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "bridgeproxy.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def all_command_paths() -> list[list[str]]:
    """Every command and subcommand of the parser, e.g. C{[], ["keys"], ["keys", "create"], ...}."""
    paths = []

    def walk(p: argparse.ArgumentParser, prefix: list[str]) -> None:
        paths.append(prefix)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, prefix + [name])
    walk(cli.parser(), [])
    return paths


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_config(request, tmp_path):
    """A configuration file on an empty SQLite file, or on a fresh schema of the test PostgreSQL server."""
    if request.param == "sqlite":
        yield sqlite_config(tmp_path)
        return
    url, schema = pg_schema()
    yield write_config(tmp_path, url)
    drop_pg_schema(schema)


def store_of(config: str) -> Database:
    from bridgeproxy.config import load
    return Database(load(config).database)


# -- errors: one line, documented status, no secret ----------------------------------


BAD_STORES = [
    pytest.param("sqlite:/nonexistent/dir/x.db", "sqlite:/nonexistent/dir/x.db", id="sqlite-missing-dir"),
    pytest.param(f"postgresql://u:{PASSWORD}@127.0.0.1:1/x", "postgresql://u:***@127.0.0.1:1/x",
                 id="postgresql-unreachable"),
    # libpq quotes the whole URL back in this message.
    pytest.param(f"postgresql://u:{PASSWORD}@[zz/x", "postgresql://u:***@[zz/x", id="postgresql-malformed"),
    pytest.param(f"postgresql://u:{PASSWORD}@x@127.0.0.1:1/x", "postgresql://u:***@127.0.0.1:1/x",
                 id="postgresql-at-in-password"),
    pytest.param(f"postgresql://u@127.0.0.1:1/x?password={PASSWORD}&sslmode=bogus",
                 "postgresql://u@127.0.0.1:1/x?password=***&sslmode=bogus", id="postgresql-password-parameter"),
]


@pytest.mark.parametrize("database, shown", BAD_STORES)
@pytest.mark.parametrize("command", [["keys", "list"], ["db", "migrate"], ["usage"]])
def test_bad_store_is_one_line_without_password(tmp_path, capsys, database, shown, command):
    """A store that cannot be opened is one `bridgeproxy: ` line naming it (password masked), exit status 1."""
    config = write_config(tmp_path, database)
    code, out = run([*command, "--config", config])
    assert code == 1 and out == ""
    line = one_error_line(capsys.readouterr().err)
    assert PASSWORD not in line
    assert f"store {shown}: " in line


def test_bad_store_from_a_real_process(tmp_path):
    """End to end: the installed-style command on an unreachable PostgreSQL prints one line, no traceback, exits 1."""
    config = write_config(tmp_path / "conf", f"postgresql://u:{PASSWORD}@127.0.0.1:1/x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess_cli(["--config", config, "keys", "list"], elsewhere)
    assert result.returncode == 1 and result.stdout == ""
    line = one_error_line(result.stderr)
    assert PASSWORD not in line and "postgresql://u:***@127.0.0.1:1/x" in line


def test_bad_arguments_from_a_real_process(tmp_path):
    """End to end: a wrong command line prints one line (no usage block, no traceback) and exits 2."""
    result = subprocess_cli(["keys", "create", "--username", "alice", "--expires-days", "0"], tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert "--expires-days" in one_error_line(result.stderr)
    assert list(tmp_path.iterdir()) == []  # refused before any store was opened


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
def test_reader_going_away_is_quiet(tmp_path, unbuffered):
    """`bridgeproxy keys list | head -0`: a reader that stops reading gets no traceback or "Exception ignored" noise."""
    config = sqlite_config(tmp_path)
    create_key(config, "--username", "alice")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = str(ROOT)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "bridgeproxy.cli", "keys", "list", "--config", config],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the child has even started writing
    stderr = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 1
    assert stderr == ""


BAD_CONFIGS = [
    pytest.param(None, "cannot read configuration", id="missing-file"),
    pytest.param(b"database = \n", "not valid TOML", id="invalid-toml"),
    pytest.param(b"database = 3\n", "database must be str", id="wrong-type"),
    pytest.param(b"[auth]\nallow_byok = 'yes'\n", "auth.allow_byok", id="wrong-type-in-table"),
    pytest.param(b"databse = 'sqlite:x.db'\n", "unknown key 'databse'", id="unknown-key"),
    pytest.param(b"\xff\xfe = 1\n", "not UTF-8", id="not-utf8"),
]


@pytest.mark.parametrize("content, expected", BAD_CONFIGS)
def test_bad_config_is_one_line(tmp_path, capsys, content, expected):
    """A configuration file that is missing, not TOML, or wrong is one `bridgeproxy: ` line naming the problem, exit status 1."""
    path = tmp_path / "bridge.toml"
    if content is not None:
        path.write_bytes(content)
    code, out = run(["keys", "list", "--config", str(path)])
    assert code == 1 and out == ""
    assert expected in one_error_line(capsys.readouterr().err)


BAD_ARGUMENTS = [
    pytest.param([], "COMMAND", id="no-command"),
    pytest.param(["frob"], "invalid choice", id="unknown-command"),
    pytest.param(["keys"], "ACTION", id="no-action"),
    pytest.param(["keys", "list", "--frob"], "--frob", id="unknown-option"),
    pytest.param(["keys", "create"], "--username", id="missing-username"),
    pytest.param(["keys", "create", "--username", ""], "--username", id="empty-username"),
    pytest.param(["keys", "create", "--username", "  \t "], "--username", id="blank-username"),
    pytest.param(["keys", "create", "--username", "a\nb"], "control characters", id="control-in-username"),
    pytest.param(["keys", "create", "--username", "a", "--user-id", "nope"], "UUIDv4", id="bad-user-id"),
    pytest.param(["keys", "create", "--username", "a", "--expires-days", "0"], "--expires-days", id="days-0"),
    pytest.param(["keys", "create", "--username", "a", "--expires-days", "-3"], "--expires-days", id="days-negative"),
    pytest.param(["keys", "create", "--username", "a", "--expires-days", "1.5"], "--expires-days", id="days-fraction"),
    pytest.param(["keys", "create", "--username", "a", "--expires-days", "ten"], "--expires-days", id="days-word"),
    pytest.param(["keys", "create", "--username", "a", "--expires-days", ""], "--expires-days", id="days-empty"),
    pytest.param(["keys", "create", "--username", "a", "--expires-days", "99999999999"], "--expires-days",
                 id="days-beyond-calendar"),
    pytest.param(["keys", "create", "--username", "a", "--expires-days", "3", "--no-expiry"], "not allowed with",
                 id="days-and-no-expiry"),
    pytest.param(["users", "disable", " "], "user", id="blank-user"),
    pytest.param(["interceptions", "list", "--since", "yesterday"], "--since", id="bad-since"),
    pytest.param(["interceptions", "list", "--limit", "0"], "--limit", id="limit-0"),
    pytest.param(["usage", "--by", "colour"], "--by", id="bad-group"),
]


@pytest.mark.parametrize("argv, expected", BAD_ARGUMENTS)
def test_bad_arguments_are_one_line_status_2(tmp_path, capsys, argv, expected):
    """A wrong command line is refused before anything is done: one `bridgeproxy: ` line naming the problem, exit status 2."""
    config = sqlite_config(tmp_path)
    argv = argv + ["--config", config] if len(argv) >= 2 else argv
    caught = usage_error(argv)
    assert caught.code == 2
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert expected in line and "[-h]" not in line  # no usage block
    assert captured.out == ""
    assert not (tmp_path / "bridge.db").exists()


def test_unknown_key_and_user_are_one_line_status_1(tmp_path, capsys):
    """Revoking an unknown key or disabling an unknown user fails with one `bridgeproxy: ` line, exit status 1."""
    config = sqlite_config(tmp_path)
    assert run(["keys", "revoke", "--config", config, "nosuchkey"]) == (1, "")
    assert "no active key nosuchkey" in one_error_line(capsys.readouterr().err)
    assert run(["users", "disable", "--config", config, "nobody"]) == (1, "")
    assert "no user nobody" in one_error_line(capsys.readouterr().err)


def test_store_refusal_is_one_line_status_1(tmp_path, capsys):
    """A user id already taken by another user is refused by the store: one line, exit status 1."""
    config = sqlite_config(tmp_path)
    user_id = str(uuid.uuid4())
    create_key(config, "--username", "alice", "--user-id", user_id)
    capsys.readouterr()
    assert run(["keys", "create", "--config", config, "--username", "bob", "--user-id", user_id]) == (1, "")
    assert "already belongs to another user" in one_error_line(capsys.readouterr().err)


def test_unexpected_failure_is_one_line_without_password(tmp_path, capsys, monkeypatch):
    """Even an unforeseen error is one `bridgeproxy: ` line, status 1, with the store's password scrubbed."""
    url = f"postgresql://u:{PASSWORD}@db.example/x"

    class Broken:
        def __init__(self, url):
            # Not the whole URL: only scrubbing the password itself hides it.
            raise RuntimeError(f"cannot log in as {url.split('@')[0]}\nsecond line")

    monkeypatch.setattr(cli, "Database", Broken)
    config = write_config(tmp_path, url)
    assert run(["keys", "list", "--config", config]) == (1, "")
    line = one_error_line(capsys.readouterr().err)
    assert PASSWORD not in line and "RuntimeError" in line and "second line" in line


# -- --config, --version, help ----------------------------------------------------------


def test_config_before_or_after_the_command(tmp_path):
    """`--config` (or `-c`) is accepted before the command as well as after it, naming the same store."""
    config = sqlite_config(tmp_path)
    token = create_key(config, "--username", "alice")
    before = json_out(["--config", config, "keys", "list", "--json"])
    short = json_out(["-c", config, "keys", "list", "--json"])
    after = json_out(["keys", "list", "--json", "--config", config])
    assert before == short == after
    assert [k["username"] for k in before] == ["alice"]
    assert token not in json.dumps(before)
    other = sqlite_config(tmp_path / "other")
    assert json_out(["--config", config, "keys", "list", "--json", "--config", other]) == []


def test_relative_sqlite_path_is_beside_the_config_file(tmp_path, monkeypatch):
    """`sqlite:keys.db` in a config file means a file beside it, whichever directory the command runs from."""
    config = write_config(tmp_path / "conf", "sqlite:keys.db")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    monkeypatch.chdir(tmp_path / "one")
    create_key(config, "--username", "alice")
    monkeypatch.chdir(tmp_path / "two")
    assert [k["username"] for k in json_out(["keys", "list", "--config", config, "--json"])] == ["alice"]
    assert (tmp_path / "conf" / "keys.db").exists()
    assert not (tmp_path / "one" / "keys.db").exists() and not (tmp_path / "two" / "keys.db").exists()
    # A relative path to the config file itself works the same way.
    monkeypatch.chdir(tmp_path)
    assert [k["username"] for k in json_out(["-c", "conf/bridge.toml", "keys", "list", "--json"])] == ["alice"]


def test_version(capsys):
    """`bridgeproxy --version` prints `bridgeproxy <version>` and exits 0."""
    with pytest.raises(SystemExit) as caught:
        cli.main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"bridgeproxy {bridgeproxy.__version__}\n"
    assert bridgeproxy.__version__ == "0.1.0"


@pytest.mark.parametrize("path", all_command_paths(), ids=lambda p: " ".join(p) or "bridgeproxy")
def test_help_is_plain_text(capsys, path):
    """Every command's `--help` exits 0 and is plain text: no epytext markup such as C{...}."""
    with pytest.raises(SystemExit) as caught:
        cli.main(path + ["--help"])
    assert caught.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: " + " ".join(["bridgeproxy", *path]))
    assert not re.search(r"[CLIBU]\{", text), text


def test_help_covers_every_command():
    """The help walk above really reaches each documented command."""
    assert {" ".join(p) for p in all_command_paths()} >= {
        "keys create", "keys list", "keys revoke", "users disable", "users enable",
        "db migrate", "interceptions list", "usage"}


# -- keys: expiry, states, names ---------------------------------------------------------


def test_expiry_is_whole_days_or_none(tmp_path):
    """No expiry by default and with --no-expiry; --expires-days N sets expires_at N days after creation."""
    config = sqlite_config(tmp_path)
    create_key(config, "--username", "default")
    create_key(config, "--username", "never", "--no-expiry")
    create_key(config, "--username", "week", "--expires-days", "7")
    keys = {k["username"]: k for k in json_out(["keys", "list", "--config", config, "--json"])}
    assert keys["default"]["expires_at"] is None and keys["never"]["expires_at"] is None
    week = keys["week"]
    assert ISO_UTC.match(week["expires_at"]) and ISO_UTC.match(week["created_at"])
    created = _parse_iso(week["created_at"])
    assert abs(_parse_iso(week["expires_at"]) - created - 7 * 86400) <= 1
    assert {k["state"] for k in keys.values()} == {"active"}


def _parse_iso(value: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_key_states_and_precedence(tmp_path, capsys):
    """Keys list as active, expired, revoked or disabled user; revoked beats expired, expired beats a disabled user."""
    config = sqlite_config(tmp_path)
    for name in ("fresh", "old", "gone", "gone-and-old", "off", "off-and-old"):
        create_key(config, "--username", name, "--expires-days", "1")
    db = store_of(config)
    keys = {k["username"]: k["key_id"] for k in db.list_keys()}
    past = time.time() - 60
    for name in ("old", "gone-and-old", "off-and-old"):
        db.execute("UPDATE api_keys SET expires_at = ? WHERE id = ?", (past, keys[name]))
    for name in ("gone", "gone-and-old"):
        assert run(["keys", "revoke", "--config", config, keys[name]])[0] == 0
    for name in ("off", "off-and-old"):
        assert run(["users", "disable", "--config", config, name])[0] == 0
    states = {k["username"]: k["state"] for k in json_out(["keys", "list", "--config", config, "--json"])}
    assert states == {"fresh": "active", "old": "expired", "gone": "revoked", "gone-and-old": "revoked",
                      "off": "disabled user", "off-and-old": "expired"}
    code, table = run(["keys", "list", "--config", config])
    assert code == 0
    rows = {line.split()[1]: line for line in table.splitlines()[1:]}
    assert "  expired  " in rows["old"] and "  disabled user  " in rows["off"]


def test_username_is_trimmed(tmp_path):
    """Surrounding whitespace in --username is dropped, so ` alice ` and `alice` are the same user."""
    config = sqlite_config(tmp_path)
    create_key(config, "--username", " alice ")
    create_key(config, "--username", "alice")
    keys = json_out(["keys", "list", "--config", config, "--json"])
    assert [k["username"] for k in keys] == ["alice", "alice"]
    assert keys[0]["user_id"] == keys[1]["user_id"]


# -- JSON output uses JSON types ---------------------------------------------------------


def test_keys_list_json_types(store_config):
    """`keys list --json`: booleans for admin and user_disabled, null for absent times, ISO 8601 UTC for times."""
    token = create_key(store_config, "--username", "root", "--admin")
    create_key(store_config, "--username", "bob", "--expires-days", "30")
    keys = {k["username"]: k for k in json_out(["keys", "list", "--config", store_config, "--json"])}
    assert run(["keys", "revoke", "--config", store_config, keys["bob"]["key_id"]])[0] == 0
    assert run(["users", "disable", "--config", store_config, "bob"])[0] == 0
    keys = {k["username"]: k for k in json_out(["keys", "list", "--config", store_config, "--json"])}
    root, bob = keys["root"], keys["bob"]
    assert root["admin"] is True and bob["admin"] is False
    assert root["user_disabled"] is False and bob["user_disabled"] is True
    assert root["expires_at"] is None and root["revoked_at"] is None
    for value in (root["created_at"], bob["created_at"], bob["expires_at"], bob["revoked_at"]):
        assert ISO_UTC.match(value), value
    assert root["state"] == "active" and bob["state"] == "revoked"
    assert set(root) == {"key_id", "username", "user_id", "hint", "state", "admin", "user_disabled",
                         "created_at", "expires_at", "revoked_at"}
    assert token not in json.dumps(keys) and root["hint"] != token


def recorded(i: int, **kw) -> Interception:
    base = dict(
        id=f"id-{i}", started_at=1_780_000_000.25 + i, ended_at=1_780_000_001.5 + i, provider="anthropic",
        route="messages", intercepted=True, method="POST", model="claude", streamed=True, client="Claude Code",
        client_session_id="s", user_agent="claude-cli/2", initiator_id="u1", initiator_username="alice",
        credential_user_id="u1", credential_kind="centralized", credential_hint="sk-a...z",
        upstream_status=200, input_tokens=10, output_tokens=5, cache_read_tokens=2,
        tool_calls=(ToolCall("bash", '{"c":1}', "t1"),),
    )
    base.update(kw)
    return Interception(**base)


def test_interceptions_and_usage_json_types(store_config):
    """`interceptions list --json` and `usage --json`: ISO 8601 UTC times, booleans, numbers, null, a tool-call list."""
    assert run(["db", "migrate", "--config", store_config])[0] == 0
    db = store_of(store_config)
    db.insert_interceptions([
        recorded(0),
        recorded(1, intercepted=False, streamed=False, route="/v1/models", model=None, upstream_status=None,
                 tool_calls=(), status="upstream_broken"),
    ])
    rows = {r["id"]: r for r in json_out(["interceptions", "list", "--config", store_config, "--json"])}
    first, second = rows["id-0"], rows["id-1"]
    assert first["started_at"] == "2026-05-28T20:26:40Z" and first["ended_at"] == "2026-05-28T20:26:41Z"
    assert first["intercepted"] is True and first["streamed"] is True
    assert second["intercepted"] is False and second["streamed"] is False
    for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                 "duration_ms", "upstream_status"):
        assert type(first[name]) is int, name
    assert (first["input_tokens"], first["cache_write_tokens"], first["duration_ms"]) == (10, 0, 1250)
    assert second["upstream_status"] is None and second["model"] is None
    assert first["tool_calls"] == [{"name": "bash", "arguments": '{"c":1}', "id": "t1"}]
    assert second["tool_calls"] == []

    totals = json_out(["usage", "--config", store_config, "--by", "model", "--json"])
    by_model = {t["model"]: t for t in totals}
    assert by_model["claude"] == {"model": "claude", "requests": 1, "input_tokens": 10, "output_tokens": 5,
                                  "cache_read_tokens": 2, "cache_write_tokens": 0, "cost_micros": 0,
                                  "unpriced_requests": 1}
    assert by_model[None]["requests"] == 1
    for total in totals:
        assert all(type(v) is int for k, v in total.items() if k != "model")

    since = json_out(["interceptions", "list", "--config", store_config, "--json",
                      "--since", "2026-05-28T20:26:41", "--limit", "5"])
    assert [r["id"] for r in since] == ["id-1"]


# -- the README and docs/cli.md ----------------------------------------------------------


def readme_commands() -> list[str]:
    """The shell commands in the README's `sh` code blocks."""
    text = (ROOT / "README.md").read_text()
    return [line for block in re.findall(r"```sh\n(.*?)```", text, re.S) for line in block.splitlines() if line]


def test_readme_run_command_leaves_no_pidfile():
    """The README's install-and-run command passes twistd `--pidfile=` (no twistd.pid left in the checkout), and .gitignore lists twistd.pid."""
    import shlex
    runs = [c for c in readme_commands() if "twistd" in c]
    assert len(runs) == 1
    words = shlex.split(runs[0].split("&&")[-1])
    assert words[0].endswith("/twistd")
    assert "--pidfile=" in words[:words.index("bridgeproxy")]
    assert "bash scripts/test" in readme_commands()
    assert "twistd.pid" in (ROOT / ".gitignore").read_text().splitlines()


def test_readme_stays_inside_the_repository():
    """Every file the README names exists in this repository; nothing points outside it (no ../)."""
    text = (ROOT / "README.md").read_text()
    assert "../" not in text
    named = set(re.findall(r"`((?:docs|examples|scripts|benchmarks)/[\w./-]+)", text))
    assert "docs/cli.md" in named
    for path in named - {"examples/bridgeproxy.db"}:  # that one is the store the run creates
        assert (ROOT / path).exists(), path


def test_cli_doc_covers_every_command():
    """docs/cli.md documents every command and action, and every option of each."""
    text = (ROOT / "docs" / "cli.md").read_text()
    parsers = {}

    def walk(p: argparse.ArgumentParser, prefix: list[str]) -> None:
        parsers[" ".join(prefix)] = p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, prefix + [name])
    walk(cli.parser(), [])
    for path, p in parsers.items():
        if path:
            assert f"`{path}" in text, path
        for action in p._actions:
            for option in action.option_strings:
                assert f"`{option}" in text, (path, option)
