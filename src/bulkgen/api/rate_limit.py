"""Per-account request rate on the API, so one client's loop cannot starve the others.

Each account has one GCRA budget (the same arithmetic as the provider limiter,
:mod:`bulkgen.limits.gcra`) of ``rate_per_s`` requests a second with ``burst`` requests
at once. A request that does not fit is refused, never queued: the server holds no
connection open for a client that is already over its share, and the client learns from
``Retry-After`` when the next request fits.

With Redis, every API process runs one small Lua script on the account's key, on the
server's clock, so the budget is the account's across the fleet, whatever the number of
processes. Without Redis, or while it is away (the shared :class:`RedisGuard` bounds each
call and backs off), each process keeps budgets of its own: the limit loosens to one
budget per process, and the API keeps answering; a rate limiter that refused everything
because Redis is down would be an outage of its own making.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bulkgen.limits.gcra import Gcra
from bulkgen.metrics import Metrics
from bulkgen.redis_client import RedisClient
from bulkgen.redis_guard import BYPASSED, BypassPolicy, RedisGuard

__all__ = [
    "AccountLimiter",
    "AccountRate",
    "LocalAccountLimiter",
    "RedisAccountLimiter",
    "account_key",
    "build_account_limiter",
    "retry_after_s",
]

KEY_PREFIX = "bulkgen:api_limit:"
_REDIS_TIMEOUT_MS = 100  # a request waits at most this long for the shared budget
_REDIS_BACKOFF_S = 1.0
_PRUNE_AT = 10_000  # idle local budgets are dropped once this many are held


@dataclass(frozen=True, slots=True)
class AccountRate:
    """``rate_per_s`` requests a second in the long run, ``burst`` of them at once."""

    rate_per_s: float
    burst: int

    @property
    def interval_s(self) -> float:
        return 1.0 / self.rate_per_s

    @property
    def burst_s(self) -> float:
        """The burst as GCRA tolerance: ``burst`` requests at once fill it exactly."""
        return self.burst * self.interval_s


def retry_after_s(wait_s: float) -> int:
    """``Retry-After`` is whole seconds; rounding up (and never 0) means a client that
    obeys it finds room, instead of coming back a moment too early and being refused."""
    return max(1, math.ceil(wait_s))


def account_key(account_id: int) -> str:
    """One key per account, its id as the hash tag: Redis Cluster safe by construction."""
    return f"{KEY_PREFIX}{{{account_id}}}:tat"


class AccountLimiter(Protocol):
    async def admit(self, account_id: int) -> float:
        """0.0 when the request is admitted (and charged), else seconds until one fits."""
        ...


class LocalAccountLimiter:
    """Budgets in this process; the clock is injected, so the rule is tested without time."""

    def __init__(self, rate: AccountRate, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._clock = clock
        self._budgets: dict[int, Gcra] = {}

    async def admit(self, account_id: int) -> float:
        return self.admit_now(account_id)

    def admit_now(self, account_id: int) -> float:
        """Synchronous, so two requests of one account cannot interleave between the
        check and the charge."""
        now_s = self._clock()
        budget = self._budgets.get(account_id)
        if budget is None:
            self._prune(now_s)
            budget = self._budgets[account_id] = Gcra()
        wait_s = budget.wait_s(now_s, 1, self._rate.interval_s, self._rate.burst_s)
        if wait_s == 0.0:
            budget.charge(now_s, 1, self._rate.interval_s)
        return wait_s

    def _prune(self, now_s: float) -> None:
        """A budget whose TAT has passed is the same as no budget: drop those, so memory
        follows the accounts active right now, not every account ever seen."""
        if len(self._budgets) >= _PRUNE_AT:
            for account_id in [a for a, b in self._budgets.items() if b.tat_s <= now_s]:
                del self._budgets[account_id]


# KEYS: the account's TAT (server ms). ARGV: interval_ms, burst_ms. -> wait_ms ("0" admitted)
ADMIT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local iv = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local new_tat = math.max(tat, now) + iv
local wait = new_tat - now - math.max(tonumber(ARGV[2]), iv)
if wait > 0.001 then return string.format('%.3f', wait) end
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return '0'
"""


class RedisAccountLimiter:
    """The fleet's budgets in Redis, with ``fallback`` answering whenever Redis cannot."""

    def __init__(
        self,
        redis: RedisClient,
        rate: AccountRate,
        *,
        metrics: Metrics,
        fallback: LocalAccountLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate
        self._fallback = fallback or LocalAccountLimiter(rate, clock)
        self._script = redis.register_script(ADMIT_LUA)
        self._guard = RedisGuard(
            timeout_ms=_REDIS_TIMEOUT_MS,
            metrics=metrics,
            policy=BypassPolicy(backoff_s=_REDIS_BACKOFF_S),
            clock=clock,
            metric="api.rate_limit_redis_fallback",
            event="api.rate_limit_redis_unavailable",
        )

    async def admit(self, account_id: int) -> float:
        keys = [account_key(account_id)]
        args = [repr(self._rate.interval_s * 1000.0), repr(self._rate.burst_s * 1000.0)]

        async def call() -> Any:
            return await self._script(keys=keys, args=args)

        reply = await self._guard.call("admit", call)
        if reply is BYPASSED:
            return self._fallback.admit_now(account_id)
        text = reply.decode() if isinstance(reply, bytes) else str(reply)
        return float(text) / 1000.0


def build_account_limiter(
    redis: RedisClient | None, rate: AccountRate, *, metrics: Metrics
) -> AccountLimiter:
    if redis is None:
        return LocalAccountLimiter(rate)
    return RedisAccountLimiter(redis, rate, metrics=metrics)
