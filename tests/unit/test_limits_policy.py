"""Limiter math with an injected clock: GCRA smoothing, AIMD, learning, concurrency, breaker."""

from __future__ import annotations

import pytest

from bulkgen.limits.breaker import BreakerState, CircuitBreaker
from bulkgen.limits.gcra import Gcra
from bulkgen.limits.headers import RateLimitSnapshot
from bulkgen.limits.policy import PolicyConfig, RatePolicy


def admit_all(gcra: Gcra, now_s: float, interval_s: float, burst_s: float, cost: float = 1) -> int:
    admitted = 0
    while gcra.wait_s(now_s, cost, interval_s, burst_s) == 0:
        gcra.charge(now_s, cost, interval_s)
        admitted += 1
    return admitted


def test_idle_burst_is_at_most_one_second_of_budget() -> None:
    # rpm=600 -> 10 per second: an idle budget lets exactly one second's worth through.
    assert admit_all(Gcra(), 0.0, 60 / 600, burst_s=1.0) == 10


def test_steady_rate_equals_the_limit() -> None:
    gcra, interval_s = Gcra(), 60 / 600
    admitted = admit_all(gcra, 0.0, interval_s, 1.0)
    now_s = 0.0
    while now_s < 60.0:  # poll every 10 ms for a minute
        now_s += 0.01
        admitted += admit_all(gcra, now_s, interval_s, 1.0)
    assert admitted == pytest.approx(600 + 10, abs=1)  # the limit plus the one-second burst


def test_wait_says_exactly_when_it_fits() -> None:
    gcra, interval_s = Gcra(), 0.1
    admit_all(gcra, 0.0, interval_s, 1.0)
    wait_s = gcra.wait_s(0.0, 1, interval_s, 1.0)
    assert wait_s == pytest.approx(0.1)
    assert gcra.wait_s(wait_s, 1, interval_s, 1.0) == 0


def test_large_request_fits_an_idle_token_budget_then_blocks() -> None:
    gcra, interval_s = Gcra(), 60 / 30_000  # tpm 30k = 500 tokens/s
    assert gcra.wait_s(0.0, 1600, interval_s, 1.0) == 0  # bigger than 1 s, still admitted
    gcra.charge(0.0, 1600, interval_s)
    assert gcra.wait_s(0.0, 1600, interval_s, 1.0) == pytest.approx(3.2)


def test_reconcile_charge_and_refund_never_banks_credit() -> None:
    gcra, interval_s = Gcra(), 0.01
    gcra.charge(0.0, 100, interval_s)  # TAT = 1.0
    gcra.refund(0.0, 40, interval_s)
    assert gcra.tat_s == pytest.approx(0.6)
    gcra.charge(0.0, 10, interval_s)
    assert gcra.tat_s == pytest.approx(0.7)
    gcra.refund(0.0, 1_000, interval_s)  # a refund beyond the debt stops at "idle"
    assert gcra.tat_s == pytest.approx(0.0)
    gcra.refund(5.0, 10, interval_s)  # an idle budget stays idle
    assert gcra.tat_s == pytest.approx(0.0)


def test_aimd_decreases_once_per_holdoff_and_recovers_additively() -> None:
    policy = RatePolicy(PolicyConfig(rpm=600, decrease=0.8, increase_step=0.05))
    assert policy.on_rate_limited(10.0)
    assert not policy.on_rate_limited(10.5)  # same overshoot, counted once
    assert policy.factor == pytest.approx(0.8)
    assert policy.on_rate_limited(11.5)
    assert policy.factor == pytest.approx(0.64)
    for _ in range(4):
        policy.on_success(1.0, 0.0)
    assert policy.factor == pytest.approx(0.84)
    for _ in range(10):
        policy.on_success(1.0, 0.0)
    assert policy.factor == 1.0  # never above the known limit


def test_aimd_has_a_floor() -> None:
    policy = RatePolicy(PolicyConfig(rpm=600, min_factor=0.1, decrease_holdoff_s=0))
    for i in range(100):
        policy.on_rate_limited(float(i))
    assert policy.factor == pytest.approx(0.1)


def test_auto_learns_limits_and_configured_limits_take_the_minimum() -> None:
    auto = RatePolicy(PolicyConfig())
    assert (auto.limit_rpm(), auto.limit_tpm()) == (None, None)
    assert auto.learn(RateLimitSnapshot(limit_rpm=500, limit_tpm=30_000))
    assert not auto.learn(RateLimitSnapshot(limit_rpm=500))  # nothing new to share
    assert (auto.limit_rpm(), auto.limit_tpm()) == (500, 30_000)

    configured = RatePolicy(PolicyConfig(rpm=1_000, tpm=10_000))
    configured.learn(RateLimitSnapshot(limit_rpm=300, limit_tpm=90_000))
    assert (configured.limit_rpm(), configured.limit_tpm()) == (300, 10_000)


def test_auto_starts_with_one_in_flight_then_ramps() -> None:
    policy = RatePolicy(PolicyConfig())
    assert policy.concurrency_limit() == 1
    policy.on_success(2.0, 0.0)
    policy.on_success(2.0, 0.0)
    assert policy.concurrency_limit() == 3  # no headers: one more per success
    policy.on_rate_limited(0.0)
    assert policy.concurrency_limit() == 1


def test_concurrency_follows_littles_law() -> None:
    policy = RatePolicy(PolicyConfig(rpm=600, headroom=1.3, latency_quantile=0.9, target_share=1.0))
    for latency_s in [1.0] * 90 + [4.0] * 10:
        policy.on_success(latency_s, 0.0)
    # 10 requests/s * p90 latency 4 s * 1.3 headroom
    assert policy.concurrency_limit() == 52
    policy.note_reserved(2_000)
    policy.learn(RateLimitSnapshot(limit_tpm=60_000))  # 500 tokens/s / 2000 = 0.5 req/s
    assert policy.concurrency_limit() == 3  # ceil(0.5 * 4 * 1.3)


def test_user_cap_wins_and_floor_is_one() -> None:
    capped = RatePolicy(PolicyConfig(rpm=6_000, max_concurrency=5))
    capped.on_success(10.0, 0.0)
    assert capped.concurrency_limit() == 5
    slow = RatePolicy(PolicyConfig(rpm=1))
    slow.on_success(0.01, 0.0)
    assert slow.concurrency_limit() == 1


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """Read the state afresh (a property that changes with the clock)."""
    return breaker.state


def test_breaker_opens_after_consecutive_failures() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(3, 30.0, clock)
    breaker.record_failure(probe=False)
    breaker.record_failure(probe=False)
    breaker.record_success(probe=False)  # resets the streak
    breaker.record_failure(probe=False)
    breaker.record_failure(probe=False)
    assert breaker.allows_claim()
    breaker.record_failure(probe=False)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allows_claim()
    is_probe, wait_s = breaker.enter()
    assert not is_probe
    assert wait_s == pytest.approx(30.0)


def test_breaker_half_open_lets_exactly_one_probe() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 30.0, clock)
    breaker.record_failure(probe=False)
    clock.now_s = 30.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allows_claim()
    assert breaker.enter() == (True, 0.0)
    assert not breaker.allows_claim()
    is_probe, wait_s = breaker.enter()
    assert not is_probe and wait_s > 0
    breaker.record_success(probe=True)
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.enter() == (False, 0.0)


def test_breaker_failed_probe_reopens_and_probe_without_verdict_is_handed_back() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 10.0, clock)
    breaker.record_failure(probe=False)
    clock.now_s = 10.0
    assert breaker.enter() == (True, 0.0)
    breaker.record_failure(probe=True)
    assert breaker.state is BreakerState.OPEN
    clock.now_s = 15.0
    assert not breaker.allows_claim()
    clock.now_s = 20.0
    assert breaker.enter() == (True, 0.0)
    breaker.release_probe()  # e.g. invalid output: no verdict
    assert breaker.allows_claim()
    assert breaker.enter() == (True, 0.0)


def test_breaker_ignores_stale_results_while_open() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(2, 10.0, clock)
    breaker.record_failure(probe=False)
    breaker.record_failure(probe=False)
    breaker.record_success(probe=False)  # a request sent before the circuit opened
    assert breaker.state is BreakerState.OPEN


def test_admission_aims_at_a_standing_margin_under_the_limit() -> None:
    policy = RatePolicy(PolicyConfig(rpm=600, target_share=0.98))
    assert policy.admission_factor() == pytest.approx(0.98)
    policy.on_rate_limited(0.0)
    assert policy.admission_factor() == pytest.approx(0.8 * 0.98)
    assert policy.rate_per_s() == pytest.approx(10 * 0.8 * 0.98)


def test_burst_is_capped_by_the_providers_bucket_once_known() -> None:
    policy = RatePolicy(PolicyConfig(burst_share=0.5))
    assert policy.burst_s(1.0) == 1.0  # nothing known: the configured burst
    shallow = RateLimitSnapshot(limit_rpm=6_000, remaining_requests=5, reset_requests_s=0.05)
    assert policy.learn(shallow)  # 0.05 + 5 * 0.01 = 0.1 s deep: worth sharing
    assert policy.burst_s(1.0) == pytest.approx(0.05)
    # A drained bucket reports less depth; the deepest report is kept.
    assert not policy.learn(
        RateLimitSnapshot(limit_rpm=6_000, remaining_requests=1, reset_requests_s=0.05)
    )
    assert policy.learned_depth_s == pytest.approx(0.1)
    minute_deep = RateLimitSnapshot(
        limit_rpm=6_000, remaining_requests=5_999, reset_requests_s=0.01
    )
    policy.learn(minute_deep)
    assert policy.burst_s(1.0) == 1.0  # a deep bucket never raises the configured burst
