"""In-process metrics: counters, gauges and timings, labelled, cheap to update.

Every layer records what it did (``metrics.inc("limiter.admitted", model=...)``); the
demo's summary, the benchmarks and the tests read the totals and gauges. No exporter ships
with bulkgen; kept dependency-free on purpose, so one can sit on top of
:meth:`Metrics.snapshot`.
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
