# -*- test-case-name: tests.test_budgets -*-
"""
Budgets: what a user may spend per UTC day, week or month, enforced before
a request is forwarded.

A request is let through only if its worst case fits in what is left of
its user's budget: the prompt estimated from the size of the body (one
token per L{BYTES_PER_TOKEN} bytes, at the dearest of the model's input
prices) plus the output it may ask for (C{max_tokens},
C{max_output_tokens} or C{max_completion_tokens}, else
C{[budgets] assumed_max_tokens}) at the output price.  That worst case is
held in the store while the request runs and replaced by its real cost
when it ends (L{bridgeproxy.store.budgets}), so concurrent requests, from
any number of processes, cannot together spend more than the budget
allows, bar what one request costs beyond its estimate.

A request for a model without a price has no worst case: it is let
through with no hold unless its user is already at or over the budget,
and counted in C{bridgeproxy_budget_unpriced_requests_total}.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
import re
from decimal import Decimal
from typing import Any, Optional

from bridgeproxy.errors import BridgeError
from bridgeproxy.prices import MICROS, Price
from bridgeproxy.store.budgets import (
    PERIODS, Budget, Standing, effective, own_budgets, period_days, spenders, standing,
)

#: The prompt is estimated at one token per this many bytes of request body.  Text
#: runs at about four characters a token, and JSON adds quoting and structure: this
#: errs on the side of holding too much.
BYTES_PER_TOKEN = 3
#: The output a request may ask for is taken at most as this many tokens (keeps a
#: nonsense C{max_tokens} from overflowing the arithmetic; such a request is refused anyway).
MAX_ASKED_TOKENS = 10_000_000
#: The request fields that cap its output, by provider API.
OUTPUT_CAPS = ("max_tokens", "max_output_tokens", "max_completion_tokens")
_AMOUNT = re.compile(r"\s*[0-9]+(\.[0-9]+)?\s*")
#: The most a budget can be, in micro-units (a billion units of the currency).
MAX_AMOUNT_MICROS = 1_000_000_000 * MICROS


class BudgetExceeded(BridgeError):
    """A user at or over the budget, or whose request's worst case does not fit in what is left (429)."""

    status = 429
    kind = "budget"
    record_status = "refused"
    reason = "budget"


class BudgetUnavailable(BridgeError):
    """The store could not be asked whether a request fits in its user's budget (503)."""

    status = 503
    kind = "api_error"
    record_status = "refused"
    reason = "budget_unavailable"


def asked_tokens(parsed: Optional[dict], assumed: int) -> int:
    """The output tokens a request may ask for: its own cap, else C{assumed}."""
    for name in OUTPUT_CAPS:
        value = (parsed or {}).get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return min(value, MAX_ASKED_TOKENS)
    return assumed


def worst_case(price: Price, body_bytes: int, parsed: Optional[dict], assumed_max_tokens: int) -> int:
    """
    What a request may cost at most, in micro-units: its body as prompt
    tokens at the dearest input price (uncached, cache read or cache
    write), plus the output it asks for at the output price.
    """
    prompt = math.ceil(body_bytes / BYTES_PER_TOKEN)
    input_price = max(price.input, price.cache_read, price.cache_write)
    total = prompt * input_price + asked_tokens(parsed, assumed_max_tokens) * price.output
    return -(-total // 1_000_000)  # rounded up: a worst case is never short of the real cost by rounding


def parse_amount(text: str) -> int:
    """
    An amount of the currency (C{"25"}, C{"12.50"}) as micro-units, exactly.

    @raise ValueError: for anything but a plain amount from 0 to a billion, with at most six decimals.
    """
    if not _AMOUNT.fullmatch(text):
        raise ValueError(f"must be a plain amount of 0 or more (25, 12.50), got {text!r}")
    micros = Decimal(text.strip()) * MICROS
    if micros != micros.to_integral_value():
        raise ValueError(f"at most six decimals (a micro-unit), got {text!r}")
    if micros > MAX_AMOUNT_MICROS:
        raise ValueError(f"at most 1000000000, got {text!r}")
    return int(micros)


def money(micros: int) -> str:
    """Micro-units as an amount of the currency, to the micro-unit: C{1234567} -> C{"1.234567"}."""
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    return f"{sign}{micros // MICROS}.{micros % MICROS:06d}"


def iso_day(day: int) -> str:
    """The start of an epoch day as ISO 8601 UTC."""
    return datetime.fromtimestamp(day * 86400, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_ADJECTIVES = {"day": "daily", "week": "weekly", "month": "monthly"}


def refusal(standing: Standing, cost_micros: int, now: float, who: Optional[str] = None) -> BudgetExceeded:
    """
    The 429 for a request of C{who} (a username) that does not fit: what is
    spent, held and left, and when the period renews.
    """
    budget = standing.budget
    who = who or budget.username or budget.user_id
    used = standing.spent_micros + standing.held_micros
    if used >= budget.amount_micros:
        what = f"is used up ({money(standing.spent_micros)} spent"
    else:
        what = (f"has {money(budget.amount_micros - used)} left, less than this request may cost "
                f"({money(cost_micros)}; {money(standing.spent_micros)} spent")
    if standing.held_micros:
        what += f", {money(standing.held_micros)} held by requests in flight"
    wait = max(1, math.ceil(standing.ends_at - now))
    return BudgetExceeded(
        f"Budget exceeded: the {_ADJECTIVES[budget.period]} budget of {money(budget.amount_micros)} for {who} "
        f"{what}). It renews at {iso_day(standing.end_day)}.", headers={"Retry-After": str(wait)})


def describe(user_id: str, username: Optional[str], standing: Optional[Standing]) -> dict[str, Any]:
    """
    A user's budget and where they stand, as data (C{budgets show --json},
    C{/api/v1/budgets}); C{source} is C{own}, C{default} or L{None} (not
    limited).
    """
    if standing is None:
        return {"user_id": user_id, "username": username, "source": None, "amount_micros": None, "period": None,
                "period_start": None, "period_end": None, "spent_micros": None, "held_micros": None,
                "left_micros": None}
    budget = standing.budget
    return {"user_id": user_id, "username": username or budget.username,
            "source": "own" if budget.own else "default", "amount_micros": budget.amount_micros,
            "period": budget.period, "period_start": iso_day(standing.start_day),
            "period_end": iso_day(standing.end_day), "spent_micros": standing.spent_micros,
            "held_micros": standing.held_micros, "left_micros": standing.left_micros}


def report(db: Any, default: Optional[Budget], now: float, user: Optional[tuple[str, Optional[str]]] = None
           ) -> list[dict[str, Any]]:
    """
    Where users stand in their current period, as L{describe} data: the one
    C{user} (C{(user_id, username)}), or every user with a budget of their
    own followed by those of the C{default} budget who spent something in
    its current period.  Runs on the store's thread (or in the command line).
    """
    if user is not None:
        budget = effective(db, user[0], default)
        return [describe(user[0], user[1], standing(db, budget, now) if budget is not None else None)]
    rows = []
    owners = set()
    for budget in own_budgets(db):
        owners.add(budget.user_id)
        rows.append(describe(budget.user_id, budget.username, standing(db, budget, now)))
    if default is not None:
        start, _ = period_days(default.period, now)
        for user_id, username in spenders(db, start):
            if user_id not in owners:
                budget = Budget(user_id, default.amount_micros, default.period, own=False)
                rows.append(describe(user_id, username, standing(db, budget, now)))
    return rows


def default_budget(config: Any) -> Optional[Budget]:
    """The configuration's default budget (C{[budgets] default_amount}), or L{None}."""
    amount = config.default_amount
    if amount is None:
        return None
    return Budget("", int(round(amount * MICROS)), config.default_period, own=False)


__all__ = ["BYTES_PER_TOKEN", "BudgetExceeded", "BudgetUnavailable", "OUTPUT_CAPS", "PERIODS", "asked_tokens",
           "default_budget", "describe", "iso_day", "money", "parse_amount", "refusal", "report", "worst_case"]
