"""Single-flight against a real Redis: in one process, across OS processes, bounded waits."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from bulkgen.cache import CachedResult, RedisCache, SingleFlight
from bulkgen.cache.keys import lock_key
from bulkgen.errors import ProviderTimeout
from bulkgen.metrics import Metrics
from bulkgen.models import Usage
from bulkgen.redis_client import RedisClient

pytestmark = [pytest.mark.redis, pytest.mark.redis_cluster]

KEY = "bulkgen:gen:" + "ab" * 32
RESULT = CachedResult("An article about tea.", Usage(10, 20), "gpt-4o", "stop")


class LookedUp(RedisCache):
    """A Redis cache that counts lookups, so a producer can wait until every run in flight
    has missed (instead of sleeping and hoping they have)."""

    def __init__(self, redis: RedisClient, metrics: Metrics) -> None:
        # Generous: these tests are about single-flight, not about the guard's timeout,
        # which on a loaded machine would turn a slow lookup into a bypass.
        super().__init__(redis, ttl_s=60, timeout_ms=30_000, metrics=metrics)
        self.lookups = 0
        self._changed = asyncio.Event()

    async def get(self, key: str) -> CachedResult | None:
        found = await super().get(key)
        self.lookups += 1
        self._changed.set()
        return found

    async def until_looked_up(self, n: int) -> None:
        async with asyncio.timeout(30):
            while self.lookups < n:
                self._changed.clear()
                await self._changed.wait()


def make_flight(
    redis: RedisClient, metrics: Metrics, *, wait_s: float = 5.0, cache: RedisCache | None = None
) -> SingleFlight:
    cache = cache or RedisCache(redis, ttl_s=60, timeout_ms=30_000, metrics=metrics)
    return SingleFlight(cache, redis, lock_ttl_s=10, wait_s=wait_s, metrics=metrics)


async def test_concurrent_runs_in_one_process_produce_once(redis_client: RedisClient) -> None:
    metrics = Metrics()
    cache = LookedUp(redis_client, metrics)
    flight = make_flight(redis_client, metrics, cache=cache)
    calls = 0

    async def produce() -> CachedResult:
        nonlocal calls
        calls += 1
        # Every run has missed and is in flight: 25 lookups, and the leader's second one
        # once it holds the lock.
        await cache.until_looked_up(26)
        return RESULT

    results = await asyncio.gather(*(flight.run(KEY, produce) for _ in range(25)))
    assert calls == 1
    assert sorted(source for _, source in results) == ["provider"] + ["shared"] * 24
    assert await redis_client.exists(lock_key(KEY)) == 0  # released by its owner
    assert metrics.total("cache.miss") + metrics.total("cache.shared") == 25


async def test_two_flights_in_one_process_share_through_redis(
    redis_client: RedisClient,
) -> None:
    """Separate SingleFlight objects only meet in Redis: the cross-process path, cheaply."""
    metrics = Metrics()
    cache = LookedUp(redis_client, metrics)
    first = make_flight(redis_client, metrics, cache=cache)
    second = make_flight(redis_client, metrics, cache=cache)
    calls = 0

    async def produce() -> CachedResult:
        nonlocal calls
        calls += 1
        # The leader looked twice (before and after taking the lock); a third lookup is
        # the second run's miss: it now waits on the lock.
        await cache.until_looked_up(3)
        return RESULT

    results = await asyncio.gather(first.run(KEY, produce), second.run(KEY, produce))
    assert calls == 1
    assert sorted(source for _, source in results) == ["provider", "shared"]


async def test_failure_is_not_cached_and_lock_is_released(redis_client: RedisClient) -> None:
    flight = make_flight(redis_client, Metrics())
    calls = 0

    async def fails() -> CachedResult:
        nonlocal calls
        calls += 1
        raise ProviderTimeout("no answer")

    async def works() -> CachedResult:
        nonlocal calls
        calls += 1
        return RESULT

    with pytest.raises(ProviderTimeout):
        await flight.run(KEY, fails)
    assert await redis_client.exists(KEY) == 0
    assert await redis_client.exists(lock_key(KEY)) == 0
    assert await flight.run(KEY, works) == (RESULT, "provider")
    assert calls == 2


async def test_empty_content_is_never_cached(redis_client: RedisClient) -> None:
    flight = make_flight(redis_client, Metrics())
    empty = CachedResult("", Usage(5, 0), "gpt-4o", "stop")

    async def produce() -> CachedResult:
        return empty

    assert await flight.run(KEY, produce) == (empty, "provider")
    assert await flight.run(KEY, produce) == (empty, "provider")
    assert await redis_client.exists(KEY) == 0


async def test_stuck_lock_holder_bounds_the_wait(redis_client: RedisClient) -> None:
    """A holder that never finishes: followers produce themselves after wait_s."""
    metrics = Metrics()
    await redis_client.set(lock_key(KEY), "someone-else", px=60_000)
    flight = make_flight(redis_client, metrics, wait_s=0.3)

    async def produce() -> CachedResult:
        return RESULT

    started = time.monotonic()
    # The lock is held for 60 s: returning within 30 means the wait was bounded.
    assert await asyncio.wait_for(flight.run(KEY, produce), 30) == (RESULT, "provider")
    assert time.monotonic() - started >= 0.3  # after waiting wait_s, not at once
    assert metrics.total("singleflight.wait_expired") == 1
    assert await redis_client.get(lock_key(KEY)) == b"someone-else"  # not ours to release
    assert await redis_client.get(KEY) is not None


async def test_lock_freed_by_failed_holder_is_taken_over(redis_client: RedisClient) -> None:
    """The holder gives up without a result: a waiter takes the lock and produces."""
    await redis_client.set(lock_key(KEY), "someone-else", px=60_000)
    flight = make_flight(redis_client, Metrics(), wait_s=10)

    async def produce() -> CachedResult:
        return RESULT

    task = asyncio.create_task(flight.run(KEY, produce))
    await asyncio.sleep(0.1)
    assert not task.done()
    await redis_client.delete(lock_key(KEY))
    assert await asyncio.wait_for(task, 30) == (RESULT, "provider")


async def test_a_lock_lost_while_producing_is_left_to_its_new_owner(
    redis_client: RedisClient,
) -> None:
    """The lock expired under a slow holder and another process took it: the slow holder's
    answer still counts, it does not release the other's lock, and Redis is not treated
    as failing (no back-off that would skip the cache for everyone)."""
    metrics = Metrics()
    flight = make_flight(redis_client, metrics)

    async def slow() -> CachedResult:
        await redis_client.set(lock_key(KEY), "someone-else", px=60_000)  # expired, retaken
        return RESULT

    assert await flight.run(KEY, slow) == (RESULT, "provider")
    assert await redis_client.get(lock_key(KEY)) == b"someone-else"
    assert metrics.total("cache.bypassed") == 0
    assert await redis_client.get(KEY) is not None


CHILD = """
import asyncio, os, sys
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from bulkgen.cache import CachedResult, RedisCache, SingleFlight
from bulkgen.metrics import Metrics
from bulkgen.models import Usage

async def main(url, key, cluster):
    redis = RedisCluster.from_url(url) if cluster else aioredis.Redis.from_url(url)
    metrics = Metrics()
    cache = RedisCache(redis, ttl_s=60, timeout_ms=500, metrics=metrics)
    flight = SingleFlight(cache, redis, lock_ttl_s=10, wait_s=10, metrics=metrics)

    async def produce():
        await redis.incr("test:produced")
        # Until every child has looked in the cache and missed, so all are in flight.
        while await redis.scard("test:looked") < 3:
            await asyncio.sleep(0.01)
        return CachedResult("shared article", Usage(7, 9), "gpt-4o", "stop")

    lookup = cache.get

    async def counted_get(key):
        found = await lookup(key)
        await redis.sadd("test:looked", os.getpid())
        return found

    cache.get = counted_get

    await redis.rpush("test:ready", "ready")
    # Short blocking reads, looped: one long one would outlast the client's socket timeout.
    for _ in range(60):
        if await redis.blpop(["test:go"], timeout=1):
            break
    result, source = await flight.run(key, produce)
    print(source, result.content, result.usage.completion_tokens)
    await redis.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] == "cluster"))
"""


async def test_across_processes_produce_is_called_once(
    redis_url: str, redis_client: RedisClient, redis_mode: str
) -> None:
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, redis_url, KEY, redis_mode, stdout=asyncio.subprocess.PIPE
        )
        for _ in range(3)
    ]
    try:
        async with asyncio.timeout(60):
            ready = 0
            while ready < len(children):  # short blocking reads: see the child's
                ready += bool(await redis_client.blpop(["test:ready"], timeout=1))
            await redis_client.rpush("test:go", *["go"] * 3)
            outputs = [(await child.communicate())[0].decode().split() for child in children]
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
    assert [child.returncode for child in children] == [0, 0, 0]
    assert int(await redis_client.get("test:produced") or 0) == 1
    assert sorted(out[0] for out in outputs) == ["provider", "shared", "shared"]
    assert all(out[1:] == ["shared", "article", "9"] for out in outputs)
