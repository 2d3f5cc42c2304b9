"""The rate governor: the one door every provider call passes through.

``async with governor.slot(key, estimated_tokens) as slot:`` waits for admission (fleet
pause, circuit breaker, concurrency lease, request and token rate), then the body calls
the provider and ``await slot.record(completion)``. Waiting never raises: the only error
admission raises is :class:`~bulkgen.errors.RequestTooLarge`, for a request that could
never fit. On exit the lease is released and the outcome feeds the policies: a 429
pauses the whole fleet for this key and lowers the target rate; an overload answer (a
full server: :class:`~bulkgen.errors.ProviderOverloaded`) cuts the requests in flight and
counts toward the breaker only while nothing succeeds; 5xx, timeouts and connection
errors count toward the circuit breaker; the exception always propagates.

Reconciling tokens: a request reserves ``estimated_tokens`` (prompt estimate plus
``max_tokens``), as OpenAI counts at admission. OpenAI does not refund unused
``max_tokens``, so the default (``ReconcileMode.CHARGE``) only charges usage *above* the
reservation (an under-estimated prompt) and never refunds: refunding would let bulkgen run
ahead of the provider's own bucket, which is the one that answers 429. ``FULL`` charges
and refunds, for providers that count actual usage; ``NONE`` leaves the reservation be.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

from bulkgen.errors import (
    ProviderConnectionError,
    ProviderOverloaded,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    RequestTooLarge,
)
from bulkgen.limits.adaptive import Change, LimitChange
from bulkgen.limits.backend import (
    AdmissionRequest,
    AdmissionResult,
    LimitBackend,
    LocalBackend,
    Verdict,
)
from bulkgen.limits.breaker import BreakerState, CircuitBreaker
from bulkgen.limits.headers import RateLimitSnapshot, parse_rate_limit_headers
from bulkgen.limits.keys import LimitKey
from bulkgen.limits.policy import PolicyConfig, RatePolicy
from bulkgen.limits.redis_backend import RedisBackend
from bulkgen.metrics import Metrics
from bulkgen.metrics import metrics as default_metrics
from bulkgen.models import Completion
from bulkgen.redis_client import RedisClient
from bulkgen.settings import Settings

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class ReconcileMode(enum.StrEnum):
    NONE = "none"
    CHARGE = "charge"
    FULL = "full"


@dataclass(frozen=True, slots=True)
class GovernorConfig:
    """The governor's knobs. Those a user can set come from :class:`Settings` through
    :func:`governor_config` and have no default here; the rest are tuning constants."""

    policy: PolicyConfig
    breaker_failures: int
    breaker_cooldown_s: float
    lease_ttl_s: float  # > provider timeout: a live call never loses its lease
    max_pause_s: float
    burst_s: float = 1.0  # at most this much of a minute's budget at once (see policy.py)
    default_pause_s: float = 1.0  # a 429 without any retry hint
    max_poll_s: float = 1.0  # look again at least this often while waiting
    reconcile: ReconcileMode = ReconcileMode.CHARGE


@dataclass
class _KeyState:
    policy: RatePolicy
    breaker: CircuitBreaker
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_pause_mark: float = 0.0


class Slot:
    """One admitted request. ``record`` its completion before leaving the ``async with``."""

    def __init__(
        self,
        governor: RateGovernor,
        key: LimitKey,
        reserved_tokens: int,
        *,
        probe: bool,
        unbudgeted: bool = False,
        used: float | None = None,
    ) -> None:
        self.key = key
        self.used = used  # the share of the lease limit in flight once this one was admitted
        self.reserved_tokens = reserved_tokens
        self.probe = probe
        self.unbudgeted = unbudgeted  # admitted while no token limit was known: not charged
        self.recorded = False
        self._governor = governor

    async def record(self, completion: Completion) -> None:
        """Reconcile usage, learn from headers and latency, close the breaker, speed up."""
        if not self.recorded:
            self.recorded = True
            await self._governor._on_success(self, completion)


class RateGovernor:
    def __init__(
        self,
        backend: LimitBackend,
        config: GovernorConfig,
        *,
        clock: Clock,
        wall_clock: Clock,
        sleep: Sleep,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self._backend = backend
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._metrics = metrics
        self._states: dict[LimitKey, _KeyState] = {}
        self._instance = uuid.uuid4().hex[:12]
        self._counter = itertools.count()

    def _state(self, key: LimitKey) -> _KeyState:
        state = self._states.get(key)
        if state is None:
            breaker = CircuitBreaker(
                self.config.breaker_failures, self.config.breaker_cooldown_s, self._clock
            )
            state = self._states[key] = _KeyState(RatePolicy(self.config.policy), breaker)
        return state

    def policy(self, key: LimitKey) -> RatePolicy:
        return self._state(key).policy

    def concurrency_limit(self, key: LimitKey) -> int:
        return self._state(key).policy.concurrency_limit()

    def allows_claim(self, key: LimitKey) -> bool:
        return self._state(key).breaker.allows_claim()

    def breaker_state(self, key: LimitKey) -> BreakerState:
        return self._state(key).breaker.state

    def slot(self, key: LimitKey, estimated_tokens: int) -> AbstractAsyncContextManager[Slot]:
        """Admission for one request of ``estimated_tokens`` (prompt estimate + max_tokens)."""
        return self._slot(key, max(0, estimated_tokens))

    @asynccontextmanager
    async def _slot(self, key: LimitKey, tokens: int) -> AsyncIterator[Slot]:
        state = self._state(key)
        holder = f"{self._instance}:{next(self._counter)}"
        result, probe, lease_limit = await self._admit(key, state, tokens, holder)
        slot = Slot(
            self,
            key,
            tokens,
            probe=probe,
            unbudgeted=result.limit_tpm is None,
            used=result.inflight / lease_limit if result.inflight else None,
        )
        try:
            yield slot
        except RateLimited as exc:
            await self._on_rate_limited(key, state, exc)
            raise
        except ProviderOverloaded as exc:
            self._metrics.inc("limiter.overloaded", model=key.model)
            change = state.policy.on_overloaded(self._clock())
            await self._share(key, state)
            self._report(key, state, change)
            self._breaker_failed(key, state, exc, probe=probe, overload=True)
            raise
        except (ProviderUnavailable, ProviderTimeout, ProviderConnectionError) as exc:
            self._breaker_failed(key, state, exc, probe=probe, overload=False)
            raise
        finally:
            if probe and not slot.recorded:
                state.breaker.release_probe()
            await self._backend.release(key, holder, local=result.local)

    def _breaker_failed(
        self, key: LimitKey, state: _KeyState, exc: Exception, *, probe: bool, overload: bool
    ) -> None:
        was_closed = state.breaker.state is BreakerState.CLOSED
        if overload:
            state.breaker.record_overload(probe=probe)
        else:
            state.breaker.record_failure(probe=probe)
        self._breaker_gauge(key, state)
        if state.breaker.state is BreakerState.OPEN and (was_closed or probe):
            logger.warning(
                "breaker.opened" if was_closed else "breaker.probe_failed",
                extra={
                    "model": key.model,
                    "cooldown_s": self.config.breaker_cooldown_s,
                    "error": str(exc)[:200],
                },
            )

    def _report(self, key: LimitKey, state: _KeyState, change: LimitChange | None) -> None:
        """A log line when the probed concurrency was cut or has grown (the limit after the
        fleet's, when shared, was adopted)."""
        self._limit_gauge(key, state)
        if change is None:
            return
        limit = state.policy.adaptive.value()
        extra = {"model": key.model, "limit": limit, "reason": change.reason}
        if change.change is Change.CUT:
            logger.warning("limiter.concurrency_cut", extra=extra)
        else:
            logger.info("limiter.concurrency_grown", extra=extra)

    async def _share(self, key: LimitKey, state: _KeyState) -> None:
        """Send the last change of the probed limit to the fleet, and adopt the fleet's.

        Only while the probed limit is in charge: a provider announcing its rates costs no
        extra Redis call per answer."""
        adaptive = state.policy.adaptive
        change, adaptive.adjustment = adaptive.adjustment, None
        if change is None or not state.policy.probe_binds():
            return
        fleet = await self._backend.share_concurrency(key, change)
        if fleet is not None:
            adaptive.adopt(fleet)
            self._limit_gauge(key, state)

    def _limit_gauge(self, key: LimitKey, state: _KeyState) -> None:
        """The concurrency this process admits to now, per provider, key and model."""
        self._metrics.set(
            "limiter.concurrency_limit",
            state.policy.concurrency_limit(),
            provider=key.base_url,
            key=key.api_key_id,
            model=key.model,
        )

    async def _admit(
        self, key: LimitKey, state: _KeyState, tokens: int, holder: str
    ) -> tuple[AdmissionResult, bool, int]:
        """Also returns the lease limit the admission was granted under."""
        """Wait until admitted; one waiter per key per process talks to the backend (FIFO)."""
        started_s = self._clock()
        state.policy.note_reserved(tokens)
        probe, cleared = False, False
        async with state.lock:
            try:
                while True:
                    if not cleared:
                        probe, wait_s = state.breaker.enter()
                        if wait_s > 0:
                            await self._sleep(min(wait_s, self.config.max_poll_s))
                            continue
                        cleared = True
                    request = self._request(state, tokens, holder)
                    result = await self._backend.acquire(key, request)
                    self._absorb(key, state, result)
                    if result.verdict is Verdict.ADMITTED:
                        break
                    if result.verdict is Verdict.TOO_LARGE:
                        raise RequestTooLarge(
                            f"{tokens} tokens exceed the whole budget of "
                            f"{result.limit_tpm} tokens per minute for {key.model}"
                        )
                    await self._sleep(min(result.wait_s, self.config.max_poll_s))
            except BaseException:
                if probe:
                    state.breaker.release_probe()
                raise
        if probe:
            logger.info("breaker.probing", extra={"model": key.model})
        self._metrics.inc("limiter.admitted", model=key.model)
        self._metrics.observe("limiter.waited_s", self._clock() - started_s, model=key.model)
        return result, probe, request.lease_limit

    def _request(self, state: _KeyState, tokens: int, holder: str) -> AdmissionRequest:
        policy = state.policy
        return AdmissionRequest(
            limit_rpm=policy.limit_rpm(),
            limit_tpm=policy.limit_tpm(),
            factor=policy.admission_factor(),
            tokens=tokens,
            lease_limit=policy.concurrency_limit(),
            holder=holder,
            lease_ttl_s=self.config.lease_ttl_s,
            burst_s=policy.burst_s(self.config.burst_s),
        )

    def _absorb(self, key: LimitKey, state: _KeyState, result: AdmissionResult) -> None:
        """Adopt limits other processes learned, and slow down for a pause someone else hit."""
        learned = (result.learned_rpm, result.learned_tpm, result.learned_depth_s)
        if state.policy.learn_limits(*learned):
            self._learned_gauges(key, state)
        if result.pause_mark and result.pause_mark != state.last_pause_mark:
            state.last_pause_mark = result.pause_mark
            state.policy.on_rate_limited(self._clock())
        state.policy.adaptive.adjustment = None  # whoever hit the pause has shared its cut
        if result.fleet_limit is not None and state.policy.probe_binds():
            state.policy.adaptive.adopt(result.fleet_limit)
            self._limit_gauge(key, state)

    async def _learn(self, key: LimitKey, state: _KeyState, snapshot: RateLimitSnapshot) -> None:
        if state.policy.learn(snapshot):
            self._learned_gauges(key, state)
            policy = state.policy
            await self._backend.publish_learned(
                key, policy.learned_rpm, policy.learned_tpm, policy.learned_depth_s
            )

    async def _on_rate_limited(self, key: LimitKey, state: _KeyState, exc: RateLimited) -> None:
        """Pause the fleet until the provider's hint, learn what it said, decrease."""
        self._metrics.inc("limiter.rate_limited", model=key.model)
        snapshot = parse_rate_limit_headers(exc.headers, now_epoch_s=self._wall_clock())
        await self._learn(key, state, snapshot)
        hint_s = exc.retry_after_s if exc.retry_after_s is not None else snapshot.retry_after_s
        pause_s = min(
            self.config.max_pause_s, self.config.default_pause_s if hint_s is None else hint_s
        )
        state.last_pause_mark = await self._backend.pause(key, pause_s)
        state.policy.on_rate_limited(self._clock())
        await self._share(key, state)
        logger.warning(
            "limiter.rate_limited",
            extra={"model": key.model, "pause_s": pause_s, "factor": state.policy.factor},
        )

    async def _on_success(self, slot: Slot, completion: Completion) -> None:
        key, state = slot.key, self._state(slot.key)
        snapshot = parse_rate_limit_headers(completion.headers, now_epoch_s=self._wall_clock())
        if slot.unbudgeted:
            await self._charge_unbudgeted(key, state, slot, snapshot)
        await self._learn(key, state, snapshot)
        await self._reconcile(key, state, slot.reserved_tokens, completion.usage.total_tokens)
        change = state.policy.on_success(completion.latency_s, self._clock(), used=slot.used)
        await self._share(key, state)
        self._report(key, state, change)
        state.breaker.record_success(probe=slot.probe)
        if slot.probe:
            self._breaker_gauge(key, state)
            logger.info("breaker.closed", extra={"model": key.model})

    async def _charge_unbudgeted(
        self, key: LimitKey, state: _KeyState, slot: Slot, snapshot: RateLimitSnapshot
    ) -> None:
        """Charge a request admitted before any token limit was known, once one is.

        A fresh process's first request goes out blind (nothing to budget against) and its
        answer names the limit. The provider charged that request to its bucket; if bulkgen
        did not, it sees an idle budget and sends the next request into the bucket the first
        one emptied: a fresh worker's first 429. Charged before the limits are adopted: in
        ``auto`` mode one request runs until the first answer, so the next is admitted only
        against a budget that already holds this one.
        """
        known = [tpm for tpm in (state.policy.limit_tpm(), snapshot.limit_tpm) if tpm]
        if known and slot.reserved_tokens > 0:
            rate = min(known) * state.policy.admission_factor()
            await self._backend.adjust_tokens(key, slot.reserved_tokens, rate)

    async def _reconcile(self, key: LimitKey, state: _KeyState, reserved: int, used: int) -> None:
        mode, tpm = self.config.reconcile, state.policy.limit_tpm()
        if mode is ReconcileMode.NONE or tpm is None or used <= 0:
            return
        delta = used - reserved
        if delta > 0 or (delta < 0 and mode is ReconcileMode.FULL):
            await self._backend.adjust_tokens(key, delta, tpm * state.policy.admission_factor())

    def _learned_gauges(self, key: LimitKey, state: _KeyState) -> None:
        if state.policy.learned_rpm is not None:
            self._metrics.set("limiter.learned_rpm", state.policy.learned_rpm, model=key.model)
        if state.policy.learned_tpm is not None:
            self._metrics.set("limiter.learned_tpm", state.policy.learned_tpm, model=key.model)

    def _breaker_gauge(self, key: LimitKey, state: _KeyState) -> None:
        is_open = state.breaker.state is not BreakerState.CLOSED
        self._metrics.set("limiter.breaker_open", 1.0 if is_open else 0.0, model=key.model)

    async def aclose(self) -> None:
        await self._backend.aclose()


def governor_config(settings: Settings, *, max_concurrency: int | None = None) -> GovernorConfig:
    """The governor's knobs from validated settings; a lease outlives the provider timeout."""
    return GovernorConfig(
        policy=PolicyConfig(rpm=settings.rpm, tpm=settings.tpm, max_concurrency=max_concurrency),
        breaker_failures=settings.breaker_failures,
        breaker_cooldown_s=settings.breaker_cooldown_s,
        lease_ttl_s=settings.provider_timeout_s + 5.0,
        max_pause_s=settings.rate_limit_max_wait_s,
    )


async def build_governor(
    settings: Settings,
    redis: RedisClient | None,
    *,
    max_concurrency: int | None = None,
    config: GovernorConfig | None = None,
    clock: Clock = time.monotonic,
    wall_clock: Clock = time.time,
    sleep: Sleep = asyncio.sleep,
    metrics: Metrics = default_metrics,
) -> RateGovernor:
    """A governor on Redis when given one (fleet-wide, degrading to local), else in-process.

    ``config`` replaces everything derived from ``settings`` and ``max_concurrency``.
    """
    cfg = config or governor_config(settings, max_concurrency=max_concurrency)
    local = LocalBackend(clock)
    backend: LimitBackend = local
    if redis is not None:
        backend = RedisBackend(redis, local, clock=clock, metrics=metrics)
    return RateGovernor(
        backend, cfg, clock=clock, wall_clock=wall_clock, sleep=sleep, metrics=metrics
    )
