"""One place that turns settings into a cache and its single-flight, so every face agrees.

- ``cache_enabled=False``: a :class:`NullCache` and a pass-through single-flight, so a run
  with the cache off pays for every request and can be compared with one that has it on.
- a Redis client: :class:`RedisCache` shared by the fleet, with the fleet-wide lock; the
  cache and the lock share one :class:`RedisGuard` (one health state for one Redis).
- no Redis: :class:`MemoryCache` and in-process single-flight only.
"""

from __future__ import annotations

from bulkgen.cache.memory import MemoryCache, NullCache
from bulkgen.cache.redis_cache import RedisCache
from bulkgen.cache.result import ResultCache
from bulkgen.cache.singleflight import SingleFlight
from bulkgen.metrics import Metrics
from bulkgen.metrics import metrics as default_metrics
from bulkgen.redis_client import RedisClient
from bulkgen.redis_guard import RedisGuard
from bulkgen.settings import Settings


def build_cache(
    settings: Settings, redis: RedisClient | None, metrics: Metrics = default_metrics
) -> tuple[ResultCache, SingleFlight]:
    """The cache and single-flight for ``settings``.

    The lock lives as long as one provider call may take (``provider_timeout_s``): long
    enough that a slow leader keeps it, short enough that a dead one frees it.
    """
    lock_ttl_s = settings.provider_timeout_s
    wait_s = settings.singleflight_wait_s
    if not settings.cache_enabled:
        null = NullCache()
        flight = SingleFlight(
            null, None, lock_ttl_s=lock_ttl_s, wait_s=wait_s, metrics=metrics, enabled=False
        )
        return null, flight
    cache: ResultCache
    if redis is None:
        cache = MemoryCache(settings.cache_ttl_s, metrics=metrics)
        return cache, SingleFlight(
            cache, None, lock_ttl_s=lock_ttl_s, wait_s=wait_s, metrics=metrics
        )
    guard = RedisGuard(timeout_ms=settings.cache_timeout_ms, metrics=metrics)
    cache = RedisCache(redis, settings.cache_ttl_s, settings.cache_timeout_ms, metrics, guard=guard)
    flight = SingleFlight(
        cache, redis, lock_ttl_s=lock_ttl_s, wait_s=wait_s, metrics=metrics, guard=guard
    )
    return cache, flight
