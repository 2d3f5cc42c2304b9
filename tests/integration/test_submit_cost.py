"""What one submit costs the database, counted by PostgreSQL itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from bulkgen.db.pool import create_pool
from bulkgen.db.store import Store
from bulkgen.intake import JobInput
from bulkgen.metrics import Metrics
from bulkgen.service import Services, open_services
from bulkgen.settings import Settings

pytestmark = pytest.mark.postgres


@pytest.fixture
async def admin(pg_admin_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_admin_url)
    try:
        yield conn
    finally:
        await conn.close()


async def _open(database_url: str) -> Services:
    settings = Settings(
        database_url=database_url,
        redis_url=None,
        openai_api_key="sk-test",
        openai_base_url="http://127.0.0.1:9/v1",  # never called: nothing here generates
    )
    return await open_services(settings, metrics=Metrics())


async def _transactions(admin: asyncpg.Connection, database: str) -> int:
    """Transactions the database has ended, once every connection to it is gone: a backend
    hands its counts over when it exits, so only then do they cover all it did."""
    async with asyncio.timeout(60):  # liveness guard only
        while True:  # until the last connection has gone
            connected = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", database
            )
            if not connected:
                break
            await asyncio.sleep(0.02)
    await admin.execute("SELECT pg_stat_clear_snapshot()")
    ended: int = await admin.fetchval(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1", database
    )
    return ended


async def _count_account_writes(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            """
            CREATE TABLE test_account_writes (op text NOT NULL);
            CREATE FUNCTION test_account_write() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO test_account_writes VALUES (TG_OP); RETURN NULL; END $$;
            CREATE TRIGGER test_account_write AFTER INSERT OR UPDATE OR DELETE ON accounts
                FOR EACH ROW EXECUTE FUNCTION test_account_write();
            """
        )
    finally:
        await conn.close()


async def test_a_one_row_submit_to_an_existing_account_is_one_transaction_and_no_account_write(
    admin: asyncpg.Connection,
    database_url: str,
) -> None:
    database = database_url.rsplit("/", 1)[1]
    svc = await _open(database_url)
    try:
        await svc.store.account_ensure("acme")
    finally:
        await svc.aclose()
    await _count_account_writes(database_url)
    before_open = await _transactions(admin, database)
    await (await _open(database_url)).aclose()  # what opening and closing cost alone
    before_submit = await _transactions(admin, database)
    svc = await _open(database_url)
    try:
        batch_id = await svc.submit(
            [JobInput("one keyword", {}, {})], svc.batch_options(), account="acme"
        )
        assert await svc.store.jobs_pending(batch_id) == 1
    finally:
        await svc.aclose()
    after = await _transactions(admin, database)
    # jobs_pending above is one transaction of its own.
    submit = (after - before_submit) - (before_submit - before_open) - 1
    assert submit == 1
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM test_account_writes") == 0
        assert await conn.fetchval("SELECT count(*) FROM accounts") == 1
    finally:
        await conn.close()


async def test_a_new_account_is_created_once_however_many_submits_race_for_it(
    database_url: str,
) -> None:
    pool = await create_pool(database_url, max_size=8, min_size=8, command_timeout_s=60.0)
    store = Store(pool)
    created: list[int] = []
    try:
        for round_ in range(5):
            name = f"fresh-{round_}"
            batches = await asyncio.gather(
                *(
                    store.batch_create(
                        account=name,
                        options={},
                        template="t",
                        template_version="v",
                        inputs=[{"keyword": f"k{i}"}],
                    )
                    for i in range(8)
                )
            )
            assert len(set(batches)) == 8
            ids = await pool.fetch("SELECT id FROM accounts WHERE name = $1", name)
            assert len(ids) == 1
            owners = await pool.fetch(
                "SELECT DISTINCT account_id FROM batches WHERE id = ANY($1::uuid[])", batches
            )
            assert [r["account_id"] for r in owners] == [ids[0]["id"]]
            created.append(ids[0]["id"])
        assert [await store.account_ensure(f"fresh-{i}") for i in range(5)] == created
    finally:
        await pool.close()
