"""RedisCache against a real Redis: round trip, TTL, account isolation, refusals."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from bulkgen.cache import CachedResult, RedisCache, build_cache, cache_key, cache_scope
from bulkgen.metrics import Metrics
from bulkgen.models import ChatRequest, Usage
from bulkgen.redis_client import RedisClient
from bulkgen.settings import Settings
from tests.redis_cluster import RedisConnect

pytestmark = [pytest.mark.redis, pytest.mark.redis_cluster]

RESULT = CachedResult("# Tea\n\nAn article about tea.", Usage(120, 480), "gpt-4o", "stop")
REQUEST = ChatRequest(
    model="gpt-4o", messages=(("user", "Write about: tea"),), max_tokens=800, temperature=0.7
)


def key_for(account_id: str, mode: str = "account") -> str:
    scope = cache_scope("global" if mode == "global" else "account", account_id)
    return cache_key(
        scope=scope, base_url="https://api.openai.com/v1", request=REQUEST, template_version="t1"
    )


async def test_round_trip_keeps_usage(redis_client: RedisClient) -> None:
    cache = RedisCache(redis_client, ttl_s=60, timeout_ms=500, metrics=Metrics())
    key = key_for("a1")
    assert await cache.get(key) is None
    await cache.put(key, RESULT)
    assert await cache.get(key) == RESULT
    assert 0 < await redis_client.pttl(key) <= 60_000


async def test_entry_expires_after_ttl(redis_client: RedisClient) -> None:
    cache = RedisCache(redis_client, ttl_s=1.0, timeout_ms=500, metrics=Metrics())
    await cache.put("bulkgen:gen:ttl", RESULT)
    assert await cache.get("bulkgen:gen:ttl") == RESULT  # read well within the TTL
    await asyncio.sleep(1.1)  # then past it: Redis expires it on its own clock
    assert await cache.get("bulkgen:gen:ttl") is None
    assert await redis_client.exists("bulkgen:gen:ttl") == 0


async def test_accounts_never_share_results(redis_client: RedisClient) -> None:
    metrics = Metrics()
    cache, flight = build_cache(Settings(cache_timeout_ms=500), redis_client, metrics)
    calls: list[str] = []

    def producer(account: str) -> Callable[[], Awaitable[CachedResult]]:
        async def produce() -> CachedResult:
            calls.append(account)
            return CachedResult(f"Article for {account}", Usage(1, 1), "gpt-4o", "stop")

        return produce

    first, source_1 = await flight.run(key_for("a1"), producer("a1"))
    second, source_2 = await flight.run(key_for("a2"), producer("a2"))
    assert key_for("a1") != key_for("a2")
    assert (source_1, source_2) == ("provider", "provider")
    assert calls == ["a1", "a2"]
    assert second.content == "Article for a2"
    assert await cache.get(key_for("a2")) == second
    assert first != second


async def test_global_scope_is_shared_when_opted_in(redis_client: RedisClient) -> None:
    cache = RedisCache(redis_client, ttl_s=60, timeout_ms=500, metrics=Metrics())
    await cache.put(key_for("a1", "global"), RESULT)
    assert await cache.get(key_for("a2", "global")) == RESULT
    assert await cache.get(key_for("a2")) is None


@pytest.mark.parametrize("content", ["", "  \n "])
async def test_blank_content_is_never_stored(redis_client: RedisClient, content: str) -> None:
    metrics = Metrics()
    cache = RedisCache(redis_client, ttl_s=60, timeout_ms=500, metrics=metrics)
    await cache.put("bulkgen:gen:empty", CachedResult(content, Usage(3, 0), "gpt-4o", "stop"))
    assert await redis_client.exists("bulkgen:gen:empty") == 0
    assert metrics.total("cache.refused") == 1


async def test_corrupt_entry_is_a_counted_miss(redis_client: RedisClient) -> None:
    metrics = Metrics()
    cache = RedisCache(redis_client, ttl_s=60, timeout_ms=500, metrics=metrics)
    await redis_client.set("bulkgen:gen:bad", b"\x00garbage")
    assert await cache.get("bulkgen:gen:bad") is None
    assert metrics.total("cache.corrupt") == 1


async def test_hit_is_counted_and_served_across_clients(redis_connect: RedisConnect) -> None:
    """Two separate connections (as two workers would have) share entries."""
    metrics = Metrics()
    one = await redis_connect()
    two = await redis_connect()
    try:
        _, flight_1 = build_cache(Settings(cache_timeout_ms=500), one, metrics)
        _, flight_2 = build_cache(Settings(cache_timeout_ms=500), two, metrics)

        async def produce() -> CachedResult:
            return RESULT

        assert await flight_1.run(key_for("a1"), produce) == (RESULT, "provider")
        assert await flight_2.run(key_for("a1"), produce) == (RESULT, "cache")
        assert (metrics.total("cache.miss"), metrics.total("cache.hit")) == (1, 1)
    finally:
        await one.aclose()
        await two.aclose()
