"""The process's :class:`~bulkgen.metrics.Metrics`, and a few scrape-time readings, as
Prometheus families.

The in-process counters stay the one place anything is counted: this collector only
translates them at scrape time, so nothing is counted twice. It is registered on a
registry of the app's own (never prometheus_client's global one), so every app built by
``create_app`` (a test builds several) exports exactly its own services.

Names: ``bulkgen_`` + the metric's name with dots as underscores; counters end in
``_total``, and times in ``_seconds`` (a ``_s`` suffix becomes ``_seconds``; a timing is
a summary with ``_count`` and ``_sum``). Series of one name that carry different labels
share the union of their label names, a missing one as an empty value (which Prometheus
reads as absent).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from bulkgen.metrics import Labels, Metrics

__all__ = ["Exporter", "prometheus_name"]

_PREFIX = "bulkgen_"
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def prometheus_name(name: str, *, seconds: bool = False) -> str:
    """``limiter.waited_s`` -> ``bulkgen_limiter_waited_seconds``; ``seconds`` marks a
    timing, whose unit is always seconds even when its name does not say so."""
    out = _PREFIX + _INVALID.sub("_", name)
    if out.endswith("_s"):
        out = out[: -len("_s")] + "_seconds"
    if seconds and not out.endswith("_seconds"):
        out += "_seconds"
    return out


def _label_name(name: str) -> str:
    cleaned = _INVALID.sub("_", name)
    return "_" + cleaned if cleaned[:1].isdigit() else cleaned


def _by_name(series: Mapping[tuple[str, Labels], Any]) -> dict[str, list[tuple[Labels, Any]]]:
    grouped: dict[str, list[tuple[Labels, Any]]] = defaultdict(list)
    for (name, labels), value in sorted(series.items()):
        grouped[name].append((labels, value))
    return grouped


def _label_names(rows: Iterable[tuple[Labels, Any]]) -> list[str]:
    return sorted({k for labels, _ in rows for k, _v in labels})


def _values(names: list[str], labels: Labels) -> list[str]:
    given = dict(labels)
    return [given.get(n, "") for n in names]


class Exporter(Collector):
    """Renders ``/metrics``: in-process series, the pool's connections, and jobs by status.

    The job counts come from the database, which a synchronous collector cannot await: the
    route reads them first and hands them to :meth:`render`, which stores and renders them
    without yielding to the event loop, so two scrapes never mix their readings.
    """

    def __init__(self, metrics: Metrics, pool: asyncpg.Pool[Any]) -> None:
        self._metrics = metrics
        self._pool = pool
        self._jobs: Mapping[str, int] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def render(self, jobs_by_status: Mapping[str, int]) -> bytes:
        """The text exposition; ``jobs_by_status`` empty when the database did not answer
        (the in-process series are still worth serving then)."""
        self._jobs = jobs_by_status
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        readings = self._metrics.readings()
        families = (
            (readings.counters, CounterMetricFamily, "Counter"),
            (readings.gauges, GaugeMetricFamily, "Gauge"),
        )
        for series, family_type, kind in families:
            for name, rows in _by_name(series).items():
                names = _label_names(rows)
                family = family_type(
                    prometheus_name(name), f"{kind} {name}.", labels=[_label_name(n) for n in names]
                )
                for labels, value in rows:
                    family.add_metric(_values(names, labels), value)
                yield family
        for name, rows in _by_name(readings.timings).items():
            names = _label_names(rows)
            summary = SummaryMetricFamily(
                prometheus_name(name, seconds=True),
                f"Timing {name}, in seconds.",
                labels=[_label_name(n) for n in names],
            )
            for labels, (count, total) in rows:
                summary.add_metric(_values(names, labels), count_value=count, sum_value=total)
            yield summary
        yield from self._pool_gauges()
        yield from self._job_gauges()

    def _pool_gauges(self) -> Iterator[Metric]:
        size = self._pool.get_size()
        yield GaugeMetricFamily(
            "bulkgen_db_pool_connections_in_use",
            "Connections of this process's database pool lent out right now.",
            value=size - self._pool.get_idle_size(),
        )
        yield GaugeMetricFamily(
            "bulkgen_db_pool_connections",
            "Connections this process's database pool holds open.",
            value=size,
        )
        yield GaugeMetricFamily(
            "bulkgen_db_pool_max_connections",
            "The most connections this process's database pool may open.",
            value=self._pool.get_max_size(),
        )

    def _job_gauges(self) -> Iterator[Metric]:
        if not self._jobs:
            return
        jobs = GaugeMetricFamily(
            "bulkgen_jobs",
            "Unfinished jobs by status, in the whole database (every worker's).",
            labels=["status"],
        )
        for status, count in sorted(self._jobs.items()):
            jobs.add_metric([status], count)
        yield jobs
