"""The ambiguous claim: PostgreSQL commits a claim, then the connection dies before the
worker reads which jobs it got. The jobs are the worker's in the database but it does not
run them; it must give them back (no attempt burnt, same place in line) instead of holding
them for as long as it lives, which would leave the batch unfinished forever."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from bulkgen.simulator import SimConfig, SimulatorProcess

from .checks import assert_sound
from .conftest import enqueue
from .harness import Fleet, PostgresServer
from .pgproxy import ClaimDroppingProxy

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(300)]


@pytest.fixture
async def proxy(postgres: PostgresServer) -> AsyncIterator[ClaimDroppingProxy]:
    proxy = ClaimDroppingProxy(postgres.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def test_claim_committed_but_answer_lost(
    postgres: PostgresServer, proxy: ClaimDroppingProxy, make_fleet: Callable[[str], Fleet]
) -> None:
    jobs = 60
    await enqueue(postgres.url, jobs)
    proxy.arm(1)
    sim = SimConfig(rpm=None, tpm=None, ttft_ms=100, tokens_per_s=0, jitter=0.3, seed=7)
    async with SimulatorProcess(sim) as simulator:
        fleet = make_fleet(simulator.base_url)
        worker = fleet.spawn(database_url=proxy.url())
        rows = await assert_sound(postgres.url, fleet, expected_jobs=jobs)
    assert len(proxy.dropped_claims) == 1, "the proxy never dropped a claim's answer"
    lost = proxy.dropped_claims[0]
    # Those jobs were claimed twice (the lost claim, then the real one) and paid once.
    assert sum(1 for r in rows if r.claims >= 2) == lost
    assert all(r.attempts == 1 for r in rows), "the lost claim burnt an attempt"
    output = worker.output()
    assert "worker.claim_failed" in output and "worker.unrun_released" in output
