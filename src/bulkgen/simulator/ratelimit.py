"""Per-model request and token buckets, refilled continuously, with OpenAI-style reporting.

Pure objects: every method takes the simulated time ``now_s``, so the policy is testable
without a clock. Buckets hold ``burst_s`` seconds' worth of the per-minute limit (OpenAI
enforces minute limits over shorter windows). A request costlier than the whole bucket
(e.g. max_tokens 1500 against a 500-token bucket) is admitted when the bucket is full and
drives it negative, so the long-run rate still equals the limit and no request is starved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_EPSILON = 1e-9


@dataclass
class TokenBucket:
    """A continuously refilled bucket of ``capacity`` units gaining ``rate_per_s`` per second."""

    capacity: float
    rate_per_s: float
    content: float
    updated_s: float

    @classmethod
    def per_minute(cls, limit_per_min: int, burst_s: float, now_s: float) -> TokenBucket:
        rate_per_s = limit_per_min / 60.0
        capacity = rate_per_s * burst_s
        return cls(capacity=capacity, rate_per_s=rate_per_s, content=capacity, updated_s=now_s)

    def refill(self, now_s: float) -> None:
        """Bring the content up to ``now_s``; time never runs backwards here."""
        if now_s > self.updated_s:
            gained = (now_s - self.updated_s) * self.rate_per_s
            self.content = min(self.capacity, self.content + gained)
            self.updated_s = now_s

    def needed(self, cost: float) -> float:
        """Content a request of ``cost`` needs before it is admitted."""
        return min(cost, self.capacity)

    def wait_s(self, cost: float) -> float:
        """Simulated seconds until a request of ``cost`` would be admitted (0 if now)."""
        missing = self.needed(cost) - self.content
        if missing <= _EPSILON:  # float drift must not refuse what `remaining` promised
            return 0.0
        return missing / self.rate_per_s

    def reset_s(self) -> float:
        """Simulated seconds until the bucket is full again (OpenAI's ``x-ratelimit-reset``)."""
        return max(0.0, (self.capacity - self.content) / self.rate_per_s)

    def remaining(self) -> int:
        return max(0, math.floor(self.content + _EPSILON))


@dataclass(frozen=True)
class LimitReport:
    """One limit's state, as the ``x-ratelimit-*`` headers report it (simulated units)."""

    limit_per_min: int
    remaining: int
    reset_s: float


@dataclass(frozen=True)
class Decision:
    """The limiter's answer: admitted, or refused by ``refused_by`` for ``retry_after_s``."""

    admitted: bool
    refused_by: str | None
    retry_after_s: float
    used: int
    requests: LimitReport | None
    tokens: LimitReport | None


class ModelLimiter:
    """Requests-per-minute and tokens-per-minute buckets of one model.

    A request is admitted only if both buckets can take it, and then both are charged, so
    a refused request costs nothing (as with OpenAI, a 429 does not eat the budget).
    """

    def __init__(self, rpm: int | None, tpm: int | None, burst_s: float, now_s: float) -> None:
        self._rpm = rpm or 0
        self._tpm = tpm or 0
        self._requests = TokenBucket.per_minute(self._rpm, burst_s, now_s) if self._rpm else None
        self._tokens = TokenBucket.per_minute(self._tpm, burst_s, now_s) if self._tpm else None

    def reports(self, now_s: float) -> tuple[LimitReport | None, LimitReport | None]:
        """The state of both limits without charging anything (for non-admitted answers)."""
        for bucket in (self._requests, self._tokens):
            if bucket is not None:
                bucket.refill(now_s)
        return _report(self._requests, self._rpm), _report(self._tokens, self._tpm)

    def admit(self, cost_tokens: int, now_s: float) -> Decision:
        """Admit one request costing ``cost_tokens`` (prompt + max_tokens), or refuse it."""
        for bucket in (self._requests, self._tokens):
            if bucket is not None:
                bucket.refill(now_s)
        refused_by, retry_after_s, used = None, 0.0, 0
        if self._requests is not None and self._requests.wait_s(1) > 0:
            refused_by, retry_after_s = "requests", self._requests.wait_s(1)
            used = self._rpm - self._requests.remaining()
        elif self._tokens is not None and self._tokens.wait_s(cost_tokens) > 0:
            refused_by, retry_after_s = "tokens", self._tokens.wait_s(cost_tokens)
            used = self._tpm - self._tokens.remaining()
        else:
            if self._requests is not None:
                self._requests.content -= 1
            if self._tokens is not None:
                self._tokens.content -= cost_tokens
        return Decision(
            admitted=refused_by is None,
            refused_by=refused_by,
            retry_after_s=retry_after_s,
            used=max(used, 0),
            requests=_report(self._requests, self._rpm),
            tokens=_report(self._tokens, self._tpm),
        )


def _report(bucket: TokenBucket | None, limit_per_min: int) -> LimitReport | None:
    if bucket is None:
        return None
    return LimitReport(limit_per_min, bucket.remaining(), bucket.reset_s())


def go_duration(seconds: float) -> str:
    """Format a duration as OpenAI's headers do (Go's ``time.Duration``): ``6m0s``, ``12ms``.

    Rounded up to the millisecond, so a client that waits exactly this long is never early.
    """
    total_ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if total_ms == 0:
        return "0s"
    if total_ms < 1000:
        return f"{total_ms}ms"
    hours, rest_ms = divmod(total_ms, 3_600_000)
    minutes, rest_ms = divmod(rest_ms, 60_000)
    secs = f"{rest_ms / 1000:.3f}".rstrip("0").rstrip(".")
    text = f"{secs}s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return text
