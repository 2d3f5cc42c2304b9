"""Economy mode end to end: real PostgreSQL, the simulator's Files and Batch APIs over HTTP.

The simulator's batch clock runs fast (``time_scale``), so a provider batch ends within
moments; workers run in burst mode and the tests read the outcome from the tables.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from rich.console import Console

from bulkgen.db.provider_batches import ProviderBatchStore
from bulkgen.intake import JobInput
from bulkgen.metrics import Metrics
from bulkgen.models import BatchMode
from bulkgen.progress import batch_progress
from bulkgen.providers import OpenAICompatProvider
from bulkgen.service import Services, dry_run, open_services
from bulkgen.simulator import SimConfig, running_simulator
from bulkgen.simulator.config import BatchConfig
from bulkgen.simulator.control import sim_configure, sim_stats
from tests.integration.pipeline_support import make_settings, start, statuses

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

FAST = BatchConfig(time_scale=1000.0, requests_per_s=50.0, validating_s=1.0, finalizing_s=1.0)
ECONOMY: dict[str, Any] = {
    "economy_tick_s": 0.1,
    "economy_poll_s": 0.05,
    "economy_max_poll_s": 0.2,
    "economy_lease_s": 5.0,
    "economy_retry_s": 0.2,
}


@asynccontextmanager
async def economy_services(
    database_url: str, batch: BatchConfig = FAST, **overrides: Any
) -> AsyncIterator[tuple[Services, str]]:
    async with running_simulator(SimConfig(rpm=None, tpm=None, seed=11, batch=batch)) as url:
        svc = await start(make_settings(database_url, url, **{**ECONOMY, **overrides}))
        try:
            yield svc, url
        finally:
            await svc.aclose()


async def submit_economy(svc: Services, keywords: list[str], **kwargs: Any) -> uuid.UUID:
    rows = [JobInput(k, {}, {}) for k in keywords]
    options = svc.batch_options(max_tokens=400, target_words=200)
    return await svc.submit(rows, options, account="acme", mode=BatchMode.ECONOMY, **kwargs)


async def table_checks(database_url: str, batch_id: uuid.UUID) -> dict[str, Any]:
    """What the tables say: statuses, results per job, empty results, batch_api flags."""
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            """
                SELECT count(*) AS jobs,
                       count(*) FILTER (WHERE j.status = 'done') AS done,
                       count(r.job_id) AS results,
                       count(*) FILTER (WHERE j.status = 'done' AND btrim(r.content) = '')
                           AS empty_done,
                       count(*) FILTER (WHERE j.batch_api) AS batch_api,
                       count(*) FILTER (WHERE j.cached) AS cached,
                       (SELECT count(*) FROM provider_batches p WHERE p.batch_id = $1)
                           AS provider_batches,
                       (SELECT count(*) FROM provider_batches p
                        WHERE p.batch_id = $1 AND p.state <> 'processed') AS unprocessed,
                       (SELECT count(DISTINCT provider_id) FROM provider_batches p
                        WHERE p.batch_id = $1) AS provider_ids
                FROM jobs j LEFT JOIN results r ON r.job_id = j.id
                WHERE j.batch_id = $1
                """,
            batch_id,
        )
    finally:
        await conn.close()
    assert row is not None
    return dict(row)


async def drain(svc: Services) -> None:
    await asyncio.wait_for(svc.worker(burst=True).run(), timeout=150)


async def test_an_economy_batch_runs_through_the_batch_api_and_costs_half(
    database_url: str,
) -> None:
    async with economy_services(database_url) as (svc, url):
        keywords = [f"economy topic {i}" for i in range(120)]
        batch_id = await submit_economy(svc, keywords)
        assert await statuses(svc, batch_id) == {"batched": 120}
        await drain(svc)
        stats = await sim_stats(url)
        usage = await svc.store.batch_usage(batch_id, svc.prices)
    checks = await table_checks(database_url, batch_id)
    assert checks["done"] == checks["results"] == checks["batch_api"] == 120
    assert checks["empty_done"] == 0
    assert checks["provider_batches"] == 1 and checks["unprocessed"] == 0
    assert stats["requests"] == 0  # not one online call
    assert stats["batch"]["batch_creates"] == 1
    assert stats["batch"]["requests"] == 120  # rows the provider ran (and billed)
    # Priced at batch prices: exactly half of what the same tokens cost online.
    online = sum(
        (svc.prices.cost_usd(line.model, line.usage) for line in usage.lines if not line.cached),
        start=usage.cost_usd * 0,
    )
    assert usage.cost_usd > 0 and usage.cost_usd * 2 == online


async def test_the_split_respects_the_request_and_byte_limits(database_url: str) -> None:
    async with economy_services(database_url, batch_max_requests=40, batch_max_bytes=16_000) as (
        svc,
        url,
    ):
        batch_id = await submit_economy(svc, [f"split topic {i}" for i in range(150)])
        await drain(svc)
        stats = await sim_stats(url)
        rows = await ProviderBatchStore(svc.store.pool).of_batch(batch_id)
    checks = await table_checks(database_url, batch_id)
    assert checks["done"] == checks["results"] == 150
    assert all(0 < r.requests <= 40 for r in rows)
    assert sum(r.requests for r in rows) == 150
    # 40 requests of this size pass 16,000 bytes: some files were cut by bytes, not count.
    assert any(r.requests < 40 for r in rows[:-1])
    assert stats["batch"]["batch_creates"] == len(rows) == checks["provider_ids"]
    assert stats["batch"]["requests"] == 150


async def test_cache_hits_never_reach_the_provider(database_url: str) -> None:
    async with economy_services(database_url) as (svc, url):
        first = await submit_economy(svc, [f"cached topic {i}" for i in range(30)])
        await drain(svc)
        # The same 30 requests again, and 10 new ones: only the new ones are sent.
        again = [f"cached topic {i}" for i in range(30)] + [f"new topic {i}" for i in range(10)]
        second = await submit_economy(svc, again)
        await drain(svc)
        stats = await sim_stats(url)
    checks = await table_checks(database_url, second)
    assert checks["done"] == checks["results"] == 40
    assert checks["cached"] == 30 and checks["batch_api"] == 40  # hits priced as economy
    assert stats["batch"]["requests"] == 40 and stats["requests"] == 0
    assert (await table_checks(database_url, first))["done"] == 30


async def test_error_rows_are_retried_by_the_online_rules(database_url: str) -> None:
    faulty = dataclasses.replace(FAST, faults={"500": 0.2, "empty": 0.1})
    async with economy_services(database_url, faulty) as (svc, url):
        batch_id = await submit_economy(svc, [f"faulty topic {i}" for i in range(100)])
        await drain(svc)
        stats = await sim_stats(url)
    checks = await table_checks(database_url, batch_id)
    assert checks["done"] == checks["results"] == 100 and checks["empty_done"] == 0
    # Rows that failed or came back empty went into later provider batches, only them.
    assert checks["provider_batches"] >= 2
    assert 100 < stats["batch"]["requests"] < 200


async def test_an_expired_batch_keeps_its_finished_rows_and_resends_only_the_rest(
    database_url: str,
) -> None:
    # 80 rows at 10 a (simulated) second against a 5 s window: about 40 finish in time.
    short = dataclasses.replace(FAST, requests_per_s=10.0, window_s=5.0, validating_s=0.5)
    async with economy_services(database_url, short) as (svc, url):
        batch_id = await submit_economy(svc, [f"expiring topic {i}" for i in range(80)])
        worker = svc.worker(burst=True)
        run = asyncio.create_task(worker.run())
        pbs = ProviderBatchStore(svc.store.pool)
        while not any(r.provider_status == "expired" for r in await pbs.of_batch(batch_id)):
            assert not run.done()
            await asyncio.sleep(0.05)
        # The rest runs in a window long enough for it.
        await sim_configure(url, {"batch": {"window_s": 86_400.0}})
        await asyncio.wait_for(run, timeout=150)
        stats = await sim_stats(url)
        rows = await pbs.of_batch(batch_id)
    checks = await table_checks(database_url, batch_id)
    assert checks["done"] == checks["results"] == 80
    expired = [r for r in rows if r.provider_status == "expired"]
    assert len(expired) == 1 and 0 < expired[0].completed < 80
    # Only the unfinished rows were sent again, and every row ran (was billed) once.
    assert sum(r.requests for r in rows if r is not expired[0]) == 80 - expired[0].completed
    assert stats["batch"]["requests"] == 80


async def test_cancel_mid_flight_keeps_what_finished(database_url: str) -> None:
    slow = dataclasses.replace(FAST, requests_per_s=5.0, time_scale=20.0)
    async with economy_services(database_url, slow) as (svc, _url):
        batch_id = await submit_economy(svc, [f"cancelled topic {i}" for i in range(60)])
        worker = svc.worker(burst=True)
        run = asyncio.create_task(worker.run())
        pbs = ProviderBatchStore(svc.store.pool)
        while not any(r.completed > 5 for r in await pbs.of_batch(batch_id)):
            assert not run.done()
            await asyncio.sleep(0.05)
        await svc.store.batch_cancel(batch_id)
        await asyncio.wait_for(run, timeout=150)
        rows = await pbs.of_batch(batch_id)
        counts = await statuses(svc, batch_id)
    checks = await table_checks(database_url, batch_id)
    assert [r.provider_status for r in rows] == ["cancelled"]
    assert set(counts) <= {"done", "cancelled"}
    assert counts["done"] == checks["results"] >= 5 and counts["cancelled"] >= 1
    assert counts["done"] + counts["cancelled"] == 60


async def test_five_thousand_jobs_each_done_once(database_url: str) -> None:
    quick = dataclasses.replace(FAST, requests_per_s=2000.0)
    async with economy_services(database_url, quick) as (svc, url):
        batch_id = await submit_economy(svc, [f"large batch topic {i}" for i in range(5000)])
        await drain(svc)
        stats = await sim_stats(url)
    checks = await table_checks(database_url, batch_id)
    assert checks["jobs"] == checks["done"] == checks["results"] == 5000
    assert checks["empty_done"] == 0 and checks["unprocessed"] == 0
    assert stats["batch"]["requests"] == 5000 and stats["requests"] == 0
    assert stats["batch"]["batch_creates"] == checks["provider_batches"] == 1


async def test_at_the_deadline_what_is_missing_goes_online(database_url: str) -> None:
    # A row every 10 wall seconds: nothing is answered before the 2 s deadline.
    crawl = dataclasses.replace(FAST, time_scale=10.0, requests_per_s=0.01, validating_s=0.1)
    async with economy_services(database_url, crawl) as (svc, url):
        batch_id = await submit_economy(
            svc, [f"urgent topic {i}" for i in range(20)], deadline_h=2 / 3600, fallback_online=True
        )
        await drain(svc)
        stats = await sim_stats(url)
        record = await svc.store.batch_get(batch_id)
        rows = await ProviderBatchStore(svc.store.pool).of_batch(batch_id)
    checks = await table_checks(database_url, batch_id)
    assert checks["done"] == checks["results"] == 20 and checks["batch_api"] == 0
    assert stats["requests"] == 20 and stats["batch"]["requests"] == 0  # all 20 online
    assert [r.provider_status for r in rows] == ["cancelled"]
    assert record is not None and record.mode == "online" and record.deadline_at is not None


async def test_the_budget_holds_each_provider_batch_worst_case(database_url: str) -> None:
    async with economy_services(database_url) as (svc, _url):
        keywords = [f"budget topic {i}" for i in range(20)]
        options = svc.batch_options(max_tokens=400, target_words=200)
        rows = [JobInput(k, {}, {}) for k in keywords]
        estimate = await dry_run(svc.settings, rows, options)
        # Room for 8 of the 20 requests' worst cases at batch prices.
        budget = (estimate.batch.worst_case * 8 / 20).quantize(Decimal("0.000001"))
        batch_id = await svc.submit(
            rows, options, account="acme", mode=BatchMode.ECONOMY, budget_usd=budget
        )
        await drain(svc)
        usage = await svc.store.batch_usage(batch_id, svc.prices)
        counts = await statuses(svc, batch_id)
        pbs = await ProviderBatchStore(svc.store.pool).of_batch(batch_id)
    assert usage.cost_usd <= budget
    assert counts["done"] >= 8 and counts.get("cancelled", 0) >= 1
    assert counts["done"] + counts["cancelled"] == 20
    assert pbs[0].requests == 8  # the first provider batch took what its worst case allowed
    assert len(pbs) >= 2  # the answers cost less than the worst case: more went later


async def test_the_enqueued_token_limit_is_learned_and_costs_no_attempt(
    database_url: str,
) -> None:
    # About 30 of these requests fit in the model's enqueued-token limit at a time.
    limited = dataclasses.replace(FAST, enqueued_tokens=8_000)
    async with economy_services(database_url, limited) as (svc, url):
        batch_id = await submit_economy(svc, [f"limited topic {i}" for i in range(100)])
        await drain(svc)
        stats = await sim_stats(url)
        rows = await ProviderBatchStore(svc.store.pool).of_batch(batch_id)
        attempts = await svc.store.pool.fetchval(
            "SELECT max(attempts) FROM jobs WHERE batch_id = $1", batch_id
        )
    checks = await table_checks(database_url, batch_id)
    assert checks["done"] == checks["results"] == 100
    refused = [r for r in rows if r.provider_status == "failed"]
    assert refused and all(r.completed == 0 for r in refused)
    assert attempts == 1  # waiting for room cost no attempt
    assert stats["batch"]["requests"] == 100  # refused batches ran nothing


async def test_the_progress_bars_show_the_jobs_at_the_provider(database_url: str) -> None:
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=False)
    async with economy_services(database_url) as (svc, _url):
        batch_id = await submit_economy(svc, [f"progress topic {i}" for i in range(30)])
        async with batch_progress(svc.store, batch_id, 30, console, interval_s=0.05):
            await drain(svc)
    lines = out.getvalue().splitlines()
    assert any(line.startswith("batched") and "0/30" in line for line in lines), lines
    assert any(line.startswith("done") and "30/30" in line for line in lines), lines


async def test_a_provider_batch_the_provider_lost_is_given_up_and_its_jobs_sent_again(
    database_url: str,
) -> None:
    """The provider answers 404 for a batch it no longer knows (here: another simulator):
    the provider batch is given up, its jobs burn an attempt and go into a new one."""
    paused = dataclasses.replace(FAST, time_scale=0.0)  # the first batch never ends
    async with economy_services(database_url, paused) as (svc, _url):
        batch_id = await submit_economy(svc, [f"lost topic {i}" for i in range(10)])
        worker = svc.worker(burst=True)
        run = asyncio.create_task(worker.run())
        pbs = ProviderBatchStore(svc.store.pool)
        while [r.state for r in await pbs.of_batch(batch_id)] != ["submitted"]:
            assert not run.done()
            await asyncio.sleep(0.05)
        worker.stop()
        await asyncio.wait_for(run, timeout=60)
    async with economy_services(database_url) as (svc, url):  # a provider that never saw it
        await drain(svc)
        rows = await ProviderBatchStore(svc.store.pool).of_batch(batch_id)
        attempts = await svc.store.pool.fetch(
            "SELECT DISTINCT attempts FROM jobs WHERE batch_id = $1", batch_id
        )
        stats = await sim_stats(url)
    checks = await table_checks(database_url, batch_id)
    assert checks["done"] == checks["results"] == 10
    lost, *resent = [r.provider_status for r in rows]
    assert lost == "abandoned" and resent and set(resent) == {"completed"}
    assert [a["attempts"] for a in attempts] == [2]  # the lost batch cost each job one
    assert stats["batch"]["batch_creates"] == len(resent) and stats["batch"]["requests"] == 10


async def test_a_cancel_while_the_file_uploads_sends_nothing(database_url: str) -> None:
    held = dataclasses.replace(FAST, answer_delay_s={"upload": 1.0})
    async with economy_services(database_url, held) as (svc, url):
        batch_id = await submit_economy(svc, [f"stopped topic {i}" for i in range(20)])
        run = asyncio.create_task(svc.worker(burst=True).run())
        while (await sim_stats(url))["batch"]["file_uploads"] < 1:
            assert not run.done()
            await asyncio.sleep(0.02)
        await svc.store.batch_cancel(batch_id)  # the upload took effect, its answer is held
        await asyncio.wait_for(run, timeout=60)
        stats = await sim_stats(url)
        counts = await statuses(svc, batch_id)
        rows = await ProviderBatchStore(svc.store.pool).of_batch(batch_id)
    assert counts == {"cancelled": 20}
    assert stats["batch"]["batch_creates"] == 0 and rows == []


async def test_two_provider_batches_of_one_batch_never_hold_the_same_room(
    database_url: str,
) -> None:
    """Two workers reserve for two provider batches of one capped batch at once: the
    second sees what the first holds."""
    async with economy_services(database_url) as (svc, _url):
        rows = [
            JobInput(f"room topic {i}", {}, {"model": m})
            for i in range(2)
            for m in ("gpt-4o", "gpt-4o-mini")
        ]
        batch_id = await svc.submit(
            rows,
            svc.batch_options(max_tokens=400),
            account="acme",
            mode=BatchMode.ECONOMY,
            budget_usd=Decimal("1.00"),
        )
        pbs = ProviderBatchStore(svc.store.pool)
        workers = [uuid.uuid4(), uuid.uuid4()]
        taken = [await pbs.dispatch(worker, max_requests=10, lease_s=30) for worker in workers]
        assert all(t is not None for t in taken)

        async def reserve(worker: uuid.UUID, pb_id: uuid.UUID) -> None:
            async def choose(cap: Decimal | None, held: Decimal) -> Decimal:
                await asyncio.sleep(0.2)  # both are deciding at the same time
                assert cap is not None
                return min(Decimal("0.75"), cap - held)

            assert await pbs.reserve(batch_id, pb_id, worker, choose)

        await asyncio.gather(
            *(reserve(w, t[0]) for w, t in zip(workers, taken, strict=True) if t is not None)
        )
        reserved = await svc.store.pool.fetch(
            "SELECT reserved_usd FROM provider_batches ORDER BY reserved_usd DESC"
        )
    assert [r["reserved_usd"] for r in reserved] == [Decimal("0.75"), Decimal("0.25")]


async def test_a_worker_that_cannot_send_economy_jobs_says_so_and_does_not_wait(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_simulator(SimConfig(rpm=None, tpm=None, batch=FAST)) as url:
        settings = make_settings(database_url, url)
        provider = OpenAICompatProvider(url, "sk-test", timeout_s=10)
        svc = await open_services(settings, provider=provider, metrics=Metrics())
        try:
            batch_id = await submit_economy(svc, ["waiting topic"])
            with caplog.at_level(logging.WARNING, logger="bulkgen.worker"):
                await asyncio.wait_for(svc.worker(burst=True).run(), timeout=60)
            assert await statuses(svc, batch_id) == {"batched": 1}
        finally:
            await svc.aclose()
            await provider.aclose()
    assert any(r.message == "worker.economy_unavailable" for r in caplog.records)
