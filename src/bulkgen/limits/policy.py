"""How fast to go for one budget: learned limits, AIMD target, concurrency. Pure.

- **Limits.** The budget is ``min(configured, learned)`` per dimension: headers reporting
  less capacity than configured slow bulkgen down; ``None`` everywhere means "not known
  yet" (``auto``).
- **Target.** ``limit * factor``. A 429 multiplies ``factor`` by ``decrease`` (floored at
  ``min_factor``), at most once per ``decrease_holdoff_s`` so a burst of 429s from one
  overshoot counts once; each success adds ``increase_step`` back, up to 1.0.
- **Concurrency** follows rate (Little's law): ``ceil(rate_per_s * p90 latency * headroom)``,
  at least 1, capped by a user-set maximum. With no known rate (``auto`` before any
  header), one request runs until the first response, then the cap grows by one per
  success (halved on a 429): a provider that sends no headers is still ramped up safely.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

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
    headroom: float = 1.3
    latency_quantile: float = 0.9
    latency_window: int = 200
    initial_latency_s: float = 10.0  # assumed before any response, when a rate is known
    probe_ceiling: int = 256  # concurrency ceiling while no rate is known


def _min_known(*values: int | None) -> int | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


class RatePolicy:
    """One process's view of one budget."""

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.learned_rpm: int | None = None
        self.learned_tpm: int | None = None
        self.factor = 1.0
        self.responses = 0
        self._latencies_s: deque[float] = deque(maxlen=config.latency_window)
        self._tokens_avg: float | None = None
        self._probe_concurrency = 1
        self._last_decrease_s: float | None = None

    def limit_rpm(self) -> int | None:
        return _min_known(self.config.rpm, self.learned_rpm)

    def limit_tpm(self) -> int | None:
        return _min_known(self.config.tpm, self.learned_tpm)

    def learn(self, snapshot: RateLimitSnapshot) -> bool:
        """Adopt the limits a response reported; True when they changed (worth sharing)."""
        return self.learn_limits(snapshot.limit_rpm, snapshot.limit_tpm)

    def learn_limits(self, rpm: int | None, tpm: int | None) -> bool:
        """Latest report wins (a tier upgrade raises it); zero means "not reported"."""
        changed = False
        if rpm and rpm != self.learned_rpm:
            self.learned_rpm, changed = rpm, True
        if tpm and tpm != self.learned_tpm:
            self.learned_tpm, changed = tpm, True
        return changed

    def note_reserved(self, tokens: int) -> None:
        """Track the average reservation, to turn a token budget into a request rate."""
        avg = self._tokens_avg
        self._tokens_avg = float(tokens) if avg is None else avg + 0.1 * (tokens - avg)

    def on_success(self, latency_s: float) -> None:
        self.responses += 1
        if latency_s > 0:
            self._latencies_s.append(latency_s)
        self.factor = min(1.0, self.factor + self.config.increase_step)
        self._probe_concurrency = min(self.config.probe_ceiling, self._probe_concurrency + 1)

    def on_rate_limited(self, now_s: float) -> bool:
        """Multiplicative decrease; False when inside the hold-off of the previous one."""
        last = self._last_decrease_s
        if last is not None and now_s - last < self.config.decrease_holdoff_s:
            return False
        self._last_decrease_s = now_s
        self.factor = max(self.config.min_factor, self.factor * self.config.decrease)
        self._probe_concurrency = max(1, self._probe_concurrency // 2)
        return True

    def rate_per_s(self) -> float | None:
        """The admitted request rate the targets allow, or None while nothing is known."""
        rates: list[float] = []
        rpm, tpm = self.limit_rpm(), self.limit_tpm()
        if rpm is not None:
            rates.append(rpm * self.factor / 60.0)
        if tpm is not None and self._tokens_avg:
            rates.append(tpm * self.factor / 60.0 / self._tokens_avg)
        return min(rates) if rates else None

    def latency_high_s(self) -> float | None:
        if not self._latencies_s:
            return None
        ordered = sorted(self._latencies_s)
        index = min(len(ordered) - 1, int(self.config.latency_quantile * len(ordered)))
        return ordered[index]

    def concurrency_limit(self) -> int:
        rate = self.rate_per_s()
        if rate is None:
            derived = self._probe_concurrency
        else:
            latency_s = self.latency_high_s() or self.config.initial_latency_s
            derived = max(1, math.ceil(rate * latency_s * self.config.headroom))
        cap = self.config.max_concurrency
        return derived if cap is None else max(1, min(derived, cap))
