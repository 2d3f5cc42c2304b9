"""Degrade, don't fail: every call to Redis is bounded, and a sick Redis is skipped.

Redis only makes bulkgen cheaper and fleet-wide (cache, single-flight, budget ledger,
rate limits); it must never cost a job. So each Redis call runs under
``asyncio.timeout(timeout_ms)`` and any Redis, socket or timeout error turns into a
*bypass* (a miss for ``get``, a no-op for ``put`` and the single-flight lock). After a
failure, :class:`BypassPolicy` keeps us away from Redis for ``backoff_s`` so a dead Redis
costs one timeout per back-off window, not one per job, and the warning it logs is
rate-limited so 10,000 jobs do not write 10,000 lines. Every bypass is counted under the
guard's metric (``cache.bypassed`` by default; labels ``op`` and ``reason``: ``error`` or
``backoff``), and the warning is logged as the guard's event. Each user (cache, budget,
limiter) has its own guard, with its own timeout, over this one implementation.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from redis.exceptions import RedisError

from bulkgen.metrics import Metrics
from bulkgen.metrics import metrics as default_metrics

logger = logging.getLogger("bulkgen.redis")

T = TypeVar("T")


class Bypass(enum.Enum):
    """Marker returned instead of a value when a call did not reach Redis."""

    BYPASSED = "bypassed"


BYPASSED: Literal[Bypass.BYPASSED] = Bypass.BYPASSED


class BypassPolicy:
    """Pure decision object: may we use Redis now, and should this failure be logged?

    Time only comes in as arguments, so back-off and log rate limiting are tested with
    plain numbers.
    """

    def __init__(self, *, backoff_s: float = 2.0, warn_every_s: float = 30.0) -> None:
        self.backoff_s = backoff_s
        self.warn_every_s = warn_every_s
        self._skip_until = float("-inf")
        self._last_warning_at = float("-inf")
        self.suppressed = 0

    def allows(self, now: float) -> bool:
        """False during the back-off window that follows a failure."""
        return now >= self._skip_until

    def failed(self, now: float) -> bool:
        """Start a back-off window; True when this failure should be logged."""
        self._skip_until = now + self.backoff_s
        if now - self._last_warning_at >= self.warn_every_s:
            self._last_warning_at = now
            return True
        self.suppressed += 1
        return False

    def succeeded(self) -> None:
        self._skip_until = float("-inf")


class RedisGuard:
    """Runs Redis calls under a timeout and the :class:`BypassPolicy`; shared per Redis."""

    def __init__(
        self,
        *,
        timeout_ms: int = 50,
        metrics: Metrics = default_metrics,
        policy: BypassPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        metric: str = "cache.bypassed",
        event: str | None = None,
    ) -> None:
        self.timeout_s = timeout_ms / 1000
        self.metric = metric
        self.event = event or metric
        self.policy = policy or BypassPolicy()
        self._metrics = metrics
        self._clock = clock

    async def call(
        self, op: str, fn: Callable[[], Awaitable[T]], *, force: bool = False
    ) -> T | Literal[Bypass.BYPASSED]:
        """``fn()``'s result, or :data:`BYPASSED` if Redis is failing, slow or backed off.

        ``force`` skips the back-off (still under the timeout): for the calls that follow a
        paid provider answer (store it, release the lock), where skipping costs far more
        than one bounded try - a skipped unlock makes every identical request wait.
        """
        if not force and not self.policy.allows(self._clock()):
            self._metrics.inc(self.metric, op=op, reason="backoff")
            return BYPASSED
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await fn()
        except (RedisError, OSError, TimeoutError) as exc:
            self._record_failure(op, exc)
            return BYPASSED
        self.policy.succeeded()
        return result

    def _record_failure(self, op: str, exc: BaseException) -> None:
        self._metrics.inc(self.metric, op=op, reason="error")
        if self.policy.failed(self._clock()):
            suppressed, self.policy.suppressed = self.policy.suppressed, 0
            logger.warning(
                self.event,
                extra={
                    "op": op,
                    "error": repr(exc),
                    "backoff_s": self.policy.backoff_s,
                    "suppressed_warnings": suppressed,
                },
            )
