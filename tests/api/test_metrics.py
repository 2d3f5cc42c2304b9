"""``/metrics`` scraped and parsed as Prometheus would: its counters agree with the jobs'
rows, and its gauges with the database and the pool."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bulkgen.limits import api_key_id
from bulkgen.service import open_services
from bulkgen.simulator import SimConfig, running_simulator

from ..integration.pipeline_support import make_settings
from .conftest import QUICK_SIM, Api

pytestmark = pytest.mark.postgres

FAILING_SIM = SimConfig(rpm=None, tpm=None, faults={"insufficient_quota": 1.0}, seed=2)

Samples = dict[str, list[tuple[dict[str, str], float]]]


async def drain_sharing_metrics(
    api: Api, database_url: str, sim: SimConfig, **overrides: Any
) -> None:
    """A burst worker in this process that counts into the app's own Metrics, as the worker
    of ``bulkgen serve`` does."""
    async with running_simulator(sim) as base_url:
        worker_services = await open_services(
            make_settings(database_url, base_url, **overrides), metrics=api.services.metrics
        )
        try:
            await worker_services.worker(burst=True).run()
        finally:
            await worker_services.aclose()


async def scrape(api: Api) -> Samples:
    response = await api.client.get("/metrics")  # no key: scrapers carry none
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: Samples, name: str) -> float:
    assert name in samples, sorted(samples)
    return sum(value for _, value in samples[name])


def labelled(samples: Samples, name: str, **labels: str) -> float:
    matching = [
        v for lb, v in samples.get(name, []) if all(lb.get(k) == x for k, x in labels.items())
    ]
    assert len(matching) == 1, (name, labels, samples.get(name))
    return matching[0]


async def test_counters_agree_with_the_jobs_rows(api: Api, database_url: str) -> None:
    await api.submit(["alpha", "beta", "gamma"])
    await drain_sharing_metrics(api, database_url, QUICK_SIM)
    await api.submit(["doomed one", "doomed two"])
    await drain_sharing_metrics(api, database_url, FAILING_SIM, max_attempts=1)
    await api.submit(["later 1", "later 2", "later 3", "later 4"])  # left queued

    samples = await scrape(api)

    done = await api.count("SELECT count(*) FROM jobs WHERE status = 'done'")
    failed = await api.count("SELECT count(*) FROM jobs WHERE status = 'failed'")
    assert (done, failed) == (3, 2)
    assert total(samples, "bulkgen_jobs_done_total") == done
    assert total(samples, "bulkgen_jobs_failed_total") == failed
    assert labelled(samples, "bulkgen_jobs_failed_total", error_kind="insufficient_quota") == 2
    assert total(samples, "bulkgen_job_seconds_count") == done  # one timing per article
    assert total(samples, "bulkgen_job_seconds_sum") > 0
    assert total(samples, "bulkgen_provider_completions_total") == done
    assert total(samples, "bulkgen_db_claim_statements_total") >= 2  # one drain each, at least
    for status in ("queued", "generating"):
        in_db = await api.count("SELECT count(*) FROM jobs WHERE status = $1", status)
        assert labelled(samples, "bulkgen_jobs", status=status) == in_db
    assert labelled(samples, "bulkgen_jobs", status="queued") == 4


async def test_every_in_process_series_is_exported_once(api: Api, database_url: str) -> None:
    await api.submit(["one", "two"])
    await drain_sharing_metrics(api, database_url, QUICK_SIM)
    samples = await scrape(api)
    readings = api.services.metrics.readings()
    assert readings.counters and readings.timings
    for name in {n for n, _ in readings.counters}:
        exported = "bulkgen_" + name.replace(".", "_") + "_total"
        assert total(samples, exported) == api.services.metrics.total(name), name
    # A timing's count is exported once, not once per scrape: a second scrape agrees.
    again = await scrape(api)
    assert total(again, "bulkgen_job_seconds_count") == total(samples, "bulkgen_job_seconds_count")
    assert total(again, "bulkgen_jobs_done_total") == 2


async def test_pool_connections_in_use_are_those_lent_out(api: Api) -> None:
    pool = api.services.store.pool
    async with pool.acquire():
        held = await scrape(api)
    free = await scrape(api)
    assert labelled(held, "bulkgen_db_pool_connections_in_use") == 1
    assert labelled(free, "bulkgen_db_pool_connections_in_use") == 0
    assert labelled(free, "bulkgen_db_pool_max_connections") == pool.get_max_size()
    assert 1 <= labelled(free, "bulkgen_db_pool_connections") <= pool.get_max_size()


async def test_the_workers_concurrency_limit_is_exported_per_provider_key_and_model(
    api: Api, database_url: str
) -> None:
    await api.submit(["one", "two", "three", "four"])
    await drain_sharing_metrics(api, database_url, QUICK_SIM)  # announces no limits: probed
    samples = await scrape(api)
    model = api.services.settings.model
    series = samples.get("bulkgen_limiter_concurrency_limit", [])
    assert [set(labels) for labels, _ in series] == [{"provider", "key", "model"}]
    limit = labelled(
        samples, "bulkgen_limiter_concurrency_limit", key=api_key_id("sk-test"), model=model
    )
    assert limit >= 2  # slow start: one request until the first answer, then more
