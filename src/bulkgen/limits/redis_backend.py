"""Fleet-wide admission in Redis: one atomic Lua script per admission, on server time.

Every worker process on every machine runs the same script against the same keys
(``keys.redis_keys``), so they share one GCRA budget per dimension, one 429 pause and one
set of concurrency leases. Time comes from ``TIME`` inside the script, so clock skew
between machines cannot mint capacity. A lease is a ZSET member scored by its expiry: a
worker that crashes while holding one leaks nothing past the lease TTL.

Degrading: Redis is an accelerator of fairness, never a reason to fail a job. Any Redis
error or timeout turns that one call into a call on the in-process backend, logs
``limiter.redis_unavailable`` (rate-limited) and counts ``limiter.redis_fallback``; Redis is
then left alone for ``retry_s`` so a dead server costs one timeout per second, not one per
request. The timeout and back-off are the shared :class:`bulkgen.redis_guard.RedisGuard`.
While degraded each process budgets alone (the fleet may briefly exceed the limit; the
provider's 429s, handled locally, bound the damage).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.typing import EncodableT, FieldT

from bulkgen.limits.adaptive import Adjustment, FleetLimit
from bulkgen.limits.backend import (
    LEASE_POLL_S,
    AdmissionRequest,
    AdmissionResult,
    LocalBackend,
    Verdict,
)
from bulkgen.limits.keys import LimitKey, redis_keys
from bulkgen.metrics import Metrics
from bulkgen.redis_client import RedisClient
from bulkgen.redis_guard import BYPASSED, BypassPolicy, RedisGuard

T = TypeVar("T")

LEARNED_TTL_MS = 3_600_000
CONCURRENCY_TTL_MS = 600_000  # a fleet that stopped for this long probes afresh

# KEYS: req_tat, tok_tat, pause_until, leases, learned, concurrency
# ARGV: limit_rpm, limit_tpm (0 = unknown), factor, tokens, lease_limit, holder,
#       lease_ttl_ms, burst_ms, lease_poll_ms
# -> {verdict, wait_ms, reason, learned_rpm, learned_tpm, pause_mark_ms, limit_tpm,
#     learned_depth_ms, the fleet's probed limit: limit (0 = none), cut_at, slow_start,
#     engaged, epoch; the leases held once admitted (0 while waiting)}
ADMIT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local learned = redis.call('HMGET', KEYS[5], 'rpm', 'tpm', 'depth_ms')
local lrpm = tonumber(learned[1]) or 0
local ltpm = tonumber(learned[2]) or 0
local function minknown(a, b)
  if a > 0 and b > 0 then return math.min(a, b) end
  return math.max(a, b)
end
local rpm = minknown(tonumber(ARGV[1]), lrpm)
local tpm = minknown(tonumber(ARGV[2]), ltpm)
local tokens = tonumber(ARGV[4])
local fleet = redis.call('HMGET', KEYS[6], 'limit', 'cut_at', 'slow_start', 'engaged', 'epoch')
local function reply(verdict, wait, reason, mark, held)
  return {verdict, string.format('%.3f', wait), reason, tostring(lrpm), tostring(ltpm),
          string.format('%.3f', mark), tostring(tpm), tostring(learned[3] or '0'),
          fleet[1] or '0', fleet[2] or '0', fleet[3] or '1', fleet[4] or '0', fleet[5] or '0',
          tostring(held or 0)}
end
if tpm > 0 and tokens > tpm then return reply('too_large', 0, '', 0) end
local pause = tonumber(redis.call('GET', KEYS[3]) or '0')
if pause > now then return reply('wait', pause - now, 'pause', pause) end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[5]) then
  return reply('wait', tonumber(ARGV[9]), 'lease', 0)
end
local factor = tonumber(ARGV[3])
local burst = tonumber(ARGV[8])
local function gcra(key, cost, limit)
  if limit <= 0 or cost <= 0 then return 0, 0, 0 end
  local iv = 60000 / (limit * factor)
  local tat = tonumber(redis.call('GET', key) or '0')
  local new_tat = math.max(tat, now) + cost * iv
  return new_tat - now - math.max(burst, cost * iv), new_tat, iv
end
local w1, tat1, iv1 = gcra(KEYS[1], 1, rpm)
local w2, tat2, iv2 = gcra(KEYS[2], tokens, tpm)
local wait = math.max(w1, w2)
if wait > 0.001 then return reply('wait', wait, 'rate', 0) end
if iv1 > 0 then
  redis.call('SET', KEYS[1], string.format('%.3f', tat1), 'PX', math.ceil(tat1 - now) + 1000)
end
if iv2 > 0 then
  redis.call('SET', KEYS[2], string.format('%.3f', tat2), 'PX', math.ceil(tat2 - now) + 1000)
end
local ttl = tonumber(ARGV[7])
redis.call('ZADD', KEYS[4], now + ttl, ARGV[6])
redis.call('PEXPIRE', KEYS[4], math.ceil(ttl) + 1000)
return reply('admitted', 0, '', 0, redis.call('ZCARD', KEYS[4]))
"""

# KEYS: concurrency. ARGV: cut (1/0), amount, epoch, holdoff_ms, ceiling, ttl_ms, and the
# caller's state after its change: limit, cut_at (0 = none), slow_start, engaged.
# -> {limit, cut_at, slow_start, engaged, epoch} (adaptive.Adjustment says the rules)
CONCURRENCY_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local h = redis.call('HMGET', KEYS[1], 'limit', 'cut_at', 'slow_start', 'engaged', 'epoch',
                     'cut_ms')
local cut, amount, epoch_seen = ARGV[1] == '1', tonumber(ARGV[2]), tonumber(ARGV[3])
local limit, cut_at, slow = tonumber(h[1]), tonumber(h[2]) or 0, tonumber(h[3]) or 1
local engaged, epoch, cut_ms = tonumber(h[4]) or 0, tonumber(h[5]) or 0, tonumber(h[6]) or 0
if limit == nil then
  limit, cut_at, slow = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
  if cut then epoch, cut_ms = 1, now end
elseif cut then
  if now - cut_ms >= tonumber(ARGV[4]) then
    cut_at, slow = limit, 0
    limit = math.max(1, limit * amount)
    epoch, cut_ms = epoch + 1, now
  end
elseif epoch_seen == epoch then
  limit = math.min(tonumber(ARGV[5]), limit + amount)
  cut_at, slow = tonumber(ARGV[8]), tonumber(ARGV[9])
end
engaged = math.max(engaged, tonumber(ARGV[10]))
redis.call('HSET', KEYS[1], 'limit', tostring(limit), 'cut_at', tostring(cut_at),
           'slow_start', slow, 'engaged', engaged, 'epoch', epoch, 'cut_ms', tostring(cut_ms),
           'updated_ms', tostring(now))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[6]))
return {tostring(limit), tostring(cut_at), tostring(slow), tostring(engaged), tostring(epoch)}
"""

# KEYS: concurrency. -> {limit (0 = none), milliseconds since a process last changed it}
READ_CONCURRENCY_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local h = redis.call('HMGET', KEYS[1], 'limit', 'updated_ms')
if not h[1] then return {'0', '0'} end
return {h[1], string.format('%.3f', now - (tonumber(h[2]) or now))}
"""

# KEYS: tok_tat. ARGV: delta_tokens (+ charge, - refund), ms per token.
ADJUST_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local delta = tonumber(ARGV[1])
local iv = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if delta > 0 then
  tat = math.max(tat, now) + delta * iv
elseif tat > now then
  tat = math.max(now, tat + delta * iv)
else
  return 0
end
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
return 1
"""

# KEYS: pause_until. ARGV: pause_ms. -> the pause's end, server ms (extends, never shortens).
PAUSE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local until_ms = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now + tonumber(ARGV[1]))
redis.call('SET', KEYS[1], string.format('%.3f', until_ms), 'PX', math.ceil(until_ms - now) + 1000)
return string.format('%.3f', until_ms)
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse_fleet_limit(reply: list[Any]) -> FleetLimit | None:
    limit, cut_at, slow_start, engaged, epoch = (float(_text(v)) for v in reply)
    if limit <= 0:
        return None  # no process has shared a probed limit (or it expired)
    return FleetLimit(limit, cut_at or None, bool(slow_start), bool(engaged), int(epoch))


def _parse_admission(reply: list[Any], local_limit_tpm: int | None) -> AdmissionResult:
    verdict, wait_ms, reason, lrpm, ltpm, mark_ms, tpm, depth_ms = (_text(v) for v in reply[:8])
    return AdmissionResult(
        verdict=Verdict(verdict),
        wait_s=float(wait_ms) / 1000.0,
        reason=reason,
        learned_rpm=int(float(lrpm)) or None,
        learned_tpm=int(float(ltpm)) or None,
        learned_depth_s=float(depth_ms) / 1000.0 or None,
        pause_mark=float(mark_ms),
        limit_tpm=int(float(tpm)) or local_limit_tpm,
        local=False,
        fleet_limit=_parse_fleet_limit(reply[8:13]),
        inflight=int(_text(reply[13])),
    )


@dataclass(frozen=True, slots=True)
class FleetReading:
    """The probed concurrency limit the fleet shares, as an operator sees it."""

    limit: int
    age_s: float  # since a process last changed it


async def read_fleet_limit(redis: RedisClient, key: LimitKey) -> FleetReading | None:
    """The fleet's probed limit for ``key``; None when no process has shared one lately
    (nothing probed: limits announced, no worker running, or each on its own Redis-less
    way). Errors propagate: a reader, not a worker, decides what a failing Redis means."""
    script = redis.register_script(READ_CONCURRENCY_LUA)
    limit, age_ms = (float(_text(v)) for v in await script(keys=[redis_keys(key).concurrency]))
    if limit <= 0:
        return None
    return FleetReading(max(1, math.floor(limit)), max(0.0, age_ms / 1000.0))


class RedisBackend:
    """The shared backend, with ``fallback`` answering whenever Redis cannot."""

    def __init__(
        self,
        redis: RedisClient,
        fallback: LocalBackend,
        *,
        clock: Callable[[], float],
        metrics: Metrics,
        timeout_s: float = 0.5,
        retry_s: float = 1.0,
    ) -> None:
        self._redis = redis
        self._fallback = fallback
        self._clock = clock
        self._metrics = metrics
        self._redis_guard = RedisGuard(
            timeout_ms=int(timeout_s * 1000),
            metrics=metrics,
            policy=BypassPolicy(backoff_s=retry_s),
            clock=clock,
            metric="limiter.redis_fallback",
            event="limiter.redis_unavailable",
        )
        self._admit = redis.register_script(ADMIT_LUA)
        self._adjust = redis.register_script(ADJUST_LUA)
        self._pause = redis.register_script(PAUSE_LUA)
        self._concurrency = redis.register_script(CONCURRENCY_LUA)

    async def _guard(
        self, op: str, key: LimitKey, call: Callable[[], Awaitable[T]]
    ) -> tuple[bool, T | None]:
        """Run one Redis call; ``(False, None)`` means "use the fallback", never an error."""
        reply = await self._redis_guard.call(f"{op}:{key.model}", call)
        if reply is BYPASSED:
            return False, None
        return True, reply

    async def acquire(self, key: LimitKey, request: AdmissionRequest) -> AdmissionResult:
        k = redis_keys(key)
        args: list[EncodableT] = [
            request.limit_rpm or 0,
            request.limit_tpm or 0,
            repr(request.factor),
            request.tokens,
            request.lease_limit,
            request.holder,
            repr(request.lease_ttl_s * 1000.0),
            repr(request.burst_s * 1000.0),
            repr(LEASE_POLL_S * 1000.0),
        ]
        keys = [k.requests_tat, k.tokens_tat, k.pause_until, k.leases, k.learned, k.concurrency]

        async def call() -> Any:
            return await self._admit(keys=keys, args=args)

        ok, reply = await self._guard("acquire", key, call)
        if not ok:
            return self._fallback.acquire_now(key, request)
        assert reply is not None
        return _parse_admission(reply, request.limit_tpm)

    async def release(self, key: LimitKey, holder: str, *, local: bool) -> None:
        if local:
            await self._fallback.release(key, holder)
            return
        leases = redis_keys(key).leases

        async def call() -> Any:
            return await self._redis.zrem(leases, holder)

        await self._guard("release", key, call)  # failed: the lease expires by itself

    async def adjust_tokens(self, key: LimitKey, delta_tokens: int, tpm: float) -> None:
        if tpm <= 0 or delta_tokens == 0:
            return
        tokens_tat = redis_keys(key).tokens_tat

        async def call() -> Any:
            return await self._adjust(keys=[tokens_tat], args=[delta_tokens, repr(60000.0 / tpm)])

        ok, _ = await self._guard("adjust", key, call)
        if not ok:
            await self._fallback.adjust_tokens(key, delta_tokens, tpm)

    async def pause(self, key: LimitKey, pause_s: float) -> float:
        pause_key = redis_keys(key).pause_until

        async def call() -> Any:
            return await self._pause(keys=[pause_key], args=[repr(pause_s * 1000.0)])

        ok, reply = await self._guard("pause", key, call)
        if not ok:
            return await self._fallback.pause(key, pause_s)
        return float(_text(reply))

    async def publish_learned(
        self, key: LimitKey, rpm: int | None, tpm: int | None, depth_s: float | None = None
    ) -> None:
        depth_ms = None if depth_s is None else round(depth_s * 1000.0, 3)
        fields: dict[FieldT, EncodableT] = {
            name: value
            for name, value in (("rpm", rpm), ("tpm", tpm), ("depth_ms", depth_ms))
            if value
        }
        await self._fallback.publish_learned(key, rpm, tpm, depth_s)
        if not fields:
            return
        learned = redis_keys(key).learned

        async def call() -> Any:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(learned, mapping=fields)
                pipe.pexpire(learned, LEARNED_TTL_MS)
                return await pipe.execute()

        await self._guard("publish", key, call)

    async def share_concurrency(self, key: LimitKey, change: Adjustment) -> FleetLimit | None:
        after = change.after
        args: list[EncodableT] = [
            int(change.cut),
            repr(change.amount),
            change.epoch,
            repr(change.holdoff_s * 1000.0),
            change.ceiling,
            CONCURRENCY_TTL_MS,
            repr(after.limit),
            repr(after.cut_at or 0.0),
            int(after.slow_start),
            int(after.engaged),
        ]
        concurrency = redis_keys(key).concurrency

        async def call() -> Any:
            return await self._concurrency(keys=[concurrency], args=args)

        ok, reply = await self._guard("concurrency", key, call)
        return _parse_fleet_limit(reply) if ok and reply is not None else None

    async def aclose(self) -> None:
        await self._fallback.aclose()
