"""A fresh worker against a rate-limited simulator sends no request into a 429.

Its first request goes out before any limit is known; the answer names the limits, and the
governor must count that first request against them, or the second request lands in the
bucket the first one emptied. Counted by the simulator itself (``/_sim/stats``).
"""

from __future__ import annotations

import pytest

from bulkgen.simulator import SimConfig, running_simulator
from bulkgen.simulator.control import sim_stats

from .pipeline_support import make_settings, start, statuses, submit

pytestmark = pytest.mark.postgres

# A small account (500 RPM, 30,000 TPM in 1 s buckets) run ten times faster than real time:
# one 1,500-token article empties the token bucket several times over.
SMALL_ACCOUNT = SimConfig(rpm=500, tpm=30_000, time_scale=10.0, seed=5)
# The first request, sent blind, and the second, the one a blind first request used to
# push into a 429. Later requests are paced from their own admissions, within the standing
# margin under the limit (see limits/policy.py), which this test does not measure.
JOBS = 2


async def _first_requests(database_url: str, redis_url: str | None) -> dict[str, object]:
    """Run a fresh worker over a small batch; the simulator's own counters afterwards."""
    async with running_simulator(SMALL_ACCOUNT) as base_url:
        svc = await start(make_settings(database_url, base_url, redis_url=redis_url))
        try:
            batch_id = await submit(svc, JOBS)
            await svc.worker(burst=True).run()
            assert await statuses(svc, batch_id) == {"done": JOBS}
        finally:
            await svc.aclose()
        return await sim_stats(base_url)


async def test_a_fresh_worker_sends_nothing_into_a_429(database_url: str) -> None:
    stats = await _first_requests(database_url, None)
    assert stats["rate_limited"] == {"requests": 0, "tokens": 0, "insufficient_quota": 0}
    assert stats["ok"] == JOBS


@pytest.mark.redis
async def test_a_fresh_fleet_worker_sends_nothing_into_a_429(
    database_url: str, redis_url: str
) -> None:
    stats = await _first_requests(database_url, redis_url)
    assert stats["rate_limited"] == {"requests": 0, "tokens": 0, "insufficient_quota": 0}
    assert stats["ok"] == JOBS
