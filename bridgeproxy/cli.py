# -*- test-case-name: tests.test_cli -*-
"""
The C{bridgeproxy} command: keys, users, the database, and what was recorded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from typing import Any, Optional, Sequence

from bridgeproxy.config import Config, is_uuid4, load, parse, parse_since
from bridgeproxy.errors import ConfigError
from bridgeproxy.store import Database, StoreError


def _config(path: Optional[str]) -> Config:
    return load(path) if path else parse({})


def _db(args: argparse.Namespace) -> Database:
    db = Database(_config(args.config).database)
    db.migrate()
    return db


def _when(ts: Optional[float]) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _since(value: Optional[str]) -> Optional[float]:
    try:
        return parse_since(value)
    except ValueError:
        raise SystemExit(f"--since: not an ISO date or time: {value!r}") from None


def _table(rows: list[dict[str, Any]], columns: Sequence[str], out: Any) -> None:
    cells = [[str(r.get(c, "")) if r.get(c) is not None else "-" for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() + "\n")


# -- commands -------------------------------------------------------------------


def keys_create(args: argparse.Namespace, out: Any) -> int:
    if args.user_id is not None and not is_uuid4(args.user_id):
        raise SystemExit("--user-id must be a canonical UUIDv4")
    expires = time.time() + args.expires_days * 86400 if args.expires_days else None
    key_id, token = _db(args).create_key(args.username, args.user_id, admin=args.admin, expires_at=expires)
    sys.stderr.write(f"created key {key_id} for {args.username}; the key is shown once:\n")
    out.write(token + "\n")
    return 0


def keys_list(args: argparse.Namespace, out: Any) -> int:
    rows = _db(args).list_keys()
    for row in rows:
        row["created_at"] = _when(row["created_at"])
        row["expires_at"] = _when(row["expires_at"])
        row["state"] = ("revoked" if row["revoked_at"] else
                        "disabled user" if row["user_disabled"] else "active")
        row["admin"] = "yes" if row["admin"] else "no"
    if args.json:
        out.write(json.dumps(rows, indent=2) + "\n")
    else:
        _table(rows, ("key_id", "username", "user_id", "hint", "state", "admin", "created_at", "expires_at"), out)
    return 0


def keys_revoke(args: argparse.Namespace, out: Any) -> int:
    if not _db(args).revoke_key(args.key_id):
        sys.stderr.write(f"no active key {args.key_id}\n")
        return 1
    out.write(f"revoked {args.key_id}\n")
    return 0


def users_set(disabled: bool):
    def command(args: argparse.Namespace, out: Any) -> int:
        if not _db(args).set_user_disabled(args.user, disabled):
            sys.stderr.write(f"no user {args.user}\n")
            return 1
        out.write(f"{'disabled' if disabled else 'enabled'} {args.user}\n")
        return 0
    return command


def db_migrate(args: argparse.Namespace, out: Any) -> int:
    db = Database(_config(args.config).database)
    applied = db.migrate()
    out.write(f"schema at version {db.version()}" + (f" (applied {applied})" if applied else "") + "\n")
    return 0


def interceptions_list(args: argparse.Namespace, out: Any) -> int:
    rows = _db(args).interceptions(initiator=args.initiator, client=args.client,
                                   since=_since(args.since), limit=args.limit)
    if args.json:
        out.write(json.dumps(rows, indent=2) + "\n")
        return 0
    for row in rows:
        row["started"] = _when(row["started_at"])
        row["initiator"] = row["initiator_username"] or row["initiator_id"]
        row["tokens"] = f"{row['input_tokens']}/{row['output_tokens']}"
    _table(rows, ("started", "id", "initiator", "client", "provider", "route", "model",
                  "upstream_status", "tokens", "duration_ms", "status"), out)
    return 0


def usage(args: argparse.Namespace, out: Any) -> int:
    rows = _db(args).usage(by=args.by, since=_since(args.since))
    if args.json:
        out.write(json.dumps(rows, indent=2) + "\n")
    else:
        _table(rows, (args.by, "requests", "input_tokens", "output_tokens",
                      "cache_read_tokens", "cache_write_tokens"), out)
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="bridgeproxy", description=__doc__.strip().splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", help="configuration file (default: the embedded defaults)")
    sub = top.add_subparsers(dest="command", required=True)

    keys = sub.add_parser("keys", help="bridge keys").add_subparsers(dest="action", required=True)
    p = keys.add_parser("create", parents=[common], help="create a key; prints it alone on stdout")
    p.add_argument("--username", required=True)
    p.add_argument("--user-id", help="the user's id (a UUIDv4); generated for a new user when omitted")
    p.add_argument("--admin", action="store_true", help="the user may read every interception")
    p.add_argument("--expires-days", type=float, default=None, help="the key expires after this many days")
    p.set_defaults(run=keys_create)
    p = keys.add_parser("list", parents=[common], help="list keys (hints only)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=keys_list)
    p = keys.add_parser("revoke", parents=[common], help="revoke a key by its id")
    p.add_argument("key_id")
    p.set_defaults(run=keys_revoke)

    users = sub.add_parser("users", help="users").add_subparsers(dest="action", required=True)
    for name, disabled in (("disable", True), ("enable", False)):
        p = users.add_parser(name, parents=[common], help=f"{name} a user (by username or id)")
        p.add_argument("user")
        p.set_defaults(run=users_set(disabled))

    db = sub.add_parser("db", help="the store").add_subparsers(dest="action", required=True)
    p = db.add_parser("migrate", parents=[common], help="create or upgrade the schema")
    p.set_defaults(run=db_migrate)

    inter = sub.add_parser("interceptions", help="recorded interceptions").add_subparsers(
        dest="action", required=True)
    p = inter.add_parser("list", parents=[common], help="list interceptions, newest first")
    p.add_argument("--initiator", help="user id or username")
    p.add_argument("--client", help="client name, e.g. 'Claude Code'")
    p.add_argument("--since", help="ISO date or time (UTC unless given)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=interceptions_list)

    p = sub.add_parser("usage", parents=[common], help="token totals")
    p.add_argument("--by", choices=("initiator", "client", "model"), default="initiator")
    p.add_argument("--since", help="ISO date or time (UTC unless given)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=usage)
    return top


def main(argv: Optional[Sequence[str]] = None, out: Any = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args, out or sys.stdout)
    except (ConfigError, StoreError) as e:
        sys.stderr.write(f"bridgeproxy: {e}\n")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
