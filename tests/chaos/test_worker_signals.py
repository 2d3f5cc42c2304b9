"""Workers frozen, stopped and killed mid-batch.

- SIGSTOP past the lease, then SIGCONT: another worker rescues the frozen one's jobs and
  finishes them; when the frozen one wakes, its late outcomes are fenced out. Each job
  ends with one result, whoever wrote it.
- SIGTERM: in-flight work gets the grace period, and what it cannot finish goes back to
  the queue untouched: no attempt burnt, same place in line.
- A SIGKILL loop: a worker holding jobs is killed every couple of seconds and replaced,
  until the batch is done. Nothing is lost, nothing is written twice.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import asyncpg
import pytest

from bulkgen.simulator import SimConfig, SimulatorProcess

from .checks import (
    assert_sound,
    job_rows,
    pending_jobs,
    wait_done,
    worker_jobs,
)
from .conftest import enqueue
from .harness import READY_S, Fleet, PostgresServer, WorkerProcess, wait_exit, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(300)]


async def test_sigstopped_worker_past_its_lease_then_sigcont(
    postgres: PostgresServer, make_fleet: Callable[[str], Fleet]
) -> None:
    jobs = 120
    await enqueue(postgres.url, jobs)
    sim = SimConfig(rpm=None, tpm=None, ttft_ms=300, tokens_per_s=0, jitter=0.3, seed=4)
    async with SimulatorProcess(sim) as simulator:
        fleet = make_fleet(simulator.base_url)
        frozen, _other = fleet.spawn(), fleet.spawn()
        await wait_done(postgres.url, 10)
        frozen.signal(signal.SIGSTOP)
        # A write it sent just before the stop may still commit: let it, then look. (Its
        # jobs cannot be rescued this soon: its last beat is younger than the lease.)
        await asyncio.sleep(0.5)
        held = await worker_jobs(postgres.url, frozen.pid)

        async def rescued() -> bool:
            return not await worker_jobs(postgres.url, frozen.pid)

        await wait_until(rescued, "the frozen worker's jobs to be rescued")
        frozen.signal(signal.SIGCONT)
        rows = await assert_sound(postgres.url, fleet, expected_jobs=jobs)
    assert held, "the worker was frozen while holding no job"
    by_id = {r.id: r for r in rows}
    # Rescued (the interrupted attempt counts) and claimed again. The frozen worker may
    # claim one back and find the answer it was fenced out with in its own cache: that
    # finish is free and adds no attempt.
    # On a starved machine the worker that took a job over may itself miss its lease and
    # have it rescued once more: each rescue counts one attempt and one claim, never less.
    again = [
        by_id[i]
        for i in held
        if by_id[i].claims < 2
        or by_id[i].attempts < 2 - by_id[i].cached
        or by_id[i].attempts - (not by_id[i].cached) > by_id[i].claims - 1
    ]
    assert not again, f"frozen jobs not rescued and run again: {again}"
    assert "job.fenced_out" in frozen.output(), "the frozen worker's late outcomes landed"


async def test_sigterm_returns_unfinished_jobs_untouched(
    postgres: PostgresServer, make_fleet: Callable[[str], Fleet]
) -> None:
    jobs = 40
    await enqueue(postgres.url, jobs)
    before = await _places(postgres.url)
    # Calls take far longer than the grace period, so the ones in flight at SIGTERM are
    # interrupted and must come back as they were.
    sim = SimConfig(rpm=None, tpm=None, ttft_ms=1000, tokens_per_s=0, seed=5)
    async with SimulatorProcess(sim) as simulator:
        fleet = make_fleet(simulator.base_url)
        stopped = fleet.spawn(BULKGEN_CONCURRENCY="4", BULKGEN_SHUTDOWN_GRACE_S="0.2")
        await wait_done(postgres.url, 4)
        stopped.signal(signal.SIGTERM)
        assert await wait_exit(stopped.process, 60) == 0, stopped.output()[-3000:]

        rows = await job_rows(postgres.url)
        assert {r.status for r in rows} == {"done", "queued"}, "a job was left running"
        returned = [r for r in rows if r.status == "queued"]
        assert all(r.attempts == 0 and r.error_kind is None for r in returned)
        assert any(r.claims for r in returned), "no job was interrupted in flight"
        after = await _places(postgres.url)
        moved = [r.id for r in returned if after[r.id] != before[r.id]]
        assert not moved, f"returned jobs lost their place in line: {moved[:10]}"

        fleet.spawn()  # another worker finishes the batch
        rows = await assert_sound(postgres.url, fleet, expected_jobs=jobs)
    assert all(r.attempts == 1 for r in rows), "the stop burnt an attempt"


async def _places(database_url: str) -> dict[int, object]:
    """Each job's place in its account's line (``run_after``)."""
    conn = await asyncpg.connect(database_url)
    try:
        return {r["id"]: r["run_after"] for r in await conn.fetch("SELECT id, run_after FROM jobs")}
    finally:
        await conn.close()


async def test_sigkill_loop_until_the_batch_is_done(
    postgres: PostgresServer, make_fleet: Callable[[str], Fleet]
) -> None:
    jobs, max_kills = 300, 6
    # A rescued job goes back to the front of the line, so the same job can be held by
    # every victim in turn; each kill then costs it an attempt, and with fewer attempts
    # than kills it would (rightly) fail as a poison pill. Room for every kill and one more.
    max_attempts = max_kills + 2
    await enqueue(postgres.url, jobs)
    # One second per answer and 3 workers x 8 slots: the batch lasts 12 s at the very least,
    # however fast the machine, while a kill comes every second or so.
    sim = SimConfig(rpm=None, tpm=None, ttft_ms=1000, tokens_per_s=0, jitter=0.3, seed=6)
    async with SimulatorProcess(sim) as simulator:
        fleet = make_fleet(simulator.base_url)

        def spawn() -> None:
            fleet.spawn(BULKGEN_MAX_ATTEMPTS=str(max_attempts))

        for _ in range(3):
            spawn()
        kills = 0
        while kills < max_kills:
            await asyncio.sleep(1.0)
            victim = await _oldest_holder(postgres.url, fleet)
            if victim is None:
                break  # nothing left to run: the batch has ended
            victim.kill()
            await wait_exit(victim.process, 30)
            kills += 1
            spawn()
        rows = await assert_sound(
            postgres.url, fleet, expected_jobs=jobs, max_attempts=max_attempts
        )
    assert kills >= 2, f"only {kills} kill(s) happened before the batch ended"
    assert any(r.attempts >= 2 for r in rows), "no killed worker's job was ever rescued"


async def _oldest_holder(database_url: str, fleet: Fleet) -> WorkerProcess | None:
    """The oldest live worker holding jobs; None once no job is left to run. Workers start
    slowly on a busy machine, so this waits for one to hold work (within READY_S)."""
    deadline = asyncio.get_running_loop().time() + READY_S
    while asyncio.get_running_loop().time() < deadline:
        for worker in fleet.alive():
            if await worker_jobs(database_url, worker.pid):
                return worker
        if await pending_jobs(database_url) == 0:
            return None
        await asyncio.sleep(0.1)
    raise AssertionError(f"jobs pending, yet no worker held one for {READY_S:.0f} s")
