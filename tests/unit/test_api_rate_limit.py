"""The per-account API rate rule on a fake clock: burst, refill, isolation, Retry-After."""

from __future__ import annotations

import pytest

from bulkgen.api import ApiSettings
from bulkgen.api.rate_limit import AccountRate, LocalAccountLimiter, account_key, retry_after_s


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def limiter(rate_per_s: float = 2.0, burst: int = 4) -> tuple[LocalAccountLimiter, FakeClock]:
    clock = FakeClock()
    return LocalAccountLimiter(AccountRate(rate_per_s=rate_per_s, burst=burst), clock), clock


def test_an_idle_account_gets_exactly_its_burst_then_a_wait() -> None:
    rule, _ = limiter(rate_per_s=2.0, burst=4)
    assert [rule.admit_now(1) for _ in range(4)] == [0.0] * 4
    assert rule.admit_now(1) == pytest.approx(0.5)  # one interval at 2/s


def test_a_refused_request_costs_nothing() -> None:
    rule, clock = limiter(rate_per_s=2.0, burst=4)
    for _ in range(4):
        rule.admit_now(1)
    assert [rule.admit_now(1) for _ in range(10)] == [pytest.approx(0.5)] * 10
    clock.now_s += 0.5
    assert rule.admit_now(1) == 0.0
    assert rule.admit_now(1) == pytest.approx(0.5)


def test_the_long_run_rate_is_the_limit() -> None:
    rule, clock = limiter(rate_per_s=2.0, burst=4)
    admitted = 0
    for step in range(41):  # 0 to 10 simulated seconds in exact quarter seconds
        clock.now_s = 1000.0 + step * 0.25
        admitted += sum(rule.admit_now(1) == 0.0 for _ in range(3))  # asking 12 a second
    assert admitted == 4 + 20  # the burst, then 2 a second for 10 s


def test_accounts_do_not_share_a_budget() -> None:
    rule, _ = limiter(rate_per_s=2.0, burst=4)
    for _ in range(4):
        rule.admit_now(1)
    assert rule.admit_now(1) > 0
    assert [rule.admit_now(2) for _ in range(4)] == [0.0] * 4


def test_idle_time_refills_up_to_the_burst_only() -> None:
    rule, clock = limiter(rate_per_s=2.0, burst=4)
    rule.admit_now(1)
    clock.now_s += 3600
    assert [rule.admit_now(1) for _ in range(4)] == [0.0] * 4
    assert rule.admit_now(1) > 0


@pytest.mark.parametrize(
    ("wait_s", "header"), [(0.001, 1), (0.5, 1), (1.0, 1), (1.2, 2), (99.9, 100)]
)
def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one(
    wait_s: float, header: int
) -> None:
    assert retry_after_s(wait_s) == header


def test_the_redis_key_is_hash_tagged_by_account() -> None:
    key = account_key(42)
    assert "{42}" in key
    assert account_key(42) != account_key(43)


def test_settings_read_rate_and_burst_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULKGEN_API_RATE_PER_S", "0.5")
    monkeypatch.setenv("BULKGEN_API_BURST", "7")
    assert ApiSettings().account_rate == AccountRate(rate_per_s=0.5, burst=7)
    monkeypatch.setenv("BULKGEN_API_RATE_PER_S", "0")
    with pytest.raises(ValueError, match="rate_per_s"):
        ApiSettings()
