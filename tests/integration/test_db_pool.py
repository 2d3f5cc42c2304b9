"""The pool against real PostgreSQL: a release costs no transaction of its own, and no
session state (LISTEN, advisory lock) reaches the next caller of a connection."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from bulkgen.db.migrate import migrate
from bulkgen.db.pool import create_pool
from bulkgen.db.store import Store
from bulkgen.errors import StorageError
from bulkgen.metrics import Metrics
from bulkgen.service import worker_config
from bulkgen.settings import Settings
from bulkgen.worker import Worker

pytestmark = pytest.mark.postgres

# Other backends of the test database, by what they last ran or by who they are.
OTHER_BACKENDS = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
)
COMMITS = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"


async def _until(observer: asyncpg.Connection, query: str, expected: int) -> None:
    while True:
        if await observer.fetchval(query) == expected:
            return
        await asyncio.sleep(0.01)


async def test_a_checkout_costs_one_transaction_not_two(database_url: str) -> None:
    """N single-statement checkouts commit N transactions (plus the pool's start-up), not
    2N: a release sends no reset query. PostgreSQL counts the commits; a backend reports
    its counts at the latest when it exits, so the pool is closed before the count is read
    and the observer waits for its backends to be gone (a liveness wait, not a timing)."""
    checkouts = 200
    observer = await asyncpg.connect(database_url)
    try:
        async with asyncio.timeout(60):  # liveness guard only
            await _until(observer, OTHER_BACKENDS, 0)
            before = await observer.fetchval(COMMITS)
            pool = await create_pool(database_url, max_size=2, min_size=1, command_timeout_s=60)
            try:
                for _ in range(checkouts):
                    async with pool.acquire() as conn:
                        assert await conn.fetchval("SELECT 1") == 1
            finally:
                await pool.close()
            await _until(observer, OTHER_BACKENDS, 0)
            after = await observer.fetchval(COMMITS)
    finally:
        await observer.close()
    # The default reset would make it at least 2 * checkouts.
    assert checkouts <= after - before <= checkouts + 20, after - before


async def test_a_failed_migration_leaves_no_advisory_lock_on_the_connection(
    database_url: str,
) -> None:
    pool = await create_pool(database_url, max_size=1, min_size=1, command_timeout_s=60)
    try:
        # Forget the first migration: applying it again fails (its tables exist) while
        # the migration lock is held.
        await pool.execute("DELETE FROM schema_migrations WHERE version = 1")
        with pytest.raises(StorageError, match="already exists"):
            await migrate(pool)
        # The pool's one connection, whichever it is now, holds no lock.
        async with pool.acquire() as conn:
            held = await conn.fetchval(
                "SELECT count(*) FROM pg_locks"
                " WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            )
        assert held == 0
    finally:
        await pool.close()


class IdlePipeline:
    """A worker with nothing to run: only its LISTEN connection matters here."""

    def allows_claim(self) -> bool:
        return True

    def auto_concurrency(self) -> int:
        return 1


async def test_the_worker_listen_never_reaches_another_caller(database_url: str) -> None:
    pool = await create_pool(database_url, max_size=2, min_size=1, command_timeout_s=60)
    observer = await asyncpg.connect(database_url)
    try:
        store = Store(pool)
        config = worker_config(Settings(poll_s=0.1, heartbeat_s=0.1), concurrency=1)
        worker = Worker(store, IdlePipeline(), config, metrics=Metrics())  # type: ignore[arg-type]
        running = asyncio.create_task(worker.run())
        try:
            async with asyncio.timeout(60):  # liveness guard only
                # A backend's last statement stays on show while it idles.
                await _until(
                    observer,
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND query LIKE 'LISTEN%' AND state = 'idle'",
                    1,
                )
        finally:
            worker.stop()
            await asyncio.wait_for(running, 60)
        # Every connection the pool can hand out, taken at once: none listens.
        async with pool.acquire() as first, pool.acquire() as second:
            for conn in (first, second):
                assert await conn.fetch("SELECT pg_listening_channels()") == []
    finally:
        await observer.close()
        await pool.close()
