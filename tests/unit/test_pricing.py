"""Pricing: exact Decimal arithmetic, prefix lookup, overrides validated at the edge."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from bulkgen.errors import ConfigError
from bulkgen.models import Usage
from bulkgen.pricing import (
    BATCH_DISCOUNT,
    DEFAULT_PRICES,
    PRICES_AS_OF,
    ModelPrice,
    PriceTier,
    cost_usd,
    default_price_table,
    load_price_table,
    worst_case_cost_usd,
)


def test_defaults_cover_common_models_and_are_dated() -> None:
    for model in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano"):
        assert model in DEFAULT_PRICES
    assert {"o3-mini", "gpt-3.5-turbo"} <= DEFAULT_PRICES.keys()
    assert PRICES_AS_OF == "2026-11"
    assert all(isinstance(p.input_per_1m, Decimal) for p in DEFAULT_PRICES.values())


def test_cost_is_exact_decimal() -> None:
    # gpt-4o: 2.50 in, 10.00 out per 1M tokens.
    cost = cost_usd("gpt-4o", Usage(prompt_tokens=1234, completion_tokens=567))
    assert cost == Decimal("0.008755")
    assert isinstance(cost, Decimal)


def test_many_small_costs_add_up_without_float_drift() -> None:
    one = cost_usd("gpt-4o-mini", Usage(prompt_tokens=1, completion_tokens=1))
    assert one == Decimal("0.00000075")
    assert sum((one for _ in range(1_000_000)), Decimal(0)) == Decimal("0.75")


def test_worst_case_uses_max_tokens_for_output() -> None:
    assert worst_case_cost_usd("gpt-4.1", 1000, 1500) == Decimal("0.014")
    assert worst_case_cost_usd("gpt-4.1", 1000, 1500) >= cost_usd("gpt-4.1", Usage(1000, 1499))


@pytest.mark.parametrize(
    ("model", "priced_as"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("GPT-4o", "gpt-4o"),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
    ],
)
def test_longest_prefix_lookup(model: str, priced_as: str) -> None:
    assert default_price_table().price(model) == DEFAULT_PRICES[priced_as]


@pytest.mark.parametrize("model", ["llama-3-70b", "gpt-4.5-preview", "", "gpt-4ox"])
def test_unknown_model_costs_zero_and_says_so(model: str) -> None:
    price = default_price_table().price(model)
    assert price.known is False
    assert cost_usd(model, Usage(1000, 1000)) == Decimal(0)


def test_known_flag_is_true_for_priced_models() -> None:
    assert default_price_table().price("gpt-4o-2024-08-06").known is True


def test_override_replaces_and_extends() -> None:
    table = load_price_table(
        json.dumps(
            {
                "gpt-4o": {"input_per_1m": 1, "output_per_1m": 2},
                "llama-3-70b": {"input_per_1m": 0.59, "output_per_1m": 0.79},
            }
        )
    )
    # No cached-input price given: the published one (1.25), capped at the input price.
    assert table.price("gpt-4o-2024-08-06") == ModelPrice(
        Decimal(1), Decimal(2), cached_input_per_1m=Decimal(1)
    )
    assert table.cost_usd("llama-3-70b", Usage(1_000_000, 1_000_000)) == Decimal("1.38")
    assert table.price("gpt-4o-mini") == DEFAULT_PRICES["gpt-4o-mini"]  # untouched
    assert default_price_table().price("gpt-4o") == DEFAULT_PRICES["gpt-4o"]  # not mutated


def test_override_keeps_decimal_exactness() -> None:
    table = load_price_table('{"m": {"input_per_1m": 0.1, "output_per_1m": 0.2}}')
    assert table.cost_usd("m", Usage(1_000_000, 1_000_000)) == Decimal("0.3")


@pytest.mark.parametrize("text", [None, "", "   "])
def test_no_override_gives_defaults(text: str | None) -> None:
    assert load_price_table(text).price("gpt-4o") == DEFAULT_PRICES["gpt-4o"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["gpt-4o"]', "must be a JSON object"),
        ('{"gpt-4o": 2.5}', "must map to"),
        ('{"gpt-4o": {"input_per_1m": 1}}', "missing: \\['output_per_1m'\\]"),
        ('{"gpt-4o": {"input_per_1m": 1, "output_per_1m": 2, "x": 3}}', "unexpected: \\['x'\\]"),
        ('{"gpt-4o": {"input_per_1m": "1", "output_per_1m": 2}}', "must be a number"),
        ('{"gpt-4o": {"input_per_1m": true, "output_per_1m": 2}}', "must be a number"),
        ('{"gpt-4o": {"input_per_1m": -1, "output_per_1m": 2}}', "must be >= 0"),
        ('{"gpt-4o": {"input_per_1m": NaN, "output_per_1m": 2}}', "must be a number"),
        ('{"": {"input_per_1m": 1, "output_per_1m": 2}}', "non-empty"),
    ],
)
def test_invalid_override_is_a_config_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_price_table(text)


def test_negative_token_counts_are_a_bug() -> None:
    with pytest.raises(ValueError):
        worst_case_cost_usd("gpt-4o", -1, 10)


def test_cached_prompt_tokens_cost_the_cached_input_price() -> None:
    # gpt-4o: 2.50 in, 1.25 cached in, 10.00 out per 1M tokens; 1,024 of 2,000 prompt
    # tokens read from the provider's prompt cache.
    usage = Usage(prompt_tokens=2000, completion_tokens=100, cache_read_tokens=1024)
    assert cost_usd("gpt-4o", usage) == Decimal("0.00472")  # 976*2.5 + 1024*1.25 + 100*10
    assert cost_usd("gpt-4o", usage) < cost_usd("gpt-4o", Usage(2000, 100))
    # More cached than the whole prompt (a confused server) is the whole prompt cached.
    assert cost_usd("gpt-4o", Usage(2000, 0, 5000)) == cost_usd("gpt-4o", Usage(2000, 0, 2000))


def test_models_without_prompt_caching_price_cached_tokens_as_input() -> None:
    assert DEFAULT_PRICES["gpt-4"].cached_input_per_1m is None
    assert cost_usd("gpt-4", Usage(2000, 100, 1024)) == cost_usd("gpt-4", Usage(2000, 100))


def test_shipped_cached_prices_are_below_their_input_prices() -> None:
    for model, price in DEFAULT_PRICES.items():
        assert price.cached_input_rate <= price.input_per_1m, model
    assert DEFAULT_PRICES["gpt-4o"].cached_input_per_1m == Decimal("1.25")


def test_worst_case_assumes_nothing_cached() -> None:
    assert worst_case_cost_usd("gpt-4o", 2000, 100) == cost_usd("gpt-4o", Usage(2000, 100))


def test_override_may_name_its_cached_price_or_take_the_input_price() -> None:
    table = load_price_table(
        json.dumps(
            {
                "gpt-4o": {"input_per_1m": 2, "output_per_1m": 8, "cached_input_per_1m": 0.2},
                "gpt-4.1": {"input_per_1m": 3, "output_per_1m": 9},
                "llama-3-70b": {"input_per_1m": 0.59, "output_per_1m": 0.79},
            }
        )
    )
    assert table.price("gpt-4o").cached_input_rate == Decimal("0.2")
    assert table.price("gpt-4.1").cached_input_rate == Decimal("0.50")  # the published one
    assert table.price("llama-3-70b").cached_input_rate == Decimal("0.59")  # none published
    with pytest.raises(ConfigError, match="cached_input_per_1m must be >= 0"):
        load_price_table(
            '{"m": {"input_per_1m": 1, "output_per_1m": 2, "cached_input_per_1m": -1}}'
        )


@pytest.mark.parametrize(
    ("model", "batch_in", "batch_out", "batch_cached"),
    [
        # OpenAI's published Batch API prices, USD per 1M tokens.
        ("gpt-4o", "1.25", "5.00", "0.625"),
        ("gpt-4o-mini", "0.075", "0.30", "0.0375"),
        ("gpt-4.1", "1.00", "4.00", "0.25"),
        ("gpt-5", "0.625", "5.00", "0.0625"),
    ],
)
def test_shipped_batch_prices_are_half_the_online_ones(
    model: str, batch_in: str, batch_out: str, batch_cached: str
) -> None:
    price = DEFAULT_PRICES[model]
    assert price.batch_input_per_1m == Decimal(batch_in)
    assert price.batch_output_per_1m == Decimal(batch_out)
    assert price.batch_cached_input_per_1m == Decimal(batch_cached)
    assert price.at(PriceTier.BATCH) == ModelPrice(
        Decimal(batch_in), Decimal(batch_out), cached_input_per_1m=Decimal(batch_cached)
    )


def test_every_shipped_model_costs_half_at_batch_prices() -> None:
    usage = Usage(prompt_tokens=3001, completion_tokens=777, cache_read_tokens=1024)
    for model in DEFAULT_PRICES:
        online = cost_usd(model, usage)
        assert cost_usd(model, usage, tier=PriceTier.BATCH) == online * BATCH_DISCOUNT, model
        assert worst_case_cost_usd(model, 3001, 777, tier=PriceTier.BATCH) == (
            worst_case_cost_usd(model, 3001, 777) / 2
        ), model


def test_batch_price_of_a_model_without_prompt_caching_prices_cached_tokens_as_input() -> None:
    batch = DEFAULT_PRICES["gpt-4"].at(PriceTier.BATCH)
    assert batch.cached_input_rate == batch.input_per_1m == Decimal(15)


def test_online_tier_is_the_online_price() -> None:
    price = DEFAULT_PRICES["gpt-4o"]
    assert price.at(PriceTier.ONLINE) == ModelPrice(
        Decimal("2.50"), Decimal("10.00"), cached_input_per_1m=Decimal("1.25")
    )
    assert cost_usd("gpt-4o", Usage(1000, 100), tier=PriceTier.ONLINE) == cost_usd(
        "gpt-4o", Usage(1000, 100)
    )


def test_unknown_model_costs_zero_at_batch_prices_too() -> None:
    assert cost_usd("llama-3-70b", Usage(1000, 1000), tier=PriceTier.BATCH) == 0
    assert default_price_table().price("llama-3-70b").at(PriceTier.BATCH).known is False


def test_override_without_batch_prices_takes_half_of_its_own_online_prices() -> None:
    # An account's negotiated online price, not the shipped batch price, is what is halved.
    table = load_price_table('{"gpt-4o": {"input_per_1m": 2, "output_per_1m": 8}}')
    batch = table.price("gpt-4o").at(PriceTier.BATCH)
    assert (batch.input_per_1m, batch.output_per_1m) == (Decimal(1), Decimal(4))
    # Cached: the published online 1.25, capped at the override's input 2 -> 1.25, halved.
    assert batch.cached_input_rate == Decimal("0.625")
    assert table.cost_usd("gpt-4o", Usage(1_000_000, 1_000_000), tier=PriceTier.BATCH) == 5


def test_override_may_name_its_batch_prices() -> None:
    table = load_price_table(
        json.dumps(
            {
                "llama-3-70b": {
                    "input_per_1m": 0.59,
                    "output_per_1m": 0.79,
                    "batch_input_per_1m": 0.4,
                    "batch_output_per_1m": 0.6,
                    "batch_cached_input_per_1m": 0.1,
                },
                "m": {"input_per_1m": 1, "output_per_1m": 2, "batch_output_per_1m": 1.5},
            }
        )
    )
    llama = table.price("llama-3-70b").at(PriceTier.BATCH)
    assert (llama.input_per_1m, llama.output_per_1m) == (Decimal("0.4"), Decimal("0.6"))
    assert llama.cached_input_rate == Decimal("0.1")
    m = table.price("m").at(PriceTier.BATCH)  # the one named, half of the others
    assert (m.input_per_1m, m.output_per_1m, m.cached_input_rate) == (
        Decimal("0.5"),
        Decimal("1.5"),
        Decimal("0.5"),
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_input_per_1m", -1, "batch_input_per_1m must be >= 0"),
        ("batch_output_per_1m", "1", "batch_output_per_1m must be a number"),
        ("batch_cached_input_per_1m", True, "batch_cached_input_per_1m must be a number"),
        ("batch_price", 1, "unexpected: \\['batch_price'\\]"),
    ],
)
def test_invalid_batch_price_is_a_config_error(field: str, value: object, message: str) -> None:
    text = json.dumps({"m": {"input_per_1m": 1, "output_per_1m": 2, field: value}})
    with pytest.raises(ConfigError, match=message):
        load_price_table(text)
