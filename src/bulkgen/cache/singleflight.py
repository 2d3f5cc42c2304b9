"""Single-flight: identical requests in flight are paid for once, across the whole fleet.

:meth:`SingleFlight.run` answers from, in order:

1. the cache (``"cache"``);
2. an identical request already running - in this process (followers await the leader's
   future) or in another one (a short Redis lock ``SET NX PX`` with a random token; the
   others poll the cache with small sleeps until the result appears) (``"shared"``);
3. its own ``produce()`` call (``"provider"``), whose result it puts in the cache.

Failure rules, each chosen so that no job is worse off than without single-flight:

- ``produce()`` exceptions propagate to that caller and nothing is cached.
- When an in-process leader fails (or is cancelled), each of its followers calls its *own*
  ``produce()`` at once, in parallel. A follower's job therefore never inherits another
  job's failure and keeps its own retry accounting (one attempt = one of its own calls),
  and failures do not cascade one after the other through a queue of followers.
- Waiting on another process is bounded by ``wait_s``; after that (or when Redis is
  down) the caller produces itself. The lock expires after ``lock_ttl_s`` should its holder
  die, and is released only by its owner (Lua compare-and-delete on the token).

Metrics, exactly one per run: ``cache.hit``, ``cache.shared`` or ``cache.miss`` (this run
called ``produce()``); so ``hit + shared + miss`` is the number of runs.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from redis.asyncio import Redis

from bulkgen.cache.keys import lock_key
from bulkgen.cache.result import CachedResult, ResultCache
from bulkgen.metrics import Metrics
from bulkgen.metrics import metrics as default_metrics
from bulkgen.redis_guard import BYPASSED, RedisGuard

Source = Literal["cache", "shared", "provider"]
Produce = Callable[[], Awaitable[CachedResult]]

# Deletes the lock only if it still holds our token: an expired lock taken over by another
# process is never released by the previous holder.
_RELEASE_LUA = """
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0
"""


class SingleFlight:
    """Deduplicates identical in-flight requests in one process and across processes."""

    def __init__(
        self,
        cache: ResultCache,
        redis: Redis | None,
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
        self._lock_ttl_ms = max(1, int(lock_ttl_s * 1000))
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
        token = secrets.token_hex(16)
        name = lock_key(key)
        held = False
        try:
            shared, held = await self._acquire_or_wait(key, name, token)
            if shared is not None:
                self._metrics.inc("cache.shared")
                return shared, "shared"
            return await self._produce(key, produce), "provider"
        finally:
            if held:
                await self._release(name, token)

    async def _acquire_or_wait(
        self, key: str, name: str, token: str
    ) -> tuple[CachedResult | None, bool]:
        """(shared result or None, whether we hold the lock).

        None means: produce now - we hold the lock, Redis is unusable, or ``wait_s`` has
        passed. After taking the lock the cache is read once more: the previous holder may
        have stored its result and released the lock between our miss and our attempt.
        """
        deadline = self._clock() + self._wait_s
        delay_s = self._poll_s
        while True:
            acquired = await self._guard.call("lock", lambda: self._try_lock(name, token))
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

    async def _try_lock(self, name: str, token: str) -> bool:
        redis = self._redis
        assert redis is not None
        return bool(await redis.set(name, token, nx=True, px=self._lock_ttl_ms))

    async def _release(self, name: str, token: str) -> None:
        """Best effort: if Redis is down the lock simply expires after ``lock_ttl_s``."""
        redis = self._redis
        assert redis is not None
        await self._guard.call(
            "unlock", lambda: redis.eval(_RELEASE_LUA, 1, name, token), force=True
        )

    async def _produce(self, key: str, produce: Produce, *, store: bool = True) -> CachedResult:
        self._metrics.inc("cache.miss")
        result = await produce()
        if store:
            await self._cache.put(key, result)
        return result


def _guard_of(cache: ResultCache, redis: Redis | None) -> RedisGuard | None:
    """Share the cache's guard when both talk to the same Redis: one health state, one
    back-off, so a dead Redis costs one timeout per window, not one per operation."""
    guard = getattr(cache, "guard", None)
    if isinstance(guard, RedisGuard) and getattr(cache, "redis", None) is redis:
        return guard
    return None
