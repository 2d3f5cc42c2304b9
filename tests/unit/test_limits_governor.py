"""The governor on the in-process backend, with an injected clock and sleep."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

import bulkgen.limits as limits
from bulkgen.errors import (
    InvalidOutput,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    RequestTooLarge,
)
from bulkgen.limits import (
    GovernorConfig,
    LimitKey,
    PolicyConfig,
    RateGovernor,
    ReconcileMode,
    build_governor,
    governor_config,
)
from bulkgen.metrics import Metrics
from bulkgen.models import Completion, Usage
from bulkgen.settings import Settings

KEY = LimitKey("http://127.0.0.1:9/v1", "k1", "gpt-test")


class FakeTime:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def clock(self) -> float:
        return self.now_s

    async def sleep(self, seconds: float) -> None:
        self.now_s += max(seconds, 0.001)
        await asyncio.sleep(0)


def completion(tokens: int = 100, headers: dict[str, str] | None = None) -> Completion:
    return Completion(
        content="text",
        usage=Usage(prompt_tokens=tokens // 2, completion_tokens=tokens - tokens // 2),
        finish_reason="stop",
        model=KEY.model,
        headers=headers or {},
        latency_s=1.0,
    )


def configured(**changes: object) -> GovernorConfig:
    """The default governor config (from default settings) with ``changes``."""
    return dataclasses.replace(governor_config(Settings()), **changes)  # type: ignore[arg-type]


async def make(
    fake: FakeTime, metrics: Metrics, config: GovernorConfig | None = None, **settings: object
) -> RateGovernor:
    return await build_governor(
        Settings(**settings),  # type: ignore[arg-type]
        None,
        config=config,
        clock=fake.clock,
        wall_clock=fake.clock,
        sleep=fake.sleep,
        metrics=metrics,
    )


def test_public_surface_is_pinned() -> None:
    assert sorted(limits.__all__) == [
        "BreakerState",
        "CircuitBreaker",
        "GovernorConfig",
        "LimitKey",
        "PolicyConfig",
        "RateGovernor",
        "RateLimitSnapshot",
        "RatePolicy",
        "ReconcileMode",
        "Slot",
        "api_key_id",
        "build_governor",
        "governor_config",
        "parse_duration_s",
        "parse_rate_limit_headers",
    ]
    assert limits.api_key_id("sk-secret") != "sk-secret"


async def test_steady_rate_through_the_governor() -> None:
    fake, metrics = FakeTime(), Metrics()
    exact = PolicyConfig(rpm=600, tpm=10_000_000, target_share=1.0)
    gov = await make(fake, metrics, configured(policy=exact))
    start_s = fake.now_s
    for _ in range(70):
        async with gov.slot(KEY, 10) as slot:
            await slot.record(completion(10))
    # 10 in the first (burst) second, then one per 0.1 s: the 70th at 6.0 s.
    assert fake.now_s - start_s == pytest.approx(6.0, abs=0.01)
    assert metrics.total("limiter.admitted") == 70


async def test_request_larger_than_the_budget_fails_at_once() -> None:
    fake, metrics = FakeTime(), Metrics()
    gov = await make(fake, metrics, tpm=1_000)
    before_s = fake.now_s
    with pytest.raises(RequestTooLarge):
        async with gov.slot(KEY, 1_001):
            pytest.fail("must not be admitted")
    assert fake.now_s == before_s
    async with gov.slot(KEY, 1_000) as slot:  # exactly the budget is fine
        await slot.record(completion(1_000))


async def test_learned_tpm_makes_a_later_request_too_large() -> None:
    fake, metrics = FakeTime(), Metrics()
    gov = await make(fake, metrics)
    async with gov.slot(KEY, 100) as slot:
        await slot.record(completion(100, {"x-ratelimit-limit-tokens": "500"}))
    with pytest.raises(RequestTooLarge):
        async with gov.slot(KEY, 501):
            pass


async def test_rate_limited_pauses_decreases_and_propagates() -> None:
    fake, metrics = FakeTime(), Metrics()
    gov = await make(fake, metrics, rpm=600)
    with pytest.raises(RateLimited):
        async with gov.slot(KEY, 10):
            raise RateLimited("slow down", status_code=429, retry_after_s=5.0)
    assert gov.policy(KEY).factor == pytest.approx(0.8)
    assert metrics.total("limiter.rate_limited") == 1
    paused_at_s = fake.now_s
    async with gov.slot(KEY, 10) as slot:
        assert fake.now_s - paused_at_s >= 5.0
        await slot.record(completion(10))
    assert gov.policy(KEY).factor == pytest.approx(0.81)  # additive recovery


async def test_rate_limited_learns_from_its_headers() -> None:
    fake, metrics = FakeTime(), Metrics()
    gov = await make(fake, metrics, rpm=10_000)
    headers = {"x-ratelimit-limit-requests": "300", "retry-after-ms": "1500"}
    with pytest.raises(RateLimited):
        async with gov.slot(KEY, 10):
            raise RateLimited("429", headers=headers)
    assert gov.policy(KEY).limit_rpm() == 300
    assert metrics.gauge("limiter.learned_rpm", model=KEY.model) == 300
    t0 = fake.now_s
    async with gov.slot(KEY, 10):
        assert fake.now_s - t0 >= 1.5


async def test_auto_mode_runs_one_until_the_first_response() -> None:
    fake, metrics = FakeTime(), Metrics()
    gov = await make(fake, metrics)
    assert gov.concurrency_limit(KEY) == 1
    second_admitted = asyncio.Event()

    async def second() -> None:
        async with gov.slot(KEY, 10):
            second_admitted.set()

    async with gov.slot(KEY, 10) as slot:
        task = asyncio.create_task(second())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not second_admitted.is_set()
        await slot.record(completion(10, {"x-ratelimit-limit-requests": "600"}))
    await task
    assert second_admitted.is_set()
    assert gov.policy(KEY).limit_rpm() == 600
    assert gov.concurrency_limit(KEY) == 13  # 10/s * 1 s * 1.3


async def test_user_cap_on_concurrency_wins() -> None:
    fake = FakeTime()
    gov = await build_governor(
        Settings(rpm=60_000), None, max_concurrency=4, clock=fake.clock, sleep=fake.sleep
    )
    assert gov.concurrency_limit(KEY) == 4


@pytest.mark.parametrize(
    ("mode", "expected_wait_s"),
    [(ReconcileMode.CHARGE, 7.0), (ReconcileMode.NONE, 1.0), (ReconcileMode.FULL, 7.0)],
)
async def test_reconcile_charges_usage_above_the_reservation(
    mode: ReconcileMode, expected_wait_s: float
) -> None:
    fake, metrics = FakeTime(), Metrics()
    config = configured(
        policy=PolicyConfig(tpm=6_000, target_share=1.0), reconcile=mode
    )  # 100 tokens/s
    gov = await make(fake, metrics, config)
    async with gov.slot(KEY, 100) as slot:
        await slot.record(completion(700))  # used 600 more than reserved
    t0 = fake.now_s
    async with gov.slot(KEY, 100):
        assert fake.now_s - t0 == pytest.approx(expected_wait_s, abs=0.01)


@pytest.mark.parametrize(
    ("mode", "expected_wait_s"), [(ReconcileMode.CHARGE, 6.0), (ReconcileMode.FULL, 1.0)]
)
async def test_refund_only_in_full_mode(mode: ReconcileMode, expected_wait_s: float) -> None:
    fake, metrics = FakeTime(), Metrics()
    gov = await make(
        fake,
        metrics,
        configured(policy=PolicyConfig(tpm=6_000, target_share=1.0), reconcile=mode),
    )
    async with gov.slot(KEY, 600) as slot:  # TAT 6 s ahead
        await slot.record(completion(100))
    t0 = fake.now_s
    async with gov.slot(KEY, 100):
        assert fake.now_s - t0 == pytest.approx(expected_wait_s, abs=0.01)


async def test_breaker_opens_probes_once_and_closes() -> None:
    fake, metrics = FakeTime(), Metrics()
    gov = await make(fake, metrics, rpm=60_000, breaker_failures=2, breaker_cooldown_s=10.0)
    for exc in (ProviderUnavailable("502"), ProviderTimeout("slow")):
        with pytest.raises(type(exc)):
            async with gov.slot(KEY, 10):
                raise exc
    assert not gov.allows_claim(KEY)
    assert metrics.gauge("limiter.breaker_open", model=KEY.model) == 1.0
    opened_s = fake.now_s
    async with gov.slot(KEY, 10) as probe:  # waits out the cooldown, then is the probe
        assert fake.now_s - opened_s >= 10.0
        assert probe.probe
        assert not gov.allows_claim(KEY)
        await probe.record(completion(10))
    assert gov.allows_claim(KEY)
    assert metrics.gauge("limiter.breaker_open", model=KEY.model) == 0.0


async def test_invalid_output_is_neither_rate_limit_nor_breaker_failure() -> None:
    fake, metrics = FakeTime(), Metrics()
    gov = await make(fake, metrics, rpm=600, breaker_failures=1)
    with pytest.raises(InvalidOutput):
        async with gov.slot(KEY, 10):
            raise InvalidOutput("empty", reason="empty")
    assert gov.allows_claim(KEY)
    assert gov.policy(KEY).factor == 1.0
    assert metrics.total("limiter.rate_limited") == 0


async def test_lease_is_released_on_every_exit() -> None:
    fake, metrics = FakeTime(), Metrics()
    gov = await make(fake, metrics, rpm=60_000, breaker_failures=100)
    gov_cap = await build_governor(
        Settings(rpm=60_000), None, max_concurrency=1, clock=fake.clock, sleep=fake.sleep
    )
    for g in (gov, gov_cap):
        for exc in (ValueError("x"), ProviderUnavailable("502")):
            with pytest.raises(type(exc)):
                async with g.slot(KEY, 10):
                    raise exc
    t0 = fake.now_s
    async with gov_cap.slot(KEY, 10):  # a leaked lease would make this wait for its TTL
        assert fake.now_s - t0 < 1.0


async def test_a_shallow_provider_bucket_shrinks_the_burst() -> None:
    fake, metrics = FakeTime(), Metrics()
    config = configured(policy=PolicyConfig(target_share=1.0))  # auto: nothing configured
    gov = await make(fake, metrics, config)
    headers = {  # 600 RPM in a 0.2 s bucket: 1 left, full again in 0.1 s
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "100ms",
    }
    async with gov.slot(KEY, 10) as slot:
        await slot.record(completion(10, headers))
    assert gov.policy(KEY).learned_depth_s == pytest.approx(0.2)
    t0 = fake.now_s
    for _ in range(10):
        async with gov.slot(KEY, 10) as slot:
            await slot.record(completion(10))
    # A 1 s burst would let ~10 through at once; half the 0.2 s bucket lets one.
    assert fake.now_s - t0 >= 0.8
