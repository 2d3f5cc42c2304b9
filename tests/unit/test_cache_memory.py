"""MemoryCache, NullCache and the stored value format, with an injected clock."""

from __future__ import annotations

import pytest

from bulkgen.cache import CachedResult, MemoryCache, NullCache
from bulkgen.cache.result import decode, encode
from bulkgen.metrics import Metrics
from bulkgen.models import Completion, Usage

RESULT = CachedResult(
    content="# Tea\n\nTea is a drink.", usage=Usage(12, 34), model="gpt-4o", finish_reason="stop"
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_put_then_get_returns_the_value() -> None:
    cache = MemoryCache(ttl_s=60, clock=FakeClock(), metrics=Metrics())
    await cache.put("k", RESULT)
    assert await cache.get("k") == RESULT
    assert await cache.get("other") is None


async def test_entry_expires_after_ttl() -> None:
    clock = FakeClock()
    cache = MemoryCache(ttl_s=60, clock=clock, metrics=Metrics())
    await cache.put("k", RESULT)
    clock.now += 59.9
    assert await cache.get("k") == RESULT
    clock.now += 0.1
    assert await cache.get("k") is None
    assert len(cache) == 0


async def test_put_refreshes_ttl() -> None:
    clock = FakeClock()
    cache = MemoryCache(ttl_s=10, clock=clock, metrics=Metrics())
    await cache.put("k", RESULT)
    clock.now += 8
    await cache.put("k", RESULT)
    clock.now += 8
    assert await cache.get("k") == RESULT


@pytest.mark.parametrize("content", ["", "   ", "\n\t "])
async def test_blank_content_is_refused_and_counted(content: str) -> None:
    metrics = Metrics()
    cache = MemoryCache(ttl_s=60, clock=FakeClock(), metrics=metrics)
    await cache.put("k", CachedResult(content, Usage(1, 0), "gpt-4o", "stop"))
    assert await cache.get("k") is None
    assert metrics.total("cache.refused") == 1


async def test_zero_ttl_stores_nothing() -> None:
    cache = MemoryCache(ttl_s=0, clock=FakeClock(), metrics=Metrics())
    await cache.put("k", RESULT)
    assert await cache.get("k") is None


async def test_bounded_least_recently_used_goes_first() -> None:
    metrics = Metrics()
    cache = MemoryCache(ttl_s=60, clock=FakeClock(), max_entries=2, metrics=metrics)
    await cache.put("a", RESULT)
    await cache.put("b", RESULT)
    assert await cache.get("a") == RESULT  # "b" is now the least recently used
    await cache.put("c", RESULT)
    assert len(cache) == 2
    assert await cache.get("b") is None
    assert await cache.get("a") == RESULT
    assert await cache.get("c") == RESULT
    assert metrics.total("cache.evicted") == 1


async def test_expired_entries_are_evicted_before_live_ones() -> None:
    clock = FakeClock()
    metrics = Metrics()
    cache = MemoryCache(ttl_s=10, clock=clock, max_entries=2, metrics=metrics)
    await cache.put("old", RESULT)
    clock.now += 5
    await cache.put("live", RESULT)
    clock.now += 6  # "old" expired, "live" not
    await cache.put("new", RESULT)
    assert await cache.get("live") == RESULT
    assert await cache.get("new") == RESULT
    assert metrics.total("cache.evicted") == 0


def test_max_entries_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MemoryCache(ttl_s=60, max_entries=0)


async def test_null_cache_never_hits() -> None:
    cache = NullCache()
    await cache.put("k", RESULT)
    assert await cache.get("k") is None


def test_value_round_trips_with_usage() -> None:
    assert decode(encode(RESULT)) == RESULT
    assert decode(encode(RESULT).encode("utf-8")) == RESULT


def test_unicode_content_round_trips() -> None:
    value = CachedResult("Thé vert — 緑茶", Usage(1, 2), "gpt-4o", "stop")
    assert decode(encode(value)) == value


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"v": 1, "content": "x"}',
        b'{"v": 1, "content": " ", "usage": {"prompt_tokens": 1, "completion_tokens": 1},'
        b' "model": "m", "finish_reason": "stop"}',
        b'{"v": 99, "content": "x", "usage": {"prompt_tokens": 1, "completion_tokens": 1},'
        b' "model": "m", "finish_reason": "stop"}',
        b"\xff\xfe",
    ],
)
def test_unusable_values_decode_as_miss(raw: bytes) -> None:
    assert decode(raw) is None


def test_from_completion_keeps_usage_and_finish_reason() -> None:
    completion = Completion(
        content="text", usage=Usage(3, 4), finish_reason="stop", model="gpt-4o-2024-08-06"
    )
    assert CachedResult.from_completion(completion) == CachedResult(
        "text", Usage(3, 4), "gpt-4o-2024-08-06", "stop"
    )
