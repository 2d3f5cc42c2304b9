"""In-process single-flight, the bypass policy and build_cache, without any service."""

from __future__ import annotations

import asyncio

import pytest

from bulkgen.cache import (
    BypassPolicy,
    CachedResult,
    MemoryCache,
    NullCache,
    RedisGuard,
    SingleFlight,
    build_cache,
)
from bulkgen.errors import ProviderUnavailable
from bulkgen.metrics import Metrics
from bulkgen.models import Usage
from bulkgen.redis_guard import BYPASSED
from bulkgen.settings import Settings

RESULT = CachedResult("An article about tea.", Usage(10, 20), "gpt-4o", "stop")


class Producer:
    """Counts calls; waits on an event so tests decide when the call finishes."""

    def __init__(self, *, fail: bool = False) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.fail = fail

    async def __call__(self) -> CachedResult:
        self.calls += 1
        await self.release.wait()
        if self.fail:
            raise ProviderUnavailable("503 from provider", status_code=503)
        return RESULT


def flight(metrics: Metrics) -> tuple[MemoryCache, SingleFlight]:
    cache = MemoryCache(ttl_s=60, metrics=metrics)
    return cache, SingleFlight(cache, None, lock_ttl_s=5, wait_s=1, metrics=metrics)


async def test_concurrent_identical_runs_produce_once() -> None:
    metrics = Metrics()
    cache, sf = flight(metrics)
    producer = Producer()
    tasks = [asyncio.create_task(sf.run("k", producer)) for _ in range(20)]
    await asyncio.sleep(0.01)
    producer.release.set()
    results = await asyncio.gather(*tasks)
    assert producer.calls == 1
    assert sorted(source for _, source in results) == ["provider"] + ["shared"] * 19
    assert all(result == RESULT for result, _ in results)
    assert await cache.get("k") == RESULT
    assert (metrics.total("cache.miss"), metrics.total("cache.shared")) == (1, 19)


async def test_second_run_is_a_cache_hit() -> None:
    metrics = Metrics()
    _, sf = flight(metrics)
    producer = Producer()
    producer.release.set()
    assert await sf.run("k", producer) == (RESULT, "provider")
    assert await sf.run("k", producer) == (RESULT, "cache")
    assert producer.calls == 1
    assert metrics.total("cache.hit") == 1


async def test_different_keys_do_not_share() -> None:
    _, sf = flight(Metrics())
    producer = Producer()
    producer.release.set()
    results = await asyncio.gather(sf.run("a", producer), sf.run("b", producer))
    assert [source for _, source in results] == ["provider", "provider"]
    assert producer.calls == 2


async def test_failure_is_not_cached_and_followers_produce_themselves() -> None:
    metrics = Metrics()
    cache, sf = flight(metrics)
    failing = Producer(fail=True)
    leader = asyncio.create_task(sf.run("k", failing))
    await asyncio.sleep(0.01)
    ok = Producer()
    ok.release.set()
    followers = [asyncio.create_task(sf.run("k", ok)) for _ in range(3)]
    await asyncio.sleep(0.01)
    failing.release.set()
    with pytest.raises(ProviderUnavailable):
        await leader
    results = await asyncio.gather(*followers)
    assert [source for _, source in results] == ["provider"] * 3
    assert ok.calls == 3  # each follower made its own attempt
    assert await cache.get("k") == RESULT


async def test_failed_produce_is_retried_by_the_next_run() -> None:
    cache, sf = flight(Metrics())
    failing = Producer(fail=True)
    failing.release.set()
    with pytest.raises(ProviderUnavailable):
        await sf.run("k", failing)
    assert await cache.get("k") is None
    ok = Producer()
    ok.release.set()
    assert await sf.run("k", ok) == (RESULT, "provider")
    assert ok.calls == 1


async def test_cancelled_follower_does_not_disturb_the_leader() -> None:
    _, sf = flight(Metrics())
    producer = Producer()
    leader = asyncio.create_task(sf.run("k", producer))
    await asyncio.sleep(0.01)
    follower = asyncio.create_task(sf.run("k", producer))
    await asyncio.sleep(0.01)
    follower.cancel()
    producer.release.set()
    assert await leader == (RESULT, "provider")
    with pytest.raises(asyncio.CancelledError):
        await follower


async def test_empty_result_is_returned_but_never_cached() -> None:
    metrics = Metrics()
    cache, sf = flight(metrics)
    empty = CachedResult("  ", Usage(5, 0), "gpt-4o", "stop")

    async def produce() -> CachedResult:
        return empty

    assert await sf.run("k", produce) == (empty, "provider")
    assert await cache.get("k") is None
    assert metrics.total("cache.refused") == 1


def test_bypass_policy_backs_off_then_allows() -> None:
    policy = BypassPolicy(backoff_s=2.0, warn_every_s=30.0)
    assert policy.allows(100.0)
    assert policy.failed(100.0) is True
    assert not policy.allows(101.9)
    assert policy.allows(102.0)


def test_bypass_policy_rate_limits_warnings() -> None:
    policy = BypassPolicy(backoff_s=1.0, warn_every_s=30.0)
    warnings = [policy.failed(100.0 + i) for i in range(61)]
    assert warnings.count(True) == 3  # at 100, 130 and 160
    assert policy.suppressed == 58


def test_bypass_policy_success_ends_back_off() -> None:
    policy = BypassPolicy(backoff_s=5.0)
    policy.failed(0.0)
    policy.succeeded()
    assert policy.allows(0.1)


async def test_guard_turns_errors_and_hangs_into_bypasses() -> None:
    metrics = Metrics()
    now = [0.0]
    guard = RedisGuard(timeout_ms=20, metrics=metrics, clock=lambda: now[0])

    async def refused() -> int:
        raise ConnectionRefusedError("refused")

    async def hangs() -> int:
        await asyncio.sleep(60)
        return 1

    async def works() -> int:
        return 7

    assert await guard.call("get", refused) is BYPASSED
    assert await guard.call("get", works) is BYPASSED  # backing off, Redis not touched
    now[0] += guard.policy.backoff_s
    assert await guard.call("get", hangs) is BYPASSED
    now[0] += guard.policy.backoff_s
    assert await guard.call("get", works) == 7
    assert metrics.total("cache.bypassed") == 3


async def test_disabled_cache_never_hits_and_never_shares() -> None:
    metrics = Metrics()
    cache, sf = build_cache(Settings(cache_enabled=False), None, metrics)
    assert isinstance(cache, NullCache)
    producer = Producer()
    tasks = [asyncio.create_task(sf.run("k", producer)) for _ in range(3)]
    await asyncio.sleep(0.01)
    producer.release.set()
    results = await asyncio.gather(*tasks)
    assert [source for _, source in results] == ["provider"] * 3
    assert await sf.run("k", producer) == (RESULT, "provider")
    assert producer.calls == 4


async def test_build_cache_without_redis_is_in_memory() -> None:
    cache, sf = build_cache(Settings(cache_ttl_s=60), None, Metrics())
    assert isinstance(cache, MemoryCache)
    producer = Producer()
    producer.release.set()
    await sf.run("k", producer)
    assert await sf.run("k", producer) == (RESULT, "cache")


async def test_forced_calls_pass_a_back_off_but_plain_ones_do_not() -> None:
    """Storing a paid result and releasing its lock are tried even while backed off."""
    from bulkgen.cache import BypassPolicy, RedisGuard

    now = [100.0]
    guard = RedisGuard(
        timeout_ms=50, metrics=Metrics(), policy=BypassPolicy(backoff_s=10), clock=lambda: now[0]
    )

    async def broken() -> int:
        raise OSError("connection refused")

    async def fine() -> int:
        return 7

    assert await guard.call("get", broken) is BYPASSED  # starts a 10 s back-off
    assert await guard.call("get", fine) is BYPASSED
    assert await guard.call("unlock", fine, force=True) == 7
    now[0] += 11
    assert await guard.call("get", fine) == 7
