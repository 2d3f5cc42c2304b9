"""The provider answers every request with 503 for a while, then recovers.

The circuit breaker opens (claiming pauses, jobs wait in the queue with their attempts),
probes one request at a time, and closes once a probe succeeds; each transition is one
log line. Afterwards every job is done, once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from bulkgen.simulator import SimConfig, SimulatorProcess
from bulkgen.simulator.control import sim_configure, sim_stats

from .checks import assert_sound, wait_done
from .conftest import enqueue
from .harness import Fleet, PostgresServer

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(300)]

JOBS = 160
OUTAGE_S = 5.0


async def test_provider_outage_then_recovery(
    postgres: PostgresServer, make_fleet: Callable[[str], Fleet]
) -> None:
    await enqueue(postgres.url, JOBS)
    sim = SimConfig(rpm=None, tpm=None, ttft_ms=150, tokens_per_s=0, jitter=0.3, seed=3)
    async with SimulatorProcess(sim) as simulator:
        fleet = make_fleet(simulator.base_url)
        workers = [fleet.spawn(), fleet.spawn()]
        await wait_done(postgres.url, 20)
        await sim_configure(simulator.base_url, {"faults": {"503": 1.0}})
        await asyncio.sleep(OUTAGE_S)
        await sim_configure(simulator.base_url, {"faults": {}})
        await assert_sound(postgres.url, fleet, expected_jobs=JOBS)
        stats = await sim_stats(simulator.base_url)
    assert stats["faults"].get("503", 0) > 0, "the outage never reached a request"
    for worker in workers:
        output = worker.output()
        for event in ("breaker.opened", "breaker.probing", "breaker.closed"):
            assert event in output, f"{worker.name} did not log {event}"
