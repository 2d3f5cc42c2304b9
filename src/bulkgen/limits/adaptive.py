"""How many requests a server takes at once, found by probing it. Pure: time is passed in.

Many OpenAI-compatible servers announce no limits: a self-hosted inference server or a
gateway serves so many requests at once and answers the rest 503 "overloaded" or a bare
429 at once. With nothing to budget against, the number of requests in flight is the one
knob, and it is found the way TCP finds a path's capacity (AIMD):

- **Slow start.** Begin with one request in flight; every healthy answer adds one, so the
  limit doubles each round trip, until the first overload signal.
- **Cut.** An overload signal multiplies the limit by ``backoff`` (never below 1), at most
  once per round trip (smoothed latency): the answers that arrive within one round trip of
  a cut were sent before it, and say nothing new. The cut that ends the first slow start
  halves the limit: doubling each round trip overshoots by up to twice the capacity. So
  does a cut in the round trip right after another: the server shrank well below the
  limit, and the limit follows it down in a few round trips rather than many.
- **Congestion avoidance.** After a cut each healthy answer adds ``1 / limit``: one more
  request per round trip. In the last request under the limit of the last cut the growth
  is ``probe_slowdown`` times slower, so a server that is full at N is asked for N + 1
  rarely. Once the limit is back at the level that was cut and answers stay healthy
  there for ``forget_after_round_trips`` round trips (a full server refuses the request
  too many at once, within one), the server has grown: the cut level is forgotten and
  slow start resumes, so the limit follows a larger server within a few seconds instead
  of creeping past the old level one request per ``probe_slowdown`` round trips.
- **Only a used limit grows.** An answer grows the limit only if at least half of it was
  in flight when its request was sent. A client that sends less than its limit (fewer
  jobs, or a busy machine) learns nothing about the server's capacity: growing anyway
  would leave a limit far above it, and a flood of overload answers when the demand
  comes back.
- **Signals.** An overload answer, or an answer whose latency is well above normal: the
  recent latency (a fast moving average) above ``latency_tolerance`` times the long-run
  one (a slow moving average). Servers that queue instead of refusing answer slower as
  they fill up; comparing two averages, not one answer with the fastest, keeps answers of
  different lengths from looking like congestion.

**The fleet.** With Redis, the processes of a fleet probe one limit together rather than
each its own: every change a process makes is also sent as an :class:`Adjustment` (grow
by a step, or cut by a factor) that Redis applies to the shared :class:`FleetLimit`, and
the process adopts what comes back. A cut is applied at most once per round trip, on
Redis's clock, whichever process saw the overload; a growth step computed before the
fleet's latest cut (an older ``epoch``) is dropped: its answer was sent before the cut.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AdaptiveConfig:
    ceiling: int = 256  # the limit never grows past this
    backoff: float = 0.8  # the multiplicative cut on an overload signal
    probe_slowdown: float = 8.0  # how much slower the growth is just under the last cut
    forget_after_round_trips: float = 2.0  # healthy at the cut level this long: it grew
    latency_tolerance: float = 2.0  # recent latency above this times the normal one: overload
    latency_warmup: int = 20  # answers before latency is trusted as a signal
    fast_alpha: float = 0.1  # weight of one answer in the recent latency
    slow_alpha: float = 0.02  # weight of one answer in the normal latency
    default_round_trip_s: float = 1.0  # the cut hold-off before any latency is known


class Change(enum.StrEnum):
    """What an event did to the limit, worth a log line."""

    CUT = "cut"
    GROWN = "grown"  # doubled since the last cut or the last time it was reported


@dataclass(frozen=True, slots=True)
class LimitChange:
    change: Change
    limit: int
    reason: str  # "overload", "latency", "rate_limited" or "healthy"


@dataclass(frozen=True, slots=True)
class FleetLimit:
    """The probed limit as the fleet shares it, for a process to adopt."""

    limit: float
    cut_at: float | None  # the limit just before the last cut, None before any
    slow_start: bool
    engaged: bool  # some process has seen an overload answer
    epoch: int  # how many cuts the fleet has made


@dataclass(frozen=True, slots=True)
class Adjustment:
    """What one event did to this process's limit, for the fleet to apply to its own.

    ``cut``: multiply by ``amount`` unless the fleet cut within ``holdoff_s``. Otherwise
    add ``amount`` (at most up to ``ceiling``) and take ``after``'s phase (``cut_at``,
    ``slow_start``), if the fleet has made no cut since ``epoch``. ``after`` is this
    process's whole state after the event: what a fleet that has none yet starts from.
    """

    cut: bool
    amount: float
    epoch: int
    after: FleetLimit
    holdoff_s: float
    ceiling: int


class AdaptiveLimit:
    """The concurrency limit of one (provider, key, model), as this process has found it."""

    def __init__(self, config: AdaptiveConfig) -> None:
        self.config = config
        self._limit = 1.0
        self._slow_start = True
        self._cut_at: float | None = None  # the limit just before the last cut
        self._last_cut_s: float | None = None
        self._at_cut_level_s: float | None = None  # since when the limit is back there
        self._reported = 1
        self._recent_s: float | None = None
        self._normal_s: float | None = None
        self._answers = 0
        self.overloads = 0  # overload answers seen (an engaged limit caps learned rates)
        self._fleet_engaged = False
        self.epoch = 0  # cuts made, this process's or the fleet's once adopted
        self.adjustment: Adjustment | None = None  # what the last event did, to share

    def value(self) -> int:
        return max(1, min(self.config.ceiling, math.floor(self._limit)))

    @property
    def engaged(self) -> bool:
        """True once the server has answered that it was full. Slow answers alone never
        engage the limit: a provider announcing rates may answer slowly for other reasons
        (longer answers), and its rates stay in charge."""
        return self.overloads > 0 or self._fleet_engaged

    def state(self) -> FleetLimit:
        return FleetLimit(self._limit, self._cut_at, self._slow_start, self.engaged, self.epoch)

    def adopt(self, fleet: FleetLimit) -> None:
        """Take the fleet's limit and phase as this process's own (latency stays local)."""
        self._limit, self._cut_at = fleet.limit, fleet.cut_at
        self._slow_start = fleet.slow_start
        self._fleet_engaged = self._fleet_engaged or fleet.engaged
        if fleet.epoch != self.epoch:
            self._at_cut_level_s = None  # a cut elsewhere: its level is the one to watch
        self.epoch = fleet.epoch

    def round_trip_s(self) -> float:
        return self._recent_s or self.config.default_round_trip_s

    def on_success(
        self, latency_s: float, now_s: float, *, used: float | None = None
    ) -> LimitChange | None:
        """A healthy answer grows the limit, if it was used (``used``: the share of the
        limit in flight once this request was sent, None for all of it); a slow answer is
        an overload signal."""
        self.adjustment = None
        if latency_s > 0:
            self._observe(latency_s)
        if self._congested():
            return self.on_overload(now_s, reason="latency")
        if used is not None and used < 0.5:
            return None  # half the limit unused: its answers say nothing about more
        before, epoch = self._limit, self.epoch
        self._grow(now_s)
        self.adjustment = self._adjustment(cut=False, amount=self._limit - before, epoch=epoch)
        if self.value() >= 2 * self._reported:
            self._reported = self.value()
            return LimitChange(Change.GROWN, self.value(), "healthy")
        return None

    def on_overload(
        self, now_s: float, *, reason: str = "overload", backoff: float | None = None
    ) -> LimitChange | None:
        """Cut, unless a cut happened within the last round trip (then None)."""
        if reason == "overload":
            self.overloads += 1
        self.adjustment = None
        last, round_trip_s = self._last_cut_s, self.round_trip_s()
        if last is not None and now_s - last < round_trip_s:
            return None
        self._last_cut_s = now_s
        self._at_cut_level_s = None
        first = self._slow_start and self._cut_at is None
        again = last is not None and now_s - last < 2 * round_trip_s  # far too many still
        self._cut_at = self._limit
        factor = backoff or (0.5 if first or again else self.config.backoff)
        self._slow_start = False
        self._limit = max(1.0, self._limit * factor)
        self.epoch += 1
        self._reported = self.value()
        self.adjustment = self._adjustment(cut=True, amount=factor, epoch=self.epoch - 1)
        return LimitChange(Change.CUT, self.value(), reason)

    def _adjustment(self, *, cut: bool, amount: float, epoch: int) -> Adjustment:
        return Adjustment(
            cut, amount, epoch, self.state(), self.round_trip_s(), self.config.ceiling
        )

    def _observe(self, latency_s: float) -> None:
        self._answers += 1
        cfg, n = self.config, self._answers
        if self._recent_s is None or self._normal_s is None:
            self._recent_s = self._normal_s = latency_s
            return
        # A plain mean until an average has seen enough answers to be one (1 / alpha).
        self._recent_s += max(cfg.fast_alpha, 1 / n) * (latency_s - self._recent_s)
        self._normal_s += max(cfg.slow_alpha, 1 / n) * (latency_s - self._normal_s)

    def _congested(self) -> bool:
        if self._answers < self.config.latency_warmup:
            return False
        assert self._recent_s is not None and self._normal_s is not None
        return self._recent_s > self.config.latency_tolerance * self._normal_s

    def _grow(self, now_s: float) -> None:
        cfg = self.config
        if self._slow_start:
            step = 1.0
        else:
            step = 1.0 / self._limit
            if self._cut_at is not None and self._grown_past_cut(now_s):
                self._slow_start = True  # the server grew: find its new capacity fast
            elif self._cut_at is not None and self._limit >= self._cut_at - 1:
                step /= cfg.probe_slowdown
        self._limit = min(float(cfg.ceiling), self._limit + step)

    def _grown_past_cut(self, now_s: float) -> bool:
        """Past the level of the last cut, or healthy at it for a few round trips."""
        assert self._cut_at is not None
        if self._limit >= self._cut_at + 1:
            return True
        if self.value() < math.floor(self._cut_at):
            self._at_cut_level_s = None
            return False
        if self._at_cut_level_s is None:
            self._at_cut_level_s = now_s
        held_s = self.config.forget_after_round_trips * self.round_trip_s()
        return now_s - self._at_cut_level_s >= held_s
