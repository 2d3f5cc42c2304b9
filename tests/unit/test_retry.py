"""The retry policy, exhaustively, with a seeded RNG and no clock."""

from __future__ import annotations

import random

import pytest

from bulkgen.errors import (
    BudgetExceeded,
    ConfigError,
    InputError,
    InvalidOutput,
    ProviderConnectionError,
    ProviderError,
    ProviderOverloaded,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExhausted,
    RateLimited,
    RequestTooLarge,
    StorageError,
)
from bulkgen.retry import RetryDecision, RetryPolicy
from bulkgen.settings import Settings


def policy(
    seed: int = 1,
    *,
    max_attempts: int = 5,
    base_s: float = 1.0,
    cap_s: float = 30.0,
    rate_limit_max_wait_s: float = 600.0,
) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=max_attempts,
        base_s=base_s,
        cap_s=cap_s,
        rate_limit_max_wait_s=rate_limit_max_wait_s,
        rng=random.Random(seed),
    )


def decide(
    p: RetryPolicy,
    error: BaseException,
    attempts: int = 1,
    rate_limited_s: float = 0.0,
    grew_max_tokens: bool = False,
) -> RetryDecision:
    return p.decide(
        error, attempts=attempts, rate_limited_s=rate_limited_s, grew_max_tokens=grew_max_tokens
    )


# Rate limits: snooze, never burn an attempt, fail loudly once the wait budget is spent.


def test_rate_limited_snoozes_for_retry_after() -> None:
    d = decide(policy(), RateLimited("429", retry_after_s=7.5), attempts=4)
    assert d == RetryDecision("snooze", 7.5, burns_attempt=False, error_kind="rate_limited")


def test_rate_limited_snooze_ignores_attempts_exhausted() -> None:
    d = decide(policy(max_attempts=2), RateLimited("429", retry_after_s=1.0), attempts=50)
    assert d.action == "snooze"
    assert not d.burns_attempt


def test_rate_limited_without_hint_uses_jittered_default() -> None:
    p = policy(seed=3)
    delays = [decide(p, RateLimited("429")).delay_s for _ in range(500)]
    assert all(1.0 <= d <= 5.0 for d in delays)
    assert len(set(delays)) > 400  # jittered, not one fixed value
    assert min(delays) < 1.5 and max(delays) > 4.5


def test_rate_limited_fails_when_wait_budget_would_be_exceeded() -> None:
    p = policy(rate_limit_max_wait_s=60.0)
    assert decide(p, RateLimited("429", retry_after_s=10.0), rate_limited_s=50.0).action == (
        "snooze"
    )
    d = decide(p, RateLimited("429", retry_after_s=10.0), rate_limited_s=50.5)
    assert d == RetryDecision("fail", 0.0, burns_attempt=False, error_kind="rate_limited")


def test_rate_limited_zero_budget_fails_at_once() -> None:
    d = decide(policy(rate_limit_max_wait_s=0.0), RateLimited("429", retry_after_s=0.5))
    assert d.action == "fail"
    assert d.error_kind == "rate_limited"


def test_rate_limited_negative_hint_is_clamped() -> None:
    assert decide(policy(), RateLimited("429", retry_after_s=-3.0)).delay_s == 0.0


def test_repeated_snoozes_end_in_failure_not_in_success() -> None:
    """429s until the wait budget runs out end in 'fail', never in an empty success."""
    p = policy(rate_limit_max_wait_s=30.0, seed=9)
    waited_s = 0.0
    for _ in range(1000):
        d = decide(p, RateLimited("429"), attempts=1, rate_limited_s=waited_s)
        if d.action == "fail":
            break
        assert d.action == "snooze"
        waited_s += d.delay_s
    assert d.action == "fail"
    assert d.error_kind == "rate_limited"
    assert waited_s <= 30.0


# Non-retryable errors: fail at once, whatever the attempt count.


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (QuotaExhausted("429 quota", status_code=429), "insufficient_quota"),
        (ProviderRejected("400", status_code=400), "rejected"),
        (ProviderRejected("401", status_code=401, retry_after_s=5.0), "rejected"),
        (RequestTooLarge("too big"), "request_too_large"),
        (BudgetExceeded("cap"), "budget_exceeded"),
    ],
)
def test_non_retryable_fail_at_once(error: BaseException, kind: str) -> None:
    d = decide(policy(), error, attempts=1)
    assert d.action == "fail"
    assert d.error_kind == kind
    assert d.delay_s == 0.0


# Retryable errors: capped exponential backoff, full jitter, Retry-After as a floor.

RETRYABLE: list[tuple[ProviderError, str]] = [
    (ProviderUnavailable("503", status_code=503), "server_error"),
    (ProviderTimeout("slow"), "timeout"),
    (ProviderConnectionError("reset"), "connection_error"),
    (InvalidOutput("blank", reason="empty"), "empty"),
    (InvalidOutput("junk", reason="malformed"), "malformed"),
    (InvalidOutput("short", reason="too_short"), "too_short"),
    (InvalidOutput("filtered", reason="content_filter"), "content_filter"),
    (ProviderError("generic"), "provider_error"),
]


@pytest.mark.parametrize(("error", "kind"), RETRYABLE)
def test_retryable_errors_retry_then_fail_at_max_attempts(error: ProviderError, kind: str) -> None:
    p = policy(max_attempts=4)
    for attempts in (1, 2, 3):
        d = decide(p, error, attempts=attempts)
        assert d.action == "retry"
        assert d.burns_attempt
        assert d.error_kind == kind
        assert not d.grow_max_tokens
    assert decide(p, error, attempts=4) == RetryDecision(
        "fail", 0.0, burns_attempt=True, error_kind=kind
    )
    assert decide(p, error, attempts=9).action == "fail"


@pytest.mark.parametrize("attempts", [1, 2, 3, 4, 5, 6, 7, 8])
def test_backoff_is_full_jitter_under_capped_exponential(attempts: int) -> None:
    p = policy(seed=attempts, base_s=0.5, cap_s=10.0, max_attempts=100)
    ceiling_s = min(10.0, 0.5 * 2 ** (attempts - 1))
    delays = [decide(p, ProviderTimeout("t"), attempts=attempts).delay_s for _ in range(2000)]
    assert all(0.0 <= d <= ceiling_s for d in delays)
    # Full jitter: spread over the whole window, mean near the middle (within 5%).
    assert min(delays) < 0.05 * ceiling_s
    assert max(delays) > 0.95 * ceiling_s
    assert sum(delays) / len(delays) == pytest.approx(ceiling_s / 2, rel=0.05)


def test_backoff_matches_the_formula_for_a_given_seed() -> None:
    p = policy(seed=42, base_s=2.0, cap_s=30.0)
    expected = random.Random(42)
    for attempts in (1, 2, 3, 4):
        want = expected.uniform(0.0, min(30.0, 2.0 * 2 ** (attempts - 1)))
        assert decide(p, ProviderUnavailable("x"), attempts=attempts).delay_s == want


def test_backoff_survives_huge_attempt_counts() -> None:
    d = decide(policy(max_attempts=100), ProviderTimeout("t"), attempts=99)
    assert 0.0 <= d.delay_s <= 30.0


def test_retry_after_is_a_floor_for_backoff() -> None:
    p = policy(seed=5, base_s=1.0, cap_s=2.0)
    for _ in range(100):
        d = decide(p, ProviderUnavailable("503", retry_after_s=12.0), attempts=1)
        assert d.delay_s == 12.0
    small = [decide(p, ProviderUnavailable("503", retry_after_s=0.1)).delay_s for _ in range(200)]
    assert all(0.1 <= d <= 1.0 for d in small)
    assert max(small) > 0.5  # the jitter still applies above the floor


def test_zero_base_means_immediate_retry() -> None:
    assert decide(policy(base_s=0.0), ProviderTimeout("t"), attempts=3).delay_s == 0.0


def test_same_seed_same_decisions() -> None:
    errors: list[BaseException] = [ProviderTimeout("t"), RateLimited("r"), ProviderUnavailable("u")]
    a, b = policy(seed=11), policy(seed=11)
    assert [decide(a, e, attempts=2) for e in errors * 5] == [
        decide(b, e, attempts=2) for e in errors * 5
    ]


# Truncation: grow max_tokens once, then give up.


def test_truncated_first_time_retries_at_once_with_more_tokens() -> None:
    d = decide(policy(), InvalidOutput("cut", reason="truncated"), attempts=1)
    assert d == RetryDecision(
        "retry", 0.0, burns_attempt=True, error_kind="truncated", grow_max_tokens=True
    )


def test_truncated_second_time_fails() -> None:
    d = decide(policy(), InvalidOutput("cut", reason="truncated"), attempts=2, grew_max_tokens=True)
    assert d == RetryDecision("fail", 0.0, burns_attempt=True, error_kind="truncated")


def test_truncated_on_last_attempt_fails() -> None:
    d = decide(policy(max_attempts=3), InvalidOutput("cut", reason="truncated"), attempts=3)
    assert d.action == "fail"
    assert d.error_kind == "truncated"


# Bugs fail loudly.


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bug"),
        KeyError("k"),
        AssertionError(),
        StorageError("db"),
        ConfigError("cfg"),
        InputError("in"),
    ],
)
def test_anything_else_fails_as_internal(error: BaseException) -> None:
    d = decide(policy(), error)
    assert d == RetryDecision("fail", 0.0, burns_attempt=True, error_kind="internal")


# Construction.


def test_from_settings_reads_the_retry_knobs() -> None:
    settings = Settings(
        max_attempts=3, backoff_base_s=0.25, backoff_cap_s=4.0, rate_limit_max_wait_s=90.0
    )
    p = RetryPolicy.from_settings(settings, rng=random.Random(0))
    assert (p.max_attempts, p.base_s, p.cap_s, p.rate_limit_max_wait_s) == (3, 0.25, 4.0, 90.0)
    assert decide(p, ProviderTimeout("t"), attempts=3).action == "fail"
    assert decide(p, RateLimited("r", retry_after_s=91.0)).action == "fail"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0, "base_s": 1.0, "cap_s": 1.0, "rate_limit_max_wait_s": 1.0},
        {"max_attempts": 1, "base_s": -1.0, "cap_s": 1.0, "rate_limit_max_wait_s": 1.0},
        {"max_attempts": 1, "base_s": 1.0, "cap_s": 1.0, "rate_limit_max_wait_s": -1.0},
    ],
)
def test_invalid_knobs_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


# Overload: a full server is not the job's fault. Snooze like a 429, never burn an attempt.


@pytest.mark.parametrize(
    "error",
    [
        ProviderOverloaded("503 overloaded", status_code=503),
        ProviderOverloaded("bare 429", status_code=429),
    ],
)
def test_overload_snoozes_without_an_attempt_until_the_wait_budget(error: ProviderError) -> None:
    p = policy(max_attempts=2, rate_limit_max_wait_s=60.0)
    for attempts in (1, 2, 5, 50):  # however often it happens: max_attempts never applies
        d = decide(p, error, attempts=attempts, rate_limited_s=10.0)
        assert d.action == "snooze" and not d.burns_attempt
        assert d.error_kind == "overloaded"
        assert 0.5 <= d.delay_s <= 2.0
    assert decide(p, error, rate_limited_s=59.9) == RetryDecision(
        "fail", 0.0, burns_attempt=False, error_kind="overloaded"
    )


def test_overload_honours_a_wait_hint() -> None:
    d = decide(policy(), ProviderOverloaded("503", status_code=503, retry_after_s=7.0))
    assert (d.action, d.delay_s, d.burns_attempt) == ("snooze", 7.0, False)


def test_an_outage_still_costs_attempts_beside_overload() -> None:
    p = policy(max_attempts=2)
    for error in (
        ProviderUnavailable("500", status_code=500),
        ProviderUnavailable("503", status_code=503),
        InvalidOutput("junk", reason="malformed"),
        ProviderConnectionError("reset"),
    ):
        assert decide(p, error, attempts=1).burns_attempt
        assert decide(p, error, attempts=2).action == "fail"
