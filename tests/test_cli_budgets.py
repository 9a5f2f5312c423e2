"""
`bridgeproxy budgets` run in-process (C{cli.main(argv, out)}) on a SQLite
file: what set, show, list and remove print and store, their exit
statuses, and their one-line errors.
"""

from __future__ import annotations

import io
import json
import time

import pytest

from bridgeproxy import cli
from bridgeproxy.budgets import iso_day
from bridgeproxy.config import load
from bridgeproxy.store import Database
from bridgeproxy.store.budgets import Settlement, day_number, exclusive, own_budget, period_days, settle

ALICE_ID = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
CODER_ID = "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "bridge.toml"
    path.write_text(f'database = "sqlite:{tmp_path / "bridge.db"}"\n')
    return str(path)


def with_default(config: str, amount: str, period: str = "week") -> str:
    with open(config, "a") as f:
        f.write(f'[budgets]\ndefault_amount = {amount}\ndefault_period = "{period}"\n')
    return config


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return cli.main(list(argv), out), out.getvalue()


def store(config: str) -> Database:
    db = Database(load(config).database)
    db.migrate()
    return db


def spend(config: str, user_id: str, micros: int, username=None) -> None:
    exclusive(store(config), [], lambda db: settle(db, [
        Settlement("s", user_id, username, day_number(time.time()), micros)]))


def test_set_then_show_says_what_is_spent_held_and_left(config):
    """A budget set for a key store user shows with the current month, spend, holds and what is left."""
    store(config).ensure_user("alice", ALICE_ID)
    assert run("budgets", "set", "alice", "--amount", "25", "--config", config) == (
        0, "budget of alice: 25.000000 per month\n")
    spend(config, ALICE_ID, 3_141_592)
    db = store(config)
    db.execute("INSERT INTO budget_holds (id, user_id, day, amount_micros, holder, expires_at) "
               "VALUES ('h', ?, ?, 20000, 'p', ?)", (ALICE_ID, day_number(time.time()), time.time() + 600))
    start, end = period_days("month", time.time())
    assert run("budgets", "show", ALICE_ID, "--config", config) == (0, (
        f"user    alice ({ALICE_ID})\n"
        "budget  25.000000 per month (own)\n"
        f"period  {iso_day(start)} to {iso_day(end)}\n"
        "spent   3.141592\n"
        "held    0.020000 (by requests in flight)\n"
        "left    21.838408\n"))
    status, out = run("budgets", "show", "alice", "--json", "--config", config)
    assert status == 0 and json.loads(out) == {
        "user_id": ALICE_ID, "username": "alice", "source": "own", "amount_micros": 25_000_000,
        "period": "month", "period_start": iso_day(start), "period_end": iso_day(end), "spent_micros": 3_141_592,
        "held_micros": 20_000, "left_micros": 21_838_408}


def test_set_replaces_and_remove_falls_back_to_the_default(config):
    """Setting again replaces the amount and period; removing says what applies now; removing twice fails."""
    with_default(config, "5")
    store(config).ensure_user("alice", ALICE_ID)
    assert run("budgets", "set", "alice", "--amount", "1", "--period", "day", "--config", config)[0] == 0
    assert run("budgets", "set", "alice", "--amount", "0.5", "--period", "week", "--config", config) == (
        0, "budget of alice: 0.500000 per week\n")
    assert own_budget(store(config), ALICE_ID).amount_micros == 500_000
    assert run("budgets", "remove", "alice", "--config", config) == (
        0, "removed the budget of alice: the default of 5.000000 per week applies\n")
    assert run("budgets", "remove", "alice", "--config", config) == (1, "")
    status, out = run("budgets", "show", "alice", "--json", "--config", config)
    assert json.loads(out)["source"] == "default" and json.loads(out)["amount_micros"] == 5_000_000


def test_a_user_without_any_budget_is_not_limited(config, capsys):
    store(config).ensure_user("alice", ALICE_ID)
    assert run("budgets", "show", "alice", "--config", config) == (
        0, f"alice ({ALICE_ID}) has no budget: not limited\n")
    assert run("budgets", "set", "alice", "--amount", "2", "--config", config)[0] == 0
    assert run("budgets", "remove", "alice", "--config", config) == (
        0, "removed the budget of alice: not limited\n")
    assert "alice has no budget of their own" not in capsys.readouterr().err


def test_an_unknown_user_id_is_taken_as_it_is_and_a_name_is_refused(config, capsys):
    """A user id the store has not seen (a Coder user before their first request) gets a budget; a name fails."""
    assert run("budgets", "set", CODER_ID, "--amount", "3", "--config", config) == (
        0, f"budget of {CODER_ID}: 3.000000 per month\n")
    assert run("budgets", "show", "nobody", "--config", config) == (1, "")
    assert capsys.readouterr().err == (
        "bridgeproxy: no user nobody (name a user the store knows, by username or id, or give a user id)\n")


def test_list_shows_own_budgets_then_default_spenders(config):
    """The table lists own budgets, then users of the default who spent in its period; --json the same rows."""
    with_default(config, "1.5", "day")
    store(config).ensure_user("alice", ALICE_ID)
    run("budgets", "set", "alice", "--amount", "10", "--config", config)
    spend(config, CODER_ID, 500_000, "coder-user")
    status, out = run("budgets", "list", "--config", config)
    lines = out.splitlines()
    assert status == 0 and lines[0].split() == ["username", "user_id", "source", "amount", "period", "spent", "held",
                                                "left", "period_end"]
    assert lines[1].split()[:8] == ["alice", ALICE_ID, "own", "10.000000", "month", "0.000000", "0.000000",
                                    "10.000000"]
    assert lines[2].split()[:8] == ["coder-user", CODER_ID, "default", "1.500000", "day", "0.500000", "0.000000",
                                    "1.000000"]
    status, out = run("budgets", "list", "--json", "--config", config)
    rows = json.loads(out)
    assert [(r["username"], r["source"], r["left_micros"]) for r in rows] == [
        ("alice", "own", 10_000_000), ("coder-user", "default", 1_000_000)]


@pytest.mark.parametrize("argv, message", [
    (["budgets", "set", "alice"], "budgets set: the following arguments are required: --amount"),
    (["budgets", "set", "alice", "--amount", "-1"], "budgets set: argument --amount: must be a plain amount"),
    (["budgets", "set", "alice", "--amount", "1e3"], "budgets set: argument --amount: must be a plain amount"),
    (["budgets", "set", "alice", "--amount", "0.0000001"], "budgets set: argument --amount: at most six decimals"),
    (["budgets", "set", "alice", "--amount", "1", "--period", "year"], "budgets set: argument --period: invalid "
                                                                       "choice: 'year'"),
    (["budgets", "set", " ", "--amount", "1"], "budgets set: argument user: must not be empty"),
])
def test_bad_command_lines_are_one_line_and_status_2(config, capsys, argv, message):
    with pytest.raises(cli.CommandLineError) as caught:
        cli.main(argv + ["--config", config], io.StringIO())
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bridgeproxy: {message}") and err.count("\n") == 1
    assert own_budget(store(config), "alice") is None
