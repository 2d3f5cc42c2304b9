"""How fast to go for one budget: learned limits, AIMD target, concurrency. Pure.

- **Limits.** The budget is ``min(configured, learned)`` per dimension: headers reporting
  less capacity than configured slow bulkgen down; ``None`` everywhere means "not known
  yet" (``auto``).
- **Target.** ``limit * factor * target_share``. A 429 multiplies ``factor`` by
  ``decrease`` (floored at ``min_factor``), at most once per ``decrease_holdoff_s`` so a
  burst of 429s from one overshoot counts once; each success adds ``increase_step`` back,
  up to 1.0. ``target_share`` (default 0.98) keeps a standing margin under the limit: the
  prompt part of a reservation is an estimate (a provider also counts message framing),
  and a budget run at exactly 100% turns every estimate error into a slow drain that ends
  in a 429 a minute later.
- **Burst.** How much budget may go out at once (GCRA allowance): at most the configured
  ``burst_s``, and at most ``burst_share`` of the provider's own bucket depth once the
  headers have shown it (``RateLimitSnapshot.bucket_depth_s``). A provider enforcing its
  minute limit over a 0.1 s window refuses a 1 s burst almost entirely; keeping half its
  bucket unspent also leaves room for requests that arrive bunched (network, event loop).
- **Concurrency** follows rate (Little's law): ``ceil(rate_per_s * p90 latency * headroom)``,
  at least 1, capped by a user-set maximum. With no known rate (``auto`` before any
  header, or a server that sends none), the server's capacity is probed
  (:class:`~bulkgen.limits.adaptive.AdaptiveLimit`): one request runs until the first
  response, the limit grows while answers are healthy and is cut on an overload signal
  (a 503 "overloaded", a 429 without headers, latency well above normal; halved on a
  429). When a rate is known it stays in charge; once the server has said it was full,
  the probed limit also caps the requests in flight.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from bulkgen.limits.adaptive import AdaptiveConfig, AdaptiveLimit, LimitChange
from bulkgen.limits.headers import RateLimitSnapshot


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    decrease: float = 0.8
    min_factor: float = 0.1
    increase_step: float = 0.01
    decrease_holdoff_s: float = 1.0
    target_share: float = 0.98
    burst_share: float = 0.5
    headroom: float = 1.3
    latency_quantile: float = 0.9
    latency_window: int = 200
    initial_latency_s: float = 10.0  # assumed before any response, when a rate is known
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)  # probing what fits


def _min_known(*values: int | None) -> int | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


class RatePolicy:
    """One process's view of one budget."""

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.learned_rpm: int | None = None
        self.learned_tpm: int | None = None
        self.learned_depth_s: float | None = None
        self.factor = 1.0
        self.responses = 0
        self._latencies_s: deque[float] = deque(maxlen=config.latency_window)
        self._tokens_avg: float | None = None
        self.adaptive = AdaptiveLimit(config.adaptive)
        self._last_decrease_s: float | None = None

    def limit_rpm(self) -> int | None:
        return _min_known(self.config.rpm, self.learned_rpm)

    def limit_tpm(self) -> int | None:
        return _min_known(self.config.tpm, self.learned_tpm)

    def learn(self, snapshot: RateLimitSnapshot) -> bool:
        """Adopt the limits a response reported; True when they changed (worth sharing)."""
        return self.learn_limits(snapshot.limit_rpm, snapshot.limit_tpm, snapshot.bucket_depth_s())

    def learn_limits(self, rpm: int | None, tpm: int | None, depth_s: float | None = None) -> bool:
        """Latest limit report wins (a tier upgrade raises it); zero means "not reported".

        The bucket depth keeps the deepest report: single reports understate it (whole
        units remaining, a bucket drained by others), never overstate it.
        """
        changed = False
        if rpm and rpm != self.learned_rpm:
            self.learned_rpm, changed = rpm, True
        if tpm and tpm != self.learned_tpm:
            self.learned_tpm, changed = tpm, True
        if depth_s and depth_s > (self.learned_depth_s or 0.0) * 1.01:  # 1%: worth sharing
            self.learned_depth_s, changed = depth_s, True
        return changed

    def admission_factor(self) -> float:
        """The share of the limit admission aims at: AIMD factor times the standing margin."""
        return self.factor * self.config.target_share

    def burst_s(self, configured_s: float) -> float:
        """Budget seconds allowed at once: configured, capped by the provider's bucket."""
        if self.learned_depth_s is None:
            return configured_s
        return min(configured_s, self.config.burst_share * self.learned_depth_s)

    def note_reserved(self, tokens: int) -> None:
        """Track the average reservation, to turn a token budget into a request rate."""
        avg = self._tokens_avg
        self._tokens_avg = float(tokens) if avg is None else avg + 0.1 * (tokens - avg)

    def on_success(
        self, latency_s: float, now_s: float, *, used: float | None = None
    ) -> LimitChange | None:
        """Additive increase of the rate factor and of the probed concurrency; returns a
        change of the probed limit worth reporting (a cut on high latency, or growth)."""
        self.responses += 1
        if latency_s > 0:
            self._latencies_s.append(latency_s)
        self.factor = min(1.0, self.factor + self.config.increase_step)
        return self.adaptive.on_success(latency_s, now_s, used=used)

    def on_overloaded(self, now_s: float) -> LimitChange | None:
        """The server is full: cut the concurrency, not the rate (it announced none)."""
        return self.adaptive.on_overload(now_s)

    def on_rate_limited(self, now_s: float) -> bool:
        """Multiplicative decrease; False when inside the hold-off of the previous one."""
        last = self._last_decrease_s
        if last is not None and now_s - last < self.config.decrease_holdoff_s:
            return False
        self._last_decrease_s = now_s
        self.factor = max(self.config.min_factor, self.factor * self.config.decrease)
        if self.rate_per_s() is None:  # still probing: a 429 says "fewer at once" too
            self.adaptive.on_overload(now_s, reason="rate_limited", backoff=0.5)
        return True

    def rate_per_s(self) -> float | None:
        """The admitted request rate the targets allow, or None while nothing is known."""
        rates: list[float] = []
        rpm, tpm = self.limit_rpm(), self.limit_tpm()
        if rpm is not None:
            rates.append(rpm * self.admission_factor() / 60.0)
        if tpm is not None and self._tokens_avg:
            rates.append(tpm * self.admission_factor() / 60.0 / self._tokens_avg)
        return min(rates) if rates else None

    def latency_high_s(self) -> float | None:
        if not self._latencies_s:
            return None
        ordered = sorted(self._latencies_s)
        index = min(len(ordered) - 1, int(self.config.latency_quantile * len(ordered)))
        return ordered[index]

    def probe_binds(self) -> bool:
        """True while the probed limit decides (or caps) the requests in flight."""
        return self.rate_per_s() is None or self.adaptive.engaged

    def concurrency_limit(self) -> int:
        rate = self.rate_per_s()
        if rate is None:
            derived = self.adaptive.value()
        else:
            latency_s = self.latency_high_s() or self.config.initial_latency_s
            derived = max(1, math.ceil(rate * latency_s * self.config.headroom))
            if self.adaptive.engaged:  # the server said it was full: never more at once
                derived = min(derived, self.adaptive.value())
        cap = self.config.max_concurrency
        return derived if cap is None else max(1, min(derived, cap))
