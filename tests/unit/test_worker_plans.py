"""A worker keeps a bounded number of batch plans, most recently used first."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from bulkgen.db.store import BatchRecord
from bulkgen.metrics import Metrics
from bulkgen.service import worker_config
from bulkgen.settings import Settings
from bulkgen.worker import Worker

OPTIONS = {"model": "gpt-4o", "max_tokens": 300}


class BatchReads:
    """Answers ``batch_get`` like the store does and counts the reads."""

    def __init__(self) -> None:
        self.reads: list[uuid.UUID] = []

    async def batch_get(self, batch_id: uuid.UUID) -> BatchRecord:
        self.reads.append(batch_id)
        return BatchRecord(
            id=batch_id,
            account_id=1,
            account="acme",
            options=dict(OPTIONS),
            template="Write about {{ keyword }}.",
            template_version="v1",
            total=1,
            budget_usd=None,
            created_at=datetime.now(UTC),
            cancelled_at=None,
            cancel_reason=None,
        )


def make_worker(reads: BatchReads, size: int) -> Worker:
    config = replace(worker_config(Settings(), concurrency=1), plan_cache_size=size)
    pipeline: Any = object()  # plans never touch the pipeline
    return Worker(reads, pipeline, config, metrics=Metrics())  # type: ignore[arg-type]


async def test_plans_stay_bounded_and_the_least_recent_is_dropped() -> None:
    reads = BatchReads()
    worker = make_worker(reads, size=3)
    batches = [uuid.uuid4() for _ in range(10)]
    for batch_id in batches:
        plan = await worker.plan(batch_id)
        assert plan.options.max_tokens == 300
        assert len(worker._plans) <= 3
    assert list(worker._plans) == batches[-3:]
    assert len(reads.reads) == 10

    await worker.plan(batches[-3])  # cached: no read, and now the most recent
    assert len(reads.reads) == 10
    await worker.plan(batches[0])  # dropped long ago: read again, evicting batches[-2]
    assert reads.reads[-1] == batches[0]
    assert list(worker._plans) == [batches[-1], batches[-3], batches[0]]


async def test_jobs_of_one_batch_share_one_read() -> None:
    reads = BatchReads()
    worker = make_worker(reads, size=2)
    batch_id = uuid.uuid4()
    for _ in range(5):
        await worker.plan(batch_id)
    assert reads.reads == [batch_id]
