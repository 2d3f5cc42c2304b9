"""The one final check every chaos scenario ends with, read from the tables themselves.

Whatever was done to the processes, afterwards:

- every job is terminal (``done``, ``failed`` or ``cancelled``); with only transient faults,
  every job is ``done``;
- a ``done`` job has exactly one result, any other job none, and no result is empty;
- no job used more attempts than ``BULKGEN_MAX_ATTEMPTS``;
- every worker the scenario did not kill exited by itself with status 0 (they run with
  ``--burst``), one it killed died of that signal, and no worker's output holds a
  traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from .harness import MAX_ATTEMPTS, SETTLE_S, Fleet, wait_exit, wait_until

TERMINAL = ("done", "failed", "cancelled")


@dataclass(frozen=True)
class JobRow:
    id: int
    status: str
    attempts: int
    claims: int
    error_kind: str | None
    cached: bool  # done from the cache: that attempt was not paid (and not counted)
    results: int
    empty_results: int


async def job_rows(database_url: str) -> list[JobRow]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            """
            SELECT j.id, j.status, j.attempts, j.claims, j.error_kind, j.cached,
                   count(r.job_id) AS results,
                   count(r.job_id) FILTER (
                       WHERE r.content !~ '[^[:space:]]' OR r.word_count <= 0) AS empty_results
            FROM jobs j LEFT JOIN results r ON r.job_id = j.id
            GROUP BY j.id ORDER BY j.id
            """
        )
    finally:
        await conn.close()
    return [JobRow(**dict(r)) for r in rows]


async def pending_jobs(database_url: str) -> int:
    """Jobs not yet terminal; -1 while the database cannot be reached."""
    try:
        conn = await asyncpg.connect(database_url, timeout=2)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return -1
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM jobs WHERE status NOT IN ('done', 'failed', 'cancelled')"
        )
    finally:
        await conn.close()
    return count


async def settle(database_url: str, timeout_s: float = SETTLE_S) -> None:
    """Until no job is queued or running."""

    async def settled() -> bool:
        return await pending_jobs(database_url) == 0

    await wait_until(settled, "every job to reach a terminal status", timeout_s)


def _some(ids: list[int]) -> str:
    return ", ".join(map(str, ids[:10])) + (" ..." if len(ids) > 10 else "")


async def assert_sound(
    database_url: str,
    fleet: Fleet,
    *,
    expected_jobs: int,
    all_done: bool = True,
    max_attempts: int = MAX_ATTEMPTS,
) -> list[JobRow]:
    """Settle, then check the tables and the workers; returns the jobs for further checks."""
    await settle(database_url)
    rows = await job_rows(database_url)
    assert len(rows) == expected_jobs, f"{len(rows)} jobs in the table, {expected_jobs} enqueued"
    open_jobs = [r.id for r in rows if r.status not in TERMINAL]
    assert not open_jobs, f"jobs not terminal: {_some(open_jobs)}"
    if all_done:
        not_done = [(r.id, r.status, r.error_kind) for r in rows if r.status != "done"]
        assert not not_done, f"only transient faults, yet not done: {not_done[:10]}"
    no_result = [r.id for r in rows if r.status == "done" and r.results != 1]
    assert not no_result, f"done jobs without exactly one result: {_some(no_result)}"
    stray = [r.id for r in rows if r.status != "done" and r.results]
    assert not stray, f"results for jobs that are not done: {_some(stray)}"
    empty = [r.id for r in rows if r.empty_results]
    assert not empty, f"empty results: {_some(empty)}"
    over = [(r.id, r.attempts) for r in rows if r.attempts > max_attempts]
    assert not over, f"attempts beyond {max_attempts}: {over[:10]}"
    await assert_workers_sound(fleet)
    return rows


async def assert_workers_sound(fleet: Fleet) -> None:
    """Workers the scenario left alone end by themselves, cleanly; none printed a trace."""
    for worker in fleet:
        code = await wait_exit(worker.process, SETTLE_S)
        assert code is not None, f"{worker.name} is still running after the batch ended"
        if worker.killed_by is not None:
            assert code == -worker.killed_by, f"{worker.name} was killed yet exited {code}"
        else:
            assert code == 0, f"{worker.name} exited {code}:\n{worker.output()[-3000:]}"
        output = worker.output()
        assert "Traceback" not in output, f"{worker.name} printed a traceback:\n{output[-5000:]}"


async def done_jobs(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'done'")
    finally:
        await conn.close()
    return count


async def wait_done(database_url: str, at_least: int) -> None:
    """Until ``at_least`` jobs are done: the moment a scenario strikes mid-batch."""

    async def enough() -> bool:
        return await done_jobs(database_url) >= at_least

    await wait_until(enough, f"{at_least} jobs done")


async def worker_jobs(database_url: str, pid: int) -> list[int]:
    """The jobs the database says the worker process ``pid`` is running."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT j.id FROM jobs j JOIN workers w ON w.id = j.lease_owner"
            " WHERE w.pid = $1 AND j.status = 'generating' ORDER BY j.id",
            pid,
        )
    finally:
        await conn.close()
    return [r["id"] for r in rows]


async def wait_holding(database_url: str, pid: int, timeout_s: float = SETTLE_S) -> list[int]:
    """Until the worker ``pid`` holds jobs; returns them."""
    held: list[int] = []

    async def holding() -> bool:
        held[:] = await worker_jobs(database_url, pid)
        return bool(held)

    await wait_until(holding, f"worker {pid} to hold jobs", timeout_s)
    return held
