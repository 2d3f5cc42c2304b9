"""Shared fixtures. Services are real: PostgreSQL and Redis, never mocks.

With ``CI=true`` a test that needs a missing service fails; elsewhere it fails too unless
``BULKGEN_ALLOW_SKIP=1`` is set, so a green run always means the services were there.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

REDIS_URL = os.environ.get("BULKGEN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def service_missing(what: str, exc: BaseException) -> None:
    """Fail (CI, default) or skip (only with BULKGEN_ALLOW_SKIP=1) when a service is down."""
    message = f"{what} is not reachable: {exc!r}"
    if os.environ.get("BULKGEN_ALLOW_SKIP") == "1" and os.environ.get("CI") != "true":
        pytest.skip(message)
    pytest.fail(message)


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A real Redis database, flushed before and after the test."""
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        service_missing("Redis", exc)
    await client.flushdb()
    try:
        yield REDIS_URL
    finally:
        await client.flushdb()
        await client.aclose()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


# ---------------------------------------------------------------- PostgreSQL

_TEMPLATE = f"bulkgen_tpl_{os.getpid()}"
_counter = iter(range(1_000_000))


def _admin_url() -> str:
    """BULKGEN_TEST_DATABASE_URL when set (CI), else the embedded server, started once."""
    url = os.environ.get("BULKGEN_TEST_DATABASE_URL")
    if url:
        return url
    from pathlib import Path

    from bulkgen.db.embedded import start_embedded

    folder = Path(os.environ.get("BULKGEN_TEST_PGDATA", "/tmp/bulkgen-test-pgdata"))
    return asyncio.run(start_embedded(folder))


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


async def _admin_execute(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def _build_template(url: str) -> None:
    from bulkgen.db.migrate import migrate
    from bulkgen.db.pool import create_pool

    await _admin_execute(
        url, f'DROP DATABASE IF EXISTS "{_TEMPLATE}"', f'CREATE DATABASE "{_TEMPLATE}"'
    )
    pool = await create_pool(
        _with_database(url, _TEMPLATE), max_size=2, min_size=1, command_timeout_s=60.0
    )
    try:
        await migrate(pool)
    finally:
        await pool.close()


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A PostgreSQL server with a migrated template database for this test session."""
    try:
        url = _admin_url()
        asyncio.run(_build_template(url))
    except Exception as exc:
        service_missing("PostgreSQL", exc)
    yield url
    asyncio.run(_admin_execute(url, f'DROP DATABASE IF EXISTS "{_TEMPLATE}" WITH (FORCE)'))


def _database_copy(pg_admin_url: str) -> Iterator[str]:
    name = f"bulkgen_t_{os.getpid()}_{next(_counter)}"
    asyncio.run(_admin_execute(pg_admin_url, f'CREATE DATABASE "{name}" TEMPLATE "{_TEMPLATE}"'))
    yield _with_database(pg_admin_url, name)
    asyncio.run(_admin_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def database_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, migrated database of its own for one test (copied from the template)."""
    yield from _database_copy(pg_admin_url)


@pytest.fixture(scope="module")
def module_database_url(pg_admin_url: str) -> Iterator[str]:
    """One migrated database shared by a module's tests: only for tests that write nothing."""
    yield from _database_copy(pg_admin_url)


# ---------------------------------------------------------------- markers

# A test that reaches a service through one of these fixtures must carry that service's
# marker, so ``-m "not redis"`` and friends select what they say.
SERVICE_FIXTURES = {
    "redis": frozenset({"redis_url", "redis_client"}),
    "postgres": frozenset({"database_url", "module_database_url", "pg_admin_url"}),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse to run a suite in which a service test lacks its marker: a missing marker
    would otherwise only show the day someone deselects by it."""
    missing = [
        f"{item.nodeid} uses {sorted(uses)} without pytest.mark.{marker}"
        for item in items
        for marker, fixtures in SERVICE_FIXTURES.items()
        if (uses := fixtures & set(getattr(item, "fixturenames", ())))
        and item.get_closest_marker(marker) is None
    ]
    if missing:
        raise pytest.UsageError("service tests without their marker:\n" + "\n".join(missing))
