"""In-process metrics: counters, gauges and timings, labelled, cheap to update.

Every layer records what it did (``metrics.inc("limiter.admitted", model=...)``); the
demo's summary, the benchmarks and the tests read the totals and gauges, and the API's
``/metrics`` exports a :meth:`Metrics.readings` copy in Prometheus' format. Kept
dependency-free on purpose: the exporter sits on top, in ``bulkgen.api.exporter``.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]


def _labels(labels: dict[str, object]) -> Labels:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


@dataclass
class _Timing:
    count: int = 0
    total: float = 0.0
    max: float = 0.0


@dataclass(frozen=True)
class Readings:
    """A consistent copy of every series, taken under the lock in one go, so an exporter
    never sees a counter from before an update beside a timing from after it."""

    counters: dict[tuple[str, Labels], float]
    gauges: dict[tuple[str, Labels], float]
    timings: dict[tuple[str, Labels], tuple[int, float]]  # (count, sum of seconds)


@dataclass
class Metrics:
    counters: dict[tuple[str, Labels], float] = field(default_factory=lambda: defaultdict(float))
    gauges: dict[tuple[str, Labels], float] = field(default_factory=dict)
    timings: dict[tuple[str, Labels], _Timing] = field(default_factory=lambda: defaultdict(_Timing))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def inc(self, name: str, amount: float = 1.0, **labels: object) -> None:
        with self._lock:
            self.counters[(name, _labels(labels))] += amount

    def set(self, name: str, value: float, **labels: object) -> None:
        with self._lock:
            self.gauges[(name, _labels(labels))] = value

    def observe(self, name: str, seconds: float, **labels: object) -> None:
        with self._lock:
            timing = self.timings[(name, _labels(labels))]
            timing.count += 1
            timing.total += seconds
            timing.max = max(timing.max, seconds)

    def total(self, name: str) -> float:
        """Sum of a counter over all its labels."""
        with self._lock:
            return sum(v for (n, _), v in self.counters.items() if n == name)

    def gauge(self, name: str, **labels: object) -> float | None:
        with self._lock:
            return self.gauges.get((name, _labels(labels)))

    def readings(self) -> Readings:
        with self._lock:
            return Readings(
                counters=dict(self.counters),
                gauges=dict(self.gauges),
                timings={k: (t.count, t.total) for k, t in self.timings.items()},
            )

    def snapshot(self) -> dict[str, float]:
        """Flat ``name{k=v}`` -> value view, for summaries and exporters."""

        def key(name: str, labels: Labels) -> str:
            if not labels:
                return name
            return name + "{" + ",".join(f"{k}={v}" for k, v in labels) + "}"

        with self._lock:
            out = {key(n, lb): v for (n, lb), v in self.counters.items()}
            out.update({key(n, lb): v for (n, lb), v in self.gauges.items()})
            for (n, lb), t in self.timings.items():
                out[key(n + ".count", lb)] = t.count
                out[key(n + ".sum_s", lb)] = t.total
                out[key(n + ".max_s", lb)] = t.max
            return out


# The process-wide registry. Tests may build their own Metrics and pass it down.
metrics = Metrics()
