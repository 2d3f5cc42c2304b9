"""A worker killed with SIGKILL mid-batch loses nothing: its jobs come back after its
lease lapses, a second worker finishes them, and each job has exactly one result."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import asyncpg
import pytest

from bulkgen.simulator import SimConfig, SimulatorProcess

from .pipeline_support import FAST, make_settings, start, statuses, submit

pytestmark = pytest.mark.postgres


def _worker_env(database_url: str, base_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BULKGEN_", "REDIS_"))}
    env.update(
        DATABASE_URL=database_url,
        OPENAI_BASE_URL=base_url,
        OPENAI_API_KEY="sk-test",
        BULKGEN_CONCURRENCY="8",
        BULKGEN_LEASE_S=str(FAST["lease_s"]),
        BULKGEN_HEARTBEAT_S=str(FAST["heartbeat_s"]),
    )
    return env


async def _count_done(conn: asyncpg.Connection, batch_id: object) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM jobs WHERE batch_id = $1 AND status = 'done'", batch_id
    )
    return count


async def test_sigkilled_worker_jobs_are_finished_by_another(database_url: str) -> None:
    sim = SimConfig(rpm=None, tpm=None, ttft_ms=250, tokens_per_s=0, jitter=0.3, seed=8)
    async with SimulatorProcess(sim) as simulator:
        settings = make_settings(database_url, simulator.base_url, concurrency=8)
        svc = await start(settings)
        try:
            batch_id = await submit(svc, 60, max_tokens=200)
            victim = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bulkgen.cli",
                "worker",
                "--burst",
                env=_worker_env(database_url, simulator.base_url),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            conn = await asyncpg.connect(database_url)
            try:
                for _ in range(600):
                    if await _count_done(conn, batch_id) >= 10:
                        break
                    await asyncio.sleep(0.05)
                victim.send_signal(signal.SIGKILL)
                await asyncio.wait_for(victim.wait(), 10)
                held = {
                    r["id"]
                    for r in await conn.fetch("SELECT id FROM jobs WHERE status = 'generating'")
                }
                done_by_victim = await _count_done(conn, batch_id)
            finally:
                await conn.close()
            assert held, "the victim should die holding jobs"
            assert 10 <= done_by_victim < 60

            await svc.worker(burst=True).run()
            assert await statuses(svc, batch_id) == {"done": 60}
            per_job = await svc.store.pool.fetch(
                "SELECT j.id, count(r.job_id) AS n FROM jobs j"
                " LEFT JOIN results r ON r.job_id = j.id GROUP BY j.id"
            )
            rescued = await svc.store.pool.fetch(
                "SELECT attempts FROM jobs WHERE id = ANY($1::bigint[])", list(held)
            )
        finally:
            await svc.aclose()
    assert {r["n"] for r in per_job} == {1}
    assert len(per_job) == 60
    # The interrupted attempt is counted on every rescued job.
    assert len(rescued) == len(held) and all(r["attempts"] >= 2 for r in rescued)


async def test_sigterm_finishes_in_flight_work_and_returns_the_rest(database_url: str) -> None:
    """A graceful stop claims nothing more, and leaves no job stranded in `generating`."""
    sim = SimConfig(rpm=None, tpm=None, ttft_ms=400, tokens_per_s=0, seed=10)
    async with SimulatorProcess(sim) as simulator:
        settings = make_settings(database_url, simulator.base_url)
        svc = await start(settings)
        try:
            batch_id = await submit(svc, 80)
            worker = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bulkgen.cli",
                "worker",
                env=_worker_env(database_url, simulator.base_url),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            conn = await asyncpg.connect(database_url)
            try:
                for _ in range(600):
                    if await _count_done(conn, batch_id) >= 5:
                        break
                    await asyncio.sleep(0.05)
                worker.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(worker.wait(), 30)
            finally:
                await conn.close()
            counts = await statuses(svc, batch_id)
            workers_left = await svc.store.pool.fetchval("SELECT count(*) FROM workers")
            burnt = await svc.store.pool.fetchval(
                "SELECT count(*) FROM jobs WHERE status = 'queued' AND attempts > 0"
            )
        finally:
            await svc.aclose()
    assert code == 0
    assert set(counts) <= {"done", "queued"} and counts.get("queued", 0) > 0
    assert counts["done"] >= 5 and workers_left == 0 and burnt == 0
