"""The status writer's row-by-row fallback, interrupted by a transient error, against real
PostgreSQL: rows it already wrote are reported written, not taken over by another worker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from bulkgen.db.pool import create_pool
from bulkgen.db.store import DoneRow, Store
from bulkgen.db.writer import StatusWriter
from bulkgen.metrics import Metrics

pytestmark = pytest.mark.postgres

# The first statement that finishes job $1 on its own fails with a serialization failure
# (SQLSTATE 40001, transient); a sequence counts the failures, because it survives the
# rollback that undoes everything else the failing statement did.
ONE_TRANSIENT_FAILURE = """
CREATE SEQUENCE test_fault_fired;
CREATE FUNCTION test_fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT count(*) FROM changed) = 1
       AND EXISTS (SELECT 1 FROM changed WHERE id = {job_id})
       AND nextval('test_fault_fired') = 1 THEN
        RAISE EXCEPTION 'injected serialization failure' USING ERRCODE = '40001';
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER test_fault AFTER UPDATE ON jobs REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION test_fault();
"""


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    pool = await create_pool(database_url, max_size=4, min_size=1, command_timeout_s=60.0)
    try:
        yield Store(pool)
    finally:
        await pool.close()


def _done(job_id: int, content: str) -> DoneRow:
    return DoneRow(job_id, content, "<p>x</p>", "T", 3, "stop", "m", False, 1, 2, None)


async def test_rows_written_before_a_transient_error_are_not_counted_fenced_out(
    store: Store,
) -> None:
    owner = uuid.uuid4()
    account = await store.account_ensure("acme")
    await store.batch_create(
        account=account,
        options={},
        template="t",
        template_version="v",
        inputs=[{"keyword": k} for k in ("first", "blank", "last")],
    )
    first, blank, last = sorted(j.id for j in await store.jobs_claim(owner, 3))
    await store.pool.execute(ONE_TRANSIENT_FAILURE.format(job_id=int(last)))
    writer = StatusWriter(store, owner, metrics=Metrics())
    writer.start()
    try:
        # The blank answer makes the database refuse the batch, so the writer falls back to
        # one statement per row: `first` is written, `blank` ends failed, and `last` meets
        # the transient error, so the flush is retried.
        results = await asyncio.wait_for(
            asyncio.gather(
                writer.write(_done(first, "# First\n\nwords")),
                writer.write(_done(blank, " \n ")),
                writer.write(_done(last, "# Last\n\nwords")),
            ),
            timeout=30,
        )
    finally:
        await writer.close()
    assert await store.pool.fetchval("SELECT is_called FROM test_fault_fired")  # it fired
    assert list(results) == [True, True, True]
    statuses = dict(await store.pool.fetch("SELECT id, status FROM jobs"))
    assert statuses == {first: "done", blank: "failed", last: "done"}
