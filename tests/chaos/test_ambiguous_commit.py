"""Ambiguous commits: PostgreSQL commits a statement, then the connection dies before the
worker reads the answer. A proxy between the worker and PostgreSQL makes it happen.

- The claim: the jobs are the worker's in the database but it does not run them. It must
  give them back (no attempt burnt, same place in line) instead of holding them for as
  long as it lives, which would leave the batch unfinished forever.
- The write of finished jobs (and the claim that rides in its transaction): the worker
  does not know its results were stored and writes them again. The second write must be
  refused, not stored twice nor counted as another attempt; the jobs claimed with it are
  given back like those of a lost claim.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from bulkgen.simulator import SimConfig, SimulatorProcess

from .checks import JobRow, assert_sound
from .conftest import enqueue
from .harness import Fleet, PostgresServer
from .pgproxy import CLAIM_MARKER, FINISH_DONE_MARKER, AnswerDroppingProxy

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(300)]

JOBS = 60


StartProxy = Callable[[bytes], Awaitable[AnswerDroppingProxy]]


@pytest.fixture
async def start_proxy(postgres: PostgresServer) -> AsyncIterator[StartProxy]:
    """``await start_proxy(marker)``: a proxy in front of this test's PostgreSQL."""
    proxies: list[AnswerDroppingProxy] = []

    async def start(marker: bytes) -> AnswerDroppingProxy:
        proxy = AnswerDroppingProxy(postgres.port, marker)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    try:
        yield start
    finally:
        for proxy in proxies:
            await proxy.close()


async def _run_through(
    proxy: AnswerDroppingProxy, postgres: PostgresServer, make_fleet: Callable[[str], Fleet]
) -> tuple[list[JobRow], str]:
    await enqueue(postgres.url, JOBS)
    proxy.arm(1)
    sim = SimConfig(rpm=None, tpm=None, ttft_ms=100, tokens_per_s=0, jitter=0.3, seed=7)
    async with SimulatorProcess(sim) as simulator:
        fleet = make_fleet(simulator.base_url)
        worker = fleet.spawn(database_url=proxy.url())
        rows = await assert_sound(postgres.url, fleet, expected_jobs=JOBS)
    assert len(proxy.dropped) == 1, "the proxy never dropped an answer"
    return rows, worker.output()


async def test_claim_committed_but_answer_lost(
    postgres: PostgresServer, start_proxy: StartProxy, make_fleet: Callable[[str], Fleet]
) -> None:
    proxy = await start_proxy(CLAIM_MARKER)
    rows, output = await _run_through(proxy, postgres, make_fleet)
    # Those jobs were claimed twice (the lost claim, then the real one) and paid once.
    assert sum(1 for r in rows if r.claims >= 2) == proxy.dropped[0]
    assert all(r.attempts == 1 for r in rows), "the lost claim burnt an attempt"
    assert "worker.claim_failed" in output and "worker.unrun_released" in output


async def test_finish_committed_but_answer_lost(
    postgres: PostgresServer, start_proxy: StartProxy, make_fleet: Callable[[str], Fleet]
) -> None:
    proxy = await start_proxy(FINISH_DONE_MARKER)
    rows, output = await _run_through(proxy, postgres, make_fleet)
    # Stored once, counted once; the worker's second write was refused by the fence.
    assert all(r.attempts == 1 for r in rows)
    assert "status_writer.flush_failed" in output and "job.fenced_out" in output
    # Jobs claimed in the lost transaction were given back unrun, then claimed again.
    given_back = sum(int(n) for n in re.findall(r"worker\.unrun_released jobs=(\d+)", output))
    assert sum(1 for r in rows if r.claims == 2) == given_back
    assert all(r.claims <= 2 for r in rows)
