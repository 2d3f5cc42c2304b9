"""A long-lived worker runs many batches without keeping every batch's plan."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace

import pytest

from bulkgen.db.store import BatchRecord
from bulkgen.service import worker_config
from bulkgen.simulator import SimConfig, running_simulator
from bulkgen.worker import Worker

from .pipeline_support import make_settings, start, statuses, submit

pytestmark = pytest.mark.postgres


async def test_worker_over_many_batches_keeps_a_bounded_plan_cache(database_url: str) -> None:
    sim = SimConfig(rpm=None, tpm=None, ttft_ms=0, tokens_per_s=0, seed=4)
    async with running_simulator(sim) as base_url:
        svc = await start(make_settings(database_url, base_url))
        try:
            batches = [
                await submit(svc, 2, account=f"a{i}", max_tokens=200, target_words=100)
                for i in range(6)
            ]
            config = replace(worker_config(svc.settings, burst=True), plan_cache_size=2)
            worker = Worker(svc.store, svc.pipeline(), config, metrics=svc.metrics)
            await worker.run()
            for batch_id in batches:
                assert await statuses(svc, batch_id) == {"done": 2}
        finally:
            await svc.aclose()
    assert 1 <= len(worker._plans) <= 2


async def test_the_plans_a_claim_lacks_are_read_together(database_url: str) -> None:
    """Eight accounts, a batch each: the first claim takes a job of every batch, and their
    eight plans come from one read, not one per job."""
    sim = SimConfig(rpm=None, tpm=None, ttft_ms=0, tokens_per_s=0, seed=4)
    async with running_simulator(sim) as base_url:
        svc = await start(make_settings(database_url, base_url))
        reads: list[int] = []
        store_get, store_get_many = svc.store.batch_get, svc.store.batches_get

        async def batch_get(batch_id: uuid.UUID) -> BatchRecord | None:
            reads.append(1)
            return await store_get(batch_id)

        async def batches_get(batch_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, BatchRecord]:
            reads.append(len(batch_ids))
            return await store_get_many(batch_ids)

        try:
            batches = [
                await submit(svc, 3, account=f"a{i}", max_tokens=800, target_words=100)
                for i in range(8)
            ]
            svc.store.batch_get = batch_get  # type: ignore[method-assign]
            svc.store.batches_get = batches_get  # type: ignore[method-assign]
            await svc.worker(concurrency=8, burst=True).run()
            for batch_id in batches:
                assert await statuses(svc, batch_id) == {"done": 3}
        finally:
            await svc.aclose()
    assert reads == [8]


async def test_an_announced_batch_has_its_plan_read_before_its_jobs_are_claimed(
    database_url: str,
) -> None:
    sim = SimConfig(rpm=None, tpm=None, ttft_ms=0, tokens_per_s=0, seed=4)
    async with running_simulator(sim) as base_url:
        svc = await start(make_settings(database_url, base_url))
        try:
            batch_id = await submit(svc, 1, max_tokens=800, target_words=100)
            worker = svc.worker(burst=True)
            worker._prefetch_plan("fallback")  # an economy fallback names no batch
            worker._prefetch_plan(str(batch_id))  # what the enqueue's NOTIFY carries
            assert list(worker._plans) == [batch_id]
            plan = await worker._plans[batch_id]
            assert plan.account_id == await svc.store.account_ensure("acme")
            await worker.run()
            assert await statuses(svc, batch_id) == {"done": 1}
        finally:
            await svc.aclose()
