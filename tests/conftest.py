"""Shared fixtures. Services are real: PostgreSQL and Redis, never mocks.

With ``CI=true`` a test that needs a missing service fails; elsewhere it fails too unless
``BULKGEN_ALLOW_SKIP=1`` is set, so a green run always means the services were there.

Redis comes in two modes. ``single`` is the server of ``BULKGEN_TEST_REDIS_URL``; a test
marked ``redis_cluster`` runs a second time in ``cluster`` mode, against a three-master
Redis Cluster the session starts on loopback ports (``tests/redis_cluster.py``) and stops
at its end. ``redis_url``, ``redis_client`` and ``redis_connect`` follow the mode.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from bulkgen.redis_client import RedisClient
from tests.redis_cluster import RedisConnect, connect, start_cluster

REDIS_URL = os.environ.get("BULKGEN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def service_missing(what: str, exc: BaseException) -> None:
    """Fail (CI, default) or skip (only with BULKGEN_ALLOW_SKIP=1) when a service is down."""
    message = f"{what} is not reachable: {exc!r}"
    if os.environ.get("BULKGEN_ALLOW_SKIP") == "1" and os.environ.get("CI") != "true":
        pytest.skip(message)
    pytest.fail(message)


REDIS_MODES = ("single", "cluster")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each ``redis_cluster`` test once per Redis mode."""
    if "redis_mode" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "redis_cluster"
    ):
        metafunc.parametrize("redis_mode", REDIS_MODES, indirect=True)


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A three-master Redis Cluster of this session's own: any node's URL."""
    try:
        cluster = start_cluster()
    except Exception as exc:
        service_missing("Redis Cluster (redis-server and redis-cli)", exc)
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture
def redis_mode(request: pytest.FixtureRequest) -> str:
    """``single`` unless the test is marked ``redis_cluster`` (then both, in turn)."""
    return str(getattr(request, "param", "single"))


@pytest.fixture
def redis_target(redis_mode: str, request: pytest.FixtureRequest) -> tuple[str, bool]:
    """(URL, whether it is a cluster) of this test's Redis."""
    if redis_mode == "cluster":
        return str(request.getfixturevalue("redis_cluster_url")), True
    return REDIS_URL, False


@pytest.fixture
def redis_connect(redis_target: tuple[str, bool]) -> RedisConnect:
    """Opens another client on this test's Redis (the caller closes it), as another
    worker process would have."""
    url, cluster = redis_target
    return lambda: connect(url, cluster=cluster)


@pytest.fixture
async def redis_url(
    redis_target: tuple[str, bool], redis_connect: RedisConnect
) -> AsyncIterator[str]:
    """A real Redis database, flushed before and after the test. On the cluster,
    ``FLUSHDB`` goes to every master (the cluster client sends it to each): the cluster is
    this session's own, and holds only database 0."""
    client = await redis_connect()
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        service_missing("Redis", exc)
    await client.flushdb()
    try:
        yield redis_target[0]
    finally:
        await client.flushdb()
        await client.aclose()


@pytest.fixture
async def redis_client(redis_url: str, redis_connect: RedisConnect) -> AsyncIterator[RedisClient]:
    client = await redis_connect()
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
    "redis": frozenset(
        {"redis_url", "redis_client", "redis_connect", "redis_target", "redis_cluster_url"}
    ),
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
