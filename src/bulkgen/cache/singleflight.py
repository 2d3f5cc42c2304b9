"""Single-flight: identical requests in flight are paid for once, across the whole fleet.

:meth:`SingleFlight.run` answers from, in order:

1. the cache (``"cache"``);
2. an identical request already running - in this process (followers await the leader's
   future) or in another one (redis-py's :class:`~redis.asyncio.lock.Lock`, taken without
   blocking; the others poll the cache with small sleeps until the result appears)
   (``"shared"``);
3. its own ``produce()`` call (``"provider"``), whose result it puts in the cache.

Failure rules, each chosen so that no job is worse off than without single-flight:

- ``produce()`` exceptions propagate to that caller and nothing is cached.
- When an in-process leader fails (or is cancelled), each of its followers calls its *own*
  ``produce()`` at once, in parallel. A follower's job therefore never inherits another
  job's failure and keeps its own retry accounting (one attempt = one of its own calls),
  and failures do not cascade one after the other through a queue of followers.
- Waiting on another process is bounded by ``wait_s``; after that (or when Redis is
  down) the caller produces itself. The lock expires after ``lock_ttl_s`` should its holder
  die, and is released only by its owner (the library's compare-and-delete on its token);
  a lock that expired under a slow holder is simply not released.

Metrics, exactly one per run: ``cache.hit``, ``cache.shared`` or ``cache.miss`` (this run
called ``produce()``); so ``hit + shared + miss`` is the number of runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from redis.asyncio.lock import Lock
from redis.exceptions import LockNotOwnedError

from bulkgen.cache.keys import lock_key
from bulkgen.cache.result import CachedResult, ResultCache
from bulkgen.metrics import Metrics
from bulkgen.metrics import metrics as default_metrics
from bulkgen.redis_client import RedisClient
from bulkgen.redis_guard import BYPASSED, RedisGuard

Source = Literal["cache", "shared", "provider"]
Produce = Callable[[], Awaitable[CachedResult]]


class SingleFlight:
    """Deduplicates identical in-flight requests in one process and across processes."""

    def __init__(
        self,
        cache: ResultCache,
        redis: RedisClient | None,
        *,
        lock_ttl_s: float = 120.0,
        wait_s: float = 30.0,
        metrics: Metrics = default_metrics,
        guard: RedisGuard | None = None,
        poll_s: float = 0.02,
        max_poll_s: float = 0.25,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cache = cache
        self._redis = redis
        self._lock_ttl_s = max(0.001, lock_ttl_s)  # the library takes 0 for "never expires"
        self._wait_s = wait_s
        self._metrics = metrics
        self._guard = guard or _guard_of(cache, redis) or RedisGuard(metrics=metrics)
        self._poll_s = poll_s
        self._max_poll_s = max_poll_s
        self._enabled = enabled
        self._clock = clock
        self._inflight: dict[str, asyncio.Future[CachedResult | None]] = {}

    async def run(self, key: str, produce: Produce) -> tuple[CachedResult, Source]:
        """The result for ``key`` and where it came from; ``produce()`` at most once per key
        across everyone in flight, unless a leader fails or the wait bound is reached."""
        if not self._enabled:
            return await self._produce(key, produce, store=False), "provider"
        hit = await self._cache.get(key)
        if hit is not None:
            self._metrics.inc("cache.hit")
            return hit, "cache"
        leader = self._inflight.get(key)
        if leader is not None:
            return await self._follow(key, leader, produce)
        future: asyncio.Future[CachedResult | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        result: CachedResult | None = None
        try:
            result, source = await self._lead(key, produce)
            return result, source
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]
            future.set_result(result)  # None tells followers to produce on their own

    async def lookup(self, key: str) -> CachedResult | None:
        """The cached result for ``key``, if any (a ``cache.hit``), for callers that send
        their own requests in bulk rather than through :meth:`run` (economy mode)."""
        if not self._enabled:
            return None
        hit = await self._cache.get(key)
        if hit is not None:
            self._metrics.inc("cache.hit")
        return hit

    async def remember(self, key: str, value: CachedResult) -> None:
        """Cache a result produced outside :meth:`run`."""
        if self._enabled:
            await self._cache.put(key, value)

    async def _follow(
        self, key: str, leader: asyncio.Future[CachedResult | None], produce: Produce
    ) -> tuple[CachedResult, Source]:
        # shield: a cancelled follower must not cancel the leader's future.
        shared = await asyncio.shield(leader)
        if shared is not None:
            self._metrics.inc("cache.shared")
            return shared, "shared"
        return await self._produce(key, produce), "provider"

    async def _lead(self, key: str, produce: Produce) -> tuple[CachedResult, Source]:
        """Hold the fleet-wide lock while producing, or wait for whoever holds it."""
        if self._redis is None:
            return await self._produce(key, produce), "provider"
        lock = self._redis.lock(
            lock_key(key), timeout=self._lock_ttl_s, blocking=False, thread_local=False
        )
        held = False
        try:
            shared, held = await self._acquire_or_wait(key, lock)
            if shared is not None:
                self._metrics.inc("cache.shared")
                return shared, "shared"
            return await self._produce(key, produce), "provider"
        finally:
            if held:
                await self._release(lock)

    async def _acquire_or_wait(self, key: str, lock: Lock) -> tuple[CachedResult | None, bool]:
        """(shared result or None, whether we hold the lock).

        None means: produce now - we hold the lock, Redis is unusable, or ``wait_s`` has
        passed. After taking the lock the cache is read once more: the previous holder may
        have stored its result and released the lock between our miss and our attempt.
        """
        deadline = self._clock() + self._wait_s
        delay_s = self._poll_s
        while True:
            acquired = await self._guard.call("lock", lambda: _try_lock(lock))
            if acquired is BYPASSED:
                return None, False
            if acquired:
                return await self._cache.get(key), True
            shared = await self._cache.get(key)
            if shared is not None:
                return shared, False
            if self._clock() >= deadline:
                self._metrics.inc("singleflight.wait_expired")
                return None, False
            await asyncio.sleep(min(delay_s, max(0.0, deadline - self._clock())))
            delay_s = min(delay_s * 1.5, self._max_poll_s)

    async def _release(self, lock: Lock) -> None:
        """Best effort: if Redis is down the lock simply expires after ``lock_ttl_s``."""
        await self._guard.call("unlock", lambda: _release_if_owned(lock), force=True)

    async def _produce(self, key: str, produce: Produce, *, store: bool = True) -> CachedResult:
        self._metrics.inc("cache.miss")
        result = await produce()
        if store:
            await self._cache.put(key, result)
        return result


async def _try_lock(lock: Lock) -> bool:
    """One attempt (``SET NX PX`` with a fresh token); waiting is the caller's loop, which
    also watches the cache."""
    return bool(await lock.acquire(blocking=False))


async def _release_if_owned(lock: Lock) -> None:
    """Release our lock; one that expired (and may be someone else's now) is left alone.
    That is not a Redis failure, so it must not put the guard into its back-off."""
    try:
        await lock.release()
    except LockNotOwnedError:
        return


def _guard_of(cache: ResultCache, redis: RedisClient | None) -> RedisGuard | None:
    """Share the cache's guard when both talk to the same Redis: one health state, one
    back-off, so a dead Redis costs one timeout per window, not one per operation."""
    guard = getattr(cache, "guard", None)
    if isinstance(guard, RedisGuard) and getattr(cache, "redis", None) is redis:
        return guard
    return None
