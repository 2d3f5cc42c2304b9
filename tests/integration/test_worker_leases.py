"""Leases under the failures that break them: a claim whose answer was lost, a worker
back from an outage, and the place in line of a job that comes back.

Real PostgreSQL, the simulator over real HTTP in this event loop.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest

from bulkgen.simulator import SimConfig, running_simulator

from .pipeline_support import make_settings, start, statuses, submit

pytestmark = pytest.mark.postgres


async def test_jobs_claimed_for_a_worker_that_never_saw_them_come_back(
    database_url: str,
) -> None:
    """The claim committed but its answer was lost: the database says the worker runs
    three jobs it knows nothing of. It gives them back, without burning an attempt, and
    the batch completes (before, they stayed ``generating`` while the worker lived)."""
    async with running_simulator(SimConfig(rpm=None, tpm=None, ttft_ms=5.0, seed=3)) as base:
        svc = await start(make_settings(database_url, base, concurrency=4))
        try:
            batch_id = await submit(svc, 12, max_tokens=200, target_words=100)
            worker = svc.worker(burst=True)
            lost = await svc.store.jobs_claim(worker.id, 3)  # the answer that never arrived
            assert len(lost) == 3
            await asyncio.wait_for(worker.run(), 30.0)
            counts = await statuses(svc, batch_id)
            rows = await svc.store.pool.fetch(
                "SELECT attempts, claims FROM jobs WHERE id = ANY($1::bigint[])",
                [job.id for job in lost],
            )
        finally:
            await svc.aclose()
    assert counts == {"done": 12}
    assert svc.metrics.total("jobs.unrun_released") == 3
    assert [r["attempts"] for r in rows] == [1, 1, 1]  # only the attempt that made them
    assert all(r["claims"] == 2 for r in rows)  # the lost claim, then the real one


async def test_a_worker_rescues_only_after_its_own_beat_was_healthy_for_a_lease(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Jobs of a worker that stopped beating come back, but not before the rescuer has
    beaten for a whole lease itself: the first worker back from a database outage must
    not take the live jobs of workers that have not had the time to beat again."""
    caplog.set_level(logging.WARNING, logger="bulkgen.worker")
    async with running_simulator(SimConfig(rpm=None, tpm=None, ttft_ms=5.0, seed=4)) as base:
        settings = make_settings(database_url, base, concurrency=4)
        svc = await start(settings)
        try:
            batch_id = await submit(svc, 6, max_tokens=200, target_words=100)
            dead = uuid.uuid4()
            await svc.store.worker_register(dead, "gone", 1)
            await svc.store.jobs_claim(dead, 6)
            await svc.store.pool.execute(
                "UPDATE workers SET heartbeat_at = now() - interval '1 hour' WHERE id = $1", dead
            )
            await asyncio.wait_for(svc.worker(burst=True).run(), 30.0)
            counts = await statuses(svc, batch_id)
        finally:
            await svc.aclose()
    assert counts == {"done": 6}
    rescues = [r for r in caplog.records if r.getMessage() == "worker.rescued"]
    assert rescues, "the dead worker's jobs were never rescued"
    assert all(r.__dict__["healthy_s"] >= settings.lease_s for r in rescues)


async def test_jobs_that_come_back_keep_their_place_in_line(database_url: str) -> None:
    """A rescued or released job goes back where it was, not behind the whole backlog."""
    async with running_simulator(SimConfig(rpm=None, tpm=None, seed=5)) as base:
        svc = await start(make_settings(database_url, base))
        try:
            await submit(svc, 10, max_tokens=200)
            store = svc.store
            first, second = uuid.uuid4(), uuid.uuid4()
            await store.worker_register(first, "a", 1)
            oldest = sorted(job.id for job in await store.jobs_claim(first, 2))
            await store.jobs_release(first, oldest[:1])
            await store.pool.execute(
                "UPDATE workers SET heartbeat_at = now() - interval '1 hour' WHERE id = $1", first
            )
            assert await store.jobs_rescue(lease_s=30, max_attempts=5) == 1
            await store.worker_register(second, "b", 2)
            again = sorted(job.id for job in await store.jobs_claim(second, 2))
        finally:
            await svc.aclose()
    assert again == oldest
