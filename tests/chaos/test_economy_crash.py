"""Economy mode: a worker SIGKILLed at each step of a provider batch loses nothing and pays
for nothing twice.

The simulator (in this test's process) holds back the answer to one Batch API call after
the call took effect (``batch.answer_delay_s``), so the worker is killed knowing less than
the provider: a file uploaded it never heard of, a batch created it never recorded. A
second worker then takes the provider batch's lapsed lease and finishes the batch. For the
kill while answers are written, the test holds a row lock on one job, so the worker stops
between two chunks of writes, and is killed there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from bulkgen.intake import JobInput
from bulkgen.metrics import Metrics
from bulkgen.models import BatchMode
from bulkgen.service import open_services
from bulkgen.settings import Settings
from bulkgen.simulator import SimConfig, running_simulator
from bulkgen.simulator.config import BatchConfig
from bulkgen.simulator.control import sim_configure, sim_stats
from tests.chaos.checks import assert_sound, done_jobs
from tests.chaos.harness import Fleet, PostgresServer, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]

FAST = BatchConfig(time_scale=1000.0, requests_per_s=200.0, validating_s=1.0, finalizing_s=1.0)
ECONOMY_ENV: dict[str, Any] = {
    "BULKGEN_ECONOMY_TICK_S": "0.1",
    "BULKGEN_ECONOMY_POLL_S": "0.1",
    "BULKGEN_ECONOMY_MAX_POLL_S": "0.3",
    "BULKGEN_ECONOMY_LEASE_S": "2",
    "BULKGEN_ECONOMY_RETRY_S": "0.3",
}
HELD_S = 60.0  # long past the kill: the dead worker never hears the answer


async def enqueue_economy(database_url: str, jobs: int) -> uuid.UUID:
    settings = Settings(database_url=database_url, redis_url=None)
    svc = await open_services(settings, need_provider=False, metrics=Metrics())
    try:
        rows = [JobInput(f"economy crash keyword {i}", {}, {}) for i in range(jobs)]
        options = svc.batch_options(max_tokens=600)
        return await svc.submit(rows, options, account="chaos", mode=BatchMode.ECONOMY)
    finally:
        await svc.aclose()


async def provider_batch_rows(database_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch("SELECT * FROM provider_batches ORDER BY created_at")
    finally:
        await conn.close()


@pytest.mark.parametrize("held", ["upload", "create"])
async def test_sigkill_before_the_provider_batch_is_recorded(
    postgres: PostgresServer, make_fleet: Callable[[str], Fleet], held: str
) -> None:
    """Killed after the upload, before the create: one batch is created by the next worker.
    Killed after the create, before recording it: the next worker finds it by its metadata
    and creates none."""
    jobs = 60
    await enqueue_economy(postgres.url, jobs)
    config = SimConfig(rpm=None, tpm=None, seed=5, batch=FAST)
    async with running_simulator(config) as base_url:
        await sim_configure(base_url, {"batch": {"answer_delay_s": {held: HELD_S}}})
        fleet = make_fleet(base_url)
        first = fleet.spawn(**ECONOMY_ENV)
        counter = "file_uploads" if held == "upload" else "batch_creates"

        async def call_took_effect() -> bool:
            calls: int = (await sim_stats(base_url))["batch"][counter]
            return calls >= 1

        await wait_until(call_took_effect, f"the first worker's {held}")
        first.kill()
        await sim_configure(base_url, {"batch": {"answer_delay_s": {}}})
        fleet.spawn(**ECONOMY_ENV)
        await assert_sound(postgres.url, fleet, expected_jobs=jobs)
        stats = (await sim_stats(base_url))["batch"]
    rows = await provider_batch_rows(postgres.url)
    assert stats["batch_creates"] == 1, stats  # no second provider batch
    assert stats["requests"] == jobs  # every row ran (and was billed) once
    assert stats["file_uploads"] == (2 if held == "upload" else 1)
    assert [(r["state"], r["requests"]) for r in rows] == [("processed", jobs)]
    assert rows[0]["provider_id"] is not None


async def test_sigkill_while_answers_are_written(
    postgres: PostgresServer, make_fleet: Callable[[str], Fleet]
) -> None:
    """Answers are written 500 jobs a statement; the worker is killed while the third
    statement waits for a row lock the test holds. The next worker writes the rest, and no
    job gets two results."""
    jobs = 1200
    await enqueue_economy(postgres.url, jobs)
    paused = dataclasses.replace(FAST, time_scale=0.0)  # the batch waits until we let it run
    blocker = await asyncpg.connect(postgres.url)
    try:
        config = SimConfig(rpm=None, tpm=None, seed=6, batch=paused)
        async with running_simulator(config) as base_url:
            fleet = make_fleet(base_url)
            first = fleet.spawn(**ECONOMY_ENV)

            async def submitted() -> bool:
                rows = await provider_batch_rows(postgres.url)
                return [r["state"] for r in rows] == ["submitted"]

            await wait_until(submitted, "the provider batch to be recorded")
            locked_id = await blocker.fetchval(
                "SELECT id FROM jobs ORDER BY id OFFSET 1100 LIMIT 1"
            )
            async with blocker.transaction():
                await blocker.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", locked_id)
                await sim_configure(base_url, {"batch": {"time_scale": FAST.time_scale}})

                async def two_chunks_written() -> bool:
                    return await done_jobs(postgres.url) >= 1000

                await wait_until(two_chunks_written, "the first two chunks of answers")
                await asyncio.sleep(0.5)
                assert await done_jobs(postgres.url) == 1000  # held at the third chunk
                first.kill()
                await asyncio.sleep(0.2)
            fleet.spawn(**ECONOMY_ENV)
            await assert_sound(postgres.url, fleet, expected_jobs=jobs)
            stats = (await sim_stats(base_url))["batch"]
    finally:
        await blocker.close()
    rows = await provider_batch_rows(postgres.url)
    assert stats["batch_creates"] == 1 and stats["requests"] == jobs, stats
    assert [r["state"] for r in rows] == ["processed"]
