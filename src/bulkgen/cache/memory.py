"""In-process caches: :class:`MemoryCache` when there is no Redis, :class:`NullCache` when off.

``MemoryCache`` keeps the same promises as the Redis one (TTL, never stores empty content)
within one process, and is bounded: at most ``max_entries`` results, oldest-used evicted
first, so a 10,000-keyword batch cannot grow memory without limit.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from bulkgen.cache.result import CachedResult, is_cacheable
from bulkgen.metrics import Metrics
from bulkgen.metrics import metrics as default_metrics

logger = logging.getLogger("bulkgen.cache")


def refuse_empty(value: CachedResult, metrics: Metrics, backend: str) -> bool:
    """True (and counted) when ``value`` must not be stored: its content is blank."""
    if is_cacheable(value):
        return False
    metrics.inc("cache.refused", reason="empty", backend=backend)
    logger.warning("cache.refused", extra={"reason": "empty", "backend": backend})
    return True


class MemoryCache:
    """A TTL + LRU cache for one process; the clock is injected so expiry is testable."""

    def __init__(
        self,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 10_000,
        metrics: Metrics = default_metrics,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._ttl_s = ttl_s
        self._clock = clock
        self._max_entries = max_entries
        self._metrics = metrics
        self._entries: OrderedDict[str, tuple[float, CachedResult]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> CachedResult | None:
        """The live entry, or None; an expired entry is dropped on sight."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if self._clock() >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: CachedResult) -> None:
        """Store for ``ttl_s``; a zero TTL stores nothing, blank content is refused."""
        if refuse_empty(value, self._metrics, "memory") or self._ttl_s <= 0:
            return
        self._entries[key] = (self._clock() + self._ttl_s, value)
        self._entries.move_to_end(key)
        if len(self._entries) > self._max_entries:
            self._evict()

    def _evict(self) -> None:
        """Drop expired entries first, then the least recently used, down to the bound."""
        now = self._clock()
        for key in [k for k, (expires_at, _) in self._entries.items() if now >= expires_at]:
            del self._entries[key]
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
            self._metrics.inc("cache.evicted", backend="memory")


class NullCache:
    """Never hits, never stores: ``cache_enabled=False`` makes runs comparable."""

    async def get(self, key: str) -> CachedResult | None:
        return None

    async def put(self, key: str, value: CachedResult) -> None:
        return None
