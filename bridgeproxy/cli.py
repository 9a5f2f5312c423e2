# -*- test-case-name: tests.test_cli,tests.test_cli_commands,tests.test_coder -*-
"""
The bridgeproxy command: keys, users, budgets, the database, what was
recorded, and the AI proxy's certificate authority.

Exit statuses: 0 when the command did its work; 1 when it could not (the
configuration file cannot be read or is invalid, the store cannot be
opened or refused the operation, no such key or user); 2 when the command
line itself is wrong (unknown option, missing or invalid argument).  Every
error is one line on stderr starting C{bridgeproxy: }; see C{docs/cli.md}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import sys
import time
from datetime import datetime, timezone
from typing import Any, NoReturn, Optional, Sequence

from bridgeproxy import __version__
from bridgeproxy import budgets as budgeting
from bridgeproxy.config import Config, load, parse
from bridgeproxy.values import is_uuid4, parse_since
from bridgeproxy.errors import ConfigError
from bridgeproxy.prices import MICROS
from bridgeproxy.store import Database, StoreError, mask_query_password, passwords
from bridgeproxy.store import budgets as budget_store
from bridgeproxy.store.database import by_columns

#: The longest expiry C{keys create --expires-days} accepts (about 100 years).
MAX_EXPIRES_DAYS = 36500


class CommandLineError(SystemExit):
    """
    The command line is wrong: exit status 2.  The one-line message has
    already been written to stderr; C{str()} gives it back (for callers
    running L{main} in-process).
    """

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, not a usage block."""

    def error(self, message: str) -> NoReturn:
        words = self.prog.split(None, 1)
        where = f"{words[1]}: " if len(words) > 1 else ""
        line = f"bridgeproxy: {where}{_one_line(message)} (see '{self.prog} --help')"
        sys.stderr.write(line + "\n")
        raise CommandLineError(line)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def safe_url(url: str) -> str:
    """C{url} with any password (in the user part or a C{password=} parameter) replaced by C{***}."""
    return mask_query_password(re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^/?#@:]*):[^/?#]*@", r"\1:***@", url))


def _scrub(message: str, url: Optional[str]) -> str:
    """C{message} on one line, with C{url} masked and its passwords removed."""
    if url:
        message = message.replace(url, safe_url(url))
        for secret in passwords(url):
            message = message.replace(secret, "***")
    return _one_line(message)


def _config(path: Optional[str]) -> Config:
    if not path:
        return parse({})
    try:
        return load(path)
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read configuration {path!r}: not UTF-8 text") from None


def _open(args: argparse.Namespace) -> Database:
    """The store the configuration names (recorded on C{args} for error messages)."""
    url = _config(args.config).database
    args.database_url = url
    return Database(url)


def _db(args: argparse.Namespace) -> Database:
    db = _open(args)
    db.migrate()
    return db


#: What the key and user commands say when a Coder deployment checks the bridge keys.
_MANAGED_BY_CODER = {
    "keys": ("keys are managed by the Coder deployment in this configuration (identity_backend = \"coder\"): "
             "the bridge key is a Coder session or API token (`coder tokens create`)"),
    "users": ("users are managed by the Coder deployment in this configuration (identity_backend = \"coder\"): "
              "suspend or activate them there (`coder users suspend USERNAME`)"),
}


def _keystore(args: argparse.Namespace, what: str) -> Database:
    """
    The store, for a command about its keys or users (C{what}); refused when
    the configuration has the Coder deployment check bridge keys instead.
    """
    if _config(args.config).identity_backend == "coder":
        raise ConfigError(_MANAGED_BY_CODER[what])
    return _db(args)


def _when(ts: Optional[float]) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso(ts: Optional[float]) -> Optional[str]:
    """A stored time as ISO 8601 UTC (whole seconds, C{Z}), or L{None}."""
    return None if ts is None else _when(ts)


def _table(rows: list[dict[str, Any]], columns: Sequence[str], out: Any) -> None:
    cells = [[str(r.get(c, "")) if r.get(c) is not None else "-" for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() + "\n")


def _json(rows: Any, out: Any) -> None:
    out.write(json.dumps(rows, indent=2) + "\n")


# -- argument types (their errors become one-line usage errors) ------------------


def _groups(value: str) -> tuple[str, ...]:
    try:
        return by_columns(value)
    except StoreError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _expires_days(value: str) -> int:
    if not re.fullmatch(r"\s*[0-9]+\s*", value):
        raise argparse.ArgumentTypeError(
            f"must be a whole number of days from 1 to {MAX_EXPIRES_DAYS}, got {value!r}")
    days = int(value)
    if not 1 <= days <= MAX_EXPIRES_DAYS:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of days from 1 to {MAX_EXPIRES_DAYS}, got {value!r}")
    return days


def _username(value: str) -> str:
    name = value.strip()
    if not name:
        raise argparse.ArgumentTypeError("must not be empty or only whitespace")
    if not name.isprintable():
        raise argparse.ArgumentTypeError(f"must not contain control characters, got {name!r}")
    return name


def _user_ref(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty or only whitespace")
    return value


def _user_id(value: str) -> str:
    if not is_uuid4(value):
        raise argparse.ArgumentTypeError(
            f"must be a canonical UUIDv4 (lower-case, hyphenated), got {value!r}")
    return value


def _positive_int(value: str) -> int:
    if not re.fullmatch(r"\s*[0-9]+\s*", value) or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more, got {value!r}")
    return int(value)


def _since(value: str) -> float:
    try:
        since = parse_since(value)
    except ValueError:
        since = None
    if since is None:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {value!r}")
    return since


# -- commands -------------------------------------------------------------------


def keys_create(args: argparse.Namespace, out: Any) -> int:
    expires = time.time() + args.expires_days * 86400 if args.expires_days else None
    key_id, token = _keystore(args, "keys").create_key(args.username, args.user_id, admin=args.admin, expires_at=expires)
    sys.stderr.write(f"created key {key_id} for {args.username}; the key is shown once:\n")
    out.write(token + "\n")
    return 0


def key_state(row: dict[str, Any], now: float) -> str:
    """
    C{revoked}, C{expired}, C{disabled user} or C{active}, in that order of
    precedence: a revoked key never works again, an expired key not even
    when its user is enabled again, a disabled user's key works again once
    the user is enabled.
    """
    if row["revoked_at"] is not None:
        return "revoked"
    if row["expires_at"] is not None and row["expires_at"] <= now:
        return "expired"
    if row["user_disabled"]:
        return "disabled user"
    return "active"


def keys_list(args: argparse.Namespace, out: Any) -> int:
    now = time.time()
    rows = _keystore(args, "keys").list_keys()
    if args.json:
        _json([{
            "key_id": row["key_id"],
            "username": row["username"],
            "user_id": row["user_id"],
            "hint": row["hint"],
            "state": key_state(row, now),
            "admin": bool(row["admin"]),
            "user_disabled": bool(row["user_disabled"]),
            "created_at": _iso(row["created_at"]),
            "expires_at": _iso(row["expires_at"]),
            "revoked_at": _iso(row["revoked_at"]),
        } for row in rows], out)
        return 0
    for row in rows:
        row["state"] = key_state(row, now)
        row["created_at"] = _when(row["created_at"])
        row["expires_at"] = _when(row["expires_at"])
        row["admin"] = "yes" if row["admin"] else "no"
    _table(rows, ("key_id", "username", "user_id", "hint", "state", "admin", "created_at", "expires_at"), out)
    return 0


def keys_revoke(args: argparse.Namespace, out: Any) -> int:
    if not _keystore(args, "keys").revoke_key(args.key_id):
        sys.stderr.write(f"bridgeproxy: no active key {args.key_id}\n")
        return 1
    out.write(f"revoked {args.key_id}\n")
    return 0


def users_set(disabled: bool):
    def command(args: argparse.Namespace, out: Any) -> int:
        if not _keystore(args, "users").set_user_disabled(args.user, disabled):
            sys.stderr.write(f"bridgeproxy: no user {args.user}\n")
            return 1
        out.write(f"{'disabled' if disabled else 'enabled'} {args.user}\n")
        return 0
    return command


def db_migrate(args: argparse.Namespace, out: Any) -> int:
    db = _open(args)
    applied = db.migrate()
    out.write(f"schema at version {db.version()}" + (f" (applied {applied})" if applied else "") + "\n")
    return 0


_INTEGERS = ("duration_ms", "upstream_status", "input_tokens", "output_tokens",
             "cache_read_tokens", "cache_write_tokens", "cost_micros", "attempts")


def _interception_json(row: dict[str, Any]) -> dict[str, Any]:
    record = dict(row)
    record["started_at"] = _iso(row["started_at"])
    record["ended_at"] = _iso(row["ended_at"])
    record["intercepted"] = bool(row["intercepted"])
    record["streamed"] = bool(row["streamed"])
    for name in _INTEGERS:
        if record[name] is not None:
            record[name] = int(record[name])
    return record


def interceptions_list(args: argparse.Namespace, out: Any) -> int:
    rows = _db(args).interceptions(initiator=args.initiator, client=args.client,
                                   since=args.since, limit=args.limit)
    if args.json:
        _json([_interception_json(row) for row in rows], out)
        return 0
    for row in rows:
        row["started"] = _when(row["started_at"])
        row["initiator"] = row["initiator_username"] or row["initiator_id"]
        row["tokens"] = f"{row['input_tokens']}/{row['output_tokens']}"
    _table(rows, ("started", "id", "initiator", "client", "provider", "route", "model",
                  "upstream_status", "tokens", "duration_ms", "status"), out)
    return 0


def usage(args: argparse.Namespace, out: Any) -> int:
    rows = _db(args).usage(by=",".join(args.by), since=args.since)
    if args.json:
        _json(rows, out)
    else:
        for row in rows:
            row["cost"] = _money(row["cost_micros"])
        _table(rows, (*args.by, "requests", "input_tokens", "output_tokens",
                      "cache_read_tokens", "cache_write_tokens", "cost", "unpriced_requests"), out)
    return 0


def _money(micros: int) -> str:
    """Micro-units as an amount of the currency, to the micro-unit: C{1234567} -> C{"1.234567"}."""
    return f"{micros // MICROS}.{micros % MICROS:06d}"


def _amount(value: str) -> int:
    try:
        return budgeting.parse_amount(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _budget_user(db: Database, ref: str) -> tuple[str, Optional[str]]:
    """The user C{ref} names: one the store knows (by username or id), else a user id as such."""
    found = budget_store.find_user(db, ref)
    if found is not None:
        return found
    if is_uuid4(ref):
        return ref, None
    raise StoreError(f"no user {ref} (name a user the store knows, by username or id, or give a user id)")


def budgets_set(args: argparse.Namespace, out: Any) -> int:
    db = _db(args)
    user_id, username = _budget_user(db, args.user)
    budget_store.set_budget(db, user_id, args.amount, args.period, username)
    out.write(f"budget of {username or user_id}: {budgeting.money(args.amount)} per {args.period}\n")
    return 0


def budgets_remove(args: argparse.Namespace, out: Any) -> int:
    db = _db(args)
    user_id, username = _budget_user(db, args.user)
    if not budget_store.remove_budget(db, user_id):
        sys.stderr.write(f"bridgeproxy: {username or user_id} has no budget of their own\n")
        return 1
    default = budgeting.default_budget(_config(args.config).budgets)
    then = (f"the default of {budgeting.money(default.amount_micros)} per {default.period} applies"
            if default is not None else "not limited")
    out.write(f"removed the budget of {username or user_id}: {then}\n")
    return 0


def budgets_show(args: argparse.Namespace, out: Any) -> int:
    db = _db(args)
    user = _budget_user(db, args.user)
    default = budgeting.default_budget(_config(args.config).budgets)
    row = budgeting.report(db, default, time.time(), user)[0]
    if args.json:
        _json(row, out)
        return 0
    name = f"{row['username']} ({row['user_id']})" if row["username"] else row["user_id"]
    if row["source"] is None:
        out.write(f"{name} has no budget: not limited\n")
        return 0
    source = "own" if row["source"] == "own" else "the configuration's default"
    for label, value in (("user", name),
                         ("budget", f"{budgeting.money(row['amount_micros'])} per {row['period']} ({source})"),
                         ("period", f"{row['period_start']} to {row['period_end']}"),
                         ("spent", budgeting.money(row["spent_micros"])),
                         ("held", budgeting.money(row["held_micros"]) + " (by requests in flight)"),
                         ("left", budgeting.money(row["left_micros"]))):
        out.write(f"{label:<8}{value}\n")
    return 0


def budgets_list(args: argparse.Namespace, out: Any) -> int:
    default = budgeting.default_budget(_config(args.config).budgets)
    rows = budgeting.report(_db(args), default, time.time())
    if args.json:
        _json(rows, out)
        return 0
    for row in rows:
        for name in ("amount", "spent", "held", "left"):
            row[name] = budgeting.money(row[f"{name}_micros"])
    _table(rows, ("username", "user_id", "source", "amount", "period", "spent", "held", "left", "period_end"), out)
    return 0


def ca_create(args: argparse.Namespace, out: Any) -> int:
    from bridgeproxy.aiproxy.ca import create_ca

    try:
        cert_path, key_path = create_ca(args.out, days=args.days)
    except FileExistsError as e:
        sys.stderr.write(f"bridgeproxy: ca create: {e}\n")
        return 1
    except OSError as e:
        sys.stderr.write(f"bridgeproxy: ca create: cannot write into {args.out!r}: {e.strerror}\n")
        return 1
    out.write(f"{cert_path}\tthe CA certificate: clients trust it ([aiproxy] ca_cert)\n")
    out.write(f"{key_path}\tits private key, mode 0600: only the proxy reads it ([aiproxy] ca_key)\n")
    return 0


def _ca_days(value: str) -> int:
    if not re.fullmatch(r"\s*[0-9]+\s*", value) or not 1 <= int(value) <= MAX_EXPIRES_DAYS:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of days from 1 to {MAX_EXPIRES_DAYS}, got {value!r}")
    return int(value)


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="bridgeproxy", description=(
        "Manage bridgeproxy's bridge keys, users, budgets and store, read back what it recorded, and make "
        "the AI proxy's CA. "
        "Exit status: 0 done, 1 failed (configuration, store, no such key or user), "
        "2 bad command line."))
    top.add_argument("--version", action="version", version=f"bridgeproxy {__version__}")
    config_help = ("configuration file (default: the embedded defaults, whose store is "
                   "bridgeproxy.db in the current directory); accepted before or after the command")
    top.add_argument("--config", "-c", metavar="FILE", default=None, help=config_help)
    common = _Parser(add_help=False)
    # SUPPRESS: not given after the command, it leaves the one given before alone.
    common.add_argument("--config", "-c", metavar="FILE", default=argparse.SUPPRESS, help=config_help)
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    keys = sub.add_parser("keys", help="bridge keys", description="Create, list and revoke bridge keys.")
    keys_sub = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = keys_sub.add_parser("create", parents=[common], help="create a key; prints it alone on stdout",
                            description="Create a bridge key for a user (created if new). The key is printed "
                                        "once, alone on stdout; only its hash is stored.")
    p.add_argument("--username", required=True, type=_username,
                   help="the user's name (surrounding whitespace is dropped; must not be empty)")
    p.add_argument("--user-id", type=_user_id,
                   help="the user's id (a canonical UUIDv4); generated for a new user when omitted")
    p.add_argument("--admin", action="store_true", help="the user may read every interception")
    expiry = p.add_mutually_exclusive_group()
    expiry.add_argument("--expires-days", type=_expires_days, default=None, metavar="DAYS",
                        help=f"the key expires after this many days (a whole number, 1 to {MAX_EXPIRES_DAYS})")
    expiry.add_argument("--no-expiry", action="store_true",
                        help="the key never expires (the default)")
    p.set_defaults(run=keys_create)
    p = keys_sub.add_parser("list", parents=[common], help="list keys (hints only)",
                            description="List every key with its state: active, expired, revoked "
                                        "or disabled user. Keys are shown by hint only.")
    p.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    p.set_defaults(run=keys_list)
    p = keys_sub.add_parser("revoke", parents=[common], help="revoke a key by its id",
                            description="Revoke a key by its id (the key_id column of 'keys list').")
    p.add_argument("key_id")
    p.set_defaults(run=keys_revoke)

    users = sub.add_parser("users", help="users", description="Disable or enable a user's keys.")
    users_sub = users.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, disabled in (("disable", True), ("enable", False)):
        p = users_sub.add_parser(name, parents=[common], help=f"{name} a user (by username or id)",
                                 description=f"{name.capitalize()} a user, named by username or id.")
        p.add_argument("user", type=_user_ref, help="username or user id")
        p.set_defaults(run=users_set(disabled))

    db = sub.add_parser("db", help="the store", description="Manage the store's schema.")
    db_sub = db.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = db_sub.add_parser("migrate", parents=[common], help="create or upgrade the schema",
                          description="Create or upgrade the store's schema.")
    p.set_defaults(run=db_migrate)

    inter = sub.add_parser("interceptions", help="recorded interceptions",
                           description="Read back the recorded interceptions.")
    inter_sub = inter.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = inter_sub.add_parser("list", parents=[common], help="list interceptions, newest first",
                             description="List recorded interceptions, newest first.")
    p.add_argument("--initiator", help="user id or username")
    p.add_argument("--client", help="client name, e.g. 'Claude Code'")
    p.add_argument("--since", type=_since, help="ISO 8601 date or time (UTC unless it says otherwise)")
    p.add_argument("--limit", type=_positive_int, default=100, help="at most this many (default 100)")
    p.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    p.set_defaults(run=interceptions_list)

    p = sub.add_parser("usage", parents=[common], help="token totals and cost",
                       description="Request counts, token totals and cost, grouped by initiator, client, model "
                                   "or day (UTC), or several of them (--by initiator,day).")
    p.add_argument("--by", type=_groups, default=("initiator",), metavar="{initiator,client,model,day}[,...]",
                   help="what to group by; several comma-separated (default: initiator)")
    p.add_argument("--since", type=_since, help="ISO 8601 date or time (UTC unless it says otherwise)")
    p.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    p.set_defaults(run=usage)

    budgets = sub.add_parser("budgets", help="what users may spend",
                             description="Set, show and list what users may spend per UTC day, week or month "
                                         "(amounts in units of the price table's currency).")
    budgets_sub = budgets.add_subparsers(dest="action", metavar="ACTION", required=True)
    user_help = "username or user id (a user id the store does not know yet is taken as it is)"
    p = budgets_sub.add_parser("set", parents=[common], help="give a user a budget of their own",
                               description="Give a user a budget of their own, replacing any they had; it "
                                           "overrides the configuration's default ([budgets] default_amount).")
    p.add_argument("user", type=_user_ref, help=user_help)
    p.add_argument("--amount", required=True, type=_amount, metavar="AMOUNT",
                   help="what the user may spend per period, e.g. 25 or 12.50 (0 blocks the user)")
    p.add_argument("--period", choices=budget_store.PERIODS, default="month",
                   help="a UTC calendar day, week (Monday to Sunday) or month (default: month)")
    p.set_defaults(run=budgets_set)
    p = budgets_sub.add_parser("show", parents=[common], help="a user's budget, spend and what is left",
                               description="Show the budget that applies to a user (their own, or the default), "
                                           "what they spent in the current period, what requests in flight hold, "
                                           "and what is left.")
    p.add_argument("user", type=_user_ref, help=user_help)
    p.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    p.set_defaults(run=budgets_show)
    p = budgets_sub.add_parser("list", parents=[common], help="every budget and where its user stands",
                               description="List the users with a budget of their own, then those under the "
                                           "default budget who spent something in its current period.")
    p.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    p.set_defaults(run=budgets_list)
    p = budgets_sub.add_parser("remove", parents=[common], help="remove a user's own budget",
                               description="Remove a user's own budget: the default applies to them again "
                                           "(or nothing, without one).")
    p.add_argument("user", type=_user_ref, help=user_help)
    p.set_defaults(run=budgets_remove)

    ca = sub.add_parser("ca", help="the AI proxy's certificate authority",
                        description="Make the CA the AI proxy signs its certificates with.")
    ca_sub = ca.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = ca_sub.add_parser("create", parents=[common], help="write a new CA certificate and key into a directory",
                          description="Write a new CA certificate (ca.pem) and its private key (ca-key.pem, "
                                      "mode 0600) into DIR, made if missing. Existing files are never "
                                      "overwritten. Clients of the AI proxy must trust ca.pem.")
    p.add_argument("--out", required=True, metavar="DIR", help="the directory to write into")
    p.add_argument("--days", type=_ca_days, default=3650, metavar="DAYS",
                   help="how long the CA is valid (default 3650)")
    p.set_defaults(run=ca_create)
    return top


def _store_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [sqlite3.Error]
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        pass
    else:
        errors.append(psycopg.Error)
    return tuple(errors)


def main(argv: Optional[Sequence[str]] = None, out: Any = None) -> int:
    """
    Run the command line C{argv}; return the exit status (0, or 1 when the
    command failed).

    As with argparse, C{--help}, C{--version} and a wrong command line end
    in L{SystemExit} (status 0, or 2 as L{CommandLineError}) while parsing.
    Every failure writes one line to stderr starting C{bridgeproxy: };
    none shows a traceback or a password.
    """
    args = parser().parse_args(argv)
    url = None
    stream = out or sys.stdout
    try:
        status = args.run(args, stream)
        stream.flush()
        return status
    except (ConfigError, StoreError) as e:
        url = getattr(args, "database_url", None)
        message = _scrub(str(e), url)
    except _store_errors() as e:
        url = getattr(args, "database_url", None)
        message = f"store {safe_url(url or '?')}: " + (_scrub(str(e), url) or type(e).__name__)
    except KeyboardInterrupt:
        sys.stderr.write("bridgeproxy: interrupted\n")
        return 130
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, and keep the
        # interpreter's final flush of stdout from complaining too.
        if out is None:
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):
                pass
        return 1
    except Exception as e:  # noqa: BLE001 - the promise is one line, never a traceback
        url = getattr(args, "database_url", None)
        message = f"unexpected {type(e).__name__}: " + _scrub(str(e), url)
    sys.stderr.write(f"bridgeproxy: {message}\n")
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
