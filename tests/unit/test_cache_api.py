"""The cache package's exported names are a promise; this pins them."""

from __future__ import annotations

import bulkgen.cache
import bulkgen.pricing


def test_cache_public_surface() -> None:
    assert sorted(bulkgen.cache.__all__) == sorted(
        [
            "KEY_PREFIX",
            "BypassPolicy",
            "CachedResult",
            "MemoryCache",
            "NullCache",
            "RedisCache",
            "RedisGuard",
            "ResultCache",
            "SingleFlight",
            "Source",
            "build_cache",
            "cache_key",
            "cache_scope",
            "canonical_json",
        ]
    )
    assert bulkgen.cache.KEY_PREFIX == "bulkgen:gen:"


def test_pricing_public_surface() -> None:
    assert sorted(bulkgen.pricing.__all__) == sorted(
        [
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
    )
