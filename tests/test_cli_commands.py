"""
The bridgeproxy command (L{bridgeproxy.cli}) run in-process through
C{cli.main(argv, out)} on a SQLite file in a temporary directory: what
each command prints, its exit status, and its one-line errors.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sqlite3
from datetime import datetime, timezone

import pytest

from bridgeproxy import cli
from bridgeproxy.store import Database, passwords
from bridgeproxy.types import Interception, ToolCall

ALICE_ID = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "bridge.toml"
    path.write_text(f'database = "sqlite:{tmp_path / "bridge.db"}"\n')
    return str(path)


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return cli.main(list(argv), out), out.getvalue()


def store(config: str) -> Database:
    from bridgeproxy.config import load
    db = Database(load(config).database)
    db.migrate()
    return db


def rec(n: int, **kw) -> Interception:
    fields = dict(id=f"id-{n}", started_at=1780000000.0 + n, ended_at=1780000001.5 + n, provider="anthropic",
                  route="messages", intercepted=True, method="POST", model="claude", streamed=True,
                  client="Claude Code", client_session_id=None, user_agent="ua", initiator_id="u1",
                  initiator_username="alice", credential_user_id="u1", credential_kind="centralized",
                  credential_hint="bp_...x", upstream_status=200, input_tokens=10, output_tokens=5,
                  tool_calls=(ToolCall("bash", "{}", "t1"),))
    fields.update(kw)
    return Interception(**fields)


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- keys ------------------------------------------------------------------------------------------


def test_keys_create_prints_the_key_alone(config, capsys):
    """`keys create` prints the key alone on stdout and says on stderr which key id it created for whom."""
    code, out = run("keys", "create", "--config", config, "--username", "alice", "--user-id", ALICE_ID, "--admin")
    assert code == 0
    token = out.strip()
    assert out == token + "\n" and token.startswith("bp_")
    identity = store(config).identify(token)
    assert (identity.user_id, identity.username, identity.admin) == (ALICE_ID, "alice", True)
    err = capsys.readouterr().err
    assert err == f"created key {identity.key_id} for alice; the key is shown once:\n"


def test_keys_create_expiry(config):
    """--expires-days N makes the key expire N days from now; without it the key never expires."""
    import time
    before = time.time()
    run("keys", "create", "--config", config, "--username", "a", "--expires-days", "2")
    run("keys", "create", "--config", config, "--username", "b")
    rows = {r["username"]: r for r in store(config).list_keys()}
    assert before + 2 * 86400 <= rows["a"]["expires_at"] <= time.time() + 2 * 86400
    assert rows["b"]["expires_at"] is None


def test_keys_list_table(config):
    """`keys list` is an aligned table with a header; absent times are '-', admin is yes/no, hints only."""
    _, token = store(config).create_key("alice", ALICE_ID, admin=True, expires_at=1780000000.0)
    store(config).create_key("bob")
    code, out = run("keys", "list", "--config", config)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["key_id", "username", "user_id", "hint", "state", "admin", "created_at",
                                "expires_at"]
    alice, bob = lines[1].split(), lines[2].split()
    assert alice[1:3] == ["alice", ALICE_ID] and alice[4:6] == ["expired", "yes"]
    assert alice[7] == when(1780000000.0)
    assert bob[1] == "bob" and bob[4:6] == ["active", "no"] and bob[7] == "-"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", alice[6])
    assert token not in out
    assert all(line == line.rstrip() for line in lines)
    # columns line up: every value starts where its header does
    start = lines[0].index("username")
    assert lines[1][start:start + 5] == "alice" and lines[2][start:start + 3] == "bob"
    start = lines[0].index("state")
    assert lines[1][start:].startswith("expired") and lines[2][start:].startswith("active")


def test_keys_list_empty(config):
    """With no keys, `keys list` prints its header only, and `--json` an empty array."""
    assert run("keys", "list", "--config", config) == (
        0, "key_id  username  user_id  hint  state  admin  created_at  expires_at\n")
    assert run("keys", "list", "--config", config, "--json") == (0, "[]\n")


def test_keys_list_json(config):
    """`keys list --json` is an indented array with the key's state and ISO times."""
    key_id, _ = store(config).create_key("alice", ALICE_ID, expires_at=4102444800.0)
    code, out = run("keys", "list", "--config", config, "--json")
    assert code == 0 and out.endswith("]\n") and '\n  {\n    "key_id"' in out
    (row,) = json.loads(out)
    assert row["key_id"] == key_id and row["state"] == "active"
    assert row["expires_at"] == "2100-01-01T00:00:00Z" and row["revoked_at"] is None
    assert (row["admin"], row["user_disabled"]) == (False, False)


def test_key_state_boundaries():
    """A key is expired from its expiry time on; revoked beats expired, which beats a disabled user."""
    row = {"revoked_at": None, "expires_at": 100.0, "user_disabled": 0}
    assert cli.key_state(row, 99.9) == "active"
    assert cli.key_state(row, 100.0) == "expired"
    assert cli.key_state({**row, "user_disabled": 1}, 50.0) == "disabled user"
    assert cli.key_state({**row, "user_disabled": 1}, 100.0) == "expired"
    assert cli.key_state({**row, "revoked_at": 1.0}, 100.0) == "revoked"
    assert cli.key_state({**row, "expires_at": None}, 1e12) == "active"


def test_keys_revoke(config, capsys):
    """`keys revoke` says what it revoked; a key that is not active is one error line, status 1."""
    key_id, token = store(config).create_key("alice")
    assert run("keys", "revoke", "--config", config, key_id) == (0, f"revoked {key_id}\n")
    assert store(config).identify(token) is None
    assert run("keys", "revoke", "--config", config, key_id) == (1, "")
    assert capsys.readouterr().err == f"bridgeproxy: no active key {key_id}\n"


# -- users and the schema ---------------------------------------------------------------------------


def test_users_disable_and_enable(config, capsys):
    """`users disable|enable` say what they did, by name or id; an unknown user is one error line, status 1."""
    _, token = store(config).create_key("alice", ALICE_ID)
    assert run("users", "disable", "--config", config, "alice") == (0, "disabled alice\n")
    assert store(config).identify(token).disabled is True
    assert run("users", "enable", "--config", config, ALICE_ID) == (0, f"enabled {ALICE_ID}\n")
    assert store(config).identify(token).disabled is False
    assert run("users", "enable", "--config", config, "nobody") == (1, "")
    assert capsys.readouterr().err == "bridgeproxy: no user nobody\n"


def test_db_migrate(config):
    """`db migrate` says the schema version and which migrations it applied, if any."""
    from bridgeproxy.store.schema import LATEST
    applied = list(range(1, LATEST + 1))
    assert run("db", "migrate", "--config", config) == (0, f"schema at version {LATEST} (applied {applied})\n")
    assert run("db", "migrate", "--config", config) == (0, f"schema at version {LATEST}\n")


def test_default_store_is_in_the_current_directory(tmp_path, monkeypatch):
    """Without --config the store is bridgeproxy.db in the current directory."""
    monkeypatch.chdir(tmp_path)
    assert run("db", "migrate")[0] == 0
    assert (tmp_path / "bridgeproxy.db").exists()


# -- interceptions and usage ------------------------------------------------------------------------


def test_interceptions_list_table(config):
    """`interceptions list` is a table, newest first: start time, initiator (name, else id), tokens in/out."""
    store(config).insert_interceptions([rec(1), rec(2, initiator_username=None, initiator_id="u-2",
                                                    upstream_status=None, model=None)])
    code, out = run("interceptions", "list", "--config", config)
    assert code == 0
    header, newest, older = out.splitlines()
    assert header.split() == ["started", "id", "initiator", "client", "provider", "route", "model",
                              "upstream_status", "tokens", "duration_ms", "status"]
    assert newest.split()[:3] == [when(1780000002.0), "id-2", "u-2"]
    assert older.split() == [when(1780000001.0), "id-1", "alice", "Claude", "Code", "anthropic", "messages",
                             "claude", "200", "10/5", "1500", "ok"]
    assert newest.split()[-5:] == ["-", "-", "10/5", "1500", "ok"]


def test_interceptions_list_filters_and_limit(config):
    """--initiator, --client, --since and --limit narrow the list."""
    store(config).insert_interceptions([rec(1), rec(2, client="Codex"), rec(3, initiator_id="u9",
                                                                            initiator_username="zed")])

    def ids(*extra):
        code, out = run("interceptions", "list", "--config", config, "--json", *extra)
        assert code == 0
        return [r["id"] for r in json.loads(out)]
    assert ids() == ["id-3", "id-2", "id-1"]
    assert ids("--initiator", "zed") == ["id-3"]
    assert ids("--client", "Codex") == ["id-2"]
    assert ids("--since", when(1780000002.0)) == ["id-3", "id-2"]
    assert ids("--since", "2026-05-28T20:26:42+00:00") == ["id-3", "id-2"]
    assert ids("--limit", "1") == ["id-3"]
    assert ids("--limit", " 2 ") == ["id-3", "id-2"]


def test_interceptions_list_shows_the_newest_hundred_by_default(config):
    """Without --limit, `interceptions list` shows the newest 100."""
    store(config).insert_interceptions([rec(n) for n in range(101)])
    code, out = run("interceptions", "list", "--config", config, "--json")
    rows = json.loads(out)
    assert len(rows) == 100 and rows[0]["id"] == "id-100" and rows[-1]["id"] == "id-1"


def test_interceptions_list_json(config):
    """`interceptions list --json` gives ISO times, booleans and integers."""
    store(config).insert_interceptions([rec(1, streamed=False, upstream_status=None)])
    code, out = run("interceptions", "list", "--config", config, "--json")
    (row,) = json.loads(out)
    assert (row["started_at"], row["ended_at"]) == (when(1780000001.0), when(1780000002.5))
    assert (row["intercepted"], row["streamed"], row["upstream_status"], row["duration_ms"]) == (
        True, False, None, 1500)
    assert row["tool_calls"] == [{"name": "bash", "arguments": "{}", "id": "t1"}]


def test_usage_table_and_grouping(config):
    """`usage` totals by initiator by default, or by client or model, as a table or JSON."""
    store(config).insert_interceptions([rec(1), rec(2), rec(3, client="Codex", model="gpt", initiator_id="u2",
                                                            initiator_username=None, input_tokens=1)])
    code, out = run("usage", "--config", config)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["initiator", "requests", "input_tokens", "output_tokens",
                                              "cache_read_tokens", "cache_write_tokens", "cost",
                                              "unpriced_requests"]
    assert lines[1].split() == ["alice", "2", "20", "10", "0", "0", "0.000000", "2"]
    assert lines[2].split() == ["u2", "1", "1", "5", "0", "0", "0.000000", "1"]
    code, out = run("usage", "--config", config, "--by", "model", "--json")
    assert json.loads(out) == [
        {"model": "claude", "requests": 2, "input_tokens": 20, "output_tokens": 10, "cache_read_tokens": 0,
         "cache_write_tokens": 0, "cost_micros": 0, "unpriced_requests": 2},
        {"model": "gpt", "requests": 1, "input_tokens": 1, "output_tokens": 5, "cache_read_tokens": 0,
         "cache_write_tokens": 0, "cost_micros": 0, "unpriced_requests": 1}]
    code, out = run("usage", "--config", config, "--by", "client", "--since", when(1780000003.0))
    assert out.splitlines()[0].split()[0] == "client" and out.splitlines()[1].split()[:2] == ["Codex", "1"]


# -- argument checking ------------------------------------------------------------------------------


@pytest.mark.parametrize("value, days", [("1", 1), (" 7 ", 7), ("36500", 36500)])
def test_expires_days_accepted(value, days):
    """Whole days from 1 to 36500 (about 100 years) are accepted."""
    assert cli._expires_days(value) == days


@pytest.mark.parametrize("value", ["0", "36501", "-1", "1.5", "", "x"])
def test_expires_days_refused(value):
    """Anything else is refused with the allowed range and the value."""
    with pytest.raises(Exception) as caught:
        cli._expires_days(value)
    assert str(caught.value) == f"must be a whole number of days from 1 to 36500, got {value!r}"


def test_other_argument_types():
    """Usernames are trimmed and printable; user refs not blank; ids canonical UUIDv4; limits 1 or more."""
    assert cli._username("  alice ") == "alice"
    for bad, message in [("  ", "must not be empty or only whitespace"),
                         ("a\tb", "must not contain control characters, got 'a\\tb'")]:
        with pytest.raises(argparse.ArgumentTypeError) as caught:
            cli._username(bad)
        assert str(caught.value) == message
    assert cli._user_ref(" x ") == " x "
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        cli._user_ref(" \t")
    assert str(caught.value) == "must not be empty or only whitespace"
    assert cli._user_id(ALICE_ID) == ALICE_ID
    with pytest.raises(Exception, match="must be a canonical UUIDv4 \\(lower-case, hyphenated\\), got 'X'"):
        cli._user_id("X")
    assert cli._positive_int("1") == 1 and cli._positive_int(" 12 ") == 12
    for bad in ("0", "-2", "x", ""):
        with pytest.raises(Exception, match=f"must be a whole number of 1 or more, got {bad!r}"):
            cli._positive_int(bad)
    assert cli._since("2026-05-28") == datetime(2026, 5, 28, tzinfo=timezone.utc).timestamp()
    with pytest.raises(Exception, match="not an ISO 8601 date or time: 'soon'"):
        cli._since("soon")


def test_command_line_errors_name_the_command(capsys):
    """A wrong command line is one line naming the subcommand and pointing at its help; status 2."""
    with pytest.raises(cli.CommandLineError) as caught:
        cli.main(["keys", "create", "--username", "a", "--expires-days", "0"], io.StringIO())
    line = capsys.readouterr().err
    assert line == str(caught.value) + "\n"
    assert line.startswith("bridgeproxy: keys create: argument --expires-days: must be a whole number of days")
    assert line.endswith("(see 'bridgeproxy keys create --help')\n")
    assert caught.value.code == 2
    with pytest.raises(cli.CommandLineError) as caught:
        cli.main([], io.StringIO())
    assert str(caught.value).startswith("bridgeproxy: the following arguments are required: COMMAND")
    assert str(caught.value).endswith("(see 'bridgeproxy --help')")


# -- failures: one line, no password ---------------------------------------------------------------------


def test_safe_url_masks_passwords():
    """Passwords in the user part or a password= parameter are shown as ***; nothing else changes."""
    assert cli.safe_url("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert cli.safe_url("postgresql://u@h/db?sslmode=require&Password=pw&x=1") == \
        "postgresql://u@h/db?sslmode=require&Password=***&x=1"
    assert cli.safe_url("postgresql://h/db?password=pw") == "postgresql://h/db?password=***"
    assert cli.safe_url("sqlite:/var/lib/bridge.db") == "sqlite:/var/lib/bridge.db"
    assert cli.safe_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert cli.safe_url("PostgreSQL://u:pw@h/db") == "PostgreSQL://u:***@h/db"


def test_passwords_in_every_form():
    """Every password of a URL is found, raw and decoded, longest first (for scrubbing); other parameters are not."""
    assert passwords("postgresql://u:p%40ss@h/db?password=two&PASSWORD=&sslmode=require") == [
        "p%40ss", "p@ss", "two"]
    assert passwords("postgresql://h/db?pass%77ord=hidden&user=u") == ["hidden"]
    assert passwords("PostgreSQL://u:pw@h/db") == ["pw"]


def test_passwords_of_a_url_python_cannot_split():
    """A URL that does not even parse still has its password parameters found (a bad host is a common typo)."""
    assert passwords("postgresql://u@[zz/x?pass%77ord=p?w") == ["p?w"]
    assert passwords("postgresql://u@h/db") == []
    assert passwords("postgresql://u:@h/db") == []


def test_scrub_removes_the_url_and_its_passwords():
    """An error message is put on one line, with the store URL masked and its passwords removed."""
    url = "postgresql://u:hunter2@h/db"
    message = f"cannot connect to {url}:\n  password hunter2 rejected"
    assert cli._scrub(message, url) == "cannot connect to postgresql://u:***@h/db: password *** rejected"
    assert cli._scrub("a\n b", None) == "a b"


def test_store_errors_are_one_line_naming_the_store(tmp_path, capsys):
    """A store that fails is `bridgeproxy: store <url>: <error>` on one line, status 1."""
    path = tmp_path / "bridge.toml"
    path.write_text(f'database = "sqlite:{tmp_path / "missing" / "x.db"}"\n')
    assert run("keys", "list", "--config", str(path)) == (1, "")
    err = capsys.readouterr().err
    assert err.startswith(f"bridgeproxy: store sqlite:{tmp_path / 'missing' / 'x.db'}: ")
    assert err.count("\n") == 1


def test_store_error_without_text_is_named_by_type(config, capsys, monkeypatch):
    """A store error without a message is named by its type."""
    def broken(args, out):
        args.database_url = "sqlite:x.db"
        raise sqlite3.OperationalError()
    monkeypatch.setattr(cli, "keys_list", broken)
    assert run("keys", "list", "--config", config) == (1, "")
    assert capsys.readouterr().err == "bridgeproxy: store sqlite:x.db: OperationalError\n"


def test_store_error_before_the_store_is_known(config, capsys, monkeypatch):
    """A store error before any store was named shows '?' for it."""
    def broken(args, out):
        raise sqlite3.OperationalError("locked")
    monkeypatch.setattr(cli, "keys_list", broken)
    assert run("keys", "list", "--config", config) == (1, "")
    assert capsys.readouterr().err == "bridgeproxy: store ?: locked\n"


def test_configuration_and_store_refusals_are_scrubbed(tmp_path, capsys, monkeypatch):
    """A store refusal quoting the URL shows it masked."""
    url = "postgresql://u:hunter2@db.example/x"
    path = tmp_path / "bridge.toml"
    path.write_text(f'database = "{url}"\n')

    class Refusing:
        def __init__(self, url):
            from bridgeproxy.store import StoreError
            raise StoreError(f"refused by {url}")
    monkeypatch.setattr(cli, "Database", Refusing)
    assert run("keys", "list", "--config", str(path)) == (1, "")
    assert capsys.readouterr().err == "bridgeproxy: refused by postgresql://u:***@db.example/x\n"


def test_not_utf8_configuration(tmp_path, capsys):
    """A configuration file that is not UTF-8 is one error line naming it."""
    path = tmp_path / "bridge.toml"
    path.write_bytes(b"database = '\xff'\n")
    assert run("keys", "list", "--config", str(path)) == (1, "")
    err = capsys.readouterr().err
    assert err.startswith("bridgeproxy: ") and err.endswith(": not UTF-8 text\n") and str(path) in err


def test_interrupt_is_status_130(config, capsys, monkeypatch):
    """Ctrl-C is a short line and status 130, no traceback."""
    def interrupted(args, out):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "keys_list", interrupted)
    assert run("keys", "list", "--config", config) == (130, "")
    assert capsys.readouterr().err == "bridgeproxy: interrupted\n"


def test_reader_going_away_is_status_1_and_quiet(config, capsys, monkeypatch):
    """A closed pipe on the given output stops the command quietly with status 1."""
    def broken_pipe(args, out):
        raise BrokenPipeError
    monkeypatch.setattr(cli, "keys_list", broken_pipe)
    assert run("keys", "list", "--config", config) == (1, "")
    assert capsys.readouterr().err == ""


def test_unexpected_errors_are_one_line_with_their_type(config, capsys, monkeypatch):
    """Any other error is `bridgeproxy: unexpected <Type>: <message>` on one line, status 1."""
    def boom(args, out):
        raise ValueError("bad\nthing")
    monkeypatch.setattr(cli, "keys_list", boom)
    assert run("keys", "list", "--config", config) == (1, "")
    assert capsys.readouterr().err == "bridgeproxy: unexpected ValueError: bad thing\n"


def test_output_goes_to_stdout_by_default(config, capsys):
    """Without an output stream the command writes to stdout."""
    assert cli.main(["db", "migrate", "--config", config]) == 0
    assert capsys.readouterr().out.startswith("schema at version")


# -- help ---------------------------------------------------------------------------------------------

CONFIG_HELP = ("--config FILE, -c FILE configuration file (default: the embedded defaults, whose store is bridgeproxy.db in the current directory); accepted before or after the command")

#: What each command's --help says, whitespace collapsed (the wrapping depends on the terminal): the
#: command's reference for its users.  A change here is a change of the interface: update docs/cli.md.
HELP = {
    '': (
        "usage: bridgeproxy [-h] [--version] [--config FILE] COMMAND ... Manage bridgeproxy's bridge "
        "keys, users, budgets and store, read back what it recorded, and make the AI proxy's CA. Exit "
        'status: 0 done, 1 failed (configuration, store, no such key or user), 2 bad command line. '
        'positional arguments: COMMAND keys bridge keys users users db the store interceptions recorded '
        "interceptions usage token totals and cost budgets what users may spend ca the AI proxy's "
        'certificate authority options: -h, --help show this help message and exit --version show '
        "program's version number and exit {CONFIG}"),
    'keys': (
        'usage: bridgeproxy keys [-h] ACTION ... Create, list and revoke bridge keys. positional '
        'arguments: ACTION create create a key; prints it alone on stdout list list keys (hints only) '
        'revoke revoke a key by its id options: -h, --help show this help message and exit'),
    'keys create': (
        'usage: bridgeproxy keys create [-h] [--config FILE] --username USERNAME [--user-id USER_ID] '
        '[--admin] [--expires-days DAYS | --no-expiry] Create a bridge key for a user (created if new). '
        'The key is printed once, alone on stdout; only its hash is stored. options: -h, --help show '
        "this help message and exit {CONFIG} --username USERNAME the user's name (surrounding whitespace "
        "is dropped; must not be empty) --user-id USER_ID the user's id (a canonical UUIDv4); generated "
        'for a new user when omitted --admin the user may read every interception --expires-days DAYS '
        'the key expires after this many days (a whole number, 1 to 36500) --no-expiry the key never '
        'expires (the default)'),
    'keys list': (
        'usage: bridgeproxy keys list [-h] [--config FILE] [--json] List every key with its state: '
        'active, expired, revoked or disabled user. Keys are shown by hint only. options: -h, --help '
        'show this help message and exit {CONFIG} --json print a JSON array instead of a table'),
    'keys revoke': (
        'usage: bridgeproxy keys revoke [-h] [--config FILE] key_id Revoke a key by its id (the key_id '
        "column of 'keys list'). positional arguments: key_id options: -h, --help show this help message "
        'and exit {CONFIG}'),
    'users': (
        "usage: bridgeproxy users [-h] ACTION ... Disable or enable a user's keys. positional arguments: "
        'ACTION disable disable a user (by username or id) enable enable a user (by username or id) '
        'options: -h, --help show this help message and exit'),
    'users disable': (
        'usage: bridgeproxy users disable [-h] [--config FILE] user Disable a user, named by username or '
        'id. positional arguments: user username or user id options: -h, --help show this help message '
        'and exit {CONFIG}'),
    'users enable': (
        'usage: bridgeproxy users enable [-h] [--config FILE] user Enable a user, named by username or '
        'id. positional arguments: user username or user id options: -h, --help show this help message '
        'and exit {CONFIG}'),
    'db': (
        "usage: bridgeproxy db [-h] ACTION ... Manage the store's schema. positional arguments: ACTION "
        'migrate create or upgrade the schema options: -h, --help show this help message and exit'),
    'db migrate': (
        "usage: bridgeproxy db migrate [-h] [--config FILE] Create or upgrade the store's schema. "
        'options: -h, --help show this help message and exit {CONFIG}'),
    'interceptions': (
        'usage: bridgeproxy interceptions [-h] ACTION ... Read back the recorded interceptions. '
        'positional arguments: ACTION list list interceptions, newest first options: -h, --help show '
        'this help message and exit'),
    'interceptions list': (
        'usage: bridgeproxy interceptions list [-h] [--config FILE] [--initiator INITIATOR] [--client '
        'CLIENT] [--since SINCE] [--limit LIMIT] [--json] List recorded interceptions, newest first. '
        'options: -h, --help show this help message and exit {CONFIG} --initiator INITIATOR user id or '
        "username --client CLIENT client name, e.g. 'Claude Code' --since SINCE ISO 8601 date or time "
        '(UTC unless it says otherwise) --limit LIMIT at most this many (default 100) --json print a '
        'JSON array instead of a table'),
    'usage': (
        'usage: bridgeproxy usage [-h] [--config FILE] [--by {initiator,client,model,day}[,...]] '
        '[--since SINCE] [--json] Request counts, token totals and cost, grouped by initiator, client, '
        'model or day (UTC), or several of them (--by initiator,day). options: -h, --help show this help '
        'message and exit {CONFIG} --by {initiator,client,model,day}[,...] what to group by; several '
        'comma-separated (default: initiator) --since SINCE ISO 8601 date or time (UTC unless it says '
        'otherwise) --json print a JSON array instead of a table'),
    'budgets': (
        'usage: bridgeproxy budgets [-h] ACTION ... Set, show and list what users may spend per UTC day, '
        "week or month (amounts in units of the price table's currency). positional arguments: ACTION set"
        " give a user a budget of their own show a user's budget, spend and what is left list every "
        "budget and where its user stands remove remove a user's own budget options: -h, --help show this"
        ' help message and exit'),
    'budgets set': (
        'usage: bridgeproxy budgets set [-h] [--config FILE] --amount AMOUNT [--period {day,week,month}] '
        "user Give a user a budget of their own, replacing any they had; it overrides the configuration's"
        ' default ([budgets] default_amount). positional arguments: user username or user id (a user id '
        'the store does not know yet is taken as it is) options: -h, --help show this help message and '
        'exit {CONFIG} --amount AMOUNT what the user may spend per period, e.g. 25 or 12.50 (0 blocks the'
        ' user) --period {day,week,month} a UTC calendar day, week (Monday to Sunday) or month (default: '
        'month)'),
    'budgets show': (
        'usage: bridgeproxy budgets show [-h] [--config FILE] [--json] user Show the budget that applies '
        'to a user (their own, or the default), what they spent in the current period, what requests in '
        'flight hold, and what is left. positional arguments: user username or user id (a user id the '
        'store does not know yet is taken as it is) options: -h, --help show this help message and exit '
        '{CONFIG} --json print a JSON object instead of text'),
    'budgets list': (
        'usage: bridgeproxy budgets list [-h] [--config FILE] [--json] List the users with a budget of '
        'their own, then those under the default budget who spent something in its current period. '
        'options: -h, --help show this help message and exit {CONFIG} --json print a JSON array instead '
        'of a table'),
    'budgets remove': (
        "usage: bridgeproxy budgets remove [-h] [--config FILE] user Remove a user's own budget: the "
        'default applies to them again (or nothing, without one). positional arguments: user username or '
        'user id (a user id the store does not know yet is taken as it is) options: -h, --help show this '
        'help message and exit {CONFIG}'),
    'ca': (
        'usage: bridgeproxy ca [-h] ACTION ... Make the CA the AI proxy signs its certificates with. '
        'positional arguments: ACTION create write a new CA certificate and key into a directory options: '
        '-h, --help show this help message and exit'),
    'ca create': (
        'usage: bridgeproxy ca create [-h] [--config FILE] --out DIR [--days DAYS] Write a new CA '
        'certificate (ca.pem) and its private key (ca-key.pem, mode 0600) into DIR, made if missing. '
        'Existing files are never overwritten. Clients of the AI proxy must trust ca.pem. options: -h, '
        '--help show this help message and exit {CONFIG} --out DIR the directory to write into --days '
        'DAYS how long the CA is valid (default 3650)'),
}


def help_of(path: list) -> str:
    out = io.StringIO()
    with pytest.raises(SystemExit) as caught, contextlib.redirect_stdout(out):
        cli.main(path + ["--help"])
    assert caught.value.code == 0
    return " ".join(out.getvalue().split())


@pytest.mark.parametrize("path", sorted(HELP), ids=lambda p: p or "bridgeproxy")
def test_help_text(path):
    """Each command's help shows its usage, description, options with their metavars and explanations."""
    assert help_of(path.split()) == HELP[path].replace("{CONFIG}", CONFIG_HELP)


def test_every_command_has_its_help_here():
    """The help table above covers every command and action the parser has."""
    found = set()

    def walk(parser, prefix):
        found.add(" ".join(prefix))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, prefix + [name])
    walk(cli.parser(), [])
    assert found == set(HELP)


@pytest.mark.parametrize("argv, missing", [
    (["keys"], "ACTION"), (["users"], "ACTION"), (["db"], "ACTION"), (["interceptions"], "ACTION"),
])
def test_a_command_without_its_action_is_a_usage_error(argv, missing, capsys):
    """A command given without its action is a command-line error naming what is missing."""
    with pytest.raises(cli.CommandLineError) as caught:
        cli.main(argv, io.StringIO())
    assert f"the following arguments are required: {missing}" in str(caught.value)
    assert str(caught.value).startswith(f"bridgeproxy: {argv[0]}: ")


def test_times_are_utc_whatever_the_local_zone(config, monkeypatch):
    """Tables and JSON show times in UTC (with Z) even when the machine's zone is not UTC."""
    import time
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        store(config).insert_interceptions([rec(1)])
        code, out = run("interceptions", "list", "--config", config)
        assert out.splitlines()[1].split()[0] == "2026-05-28T20:26:41Z"
        code, out = run("interceptions", "list", "--config", config, "--json")
        assert json.loads(out)[0]["started_at"] == "2026-05-28T20:26:41Z"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_closed_stdout_is_silenced_for_the_rest_of_the_process(config, monkeypatch):
    """When the reader of stdout went away, stdout is pointed at /dev/null so the final flush cannot complain."""
    read_end, write_end = os.pipe()
    os.close(read_end)

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError

        def flush(self):
            raise BrokenPipeError

        def fileno(self):
            return write_end

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    try:
        assert cli.main(["keys", "list", "--config", config]) == 1
        assert os.write(write_end, b"late output") == len(b"late output")  # /dev/null now, no EPIPE
    finally:
        os.close(write_end)
