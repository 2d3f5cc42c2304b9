"""A batch's cost and savings from its grouped job rows (bulkgen.accounting). Pure."""

from __future__ import annotations

from decimal import Decimal

from bulkgen.accounting import UsageLine, summarize
from bulkgen.pricing import ModelPrice, PriceTable, PriceTier

PRICES = PriceTable({"gpt-4o": ModelPrice(Decimal("2.50"), Decimal("10.00"))})


def test_paid_cached_and_failed_lines_add_up() -> None:
    usage = summarize(
        [
            UsageLine("done", False, "gpt-4o-2024-08-06", 3, 300_000, 600_000),
            UsageLine("done", True, "gpt-4o", 2, 200_000, 400_000),
            UsageLine("failed", False, "gpt-4o", 1, 100_000, 100_000),
        ],
        PRICES,
    )
    assert usage.paid_jobs == 4
    assert (usage.prompt_tokens, usage.completion_tokens) == (400_000, 700_000)
    # 0.3 * 2.5 + 0.6 * 10 = 6.75 done; 0.1 * 2.5 + 0.1 * 10 = 1.25 failed.
    assert usage.cost_usd == Decimal("8.00")
    assert usage.failed_cost_usd == Decimal("1.25")
    assert usage.cache_hits == 2
    assert usage.saved_usd == Decimal("4.50")  # 0.2 * 2.5 + 0.4 * 10
    assert usage.unpriced_models == ()


def test_unknown_models_cost_nothing_and_are_named() -> None:
    usage = summarize([UsageLine("done", False, "mystery-1", 1, 10, 10)], PRICES)
    assert usage.cost_usd == 0
    assert usage.unpriced_models == ("mystery-1",)
    assert usage.as_dict()["cost_usd"] == "0"


def test_empty_batch() -> None:
    usage = summarize([], PRICES)
    assert (usage.paid_jobs, usage.cache_hits) == (0, 0)
    assert usage.cost_usd == usage.saved_usd == Decimal(0)


def test_prompt_tokens_read_from_the_providers_cache_cost_less() -> None:
    prices = PriceTable(
        {"gpt-4o": ModelPrice(Decimal("2.50"), Decimal("10.00"), True, Decimal("1.25"))}
    )
    cached = UsageLine("done", False, "gpt-4o", 4, 400_000, 100_000, cache_read_tokens=300_000)
    usage = summarize([cached], prices)
    # 0.1 * 2.5 + 0.3 * 1.25 + 0.1 * 10 = 1.625 (1.75 if none were cached)
    assert usage.cost_usd == Decimal("1.625")
    assert usage.as_dict()["paid_cache_read_tokens"] == 300_000


def test_batch_lines_cost_the_batch_prices() -> None:
    online = UsageLine("done", False, "gpt-4o", 2, 200_000, 400_000)
    batch = UsageLine("done", False, "gpt-4o", 2, 200_000, 400_000, tier=PriceTier.BATCH)
    hit = UsageLine("done", True, "gpt-4o", 1, 100_000, 200_000, tier=PriceTier.BATCH)
    usage = summarize([online, batch, hit], PRICES)
    # Online 0.2 * 2.5 + 0.4 * 10 = 4.50; the same tokens at batch prices (half) 2.25.
    assert usage.cost_usd == Decimal("6.75")
    assert usage.saved_usd == Decimal("1.125")  # what the cache hit would have cost in batch
    assert usage.paid_jobs == 4
    assert summarize([batch], PRICES).cost_usd == summarize([online], PRICES).cost_usd / 2
