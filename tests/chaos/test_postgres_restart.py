"""PostgreSQL goes away mid-batch, for longer than a lease, and comes back on the same port
and data folder: stopped cleanly (fast shutdown) or crashed (SIGKILL to every server
process, so the restart replays the WAL). The workers ride it out: nothing lost, nothing
done twice, no worker dies, and the outage reads as event lines, not tracebacks. Since
both workers live through it, the first one back must not rescue the other's jobs: every
job is paid for once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from bulkgen.simulator import SimConfig, SimulatorProcess

from .checks import assert_sound, wait_done
from .conftest import enqueue
from .harness import LEASE_S, Fleet, PostgresServer, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(300)]

JOBS = 200


@pytest.mark.parametrize("outage", ["fast_shutdown", "crash"])
async def test_postgres_restarted_mid_batch(
    postgres: PostgresServer, make_fleet: Callable[[str], Fleet], outage: str
) -> None:
    await enqueue(postgres.url, JOBS)
    sim = SimConfig(rpm=None, tpm=None, ttft_ms=200, tokens_per_s=0, jitter=0.3, seed=1)
    async with SimulatorProcess(sim) as simulator:
        fleet = make_fleet(simulator.base_url)
        workers = [fleet.spawn(), fleet.spawn()]

        async def both_started() -> bool:  # a start during the outage is another scenario
            return all("worker.started" in worker.output() for worker in workers)

        await wait_until(both_started, "both workers to start")
        await wait_done(postgres.url, 30)
        await (postgres.stop() if outage == "fast_shutdown" else postgres.crash())
        await asyncio.sleep(LEASE_S * 1.5)  # every heartbeat goes stale meanwhile
        await postgres.start()
        rows = await assert_sound(postgres.url, fleet, expected_jobs=JOBS)
    # Both workers lived through it, so nobody's jobs were rescued: each was paid once.
    twice = [(r.id, r.attempts, r.error_kind) for r in rows if r.attempts != 1]
    assert not twice, f"jobs run more than once after the outage: {twice[:10]}"
    for worker in workers:
        output = worker.output()
        assert "worker.heartbeat_failed" in output, f"{worker.name} never saw the outage"
        assert "worker.heartbeat_recovered" in output, f"{worker.name} never said it was back"
