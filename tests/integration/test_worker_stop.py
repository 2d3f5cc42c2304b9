"""A stop is honoured within the grace period even while every slot is busy."""

from __future__ import annotations

import asyncio
import time
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
    """Stands in for provider calls or limiter waits that outlast the grace period."""

    def allows_claim(self) -> bool:
        return True

    def auto_concurrency(self) -> int:
        return 1

    async def run(self, job: ClaimedJob, plan: BatchPlan) -> DoneRow:
        await asyncio.sleep(30)
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
        account_id=account,
        options={"model": "gpt-4o", "max_tokens": 1500},
        template="Write about {{ keyword }}.",
        template_version="v",
        inputs=[{"keyword": f"k{i}"} for i in range(6)],
    )
    config = worker_config(Settings(shutdown_grace_s=0.5, poll_s=0.1), concurrency=2)
    worker = Worker(store, StuckPipeline(), config, metrics=Metrics())  # type: ignore[arg-type]
    running = asyncio.create_task(worker.run())
    for _ in range(100):
        counts = {c.status: c.jobs for c in await store.batch_counts(batch_id)}
        if counts.get("generating") == 2:
            break
        await asyncio.sleep(0.02)
    started = time.monotonic()
    worker.stop()
    await asyncio.wait_for(running, 10)
    assert time.monotonic() - started < 3.0  # the grace period, not the stuck calls
    counts = {c.status: c.jobs for c in await store.batch_counts(batch_id)}
    assert counts == {"queued": 6}
    attempts = await store.pool.fetchval("SELECT max(attempts) FROM jobs")
    assert attempts == 0
