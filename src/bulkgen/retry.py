"""What to do after a failed attempt: a pure policy, no clock, no I/O.

The pipeline asks :meth:`RetryPolicy.decide` and turns the returned
:class:`RetryDecision` into an outcome row; nothing here sleeps or writes. The rules:

- ``RateLimited``: **snooze** (no attempt burnt) for the provider's ``retry_after_s``, or a
  jittered 1-5 s when it gave none, until the job's total rate-limit wait would pass
  ``rate_limit_max_wait_s``: then **fail** as ``rate_limited``. An exhausted 429 budget
  ends loudly as ``failed``, never as an empty ``done``.
- ``ProviderOverloaded`` (a full server: 503 "overloaded", a 429 without limit headers):
  the same snooze as a 429 (0.5-2 s without a hint: a full server frees a place as soon as
  one answer is out), bounded by the same total wait, failing as ``overloaded``. Not
  the job's fault, so it never burns an attempt, however long a batch runs into a full
  server. A 500, a malformed answer or a dropped connection still do (below).
- ``QuotaExhausted``, ``ProviderRejected``, ``RequestTooLarge``, ``BudgetExceeded`` and any
  other non-retryable provider error: **fail** at once; retrying cannot help and costs money.
- ``InvalidOutput`` with kind ``truncated``: the first time, **retry** at once with a larger
  ``max_tokens`` (``grow_max_tokens=True``, attempt burnt); the second time, fail.
- ``ProviderUnavailable``, ``ProviderTimeout``, ``ProviderConnectionError``, other
  ``InvalidOutput`` and any other retryable provider error: **retry** with capped
  exponential backoff and full jitter, ``uniform(0, min(cap, base * 2**(attempts-1)))``,
  with ``retry_after_s`` as a floor, until ``attempts >= max_attempts``: then fail with
  the error's kind.
- Anything else is a bug: fail as ``internal`` so it surfaces instead of looping.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from bulkgen.errors import (
    BudgetExceeded,
    InvalidOutput,
    ProviderError,
    ProviderOverloaded,
    RateLimited,
    RequestTooLarge,
)
from bulkgen.settings import Settings

__all__ = ["RetryDecision", "RetryPolicy"]

# A 429 without a hint: wait long enough for a minute-window limiter to refill a little,
# jittered so a fleet of snoozed jobs does not come back in the same instant.
RATE_LIMIT_DEFAULT_MIN_S = 1.0
RATE_LIMIT_DEFAULT_MAX_S = 5.0
# A full server without a hint frees a place as soon as one answer is out: come back sooner.
OVERLOAD_DEFAULT_MIN_S = 0.5
OVERLOAD_DEFAULT_MAX_S = 2.0
# Exponents beyond this cannot matter (2**60 s dwarfs any cap) and would only risk overflow.
_MAX_EXPONENT = 60


@dataclass(frozen=True)
class RetryDecision:
    """The policy's verdict on one failed attempt.

    ``delay_s`` is how long from now the job should wait before it may be claimed again
    (0 for ``fail``); ``burns_attempt`` is False for snoozes and for the rate-limit
    failure, so rate limiting can never exhaust or inflate a job's attempt count.
    """

    action: Literal["retry", "snooze", "fail"]
    delay_s: float
    burns_attempt: bool
    error_kind: str
    grow_max_tokens: bool = False


class RetryPolicy:
    """Decides retry, snooze or fail for one error; the RNG is injected for reproducibility."""

    def __init__(
        self,
        *,
        max_attempts: int,
        base_s: float,
        cap_s: float,
        rate_limit_max_wait_s: float,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if base_s < 0 or cap_s < 0 or rate_limit_max_wait_s < 0:
            raise ValueError("base_s, cap_s and rate_limit_max_wait_s must not be negative")
        self.max_attempts = max_attempts
        self.base_s = base_s
        self.cap_s = cap_s
        self.rate_limit_max_wait_s = rate_limit_max_wait_s
        self._rng = rng or random.Random()

    @classmethod
    def from_settings(cls, settings: Settings, rng: random.Random | None = None) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            base_s=settings.backoff_base_s,
            cap_s=settings.backoff_cap_s,
            rate_limit_max_wait_s=settings.rate_limit_max_wait_s,
            rng=rng,
        )

    def decide(
        self,
        error: BaseException,
        *,
        attempts: int,
        rate_limited_s: float,
        grew_max_tokens: bool,
    ) -> RetryDecision:
        """The verdict for ``error``, raised by attempt number ``attempts`` (1-based).

        ``rate_limited_s`` is the time this job has already spent snoozing (rate limits,
        overloads);
        ``grew_max_tokens`` says whether the truncation retry was already used.
        """
        if isinstance(error, RateLimited | ProviderOverloaded):
            return self._rate_limited(error, rate_limited_s)
        if isinstance(error, RequestTooLarge):
            return _fail("request_too_large")
        if isinstance(error, BudgetExceeded):
            return _fail("budget_exceeded")
        if not isinstance(error, ProviderError):
            return _fail("internal")
        if not error.retryable:
            return _fail(error.kind)
        if isinstance(error, InvalidOutput) and error.kind == "truncated":
            return self._truncated(attempts, grew_max_tokens)
        return self._backoff(error, attempts)

    def backoff_s(self, attempts: int) -> float:
        """Full-jitter delay after attempt ``attempts``: uniform over [0, capped exponential]."""
        exponent = min(max(attempts, 1) - 1, _MAX_EXPONENT)
        ceiling_s = min(self.cap_s, self.base_s * 2.0**exponent)
        return self._rng.uniform(0.0, ceiling_s)

    def _rate_limited(
        self, error: RateLimited | ProviderOverloaded, rate_limited_s: float
    ) -> RetryDecision:
        delay_s = error.retry_after_s
        if delay_s is None and isinstance(error, ProviderOverloaded):
            delay_s = self._rng.uniform(OVERLOAD_DEFAULT_MIN_S, OVERLOAD_DEFAULT_MAX_S)
        elif delay_s is None:
            delay_s = self._rng.uniform(RATE_LIMIT_DEFAULT_MIN_S, RATE_LIMIT_DEFAULT_MAX_S)
        delay_s = max(0.0, delay_s)
        if rate_limited_s + delay_s > self.rate_limit_max_wait_s:
            return _fail(error.kind, burns_attempt=False)
        return RetryDecision("snooze", delay_s, burns_attempt=False, error_kind=error.kind)

    def _truncated(self, attempts: int, grew_max_tokens: bool) -> RetryDecision:
        if grew_max_tokens or attempts >= self.max_attempts:
            return _fail("truncated")
        return RetryDecision(
            "retry", 0.0, burns_attempt=True, error_kind="truncated", grow_max_tokens=True
        )

    def _backoff(self, error: ProviderError, attempts: int) -> RetryDecision:
        if attempts >= self.max_attempts:
            return _fail(error.kind)
        delay_s = self.backoff_s(attempts)
        if error.retry_after_s is not None:
            delay_s = max(delay_s, error.retry_after_s)
        return RetryDecision("retry", delay_s, burns_attempt=True, error_kind=error.kind)


def _fail(kind: str, *, burns_attempt: bool = True) -> RetryDecision:
    return RetryDecision("fail", 0.0, burns_attempt=burns_attempt, error_kind=kind)
