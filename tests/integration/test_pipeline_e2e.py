"""The durable pipeline end to end: real PostgreSQL, the simulator over real HTTP.

Each test drives one way a bulk run goes wrong (too many connections, a failing provider,
no quota, empty answers, endless 429s) and checks how it ends: never as an empty ``done``.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import pytest

from bulkgen.simulator import SimConfig, running_simulator

from .pipeline_support import make_settings, start, statuses, submit

pytestmark = pytest.mark.postgres

QUICK_SIM = SimConfig(rpm=None, tpm=None, ttft_ms=5, tokens_per_s=0, seed=3)


async def _sample_peak(database_url: str, peak: list[int], stop: asyncio.Event) -> None:
    """Connections opened by bulkgen, as PostgreSQL itself sees them."""
    conn = await asyncpg.connect(database_url)
    try:
        while not stop.is_set():
            count = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = 'bulkgen' AND datname = current_database()"
            )
            peak[0] = max(peak[0], count)
            await asyncio.sleep(0.01)
    finally:
        await conn.close()


async def test_300_jobs_at_concurrency_100_never_exceed_the_pool(database_url: str) -> None:
    sim = SimConfig(rpm=None, tpm=None, ttft_ms=80, tokens_per_s=0, jitter=0.5, seed=1)
    async with running_simulator(sim) as base_url:
        settings = make_settings(database_url, base_url, db_pool_max=20, concurrency=100)
        svc = await start(settings)
        try:
            batch_id = await submit(svc, 300, max_tokens=200, target_words=100)
            peak, stop = [0], asyncio.Event()
            sampler = asyncio.create_task(_sample_peak(database_url, peak, stop))
            await svc.worker(burst=True).run()
            stop.set()
            await sampler
            assert await statuses(svc, batch_id) == {"done": 300}
            results = await svc.store.pool.fetchval("SELECT count(*) FROM results")
            assert results == 300
        finally:
            await svc.aclose()
    assert 1 <= peak[0] <= 20, f"peak connections {peak[0]}"


@pytest.mark.parametrize("fault", ["503", "500", "malformed", "reset"])
async def test_provider_always_failing_ends_failed_with_every_attempt(
    database_url: str, fault: str
) -> None:
    sim = SimConfig(rpm=None, tpm=None, faults={fault: 1.0}, seed=2)
    async with running_simulator(sim) as base_url:
        svc = await start(make_settings(database_url, base_url, max_attempts=3))
        try:
            batch_id = await submit(svc, 12)
            await svc.worker(burst=True).run()
            rows = await svc.store.pool.fetch("SELECT status, attempts, error_kind FROM jobs")
        finally:
            await svc.aclose()
    assert {(r["status"], r["attempts"]) for r in rows} == {("failed", 3)}
    assert len({r["error_kind"] for r in rows}) == 1 and rows[0]["error_kind"]
    assert await _done_count(database_url) == 0
    del batch_id


async def test_insufficient_quota_fails_at_once(database_url: str) -> None:
    sim = SimConfig(rpm=None, tpm=None, faults={"insufficient_quota": 1.0}, seed=2)
    async with running_simulator(sim) as base_url:
        svc = await start(make_settings(database_url, base_url, max_attempts=5))
        try:
            await submit(svc, 8)
            await svc.worker(burst=True).run()
            rows = await svc.store.pool.fetch("SELECT status, attempts, error_kind FROM jobs")
        finally:
            await svc.aclose()
    assert {(r["status"], r["attempts"], r["error_kind"]) for r in rows} == {
        ("failed", 1, "insufficient_quota")
    }


@pytest.mark.parametrize("fault", ["empty", "whitespace"])
async def test_empty_content_is_never_done(database_url: str, fault: str) -> None:
    sim = SimConfig(rpm=None, tpm=None, faults={fault: 1.0}, seed=4)
    async with running_simulator(sim) as base_url:
        svc = await start(make_settings(database_url, base_url, max_attempts=2))
        try:
            batch_id = await submit(svc, 10)
            await svc.worker(burst=True).run()
            assert await statuses(svc, batch_id) == {"failed": 10}
        finally:
            await svc.aclose()
    assert await _done_count(database_url) == 0


async def test_some_empty_answers_are_retried_into_real_articles(database_url: str) -> None:
    sim = SimConfig(rpm=None, tpm=None, faults={"empty": 0.3, "503": 0.2}, seed=5)
    async with running_simulator(sim) as base_url:
        svc = await start(make_settings(database_url, base_url, max_attempts=8))
        try:
            batch_id = await submit(svc, 40)
            await svc.worker(burst=True).run()
            assert await statuses(svc, batch_id) == {"done": 40}
            shortest = await svc.store.pool.fetchval(
                "SELECT min(length(btrim(content))) FROM results"
            )
        finally:
            await svc.aclose()
    assert shortest > 100


async def _done_count(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'done'")
        return count
    finally:
        with contextlib.suppress(Exception):
            await conn.close()


async def test_provider_always_429_fails_as_rate_limited_never_empty_done(
    database_url: str,
) -> None:
    """Exhausted 429 waits end `failed` with `rate_limited`, never as an empty `done`."""
    sim = SimConfig(rpm=None, tpm=None, faults={"429": 1.0}, fault_retry_after_ms=100, seed=6)
    async with running_simulator(sim) as base_url:
        settings = make_settings(database_url, base_url, rate_limit_max_wait_s=0.5)
        svc = await start(settings)
        try:
            batch_id = await submit(svc, 10)
            await svc.worker(burst=True).run()
            rows = await svc.store.pool.fetch(
                "SELECT status, attempts, error_kind, rate_limited_ms FROM jobs"
            )
        finally:
            await svc.aclose()
    assert {(r["status"], r["error_kind"]) for r in rows} == {("failed", "rate_limited")}
    # Rate-limit waits never burn attempts, and each job waited at most its bound.
    assert {r["attempts"] for r in rows} == {0}
    assert all(0 < r["rate_limited_ms"] <= 500 for r in rows)
    assert await _done_count(database_url) == 0
    del batch_id
