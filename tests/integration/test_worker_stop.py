"""A stop is honoured within the grace period even while every slot is busy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bulkgen.db.pool import create_pool
from bulkgen.db.store import ClaimedJob, DoneRow, Store
from bulkgen.metrics import Metrics
from bulkgen.pipeline import BatchPlan
from bulkgen.service import worker_config
from bulkgen.settings import Settings
from bulkgen.worker import Worker

pytestmark = pytest.mark.postgres


class StuckPipeline:
    """Stands in for provider calls or limiter waits that never end by themselves."""

    def __init__(self) -> None:
        self.running: set[int] = set()
        self.full = asyncio.Event()  # set once two calls are stuck
        self.cancelled = 0

    def allows_claim(self) -> bool:
        return True

    def auto_concurrency(self) -> int:
        return 1

    async def run(self, job: ClaimedJob, plan: BatchPlan) -> DoneRow:
        self.running.add(job.id)
        if len(self.running) == 2:
            self.full.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        raise AssertionError("never reached")


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    pool = await create_pool(database_url, max_size=4, min_size=1, command_timeout_s=60.0)
    try:
        yield Store(pool)
    finally:
        await pool.close()


async def test_stop_while_full_returns_jobs_within_the_grace_period(store: Store) -> None:
    account = await store.account_ensure("acme")
    batch_id = await store.batch_create(
        account=account,
        options={"model": "gpt-4o", "max_tokens": 1500},
        template="Write about {{ keyword }}.",
        template_version="v",
        inputs=[{"keyword": f"k{i}"} for i in range(6)],
    )
    config = worker_config(Settings(shutdown_grace_s=0.5, poll_s=0.1), concurrency=2)
    pipeline = StuckPipeline()
    worker = Worker(store, pipeline, config, metrics=Metrics())  # type: ignore[arg-type]
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(pipeline.full.wait(), 60)  # both slots busy before the stop
        worker.stop()
        # The calls never end by themselves: the worker returning at all means it gave up
        # on them once the grace period was over (the bound only keeps a hang from lasting).
        await asyncio.wait_for(running, 30)
    finally:
        if not running.done():  # a failure above must not leave it holding the pool open
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    assert pipeline.cancelled == 2
    counts = {c.status: c.jobs for c in await store.batch_counts(batch_id)}
    assert counts == {"queued": 6}
    attempts = await store.pool.fetchval("SELECT max(attempts) FROM jobs")
    assert attempts == 0
