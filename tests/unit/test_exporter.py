"""How the in-process series are named and labelled in Prometheus' format (no services:
the pool is a stand-in that only reports its sizes)."""

from __future__ import annotations

from typing import Any, cast

import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from bulkgen.api.exporter import Exporter, prometheus_name
from bulkgen.metrics import Metrics


class SizedPool:
    def get_size(self) -> int:
        return 5

    def get_idle_size(self) -> int:
        return 3

    def get_max_size(self) -> int:
        return 20


def parse(text: bytes) -> dict[str, tuple[str, list[tuple[str, dict[str, str], float]]]]:
    return {
        f.name: (f.type, [(s.name, s.labels, s.value) for s in f.samples])
        for f in text_string_to_metric_families(text.decode())
    }


def exporter(metrics: Metrics) -> Exporter:
    return Exporter(metrics, cast("asyncpg.Pool[Any]", SizedPool()))


def test_names_take_the_prefix_underscores_and_seconds() -> None:
    assert prometheus_name("jobs.done") == "bulkgen_jobs_done"
    assert prometheus_name("limiter.waited_s") == "bulkgen_limiter_waited_seconds"
    assert prometheus_name("job.seconds", seconds=True) == "bulkgen_job_seconds"
    assert prometheus_name("render.took", seconds=True) == "bulkgen_render_took_seconds"
    assert prometheus_name("odd-name/x") == "bulkgen_odd_name_x"


def test_each_kind_becomes_its_family_with_its_labels() -> None:
    metrics = Metrics()
    metrics.inc("limiter.rate_limited", model="gpt-4o")
    metrics.inc("limiter.rate_limited", 2, model="gpt-4o-mini")
    metrics.set("limiter.breaker_open", 1.0, model="gpt-4o")
    metrics.observe("limiter.waited_s", 0.25, model="gpt-4o")
    metrics.observe("limiter.waited_s", 0.5, model="gpt-4o")
    families = parse(exporter(metrics).render({"queued": 7, "generating": 2}))

    kind, samples = families["bulkgen_limiter_rate_limited"]
    assert kind == "counter"
    assert sorted((s[1]["model"], s[2]) for s in samples) == [("gpt-4o", 1), ("gpt-4o-mini", 2)]
    assert all(s[0] == "bulkgen_limiter_rate_limited_total" for s in samples)
    assert families["bulkgen_limiter_breaker_open"] == (
        "gauge",
        [("bulkgen_limiter_breaker_open", {"model": "gpt-4o"}, 1.0)],
    )
    kind, samples = families["bulkgen_limiter_waited_seconds"]
    assert kind == "summary"
    assert {s[0]: s[2] for s in samples} == {
        "bulkgen_limiter_waited_seconds_count": 2,
        "bulkgen_limiter_waited_seconds_sum": 0.75,
    }
    assert families["bulkgen_db_pool_connections_in_use"][1][0][2] == 2
    assert families["bulkgen_db_pool_max_connections"][1][0][2] == 20
    jobs = {s[1]["status"]: s[2] for s in families["bulkgen_jobs"][1]}
    assert jobs == {"queued": 7, "generating": 2}


def test_series_of_one_name_with_different_labels_share_a_family() -> None:
    metrics = Metrics()
    metrics.inc("cache.refused", reason="empty", backend="memory")
    metrics.inc("cache.refused", reason="empty")
    kind, samples = parse(exporter(metrics).render({}))["bulkgen_cache_refused"]
    assert kind == "counter"
    assert sorted(s[1].get("backend", "") for s in samples) == ["", "memory"]
    assert all(s[1]["reason"] == "empty" for s in samples)


def test_without_the_database_the_job_gauges_are_left_out_not_zero() -> None:
    metrics = Metrics()
    metrics.inc("jobs.done")
    families = parse(exporter(metrics).render({}))
    assert "bulkgen_jobs" not in families
    assert families["bulkgen_jobs_done"][1] == [("bulkgen_jobs_done_total", {}, 1.0)]


def test_two_apps_export_their_own_metrics_only() -> None:
    first, second = Metrics(), Metrics()
    first.inc("jobs.done", 3)
    second.inc("jobs.done", 5)
    assert parse(exporter(first).render({}))["bulkgen_jobs_done"][1][0][2] == 3
    assert parse(exporter(second).render({}))["bulkgen_jobs_done"][1][0][2] == 5
