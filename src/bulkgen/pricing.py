"""What a request costs, in US dollars, computed exactly with :class:`~decimal.Decimal`.

Pure: no I/O, no clock. The shipped table holds *list* prices per 1M tokens as compiled in
:data:`PRICES_AS_OF`; providers change them and accounts negotiate their own, so any entry
can be overridden with ``BULKGEN_PRICES_JSON`` (see :func:`load_price_table`).

Prompt tokens the provider read from its prompt cache (``Usage.cache_read_tokens``) cost
``cached_input_per_1m``: OpenAI bills a cached prefix at a fraction of the input price, so
a batch sharing a long template would otherwise be over-priced. The shipped table has the
published cached-input prices; a model without one prices cached tokens as input tokens.

Every price has a second tier, :attr:`PriceTier.BATCH`: work sent through the provider's
Batch API, answered within a day, bills at :data:`BATCH_DISCOUNT` (half) of the online
price, input, cached input and output alike, as OpenAI publishes it. The shipped table
names each model's batch prices; an override that names none takes half of its own online
prices, since the discount is the provider's rule while the online prices are the account's.

Lookup never crashes a run: a model name is matched exactly, then by the longest known
prefix that ends on a ``-`` boundary (``gpt-4o-2024-08-06`` prices as ``gpt-4o``, while
``gpt-4.5`` is *not* taken for ``gpt-4``); anything else costs 0 with ``known=False`` so
callers can flag it instead of inventing a figure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum

from bulkgen.errors import ConfigError
from bulkgen.models import Usage

__all__ = [
    "BATCH_DISCOUNT",
    "DEFAULT_PRICES",
    "PRICES_AS_OF",
    "ModelPrice",
    "PriceTable",
    "PriceTier",
    "cost_usd",
    "default_price_table",
    "load_price_table",
    "parse_price_overrides",
    "worst_case_cost_usd",
]

PRICES_AS_OF = "2026-11"
"""When the shipped list prices were compiled. List prices only: override for real billing."""

_TOKENS_PER_UNIT = Decimal(1_000_000)
_PRICE_FIELDS = frozenset({"input_per_1m", "output_per_1m"})
_BATCH_PRICE_FIELDS = ("batch_input_per_1m", "batch_output_per_1m", "batch_cached_input_per_1m")
_OPTIONAL_PRICE_FIELDS = frozenset({"cached_input_per_1m", *_BATCH_PRICE_FIELDS})

BATCH_DISCOUNT = Decimal("0.5")
"""Batch API price / online price, for every kind of token (OpenAI's published rule)."""


class PriceTier(StrEnum):
    """How a request is sent, which decides its price: one call each, or a provider batch."""

    ONLINE = "online"
    BATCH = "batch"


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per 1M input, output and cached input tokens; ``known=False`` marks a model we
    have no price for. ``cached_input_per_1m`` None: cached tokens cost the input price.
    ``batch_*`` None: that batch price is the online one times :data:`BATCH_DISCOUNT`."""

    input_per_1m: Decimal
    output_per_1m: Decimal
    known: bool = True
    cached_input_per_1m: Decimal | None = None
    batch_input_per_1m: Decimal | None = None
    batch_output_per_1m: Decimal | None = None
    batch_cached_input_per_1m: Decimal | None = None

    @property
    def cached_input_rate(self) -> Decimal:
        """What a cached prompt token costs per 1M: its own price, else the input price."""
        return self.input_per_1m if self.cached_input_per_1m is None else self.cached_input_per_1m

    def at(self, tier: PriceTier) -> ModelPrice:
        """The rates that apply in ``tier``, as an online-shaped price (no batch fields).

        A batch cached-input price not given is half the online cached rate, never more
        than the batch input price (a cached token is never dearer than an uncached one)."""
        if tier is PriceTier.ONLINE:
            return ModelPrice(
                self.input_per_1m, self.output_per_1m, self.known, self.cached_input_per_1m
            )
        batch_input = _or_discounted(self.batch_input_per_1m, self.input_per_1m)
        cached = self.batch_cached_input_per_1m
        if cached is None:
            cached = min(self.cached_input_rate * BATCH_DISCOUNT, batch_input)
        return ModelPrice(
            batch_input,
            _or_discounted(self.batch_output_per_1m, self.output_per_1m),
            self.known,
            cached,
        )


def _or_discounted(batch_price: Decimal | None, online_price: Decimal) -> Decimal:
    return online_price * BATCH_DISCOUNT if batch_price is None else batch_price


def _usd(input_per_1m: str, output_per_1m: str, cached_input_per_1m: str | None) -> ModelPrice:
    """An online list price with its Batch API prices, which OpenAI publishes at exactly
    half for every model of this table (input, output and cached input)."""
    online = ModelPrice(
        Decimal(input_per_1m),
        Decimal(output_per_1m),
        cached_input_per_1m=None if cached_input_per_1m is None else Decimal(cached_input_per_1m),
    )
    batch = online.at(PriceTier.BATCH)
    return replace(
        online,
        batch_input_per_1m=batch.input_per_1m,
        batch_output_per_1m=batch.output_per_1m,
        batch_cached_input_per_1m=batch.cached_input_per_1m,
    )


# List prices, USD per 1M tokens (input, output, cached input), as of PRICES_AS_OF. Checked
# against the genai-prices package's data (0.2.3). None: no prompt caching for that model.
# Batch prices: half of each (see _usd).
DEFAULT_PRICES: Mapping[str, ModelPrice] = {
    "gpt-5": _usd("1.25", "10.00", "0.125"),
    "gpt-5-mini": _usd("0.25", "2.00", "0.025"),
    "gpt-5-nano": _usd("0.05", "0.40", "0.005"),
    "gpt-4.1": _usd("2.00", "8.00", "0.50"),
    "gpt-4.1-mini": _usd("0.40", "1.60", "0.10"),
    "gpt-4.1-nano": _usd("0.10", "0.40", "0.025"),
    "gpt-4o": _usd("2.50", "10.00", "1.25"),
    "gpt-4o-mini": _usd("0.15", "0.60", "0.075"),
    "gpt-4-turbo": _usd("10.00", "30.00", None),
    "gpt-4": _usd("30.00", "60.00", None),
    "gpt-3.5-turbo": _usd("0.50", "1.50", None),
    "o1": _usd("15.00", "60.00", "7.50"),
    "o1-mini": _usd("1.10", "4.40", "0.55"),
    "o3": _usd("2.00", "8.00", "0.50"),
    "o3-mini": _usd("1.10", "4.40", "0.55"),
    "o4-mini": _usd("1.10", "4.40", "0.275"),
}

_UNKNOWN = ModelPrice(Decimal(0), Decimal(0), known=False)


class PriceTable:
    """An immutable model -> price map with the exact-then-longest-prefix lookup."""

    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        self._prices: dict[str, ModelPrice] = {name.lower(): p for name, p in prices.items()}
        # Longest first, so the first prefix that matches is the most specific one.
        self._by_length = sorted(self._prices, key=len, reverse=True)

    def models(self) -> tuple[str, ...]:
        return tuple(sorted(self._prices))

    def price(self, model: str) -> ModelPrice:
        """Price of ``model``; never raises, unknown models cost 0 with ``known=False``."""
        name = model.strip().lower()
        exact = self._prices.get(name)
        if exact is not None:
            return exact
        for known in self._by_length:
            if name.startswith(known + "-"):
                return self._prices[known]
        return _UNKNOWN

    def cost_usd(self, model: str, usage: Usage, *, tier: PriceTier = PriceTier.ONLINE) -> Decimal:
        """Exact cost of a finished call, from the provider's own token counts."""
        return self._cost(
            model, tier, usage.prompt_tokens, usage.completion_tokens, usage.cache_read_tokens
        )

    def worst_case_cost_usd(
        self,
        model: str,
        prompt_tokens: int,
        max_tokens: int,
        *,
        tier: PriceTier = PriceTier.ONLINE,
    ) -> Decimal:
        """Upper bound before sending: the answer cannot be longer than ``max_tokens``.

        Budgets check this bound so a batch cannot pass its cap by the cost of one call.
        """
        return self._cost(model, tier, prompt_tokens, max_tokens)

    def with_overrides(self, overrides: Mapping[str, ModelPrice]) -> PriceTable:
        """A new table: ``overrides`` replace or extend the current entries.

        An override that names no cached-input price keeps this table's for the model
        (its published one), capped at the override's own input price; a model this table
        has no cached price for prices cached tokens at the override's input price."""
        merged = dict(self._prices)
        merged.update({name.lower(): self._with_cached(name, p) for name, p in overrides.items()})
        return PriceTable(merged)

    def _with_cached(self, model: str, override: ModelPrice) -> ModelPrice:
        if override.cached_input_per_1m is not None:
            return override
        published = self.price(model).cached_input_per_1m
        if published is None:
            return override
        return replace(override, cached_input_per_1m=min(published, override.input_per_1m))

    def _cost(
        self,
        model: str,
        tier: PriceTier,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int = 0,
    ) -> Decimal:
        """``cached_tokens`` are part of ``input_tokens``, as providers count them."""
        if input_tokens < 0 or output_tokens < 0 or cached_tokens < 0:
            raise ValueError(
                f"token counts cannot be negative: {input_tokens}, {output_tokens}, {cached_tokens}"
            )
        price = self.price(model).at(tier)
        cached = min(cached_tokens, input_tokens)
        total = (
            (input_tokens - cached) * price.input_per_1m
            + cached * price.cached_input_rate
            + output_tokens * price.output_per_1m
        )
        return total / _TOKENS_PER_UNIT


def _parse_amount(model: str, name: str, value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise ConfigError(
            f"BULKGEN_PRICES_JSON: {model!r}.{name} must be a number of USD per 1M tokens, "
            f"got {value!r}"
        )
    amount = Decimal(value)
    if not amount.is_finite() or amount < 0:
        raise ConfigError(f"BULKGEN_PRICES_JSON: {model!r}.{name} must be >= 0, got {value!r}")
    return amount


def _parse_entry(model: object, entry: object) -> ModelPrice:
    if not isinstance(model, str) or not model.strip():
        raise ConfigError("BULKGEN_PRICES_JSON: model names must be non-empty strings")
    if not isinstance(entry, dict):
        raise ConfigError(
            f'BULKGEN_PRICES_JSON: {model!r} must map to {{"input_per_1m": x, '
            f'"output_per_1m": y}}, got {entry!r}'
        )
    missing = sorted(_PRICE_FIELDS - entry.keys())
    unexpected = sorted(set(entry) - _PRICE_FIELDS - _OPTIONAL_PRICE_FIELDS)
    if missing or unexpected:
        raise ConfigError(
            f"BULKGEN_PRICES_JSON: {model!r} needs input_per_1m and output_per_1m, and "
            f"may have cached_input_per_1m, batch_input_per_1m, batch_output_per_1m and "
            f"batch_cached_input_per_1m (missing: {missing or 'none'}, "
            f"unexpected: {unexpected or 'none'})"
        )
    optional = {
        name: None if entry.get(name) is None else _parse_amount(model, name, entry[name])
        for name in _OPTIONAL_PRICE_FIELDS
    }
    return ModelPrice(
        _parse_amount(model, "input_per_1m", entry["input_per_1m"]),
        _parse_amount(model, "output_per_1m", entry["output_per_1m"]),
        cached_input_per_1m=optional["cached_input_per_1m"],
        batch_input_per_1m=optional["batch_input_per_1m"],
        batch_output_per_1m=optional["batch_output_per_1m"],
        batch_cached_input_per_1m=optional["batch_cached_input_per_1m"],
    )


def parse_price_overrides(prices_json: str) -> dict[str, ModelPrice]:
    """Validate ``BULKGEN_PRICES_JSON`` once, at the edge, so a typo fails before any spend."""
    try:
        # Decimal for every float, so "0.15" stays exactly 0.15.
        raw = json.loads(prices_json, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"BULKGEN_PRICES_JSON is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(
            'BULKGEN_PRICES_JSON must be a JSON object: {"model": {"input_per_1m": x, '
            '"output_per_1m": y}}'
        )
    return {model.strip(): _parse_entry(model, entry) for model, entry in raw.items()}


_DEFAULT_TABLE = PriceTable(DEFAULT_PRICES)


def default_price_table() -> PriceTable:
    """The shipped list prices, without overrides."""
    return _DEFAULT_TABLE


def load_price_table(prices_json: str | None) -> PriceTable:
    """Shipped defaults with ``settings.prices_json`` laid over them; raises ConfigError."""
    if prices_json is None or not prices_json.strip():
        return _DEFAULT_TABLE
    return _DEFAULT_TABLE.with_overrides(parse_price_overrides(prices_json))


def cost_usd(
    model: str,
    usage: Usage,
    *,
    table: PriceTable | None = None,
    tier: PriceTier = PriceTier.ONLINE,
) -> Decimal:
    """Cost of a finished call at ``table`` (default: the shipped list prices)."""
    return (table or _DEFAULT_TABLE).cost_usd(model, usage, tier=tier)


def worst_case_cost_usd(
    model: str,
    prompt_tokens: int,
    max_tokens: int,
    *,
    table: PriceTable | None = None,
    tier: PriceTier = PriceTier.ONLINE,
) -> Decimal:
    """Most a call can cost: all of ``prompt_tokens`` in and ``max_tokens`` out."""
    return (table or _DEFAULT_TABLE).worst_case_cost_usd(
        model, prompt_tokens, max_tokens, tier=tier
    )
