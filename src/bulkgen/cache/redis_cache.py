"""The fleet-wide result cache: one Redis string per key, expiring after ``ttl_s``.

Every call goes through a :class:`~bulkgen.redis_guard.RedisGuard`, so a slow or dead
Redis turns into misses within ``timeout_ms`` instead of failed jobs.
"""

from __future__ import annotations

import logging

from bulkgen.cache.memory import refuse_empty
from bulkgen.cache.result import CachedResult, decode, encode
from bulkgen.metrics import Metrics
from bulkgen.metrics import metrics as default_metrics
from bulkgen.redis_client import RedisClient
from bulkgen.redis_guard import BYPASSED, RedisGuard

logger = logging.getLogger("bulkgen.cache")


class RedisCache:
    """Shared across processes; a hit in one worker saves the call in every other."""

    def __init__(
        self,
        redis: RedisClient,
        ttl_s: float,
        timeout_ms: int = 50,
        metrics: Metrics = default_metrics,
        *,
        guard: RedisGuard | None = None,
    ) -> None:
        self.redis = redis
        self.guard = guard or RedisGuard(timeout_ms=timeout_ms, metrics=metrics)
        self._ttl_ms = int(ttl_s * 1000)
        self._metrics = metrics

    async def get(self, key: str) -> CachedResult | None:
        """The stored result, or None on a miss, an unreadable entry or a bypass."""
        raw = await self.guard.call("get", lambda: self.redis.get(key))
        if raw is BYPASSED or raw is None:
            return None
        value = decode(raw)
        if value is None:
            self._metrics.inc("cache.corrupt", backend="redis")
            logger.warning("cache.corrupt", extra={"key": key})
        return value

    async def put(self, key: str, value: CachedResult) -> None:
        """Store for ``ttl_s`` (a zero TTL stores nothing); blank content is refused."""
        if refuse_empty(value, self._metrics, "redis") or self._ttl_ms <= 0:
            return
        payload = encode(value)
        # Forced past a back-off: this result was paid for; one bounded try is cheap.
        await self.guard.call(
            "put", lambda: self.redis.set(key, payload, px=self._ttl_ms), force=True
        )
