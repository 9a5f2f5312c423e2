# -*- test-case-name: tests.test_prices -*-
"""
What a request cost: the price table and the arithmetic.

A price is four numbers per million tokens (uncached input, output, cache
reads, cache writes) in integer micro-units of the currency (1 USD =
1,000,000).  The bridge ships the providers' list prices (L{SHIPPED}, in
USD) for the C{openai} and C{anthropic} plugins; the configuration's
C{[prices."<provider>/<model>"]} tables add models or replace entries.

A model is found by its name as the provider reported it, then by that name
without a date (C{claude-sonnet-4-5-20250929} -> C{claude-sonnet-4-5},
C{gpt-4o-2024-08-06} -> C{gpt-4o}).  A model found nowhere has no price:
its requests are recorded without a cost, never with a guessed one.

The token counts are the parsers' (L{bridgeproxy.types.Usage}): input
tokens do not include the cached ones, for OpenAI and Anthropic alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

#: Micro-units in one unit of the currency.
MICROS = 1_000_000
#: Tokens the prices are given for.
PER_TOKENS = 1_000_000


@dataclass(frozen=True)
class Price:
    """
    A model's price, in micro-units of the currency per million tokens.

    @ivar input: an input token that was not read from the cache.
    @ivar output: an output token (reasoning tokens included: providers count them as output).
    @ivar cache_read: an input token read from the prompt cache.
    @ivar cache_write: an input token written to the prompt cache.
    """

    input: int
    output: int
    cache_read: int
    cache_write: int

    def cost(self, input_tokens: int, output_tokens: int, cache_read_tokens: int = 0,
             cache_write_tokens: int = 0) -> int:
        """What these tokens cost, in micro-units, rounded to the nearest (half up)."""
        total = (input_tokens * self.input + output_tokens * self.output
                 + cache_read_tokens * self.cache_read + cache_write_tokens * self.cache_write)
        return (total + PER_TOKENS // 2) // PER_TOKENS


def price(input: float, output: float, cache_read: Optional[float] = None,
          cache_write: Optional[float] = None) -> Price:
    """
    A L{Price} from amounts in units of the currency per million tokens, as
    providers publish them (C{price(2.50, 10.00, cache_read=1.25)}).  A cache
    price not given is the input price.
    """
    def micros(amount: float) -> int:
        return int(round(amount * MICROS))
    return Price(micros(input), micros(output),
                 micros(input if cache_read is None else cache_read),
                 micros(input if cache_write is None else cache_write))


# -- the shipped table ------------------------------------------------------------------

#: When L{SHIPPED} was last checked against the providers' pricing pages.
SHIPPED_AS_OF = "2025-11"


def _openai(input: float, cached: Optional[float], output: float) -> Price:
    # OpenAI does not charge for writing its prompt cache: those tokens are input (price's default, as is
    # the input price for cache reads when no cached price is published).
    return price(input, output, cache_read=cached)


def _anthropic(input: float, output: float) -> Price:
    # Anthropic's multipliers: a 5-minute cache write is 1.25x the input price,
    # a cache read 0.1x (a 1-hour write, 2x, is not told apart in the usage).
    return price(input, output, cache_read=input / 10, cache_write=input * 1.25)


#: List prices (USD, standard tier) per provider plugin and model, as published
#: on openai.com/api/pricing and docs.anthropic.com's pricing page.
SHIPPED: dict[str, dict[str, Price]] = {
    "openai": {
        "gpt-5.1": _openai(1.25, 0.125, 10.00),
        "gpt-5.1-codex": _openai(1.25, 0.125, 10.00),
        "gpt-5.1-codex-mini": _openai(0.25, 0.025, 2.00),
        "gpt-5": _openai(1.25, 0.125, 10.00),
        "gpt-5-codex": _openai(1.25, 0.125, 10.00),
        "gpt-5-chat-latest": _openai(1.25, 0.125, 10.00),
        "gpt-5-mini": _openai(0.25, 0.025, 2.00),
        "gpt-5-nano": _openai(0.05, 0.005, 0.40),
        "gpt-5-pro": _openai(15.00, None, 120.00),
        "gpt-4.1": _openai(2.00, 0.50, 8.00),
        "gpt-4.1-mini": _openai(0.40, 0.10, 1.60),
        "gpt-4.1-nano": _openai(0.10, 0.025, 0.40),
        "gpt-4o": _openai(2.50, 1.25, 10.00),
        "gpt-4o-2024-05-13": _openai(5.00, None, 15.00),
        "chatgpt-4o-latest": _openai(5.00, None, 15.00),
        "gpt-4o-mini": _openai(0.15, 0.075, 0.60),
        "o1": _openai(15.00, 7.50, 60.00),
        "o1-pro": _openai(150.00, None, 600.00),
        "o1-mini": _openai(1.10, 0.55, 4.40),
        "o3": _openai(2.00, 0.50, 8.00),
        "o3-pro": _openai(20.00, None, 80.00),
        "o3-mini": _openai(1.10, 0.55, 4.40),
        "o4-mini": _openai(1.10, 0.275, 4.40),
        "codex-mini-latest": _openai(1.50, 0.375, 6.00),
        "gpt-4-turbo": _openai(10.00, None, 30.00),
        "gpt-4": _openai(30.00, None, 60.00),
        "gpt-3.5-turbo": _openai(0.50, None, 1.50),
    },
    "anthropic": {
        "claude-opus-4-5": _anthropic(5.00, 25.00),
        "claude-opus-4-1": _anthropic(15.00, 75.00),
        "claude-opus-4": _anthropic(15.00, 75.00),
        "claude-opus-4-0": _anthropic(15.00, 75.00),
        "claude-sonnet-4-5": _anthropic(3.00, 15.00),
        "claude-sonnet-4": _anthropic(3.00, 15.00),
        "claude-sonnet-4-0": _anthropic(3.00, 15.00),
        "claude-haiku-4-5": _anthropic(1.00, 5.00),
        "claude-3-7-sonnet": _anthropic(3.00, 15.00),
        "claude-3-5-sonnet": _anthropic(3.00, 15.00),
        "claude-3-5-haiku": _anthropic(0.80, 4.00),
        "claude-3-opus": _anthropic(15.00, 75.00),
        "claude-3-sonnet": _anthropic(3.00, 15.00),
        "claude-3-haiku": price(0.25, 1.25, cache_read=0.03, cache_write=0.30),
    },
}


# -- names --------------------------------------------------------------------------

#: A date (or C{latest}) at the end of a model name: C{-20250929}, C{-2024-08-06}, C{@20250929}, C{-latest}.
_DATED = re.compile(r"(?:[-@](?:\d{8}|\d{4}-\d{2}-\d{2})|-latest)$")


def undated(model: str) -> str:
    """
    C{model} without the date (or C{-latest}) that ends a snapshot's name,
    lower-cased.

    >>> undated("claude-sonnet-4-5-20250929")
    'claude-sonnet-4-5'
    >>> undated("gpt-4o-2024-08-06")
    'gpt-4o'
    """
    return _DATED.sub("", model.lower())


# -- the table a bridge prices with ---------------------------------------------------------

_CACHE_MAX = 1024


class PriceTable:
    """
    The prices of each configured provider: its own entries (the
    configuration's), then the shipped ones of its plugin.

    @param providers: provider name -> plugin name (C{ProviderConfig.plugin}).
    @param overrides: C{"<provider>/<model>"} -> L{Price}.
    """

    def __init__(self, providers: Mapping[str, str], overrides: Mapping[str, Price] = {}):
        self._tables: dict[str, tuple[Mapping[str, Price], Mapping[str, Price]]] = {}
        own: dict[str, dict[str, Price]] = {name: {} for name in providers}
        for key, entry in overrides.items():
            name, _, model = key.partition("/")
            own.setdefault(name, {})[model.lower()] = entry
        for name, plugin in providers.items():
            self._tables[name] = (own[name], SHIPPED.get(plugin, {}))
        self._found: dict[tuple[str, str], Optional[Price]] = {}

    def price(self, provider: str, model: Optional[str]) -> Optional[Price]:
        """
        The price of C{model} at C{provider}, or L{None} when neither the
        configuration nor the shipped table knows it.  The most specific name
        wins: the name as given (configured, then shipped), then undated.
        """
        if not model:
            return None
        key = (provider, model)
        try:
            return self._found[key]
        except KeyError:
            pass
        found = None
        tables = self._tables.get(provider)
        if tables is not None:
            for name in dict.fromkeys((model.lower(), undated(model))):
                found = tables[0].get(name) or tables[1].get(name)
                if found is not None:
                    break
        if len(self._found) >= _CACHE_MAX:  # model names come from clients: keep the memory bounded
            self._found.clear()
        self._found[key] = found
        return found

    def cost(self, provider: str, model: Optional[str], usage: Any) -> Optional[int]:
        """
        What C{usage} (a L{bridgeproxy.types.Usage}) cost at C{provider}, in
        micro-units; L{None} when the model has no price.
        """
        found = self.price(provider, model)
        if found is None:
            return None
        return found.cost(usage.input_tokens, usage.output_tokens, usage.cache_read_tokens,
                          usage.cache_write_tokens)


def shipped_reference() -> str:
    """The shipped table as markdown (C{docs/spend.md} shows it; a test keeps the two in step)."""
    def amount(micros: int) -> str:
        text = f"{micros / MICROS:.6f}".rstrip("0")  # pragma: no mutate - "XX0XX" strips the same: no X in a number
        return text + "0" * max(0, 2 - len(text.partition(".")[2]))
    lines = ["| provider | model | input | output | cache read | cache write |", "|---|---|---:|---:|---:|---:|"]
    for plugin, models in SHIPPED.items():
        for name, p in models.items():
            lines.append(f"| {plugin} | `{name}` | {amount(p.input)} | {amount(p.output)} | "
                         f"{amount(p.cache_read)} | {amount(p.cache_write)} |")
    return "\n".join(lines) + "\n"


def table_for(config: Any) -> PriceTable:
    """The L{PriceTable} of a L{bridgeproxy.config.Config}."""
    return PriceTable({name: provider.plugin for name, provider in config.providers.items()},
                      {key: entry.price for key, entry in config.prices.items()})


__all__ = ["MICROS", "SHIPPED", "SHIPPED_AS_OF", "Price", "PriceTable", "price", "shipped_reference", "table_for",
           "undated"]
