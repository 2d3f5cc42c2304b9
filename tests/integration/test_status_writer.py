"""The batched status writer against real PostgreSQL: one bad row never jams the rest."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from bulkgen.db.pool import create_pool
from bulkgen.db.store import DoneRow, FailedRow, RetryRow, Store
from bulkgen.db.writer import FlushPolicy, Outcome, Refill, StatusWriter
from bulkgen.metrics import Metrics
from bulkgen.models import JobStatus

pytestmark = pytest.mark.postgres


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    pool = await create_pool(database_url, max_size=4, min_size=1, command_timeout_s=60.0)
    try:
        yield Store(pool)
    finally:
        await pool.close()


async def _claimed(store: Store, owner: uuid.UUID, n: int) -> list[int]:
    account = await store.account_ensure("acme")
    await store.batch_create(
        account=account,
        options={},
        template="t",
        template_version="v",
        inputs=[{"keyword": f"k{i}"} for i in range(n)],
    )
    return [j.id for j in await store.jobs_claim(owner, n)]


def _done(job_id: int, content: str) -> DoneRow:
    return DoneRow(job_id, content, "<p>x</p>", "T", 3, "stop", "m", False, 1, 2, None)


async def test_unstorable_text_is_cleaned_and_refused_rows_fail_alone(store: Store) -> None:
    owner = uuid.uuid4()
    nul, blank, good, retry, failed = await _claimed(store, owner, 5)
    metrics = Metrics()
    writer = StatusWriter(store, owner, metrics=metrics)
    writer.start()
    try:
        results = await asyncio.wait_for(
            asyncio.gather(
                writer.write(_done(nul, "# T\n\nwords \x00 and a lone \ud800 surrogate")),
                writer.write(_done(blank, " \n\t ")),  # the database refuses this one
                writer.write(_done(good, "# Good\n\nplain words")),
                writer.write(RetryRow(retry, 0.0, 1, 0, False, "server_error", "bad \x00 byte")),
                writer.write(FailedRow(failed, JobStatus.FAILED, 1, "rejected", "400 \ud800")),
            ),
            timeout=10,
        )
    finally:
        await writer.close()
    assert list(results) == [True, True, True, True, True]
    rows = {r["id"]: r for r in await store.pool.fetch("SELECT * FROM jobs")}
    assert rows[nul]["status"] == "done" and rows[good]["status"] == "done"
    assert (rows[blank]["status"], rows[blank]["error_kind"]) == ("failed", "unstorable")
    assert rows[retry]["status"] == "queued" and "\x00" not in rows[retry]["error_message"]
    assert rows[failed]["status"] == "failed"
    content = await store.pool.fetchval("SELECT content FROM results WHERE job_id = $1", nul)
    assert "\x00" not in content and "words" in content


async def _count_job_statements(store: Store) -> None:
    """Count, in the database itself, every statement that updates ``jobs`` from now on.

    A statement-level trigger fires once per statement however many rows it touches (none
    included), so the count is what PostgreSQL executed, not what the writer says it did.
    """
    await store.pool.execute(
        """
        CREATE TABLE test_job_statements (n int NOT NULL);
        CREATE FUNCTION test_job_statement() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO test_job_statements VALUES (1); RETURN NULL; END $$;
        CREATE TRIGGER test_job_statement AFTER UPDATE ON jobs
            FOR EACH STATEMENT EXECUTE FUNCTION test_job_statement();
        """
    )


async def test_outcomes_finishing_together_share_one_statement_per_kind(store: Store) -> None:
    owner = uuid.uuid4()
    n = 90  # the most one account may hold at once
    ids = await _claimed(store, owner, n)
    await _count_job_statements(store)
    metrics = Metrics()
    writer = StatusWriter(store, owner, policy=FlushPolicy(max_rows=1000), metrics=metrics)
    outcomes: list[Outcome] = []
    for i, job_id in enumerate(ids):
        if i % 3 == 0:
            outcomes.append(_done(job_id, f"# T{i}\n\nwords"))
        elif i % 3 == 1:
            outcomes.append(RetryRow(job_id, 0.0, 1, 0, False, "server_error", "503"))
        else:
            outcomes.append(FailedRow(job_id, JobStatus.FAILED, 1, "rejected", "400"))
    writer.start()
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(writer.write(o) for o in outcomes)), timeout=30
        )
    finally:
        await writer.close()
    assert results == [True] * n
    statuses = await store.pool.fetch("SELECT status, count(*) AS n FROM jobs GROUP BY status")
    assert {r["status"]: r["n"] for r in statuses} == {"done": 30, "queued": 30, "failed": 30}
    statements = await store.pool.fetchval("SELECT count(*) FROM test_job_statements")
    # Handed over in one go, the outcomes are written one statement per kind per flush: 3
    # when one flush takes them all, a few more if a flush started before they all arrived.
    # Written one by one they would cost 90.
    assert 3 <= statements <= 9, statements
    assert metrics.total("db.status_statements") == statements
    assert metrics.total("db.status_rows") == n


async def test_an_idle_writer_writes_each_outcome_at_once(store: Store) -> None:
    """No timer stands between an outcome and its write: awaited one after another, each
    outcome is written by a statement of its own, and each await returns (a writer that
    waited for a timer or for company would hang here until the liveness guard)."""
    await _each_written_alone(store, StatusWriter, 20)


async def test_with_nothing_else_running_an_outcome_is_written_at_once(store: Store) -> None:
    """The wait for company never applies when there is no company to come: with a quiet
    interval of an hour, each outcome of a worker running one job at a time is still written
    (a writer that waited would hang here until the liveness guard)."""
    patient = FlushPolicy(quiet_s=3600.0, max_wait_s=3600.0)

    def writer(store: Store, owner: uuid.UUID, *, metrics: Metrics) -> StatusWriter:
        return StatusWriter(store, owner, policy=patient, running=lambda: 0, metrics=metrics)

    await _each_written_alone(store, writer, 5)


async def _each_written_alone(store: Store, make: Callable[..., StatusWriter], jobs: int) -> None:
    """``jobs`` outcomes written one after another by ``make(store, owner, metrics=...)``:
    each await returns, each by a statement of its own."""
    owner = uuid.uuid4()
    ids = await _claimed(store, owner, jobs)
    metrics = Metrics()
    writer = make(store, owner, metrics=metrics)
    writer.start()
    try:
        async with asyncio.timeout(60):  # liveness guard only
            for i, job_id in enumerate(ids):
                assert await writer.write(_done(job_id, f"# T{i}\n\nwords"))
                assert metrics.total("db.status_statements") == i + 1
    finally:
        await writer.close()
    done = await store.pool.fetchval("SELECT count(*) FROM jobs WHERE status = 'done'")
    assert done == jobs


async def _until_a_statement_waits_on_a_lock(store: Store) -> None:
    while True:
        waiting = await store.pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if waiting:
            return
        await asyncio.sleep(0.01)


async def test_outcomes_arriving_during_a_flush_are_written_together_by_the_next(
    store: Store,
) -> None:
    """Group commit: while one flush waits on the database, every outcome that arrives is
    taken by the next flush in one statement."""
    owner = uuid.uuid4()
    first, *rest = await _claimed(store, owner, 41)
    await _count_job_statements(store)
    metrics = Metrics()
    writer = StatusWriter(store, owner, metrics=metrics)
    writer.start()
    try:
        async with asyncio.timeout(60), store.pool.acquire() as locker:  # liveness guard only
            # Hold the first job's row so the flush that writes it waits on the lock.
            blocker = locker.transaction()
            await blocker.start()
            await locker.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", first)
            first_written = asyncio.create_task(writer.write(_done(first, "# First\n\nwords")))
            await _until_a_statement_waits_on_a_lock(store)
            later = [
                asyncio.create_task(writer.write(_done(job_id, f"# T{i}\n\nwords")))
                for i, job_id in enumerate(rest)
            ]
            await asyncio.sleep(0)  # every write above has queued its outcome
            await blocker.rollback()
            results = await asyncio.gather(first_written, *later)
    finally:
        await writer.close()
    assert results == [True] * 41
    assert await store.pool.fetchval("SELECT count(*) FROM jobs WHERE status = 'done'") == 41
    # One statement for the flush that waited, one for the forty outcomes that piled up.
    assert await store.pool.fetchval("SELECT count(*) FROM test_job_statements") == 2
    assert metrics.total("db.status_statements") == 2
    assert metrics.total("db.status_rows") == 41


async def test_progress_bars_end_on_the_final_counts(store: Store) -> None:
    import io

    from rich.console import Console

    from bulkgen.progress import batch_progress

    owner = uuid.uuid4()
    ids = await _claimed(store, owner, 3)
    batch_id = await store.pool.fetchval("SELECT batch_id FROM jobs LIMIT 1")
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=False)
    async with batch_progress(store, batch_id, 3, console, interval_s=0.01):
        await store.jobs_finish_done(owner, [_done(i, "# T\n\nwords") for i in ids])
    lines = out.getvalue().splitlines()
    assert any(line.startswith("done") and "3/3" in line for line in lines)
    assert any(line.startswith("running") and "0/3" in line for line in lines)


async def test_a_lingering_writer_waits_for_company_but_never_past_a_full_statement(
    store: Store,
) -> None:
    """With a linger far longer than the test may last, outcomes are still written: a full
    statement's worth ends the wait, and so does close()."""
    owner = uuid.uuid4()
    ids = await _claimed(store, owner, 6)
    metrics = Metrics()
    writer = StatusWriter(
        store, owner, policy=FlushPolicy(max_rows=5, linger_s=3600.0), metrics=metrics
    )
    writer.start()
    try:
        async with asyncio.timeout(60):  # liveness guard only
            full = await asyncio.gather(
                *(
                    writer.write(_done(job_id, f"# T{i}\n\nwords"))
                    for i, job_id in enumerate(ids[:5])
                )
            )
            assert full == [True] * 5
            assert metrics.total("db.status_statements") == 1  # the five waited for each other
            last = asyncio.create_task(writer.write(_done(ids[5], "# Last\n\nwords")))
            await asyncio.sleep(0)  # queued, and lingering
            await writer.close()
            assert await last
    finally:
        await writer.close()
    assert metrics.total("db.status_statements") == 2
    assert await store.pool.fetchval("SELECT count(*) FROM jobs WHERE status = 'done'") == 6


async def test_outcomes_wait_for_the_jobs_still_running_then_go_in_one_statement(
    store: Store,
) -> None:
    """Told how many jobs still run, the writer holds the outcomes of those that reported
    until the last one has, however slowly they come (here with a quiet interval and a cap
    far longer than the test may last), and writes them all in one statement."""
    owner = uuid.uuid4()
    ids = await _claimed(store, owner, 12)
    await _count_job_statements(store)
    running = len(ids)
    metrics = Metrics()
    patient = FlushPolicy(quiet_s=3600.0, max_wait_s=3600.0)
    writer = StatusWriter(store, owner, policy=patient, running=lambda: running, metrics=metrics)
    writer.start()
    try:
        async with asyncio.timeout(60):  # liveness guard only
            written = []
            for i, job_id in enumerate(ids):
                running -= 1
                written.append(asyncio.create_task(writer.write(_done(job_id, f"# T{i}\n\nw"))))
                await asyncio.sleep(0.01)  # time enough for a writer that would not wait
                if running:
                    assert metrics.total("db.status_statements") == 0
            results = await asyncio.gather(*written)
    finally:
        await writer.close()
    assert results == [True] * len(ids)
    assert await store.pool.fetchval("SELECT count(*) FROM test_job_statements") == 1
    assert metrics.total("db.status_statements") == 1


async def _refilled(
    store: Store, owner: uuid.UUID, outcomes: list[Outcome]
) -> tuple[list[bool], list[int], list[int]]:
    """Write ``outcomes`` through a writer that claims as many jobs as each flush frees:
    what each write returned, the ``freed`` counts the writer asked about, and the ids of
    the jobs it handed over."""
    asked: list[int] = []
    handed: list[int] = []

    def size(freed: int) -> int:
        asked.append(freed)
        return freed

    refill = Refill(size, lambda jobs: handed.extend(j.id for j in jobs), asyncio.Lock())
    writer = StatusWriter(store, owner, metrics=Metrics(), refill=refill)
    writer.start()
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(writer.write(o) for o in outcomes)), timeout=10
        )
    finally:
        await writer.close()
    return list(results), asked, handed


async def test_a_flush_claims_the_jobs_that_fill_the_slots_it_frees(store: Store) -> None:
    owner = uuid.uuid4()
    first, second = await _claimed(store, owner, 2)
    await store.batch_create(
        account=await store.account_ensure("acme"), options={}, template="t",
        template_version="v", inputs=[{"keyword": f"more {i}"} for i in range(5)],
    )  # fmt: skip
    results, asked, handed = await _refilled(
        store, owner, [_done(first, "# A\n\nwords"), _done(second, "# B\n\nwords")]
    )
    assert results == [True, True]
    assert sum(asked) == 2 and len(handed) == 2  # one claimed for each slot freed
    owned = await store.jobs_of_owner(owner)
    assert owned == set(handed) and not owned & {first, second}
    assert await store.pool.fetchval("SELECT count(*) FROM jobs WHERE status = 'queued'") == 3


async def test_a_refused_row_is_written_alone_and_its_flush_claims_nothing(store: Store) -> None:
    owner = uuid.uuid4()
    good, blank = await _claimed(store, owner, 2)
    await store.batch_create(
        account=await store.account_ensure("acme"), options={}, template="t",
        template_version="v", inputs=[{"keyword": "waiting"}],
    )  # fmt: skip
    results, asked, handed = await _refilled(
        store, owner, [_done(good, "# Good\n\nwords"), _done(blank, " \n\t ")]
    )
    assert results == [True, True] and asked and handed == []
    rows = {r["id"]: r for r in await store.pool.fetch("SELECT * FROM jobs")}
    assert rows[good]["status"] == "done"
    assert (rows[blank]["status"], rows[blank]["error_kind"]) == ("failed", "unstorable")
    assert await store.pool.fetchval("SELECT count(*) FROM jobs WHERE status = 'queued'") == 1
