"""Redis is SIGKILLed mid-batch under three workers and comes back empty on the same port.

Redis only makes bulkgen cheaper and fleet-wide (cache, single-flight, budget ledger, rate
limits); losing it, and everything it held, must cost no job: each worker falls back to
its in-process limiter, says so once, and picks Redis up again when it returns."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from bulkgen.simulator import SimConfig, SimulatorProcess

from .checks import assert_sound, wait_done
from .conftest import enqueue
from .harness import LEASE_S, Fleet, PostgresServer, RedisServer

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.timeout(300),
]

JOBS = 240


async def test_redis_killed_and_restarted_mid_batch(
    postgres: PostgresServer, redis_server: RedisServer, make_fleet: Callable[[str], Fleet]
) -> None:
    await enqueue(postgres.url, JOBS)
    sim = SimConfig(rpm=None, tpm=None, ttft_ms=200, tokens_per_s=0, jitter=0.3, seed=2)
    async with SimulatorProcess(sim) as simulator:
        fleet = make_fleet(simulator.base_url)
        workers = [fleet.spawn(redis_url=redis_server.url) for _ in range(3)]
        await wait_done(postgres.url, 40)
        await redis_server.kill()
        await asyncio.sleep(LEASE_S * 1.5)
        await redis_server.start()
        rows = await assert_sound(postgres.url, fleet, expected_jobs=JOBS)
    twice = [(r.id, r.attempts, r.error_kind) for r in rows if r.attempts != 1]
    assert not twice, f"jobs run more than once: {twice[:10]}"
    saw_it = [w.name for w in workers if "limiter.redis_unavailable" in w.output()]
    assert saw_it, "no worker noticed that Redis was gone"
