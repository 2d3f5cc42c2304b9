"""A server that takes a few requests at once and answers the rest "overloaded" (503, or a
bare 429): every job ends done, and no job is charged an attempt for an overload answer.

Real PostgreSQL, the simulator over real HTTP with ``max_inflight``.
"""

from __future__ import annotations

import pytest

from bulkgen.simulator import SimConfig, running_simulator
from bulkgen.simulator.control import sim_stats

from .pipeline_support import make_settings, start, submit

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("status", [503, 429])
async def test_overload_answers_snooze_jobs_without_costing_attempts(
    database_url: str, status: int
) -> None:
    sim = SimConfig(
        rpm=None, tpm=None, ttft_ms=100, tokens_per_s=0, seed=7,
        max_inflight=2, overload_status=status,
    )  # fmt: skip
    async with running_simulator(sim) as base_url:
        settings = make_settings(
            database_url, base_url, concurrency=8, max_attempts=1, rate_limit_max_wait_s=600.0
        )
        svc = await start(settings)
        try:
            await submit(svc, 30)
            await svc.worker(burst=True).run()
            rows = await svc.store.pool.fetch("SELECT status, attempts, rate_limited_ms FROM jobs")
        finally:
            await svc.aclose()
        stats = await sim_stats(base_url)
    assert stats["overloaded"] > 0, "the server was never full: the test proves nothing"
    # One attempt allowed, and each job spent exactly it on its one successful answer.
    assert {(r["status"], r["attempts"]) for r in rows} == {("done", 1)}
    # The overload answers were snoozes, counted in the jobs' waiting time.
    assert sum(r["rate_limited_ms"] for r in rows) > 0
