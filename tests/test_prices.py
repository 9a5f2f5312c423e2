"""
What a request cost: the shipped price table, the configuration's prices,
the cost each interception records (in memory, through the whole pipeline),
the metric of requests that could not be priced, and the store's and the
command's usage totals with cost per user, model, client and day.
"""

from __future__ import annotations

import io
import json
import pathlib

import pytest

from bridgeproxy import cli
from bridgeproxy.config import parse
from bridgeproxy.errors import ConfigError
from bridgeproxy.prices import (SHIPPED, Price, PriceTable, _anthropic, _openai, price, shipped_reference, table_for,
                                undated)
from bridgeproxy.store.database import Database, StoreError
from bridgeproxy.store.schema import LATEST
from bridgeproxy.types import Interception, Usage
from tests import payloads
from tests.memory import TOKEN, gateway, json_answer, sse_answer
from tests.pg import drop_pg_schema, pg_schema

AUTH = {"Authorization": f"Bearer {TOKEN}"}


# -- the arithmetic ----------------------------------------------------------------------------


def test_price_from_published_amounts_is_integer_micro_units():
    """2.50 USD per million tokens is 2,500,000 micro-units; an unset cache price is the input price."""
    assert price(2.50, 10.00, cache_read=1.25) == Price(2_500_000, 10_000_000, 1_250_000, 2_500_000)
    assert price(0.075, 0.3) == Price(75_000, 300_000, 75_000, 75_000)


def test_cost_adds_each_kind_of_token_at_its_price():
    """Input, output, cache reads and cache writes are each priced at their own rate, then summed."""
    p = Price(input=3_000_000, output=15_000_000, cache_read=300_000, cache_write=3_750_000)
    # 1000 * 3 + 500 * 15 + 2000 * 0.3 + 100 * 3.75 micro-units
    assert p.cost(1000, 500, 2000, 100) == 3000 + 7500 + 600 + 375


@pytest.mark.parametrize("tokens, micros", [(0, 0), (1, 0), (3, 0), (4, 1), (9, 1), (10, 2), (13, 2),
                                            (1_000_000, 150_000)])
def test_cost_rounds_to_the_nearest_micro_unit(tokens, micros):
    """A cost is whole micro-units, rounded half up: 0.15 USD/M is 0.15 micro-units a token."""
    cost = Price(150_000, 0, 0, 0).cost(tokens, 0)
    assert cost == micros and type(cost) is int  # an integer in the store and in JSON, never 2.0


def test_cache_tokens_not_given_cost_nothing():
    """Without cache counts (a provider that reports none), only input and output are priced."""
    p = Price(input=1_000_000, output=2_000_000, cache_read=5_000_000, cache_write=7_000_000)
    assert p.cost(10, 10) == 30
    assert p.cost(10, 10, 10) == 80


def test_cost_has_no_float_error_on_large_counts():
    """A billion output tokens at 75 USD/M is exactly 75,000 USD (integer arithmetic throughout)."""
    assert Price(0, 75_000_000, 0, 0).cost(0, 1_000_000_000) == 75_000 * 1_000_000


# -- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model, base", [
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
    ("gpt-4o-2024-08-06", "gpt-4o"),
    ("claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
    ("claude-opus-4-1@20250805", "claude-opus-4-1"),
    ("GPT-4o-Mini-2024-07-18", "gpt-4o-mini"),
    ("gpt-4.1", "gpt-4.1"),
    ("o3", "o3"),
    ("gpt-5-2025", "gpt-5-2025"),  # a year alone is not a snapshot date
])
def test_undated_drops_the_snapshot_date(model, base):
    """A snapshot's date (8 digits, or YYYY-MM-DD) or -latest is dropped; other names stay as they are."""
    assert undated(model) == base


DEFAULT = PriceTable({"openai": "openai", "anthropic": "anthropic", "local": "openai-compatible"})


@pytest.mark.parametrize("provider, model, expected", [
    ("anthropic", "claude-sonnet-4-5-20250929", SHIPPED["anthropic"]["claude-sonnet-4-5"]),
    ("anthropic", "claude-haiku-4-5", SHIPPED["anthropic"]["claude-haiku-4-5"]),
    ("anthropic", "claude-3-5-haiku-20241022", SHIPPED["anthropic"]["claude-3-5-haiku"]),
    ("openai", "gpt-4o-2024-08-06", SHIPPED["openai"]["gpt-4o"]),
    ("openai", "gpt-4o-mini-2024-07-18", SHIPPED["openai"]["gpt-4o-mini"]),
    ("openai", "o4-mini-2025-04-16", SHIPPED["openai"]["o4-mini"]),
    ("openai", "gpt-5-mini", SHIPPED["openai"]["gpt-5-mini"]),
])
def test_dated_variants_find_their_model(provider, model, expected):
    """A snapshot name finds its model's price."""
    assert DEFAULT.price(provider, model) == expected


def test_a_snapshot_with_its_own_price_keeps_it():
    """gpt-4o-2024-05-13 has its own list price (5/15), not gpt-4o's (2.50/10): the exact name wins."""
    assert DEFAULT.price("openai", "gpt-4o-2024-05-13") == price(5.00, 15.00, cache_write=5.00)
    assert DEFAULT.price("openai", "gpt-4o-2024-05-13") != DEFAULT.price("openai", "gpt-4o")


@pytest.mark.parametrize("provider, model", [
    ("openai", "gpt-7-ultra"), ("openai", None), ("openai", ""), ("anthropic", "gpt-4o"),
    ("openai", "claude-sonnet-4-5"), ("local", "gpt-4o"), ("nowhere", "gpt-4o"), ("openai", "gpt-4o-mini-x"),
])
def test_an_unknown_model_has_no_price(provider, model):
    """No price is guessed: another provider's model, an unknown model or provider, an openai-compatible
    backend's models (not OpenAI's prices) all have none."""
    assert DEFAULT.price(provider, model) is None
    assert DEFAULT.cost(provider, model, Usage(input_tokens=10, output_tokens=10)) is None


def test_known_prices_of_the_shipped_table():
    """A few list prices, as published (USD per million tokens): input, output, cache read, cache write."""
    assert SHIPPED["openai"]["gpt-4o"] == price(2.50, 10.00, cache_read=1.25, cache_write=2.50)
    assert SHIPPED["openai"]["gpt-4.1-mini"] == price(0.40, 1.60, cache_read=0.10, cache_write=0.40)
    assert SHIPPED["openai"]["gpt-5"] == price(1.25, 10.00, cache_read=0.125, cache_write=1.25)
    assert SHIPPED["anthropic"]["claude-sonnet-4-5"] == price(3.00, 15.00, cache_read=0.30, cache_write=3.75)
    assert SHIPPED["anthropic"]["claude-opus-4-1"] == price(15.00, 75.00, cache_read=1.50, cache_write=18.75)
    assert SHIPPED["anthropic"]["claude-haiku-4-5"] == price(1.00, 5.00, cache_read=0.10, cache_write=1.25)
    for plugin, models in SHIPPED.items():
        for name, entry in models.items():
            assert DEFAULT.price(plugin, name) == entry, name
            assert entry.output >= entry.input > 0 and entry.cache_read <= entry.input, name


def test_how_the_shipped_table_reads_the_published_prices():
    """OpenAI: cache writes at the input price, no cached price means the input price.  Anthropic: cache
    reads at a tenth of the input price, cache writes (5 minutes) at 1.25 times."""
    assert _openai(2.00, 0.50, 8.00) == Price(2_000_000, 8_000_000, 500_000, 2_000_000)
    assert _openai(30.00, None, 60.00) == Price(30_000_000, 60_000_000, 30_000_000, 30_000_000)
    assert _anthropic(4.00, 20.00) == Price(4_000_000, 20_000_000, 400_000, 5_000_000)


def test_the_docs_show_the_shipped_prices():
    """docs/spend.md lists every shipped price as the table holds it (amounts per million tokens)."""
    text = (pathlib.Path(__file__).parent.parent / "docs" / "spend.md").read_text()
    start, end = "<!-- shipped prices -->\n", "<!-- /shipped prices -->"
    shown = text[text.index(start) + len(start):text.index(end)]
    assert shown == shipped_reference()
    assert "| anthropic | `claude-sonnet-4-5` | 3.00 | 15.00 | 0.30 | 3.75 |" in shown
    assert "| openai | `gpt-4o-mini` | 0.15 | 0.60 | 0.075 | 0.15 |" in shown


def test_lookups_are_cached_and_bounded():
    """Model names come from clients: the table's memory of lookups stays bounded (1024 names)."""
    table = PriceTable({"openai": "openai"})
    sizes = set()
    for i in range(5000):
        table.price("openai", f"made-up-{i}")
        sizes.add(len(table._found))
    assert max(sizes) == 1024
    assert table.price("openai", "gpt-4o") == SHIPPED["openai"]["gpt-4o"]


# -- configuration -----------------------------------------------------------------------------


def config(prices, providers=None):
    data = {"prices": prices}
    if providers is not None:
        data["providers"] = providers
    return parse(data, environ={})


def test_configured_prices_replace_and_add():
    """[prices."<provider>/<model>"] replaces a shipped entry (its dated variants too) or adds a model."""
    table = table_for(config({"openai/gpt-4o": {"input": 2, "output": 8, "cache_read": 0.5},
                              "anthropic/claude-next": {"input": 1.5, "output": 7.5, "cache_write": 2}}))
    assert table.price("openai", "gpt-4o-2024-08-06") == Price(2_000_000, 8_000_000, 500_000, 2_000_000)
    assert table.price("anthropic", "claude-next-20260101") == Price(1_500_000, 7_500_000, 1_500_000, 2_000_000)
    assert table.price("openai", "gpt-4o-mini") == SHIPPED["openai"]["gpt-4o-mini"]  # untouched


def test_configured_model_names_may_hold_slashes():
    """An openai-compatible backend's models are often named "org/model": the provider is what comes
    before the first slash."""
    providers = {"local": {"plugin": "openai-compatible", "base_url": "http://llm.test/v1"}}
    table = table_for(config({"local/meta-llama/Llama-3.1-70B": {"input": 0.5, "output": 0.9}}, providers))
    assert table.price("local", "meta-llama/llama-3.1-70b") == Price(500_000, 900_000, 500_000, 500_000)


def test_prices_for_a_provider_that_is_not_configured_are_ignored():
    """A price table given an entry for no configured provider prices nothing with it, and does not fail."""
    table = PriceTable({"openai": "openai"}, {"gone/gpt-4o": price(1, 1)})
    assert table.price("gone", "gpt-4o") is None
    assert table.price("openai", "gpt-4o") == SHIPPED["openai"]["gpt-4o"]


def test_cost_prices_every_kind_of_token_of_the_usage():
    """A usage's cache reads and writes are priced at their own rates (Anthropic's cache write: 1.25x input)."""
    usage = Usage(input_tokens=1000, output_tokens=100, cache_read_tokens=10_000, cache_write_tokens=2000)
    # claude-sonnet-4-5: 3.00 in, 15.00 out, 0.30 cache read, 3.75 cache write (USD per million tokens)
    assert DEFAULT.cost("anthropic", "claude-sonnet-4-5", usage) == 3000 + 1500 + 3000 + 7500


def test_configured_prices_are_per_provider_and_case_insensitive():
    """An entry prices its provider's requests only; model names match whatever their case."""
    providers = {"openai": {}, "local": {"plugin": "openai-compatible", "base_url": "http://llm.test/v1"}}
    table = table_for(config({"local/Llama-3.1-70B": {"input": 0, "output": 0.9}}, providers))
    assert table.price("local", "llama-3.1-70b") == Price(0, 900_000, 0, 0)
    assert table.price("openai", "llama-3.1-70b") is None
    assert table.price("local", "gpt-4o") is None  # a compatible backend gets no OpenAI prices


def test_an_exact_shipped_name_beats_a_configured_undated_one():
    """The most specific name wins: a snapshot with its own shipped price keeps it over a configured base."""
    table = table_for(config({"openai/gpt-4o": {"input": 1, "output": 1}}))
    assert table.price("openai", "gpt-4o-2024-05-13") == SHIPPED["openai"]["gpt-4o-2024-05-13"]
    assert table.price("openai", "gpt-4o-2024-11-20") == Price(1_000_000, 1_000_000, 1_000_000, 1_000_000)


@pytest.mark.parametrize("prices, message", [
    ({"gpt-4o": {"input": 1, "output": 1}}, 'prices."gpt-4o"]: name a provider and a model'),
    ({"openai/": {"input": 1, "output": 1}}, 'prices."openai/"]: name a provider and a model'),
    ({"openai/ gpt-4o": {"input": 1, "output": 1}}, "name a provider and a model"),
    ({"azure/gpt-4o": {"input": 1, "output": 1}}, "no provider named 'azure' (configured: anthropic, openai)"),
    ({"openai/gpt-4o": {"input": 1}}, 'prices."openai/gpt-4o"]: input and output are required'),
    ({"openai/gpt-4o": {"output": 1}}, "input and output are required"),
    ({"openai/gpt-4o": {"input": 1, "output": 1, "cached": 1}}, "unknown key 'prices.\"openai/gpt-4o\".cached'"),
    ({"openai/gpt-4o": {"input": -1, "output": 1}},
     'prices."openai/gpt-4o".input must be an amount from 0 to 1000000 (per million tokens), got -1.0'),
    ({"openai/gpt-4o": {"input": 1, "output": float("inf")}}, "output must be an amount from 0 to 1000000"),
    ({"openai/gpt-4o": {"input": 1, "output": float("nan")}}, "output must be an amount from 0 to 1000000"),
    ({"openai/gpt-4o": {"input": 1, "output": 1, "cache_read": 2e6}}, "cache_read must be an amount"),
    ({"openai/gpt-4o": {"input": "2.50", "output": 1}}, 'prices."openai/gpt-4o".input must be float, got str'),
    ({"openai/gpt-4o": {"input": True, "output": 1}}, "input must be float, got bool"),
    ({"openai/gpt-4o": 3}, 'prices."openai/gpt-4o"] must be a table'),
])
def test_bad_prices_stop_the_start(prices, message):
    """A price table that cannot be right is refused with an error naming the key."""
    with pytest.raises(ConfigError) as caught:
        config(prices)
    assert message in str(caught.value)


def test_prices_must_be_a_table():
    """`prices = 3` is an error, not ignored."""
    with pytest.raises(ConfigError, match=r"\[prices\] must be a table"):
        parse({"prices": 3}, environ={})


# -- what interceptions record -----------------------------------------------------------------


def test_a_blocking_answer_records_its_cost():
    """A chat completion's tokens (cached ones apart) are priced at the answering snapshot's model."""
    g = gateway()
    g.upstream.handler = json_answer(200, payloads.CHAT_JSON)  # gpt-4o-2024-08-06: 30 + 20 cached in, 9 out
    answer = g.send("POST", "/openai/v1/chat/completions", {"model": "gpt-4o", "messages": []}, AUTH)
    assert answer.status == 200
    [record] = g.records
    assert (record.input_tokens, record.cache_read_tokens, record.output_tokens) == (30, 20, 9)
    # 30 * 2.50 + 20 * 1.25 + 9 * 10.00 = 75 + 25 + 90 micro-dollars
    assert record.cost_micros == 190
    assert g.bridge.metrics.cost.labels("openai", "gpt-4o-2024-08-06")._value.get() == 190


def test_a_stream_records_its_cost():
    """An Anthropic stream's usage (input at message_start, output at message_delta) is priced."""
    g = gateway({"prices": {"anthropic/claude-sonnet-4-6": {"input": 3, "output": 15, "cache_read": 0.3,
                                                              "cache_write": 3.75}}})
    g.upstream.handler = sse_answer(payloads.MESSAGE_EVENTS)
    body = {"model": "claude-sonnet-4-6", "max_tokens": 10, "stream": True, "messages": []}
    answer = g.send("POST", "/anthropic/v1/messages", body, AUTH)
    assert answer.status == 200
    [record] = g.records
    assert (record.input_tokens, record.output_tokens) == (40, 21)
    assert record.cost_micros == 40 * 3 + 21 * 15


def test_an_unknown_model_records_no_cost_and_is_counted():
    """A model with no price is recorded with no cost (never a guess) and counted in a metric."""
    g = gateway()
    g.upstream.handler = sse_answer(payloads.MESSAGE_EVENTS)  # claude-sonnet-4-6: not in the shipped table
    body = {"model": "claude-sonnet-4-6", "max_tokens": 10, "stream": True, "messages": []}
    g.send("POST", "/anthropic/v1/messages", body, AUTH)
    [record] = g.records
    assert record.input_tokens == 40 and record.cost_micros is None
    metrics = g.bridge.metrics
    assert metrics.unpriced.labels("anthropic", "claude-sonnet-4-6")._value.get() == 1
    assert b'bridgeproxy_unpriced_requests_total{model="claude-sonnet-4-6",provider="anthropic"} 1.0' in \
        metrics.exposition()


def test_requests_without_usage_record_no_cost_and_are_not_counted():
    """A passthrough request and a refusal have nothing to price: no cost, and not counted as unpriced."""
    g = gateway()
    g.upstream.handler = json_answer(200, {"data": []})
    assert g.send("GET", "/openai/v1/models", None, AUTH).status == 200
    assert g.send("POST", "/openai/v1/chat/completions", b"{not json", AUTH).status == 400
    assert [(r.status, r.cost_micros) for r in g.records] == [("ok", None), ("refused", None)]
    assert b"bridgeproxy_unpriced_requests_total{" not in g.bridge.metrics.exposition()


def test_an_error_answer_costs_nothing():
    """A provider's error answer has no tokens: its cost is 0 when the model has a price."""
    g = gateway()
    g.upstream.handler = json_answer(400, {"error": {"message": "bad", "type": "invalid_request_error"}})
    g.send("POST", "/openai/v1/chat/completions", {"model": "gpt-4o", "messages": []}, AUTH)
    assert [(r.upstream_status, r.cost_micros) for r in g.records] == [(400, 0)]


def test_a_reload_changes_the_prices():
    """New prices apply to requests after a reload (SIGHUP)."""
    g = gateway()
    g.upstream.handler = json_answer(200, payloads.CHAT_JSON)
    g.send("POST", "/openai/v1/chat/completions", {"model": "gpt-4o", "messages": []}, AUTH)
    bridge = g.bridge
    new = parse({**{"providers": {name: {"base_url": e.config.base_url} for name, e in
                                  ((n.decode(), e) for n, e in bridge.providers.items())}},
                 "prices": {"openai/gpt-4o": {"input": 0, "output": 1000}}}, environ={})
    bridge.reconfigure(new, providers={name.decode(): e for name, e in bridge.providers.items()},
                       extractors=bridge.extractors, resolvers=bridge.resolvers, detectors=bridge.detectors)
    g.send("POST", "/openai/v1/chat/completions", {"model": "gpt-4o", "messages": []}, AUTH)
    assert [r.cost_micros for r in g.records] == [190, 9 * 1000]


# -- the store and usage -----------------------------------------------------------------------


DAY = 86400.0
DAY0 = 1_780_000_000.0 - 1_780_000_000.0 % DAY  # 2026-05-28T00:00:00Z


def rec(n: int, **kw) -> Interception:
    fields = dict(id=f"id-{n}", started_at=DAY0 + n, ended_at=DAY0 + n + 1, provider="openai",
                  route="chat_completions", intercepted=True, method="POST", model="gpt-4o", streamed=False,
                  client="Codex", client_session_id=None, user_agent=None, initiator_id="u1",
                  initiator_username="alice", credential_user_id="u1", credential_kind="centralized",
                  credential_hint=None, upstream_status=200, http_status=200, input_tokens=10, output_tokens=5,
                  cost_micros=100)
    fields.update(kw)
    return Interception(**fields)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request):
    """An empty store of each dialect (PostgreSQL when BRIDGEPROXY_TEST_POSTGRES names a server)."""
    schema = None
    if request.param == "postgresql":
        url, schema = pg_schema()
    else:
        url = "sqlite::memory:"
    database = Database(url)
    database.migrate()
    yield database
    database.close()
    if schema is not None:
        drop_pg_schema(schema)


RECORDS = [
    rec(1), rec(2, cost_micros=250),
    rec(3, started_at=DAY0 + DAY + 5, model="claude-x", provider="anthropic", client="Claude Code",
        cost_micros=None),
    rec(4, started_at=DAY0 + DAY + 6, initiator_id="u2", initiator_username="bob", cost_micros=1_000_000),
    rec(5, started_at=DAY0 + DAY + 7, cost_micros=None, input_tokens=0, output_tokens=0, upstream_status=None,
        status="refused"),
]


def test_cost_is_stored_and_read_back(db):
    """An interception's cost survives the store; no cost stays null, not 0."""
    db.insert_interceptions(RECORDS[:3])
    costs = {r["id"]: r["cost_micros"] for r in db.interceptions()}
    assert costs == {"id-1": 100, "id-2": 250, "id-3": None}


def test_usage_reports_cost_by_user_model_client_and_day(db):
    """Usage sums the cost per initiator, model, client and UTC day, and counts the requests it could not price."""
    db.insert_interceptions(RECORDS)

    def totals(by):
        return {tuple(r[k] for k in by.split(",")): (r["requests"], r["cost_micros"], r["unpriced_requests"])
                for r in db.usage(by=by)}
    assert totals("initiator") == {("alice",): (4, 350, 1), ("bob",): (1, 1_000_000, 0)}
    assert totals("model") == {("gpt-4o",): (4, 1_000_350, 0), ("claude-x",): (1, 0, 1)}
    assert totals("client") == {("Codex",): (4, 1_000_350, 0), ("Claude Code",): (1, 0, 1)}
    assert totals("day") == {("2026-05-28",): (2, 350, 0), ("2026-05-29",): (3, 1_000_000, 1)}
    assert totals("initiator,day") == {
        ("alice", "2026-05-28"): (2, 350, 0), ("alice", "2026-05-29"): (2, 0, 1),
        ("bob", "2026-05-29"): (1, 1_000_000, 0)}


def test_usage_by_day_is_newest_day_first(db):
    """Grouped by day, the newest day comes first (then the busiest group within a day)."""
    db.insert_interceptions(RECORDS)
    assert [r["day"] for r in db.usage(by="day")] == ["2026-05-29", "2026-05-28"]
    assert [(r["day"], r["initiator"]) for r in db.usage(by="day,initiator")] == [
        ("2026-05-29", "alice"), ("2026-05-29", "bob"), ("2026-05-28", "alice")]


@pytest.mark.parametrize("by", ["day,day", "initiator,", "", "day; DROP TABLE users", "week"])
def test_usage_refuses_other_groupings(db, by):
    """Only the known groups, each once, can be asked for (never SQL built from input)."""
    with pytest.raises(StoreError, match="usage can be grouped by initiator, client, model or day"):
        db.usage(by=by)


def test_the_migration_adds_a_null_cost_to_earlier_rows(tmp_path, monkeypatch):
    """A store of schema 2 gets the cost column; the rows it had have no cost."""
    from bridgeproxy.store import database as database_module
    url = f"sqlite:{tmp_path / 'old.db'}"
    old = Database(url)
    monkeypatch.setattr(database_module, "LATEST", 2)
    assert old.migrate() == [1, 2]
    old.execute("INSERT INTO interceptions (id, started_at, ended_at, duration_ms, provider, route, intercepted, "
                "method, streamed, client, status) VALUES ('old', 1, 2, 1000, 'openai', 'r', 1, 'POST', 0, 'c', "
                "'ok')")
    monkeypatch.setattr(database_module, "LATEST", LATEST)
    assert old.migrate() == list(range(3, LATEST + 1))
    old.insert_interceptions([rec(1)])
    assert {r["id"]: r["cost_micros"] for r in old.interceptions()} == {"old": None, "id-1": 100}
    old.close()


# -- the command -------------------------------------------------------------------------------


@pytest.fixture
def store_config(tmp_path):
    path = tmp_path / "bridge.toml"
    path.write_text(f'database = "sqlite:{tmp_path / "b.db"}"\n')
    db = Database(f"sqlite:{tmp_path / 'b.db'}")
    db.migrate()
    db.insert_interceptions(RECORDS)
    db.close()
    return str(path)


def run(*argv):
    out = io.StringIO()
    code = cli.main(list(argv), out=out)
    return code, out.getvalue()


def test_usage_command_shows_cost_in_currency_units(store_config):
    """The table shows each group's cost as an amount (micro-units as decimals) and the unpriced count."""
    code, out = run("usage", "--config", store_config, "--by", "initiator")
    lines = [line.split() for line in out.splitlines()]
    assert code == 0 and lines[0] == ["initiator", "requests", "input_tokens", "output_tokens", "cache_read_tokens",
                                      "cache_write_tokens", "cost", "unpriced_requests"]
    assert lines[1] == ["alice", "4", "30", "15", "0", "0", "0.000350", "1"]
    assert lines[2] == ["bob", "1", "10", "5", "0", "0", "1.000000", "0"]


def test_usage_command_by_user_and_day_as_json(store_config):
    """`--by initiator,day --json`: one object per user and day, cost in integer micro-units."""
    code, out = run("usage", "--config", store_config, "--by", "initiator,day", "--json")
    rows = json.loads(out)
    assert code == 0 and rows[0] == {
        "initiator": "alice", "day": "2026-05-29", "requests": 2, "input_tokens": 10, "output_tokens": 5,
        "cache_read_tokens": 0, "cache_write_tokens": 0, "cost_micros": 0, "unpriced_requests": 1}
    assert [(r["initiator"], r["day"], r["cost_micros"]) for r in rows[1:]] == [
        ("bob", "2026-05-29", 1_000_000), ("alice", "2026-05-28", 350)]


@pytest.mark.parametrize("by", ["week", "day,day", "model,"])
def test_usage_command_refuses_other_groupings(store_config, by, capsys):
    """A grouping usage cannot do is a command-line error (status 2), nothing read."""
    with pytest.raises(SystemExit) as caught:
        cli.main(["usage", "--config", store_config, "--by", by], out=io.StringIO())
    assert caught.value.code == 2
    assert "usage can be grouped by initiator, client, model or day" in capsys.readouterr().err
