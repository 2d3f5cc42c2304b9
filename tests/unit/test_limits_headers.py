"""Header parsing: every supported format, and malformed values ignored with a log record."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from bulkgen.limits.headers import RateLimitSnapshot, parse_duration_s, parse_rate_limit_headers

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("12ms", 0.012),
        ("1m30.5s", 90.5),
        ("2h0m0s", 7200.0),
        ("20", 20.0),
        ("0.5", 0.5),
        ("1s500ms", 1.5),
        ("250us", 0.00025),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "5x", "m5", "-3", "1m-2s", "nan", "1.2.3s"])
def test_bad_durations_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_s(text)


def test_openai_headers() -> None:
    snap = parse_rate_limit_headers(
        {
            "X-RateLimit-Limit-Requests": "500",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-tokens": "28500",
            "x-ratelimit-reset-tokens": "1m30.5s",
        },
        now_epoch_s=NOW,
    )
    assert snap.reset_requests_s == pytest.approx(0.12)
    assert snap.reset_tokens_s == pytest.approx(90.5)
    assert snap == RateLimitSnapshot(
        limit_rpm=500,
        remaining_requests=499,
        reset_requests_s=snap.reset_requests_s,
        limit_tpm=30000,
        remaining_tokens=28500,
        reset_tokens_s=snap.reset_tokens_s,
        retry_after_s=None,
    )


def test_retry_after_forms() -> None:
    assert parse_rate_limit_headers({"retry-after": "7"}, now_epoch_s=NOW).retry_after_s == 7.0
    date = format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True)
    snap = parse_rate_limit_headers({"Retry-After": date}, now_epoch_s=NOW)
    assert snap.retry_after_s == pytest.approx(30.0)
    past = format_datetime(datetime.fromtimestamp(NOW - 30, UTC), usegmt=True)
    assert parse_rate_limit_headers({"retry-after": past}, now_epoch_s=NOW).retry_after_s == 0.0
    both = {"retry-after": "2", "retry-after-ms": "1500"}
    assert parse_rate_limit_headers(both, now_epoch_s=NOW).retry_after_s == pytest.approx(1.5)


def test_anthropic_headers_with_rfc3339_resets() -> None:
    snap = parse_rate_limit_headers(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": "2025-01-02T03:04:06Z",
            "anthropic-ratelimit-tokens-limit": "80000",
            "anthropic-ratelimit-tokens-remaining": "79000",
            "anthropic-ratelimit-tokens-reset": "2025-01-02T03:05:05.500+00:00",
            "anthropic-ratelimit-input-tokens-limit": "40000",
        },
        now_epoch_s=NOW,
    )
    assert snap.limit_rpm == 50
    assert snap.remaining_requests == 49
    assert snap.reset_requests_s == pytest.approx(1.0)
    assert snap.limit_tpm == 80000  # the combined tokens limit wins when present
    assert snap.remaining_tokens == 79000
    assert snap.reset_tokens_s == pytest.approx(60.5)


def test_anthropic_input_tokens_used_without_combined_limit() -> None:
    snap = parse_rate_limit_headers(
        {
            "anthropic-ratelimit-input-tokens-limit": "40000",
            "anthropic-ratelimit-input-tokens-remaining": "39000",
            "anthropic-ratelimit-input-tokens-reset": "2025-01-02T03:04:15Z",
            "anthropic-ratelimit-output-tokens-limit": "8000",
        },
        now_epoch_s=NOW,
    )
    assert (snap.limit_tpm, snap.remaining_tokens) == (40000, 39000)
    assert snap.reset_tokens_s == pytest.approx(10.0)


def test_no_headers_is_an_empty_snapshot() -> None:
    snap = parse_rate_limit_headers({"content-type": "application/json"}, now_epoch_s=NOW)
    assert snap.is_empty


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-ratelimit-limit-requests", "lots"),
        ("x-ratelimit-limit-tokens", "-5"),
        ("x-ratelimit-remaining-tokens", "1e3"),
        ("x-ratelimit-reset-requests", "soon"),
        ("x-ratelimit-reset-tokens", "5parsecs"),
        ("retry-after", "tomorrow-ish"),
        ("retry-after", "-1"),
        ("retry-after-ms", "fast"),
        ("anthropic-ratelimit-requests-reset", "2025-13-45T99:00:00Z"),
        ("anthropic-ratelimit-tokens-reset", "2025-01-02T03:04:06"),
        ("anthropic-ratelimit-requests-limit", "fifty"),
    ],
)
def test_malformed_values_are_ignored_with_a_warning(
    name: str, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = {"x-ratelimit-remaining-requests": "7"}
    if name.startswith("anthropic-ratelimit-tokens"):
        good["anthropic-ratelimit-tokens-limit"] = "900"
    with caplog.at_level(logging.WARNING, logger="bulkgen.limits.headers"):
        snap = parse_rate_limit_headers({**good, name: value}, now_epoch_s=NOW)
    field = {
        "x-ratelimit-limit-requests": "limit_rpm",
        "x-ratelimit-limit-tokens": "limit_tpm",
        "x-ratelimit-remaining-tokens": "remaining_tokens",
        "x-ratelimit-reset-requests": "reset_requests_s",
        "x-ratelimit-reset-tokens": "reset_tokens_s",
        "retry-after": "retry_after_s",
        "retry-after-ms": "retry_after_s",
        "anthropic-ratelimit-requests-reset": "reset_requests_s",
        "anthropic-ratelimit-tokens-reset": "reset_tokens_s",
        "anthropic-ratelimit-requests-limit": "limit_rpm",
    }[name]
    assert getattr(snap, field) is None
    assert snap.remaining_requests == 7  # the good headers next to it still count
    if name.startswith("anthropic-ratelimit-tokens"):
        assert snap.limit_tpm == 900
    records = [r for r in caplog.records if r.getMessage() == "limiter.header_malformed"]
    assert records and records[0].levelno == logging.WARNING
    assert records[0].__dict__["header"] == name


def test_malformed_retry_after_ms_falls_back_to_retry_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    headers = {"retry-after-ms": "soon", "retry-after": "3"}
    with caplog.at_level(logging.WARNING):
        assert parse_rate_limit_headers(headers, now_epoch_s=NOW).retry_after_s == 3.0
    assert any(r.getMessage() == "limiter.header_malformed" for r in caplog.records)


def test_bucket_depth_of_a_minute_deep_openai_bucket() -> None:
    # 5,000 RPM: 4,999 left, one request back in 12 ms -> the bucket holds a minute.
    snapshot = RateLimitSnapshot(limit_rpm=5_000, remaining_requests=4_999, reset_requests_s=0.012)
    assert snapshot.bucket_depth_s() == pytest.approx(60.0, abs=0.01)


def test_bucket_depth_of_a_shallow_bucket_takes_the_shallower_dimension() -> None:
    # A 0.1 s bucket (the simulator at time_scale 10): 5 of ~8.3 requests left, 40 ms to full.
    snapshot = RateLimitSnapshot(
        limit_rpm=5_000,
        remaining_requests=5,
        reset_requests_s=0.04,
        limit_tpm=6_000_000,
        remaining_tokens=4_000,
        reset_tokens_s=0.05,
    )
    assert snapshot.bucket_depth_s() == pytest.approx(min(0.04 + 0.06, 0.05 + 0.04))


def test_bucket_depth_ignores_empty_buckets_and_missing_parts() -> None:
    # An empty bucket may be overdrawn: its reset overstates the depth.
    empty = RateLimitSnapshot(limit_rpm=600, remaining_requests=0, reset_requests_s=3.0)
    assert empty.bucket_depth_s() is None
    assert RateLimitSnapshot(limit_rpm=600, remaining_requests=5).bucket_depth_s() is None
    assert RateLimitSnapshot().bucket_depth_s() is None


def test_bucket_depth_from_simulator_headers_under_time_scale() -> None:
    headers = {
        "x-ratelimit-limit-requests": "5000",
        "x-ratelimit-remaining-requests": "7",
        "x-ratelimit-reset-requests": "16ms",
    }
    snapshot = parse_rate_limit_headers(headers, now_epoch_s=0.0)
    assert snapshot.bucket_depth_s() == pytest.approx(0.016 + 7 * 60 / 5000)


def test_gateway_scoped_headers_are_read_like_openai_ones() -> None:
    snap = parse_rate_limit_headers(
        {
            "x-ratelimit-api_key-limit-requests": "300",
            "x-ratelimit-api_key-remaining-requests": "120",
            "x-ratelimit-api_key-limit-tokens": "90000",
            "x-ratelimit-api_key-remaining-tokens": "45000",
        },
        now_epoch_s=NOW,
    )
    assert (snap.limit_rpm, snap.remaining_requests) == (300, 120)
    assert (snap.limit_tpm, snap.remaining_tokens) == (90000, 45000)


def test_the_tightest_limit_announced_wins() -> None:
    snap = parse_rate_limit_headers(
        {
            # The provider's own budget, passed through by the gateway...
            "x-ratelimit-limit-requests": "10000",
            "x-ratelimit-remaining-requests": "9990",
            "x-ratelimit-reset-requests": "6ms",
            "x-ratelimit-limit-tokens": "2000000",
            # ...and the gateway's budgets for the key, the user, the team, the end user.
            "X-RateLimit-API_Key-Limit-Requests": "300",
            "x-ratelimit-api_key-remaining-requests": "250",
            "x-ratelimit-user-limit-requests": "600",
            "x-ratelimit-user-remaining-requests": "40",
            "x-ratelimit-team-limit-tokens": "50000",
            "x-ratelimit-team-remaining-tokens": "1000",
            "x-ratelimit-end-user-limit-tokens": "80000",
            "x-ratelimit-end_user-remaining-tokens": "70000",
            "anthropic-ratelimit-requests-limit": "5",  # x-ratelimit names win
        },
        now_epoch_s=NOW,
    )
    assert (snap.limit_rpm, snap.remaining_requests) == (300, 40)
    assert (snap.limit_tpm, snap.remaining_tokens) == (50000, 1000)
    assert snap.reset_requests_s == pytest.approx(0.006)


def test_a_malformed_scoped_header_is_ignored_not_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        snap = parse_rate_limit_headers(
            {
                "x-ratelimit-api_key-limit-requests": "lots",
                "x-ratelimit-team-limit-requests": "900",
            },
            now_epoch_s=NOW,
        )
    assert snap.limit_rpm == 900
    assert any(r.getMessage() == "limiter.header_malformed" for r in caplog.records)
