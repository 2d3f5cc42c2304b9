"""Job statuses: the schema allows exactly ``JobStatus``, and older databases upgrade to it."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from bulkgen.db import migrate as migrate_module
from bulkgen.db.pool import create_pool
from bulkgen.db.store import DoneRow, Store
from bulkgen.models import JobStatus

pytestmark = pytest.mark.postgres


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    pool = await create_pool(database_url, max_size=3, min_size=1, command_timeout_s=60.0)
    try:
        yield Store(pool)
    finally:
        await pool.close()


@pytest.fixture
async def blank_database_url(pg_admin_url: str) -> AsyncIterator[str]:
    """An empty database (no migration applied), dropped after the test."""
    name = f"bulkgen_blank_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield urlunsplit(urlsplit(pg_admin_url)._replace(path="/" + name))
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _batch(conn: asyncpg.Connection | asyncpg.Pool) -> uuid.UUID:
    account_id = await conn.fetchval("INSERT INTO accounts (name) VALUES ('acme') RETURNING id")
    batch_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO batches (id, account_id, options, template, template_version, total)"
        " VALUES ($1, $2, '{}', 't', 'v', 1)",
        batch_id,
        account_id,
    )
    return batch_id


_INSERT_JOB = """
INSERT INTO jobs (batch_id, account_id, input, status, lease_owner)
SELECT $1, account_id, '{"keyword": "k"}', $2, $3 FROM batches WHERE id = $1
RETURNING id
"""


async def test_the_schema_allows_exactly_the_job_statuses(store: Store) -> None:
    definition = await store.pool.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = 'jobs'::regclass AND conname = 'jobs_status_known'"
    )
    assert set(re.findall(r"'([a-z_]+)'::text", definition)) == {s.value for s in JobStatus}

    batch_id = await _batch(store.pool)
    for status in JobStatus:
        owner = uuid.uuid4() if status is JobStatus.GENERATING else None
        async with store.pool.acquire() as conn, conn.transaction():
            job_id = await conn.fetchval(_INSERT_JOB, batch_id, status, owner)
            if status is JobStatus.DONE:  # the deferred trigger wants its result by commit
                await conn.execute(
                    "INSERT INTO results (job_id, content, html, title, word_count,"
                    " finish_reason, model) VALUES ($1, 'text', '', 't', 1, 'stop', 'm')",
                    job_id,
                )
    stored = await store.pool.fetch("SELECT status FROM jobs ORDER BY id")
    assert [r["status"] for r in stored] == [s.value for s in JobStatus]


async def test_formatting_is_refused(store: Store) -> None:
    batch_id = await _batch(store.pool)
    with pytest.raises(asyncpg.CheckViolationError, match="jobs_status_known"):
        await store.pool.fetchval(_INSERT_JOB, batch_id, "formatting", None)
    with pytest.raises(asyncpg.CheckViolationError):  # with a lease, both CHECKs refuse it
        await store.pool.fetchval(_INSERT_JOB, batch_id, "formatting", uuid.uuid4())
    queued = await store.pool.fetchval(_INSERT_JOB, batch_id, JobStatus.QUEUED, None)
    with pytest.raises(asyncpg.CheckViolationError):
        await store.pool.execute(
            "UPDATE jobs SET status = 'formatting', lease_owner = $2 WHERE id = $1",
            queued,
            uuid.uuid4(),
        )


async def test_a_lease_owner_is_set_exactly_while_generating(store: Store) -> None:
    batch_id = await _batch(store.pool)
    with pytest.raises(asyncpg.CheckViolationError, match="jobs_leased_iff_generating"):
        await store.pool.fetchval(_INSERT_JOB, batch_id, JobStatus.GENERATING, None)
    with pytest.raises(asyncpg.CheckViolationError, match="jobs_leased_iff_generating"):
        await store.pool.fetchval(_INSERT_JOB, batch_id, JobStatus.QUEUED, uuid.uuid4())


async def test_a_database_with_formatting_jobs_upgrades(
    blank_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database migrated before ``formatting`` was dropped, holding a job in that status,
    upgrades: the job becomes ``generating`` under the same owner, who can still finish it."""
    every = migrate_module.available_migrations()
    upgrade = [m for m in every if m[1] == "0004_drop_formatting_status.sql"]
    assert upgrade, "the migration that drops 'formatting' is packaged"
    older = [m for m in every if m[0] < upgrade[0][0]]
    pool = await create_pool(blank_database_url, max_size=2, min_size=1, command_timeout_s=60.0)
    try:
        monkeypatch.setattr(migrate_module, "available_migrations", lambda: older)
        assert await migrate_module.migrate(pool) == [name for _, name, _ in older]
        batch_id = await _batch(pool)
        owner = uuid.uuid4()
        formatting = await pool.fetchval(_INSERT_JOB, batch_id, "formatting", owner)
        queued = await pool.fetchval(_INSERT_JOB, batch_id, "queued", None)

        monkeypatch.setattr(migrate_module, "available_migrations", lambda: every)
        assert await migrate_module.migrate(pool) == [name for _, name, _ in every[len(older) :]]

        rows = await pool.fetch("SELECT id, status, lease_owner FROM jobs ORDER BY id")
        assert [(r["id"], r["status"], r["lease_owner"]) for r in rows] == [
            (formatting, "generating", owner),
            (queued, "queued", None),
        ]
        done = DoneRow(
            formatting, "# T\n\nbody", "<p>b</p>", "T", 2, "stop", "m", False, 1, 2, None
        )
        assert await Store(pool).jobs_finish_done(owner, [done]) == {formatting}
        with pytest.raises(asyncpg.CheckViolationError):
            await pool.execute(
                "UPDATE jobs SET status = 'formatting', lease_owner = $2 WHERE id = $1",
                queued,
                owner,
            )
    finally:
        await pool.close()
