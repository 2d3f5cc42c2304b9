"""The ``done``-needs-a-result trigger: it refuses at commit, and it never reads the whole
``results`` table, however stale that table's statistics are."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from bulkgen.db.pool import create_pool
from bulkgen.db.store import DoneRow, Store

pytestmark = pytest.mark.postgres

JOBS = 2_000
FLUSH = 50  # outcomes per finish statement, as the status writer groups them


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """One connection only: its plans are the ones the trigger caches, and its pending
    statistics are the ones flushed before reading them."""
    pool = await create_pool(database_url, max_size=1, min_size=1, command_timeout_s=60.0)
    try:
        yield Store(pool)
    finally:
        await pool.close()


async def _batch(store: Store, n: int) -> uuid.UUID:
    account_id = await store.account_ensure("acme")
    return await store.batch_create(
        account=account_id,
        options={"model": "gpt-4o"},
        template="t",
        template_version="v1",
        inputs=[{"keyword": f"k {i}"} for i in range(n)],
    )


def _done(job_id: int) -> DoneRow:
    return DoneRow(job_id, "# T\n\nsome words", "<p>x</p>", "T", 3, "stop", "m", False, 1, 2, None)


async def _results_scans(pool: asyncpg.Pool) -> tuple[int, int]:
    """(sequential, index) scans of ``results`` so far, this connection's included.

    A backend keeps its counters to itself until it flushes them; forcing the flush makes
    it happen at the end of that very statement, before the next one reads them."""
    await pool.execute("SELECT pg_stat_force_next_flush()")
    await pool.execute("SELECT pg_stat_clear_snapshot()")
    row = await pool.fetchrow(
        "SELECT seq_scan, coalesce(idx_scan, 0) AS idx_scan FROM pg_stat_user_tables"
        " WHERE relname = 'results'"
    )
    assert row is not None
    return row["seq_scan"], row["idx_scan"]


async def test_done_is_refused_at_commit_without_a_result(store: Store) -> None:
    await _batch(store, 2)
    await store.pool.execute("ANALYZE results")  # the statistics of an empty table
    first, second = [r["id"] for r in await store.pool.fetch("SELECT id FROM jobs ORDER BY id")]
    with pytest.raises(asyncpg.CheckViolationError, match="without a non-empty result"):
        async with store.pool.acquire() as conn, conn.transaction():
            await conn.execute("UPDATE jobs SET status = 'done' WHERE id = $1", first)
    # Deferred to commit: the status may come before its result in the same transaction.
    async with store.pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE jobs SET status = 'done' WHERE id = $1", second)
        await conn.execute(
            "INSERT INTO results (job_id, content, html, title, word_count, finish_reason, model)"
            " VALUES ($1, 'words', '<p>words</p>', 't', 1, 'stop', 'm')",
            second,
        )
    statuses = await store.pool.fetch("SELECT id, status FROM jobs ORDER BY id")
    assert [(r["id"], r["status"]) for r in statuses] == [(first, "queued"), (second, "done")]


async def test_finishing_never_scans_results_after_an_empty_analyze(store: Store) -> None:
    """A fresh or just-pruned database analysed while ``results`` was empty: a plan cached
    then would read every result for every finished job, for as long as the connection
    lives. The trigger must look its job's result up by the primary key every time."""
    await _batch(store, JOBS)
    await store.pool.execute("ANALYZE results")
    reltuples = "SELECT reltuples FROM pg_class WHERE relname = 'results'"
    assert await store.pool.fetchval(reltuples) == 0
    worker = uuid.uuid4()
    seq_before, idx_before = await _results_scans(store.pool)

    finished: set[int] = set()
    while claimed := await store.jobs_claim(worker, FLUSH):
        finished |= await store.jobs_finish_done(worker, [_done(job.id) for job in claimed])

    seq_after, idx_after = await _results_scans(store.pool)
    assert len(finished) == JOBS
    assert await store.pool.fetchval("SELECT count(*) FROM results") == JOBS
    assert seq_after - seq_before == 0, "the trigger read results sequentially"
    assert idx_after - idx_before >= JOBS  # one primary-key lookup per finished job
