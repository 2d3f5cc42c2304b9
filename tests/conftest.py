"""Shared fixtures. Services are real: PostgreSQL and Redis, never mocks.

With ``CI=true`` a test that needs a missing service fails; elsewhere it fails too unless
``BULKGEN_ALLOW_SKIP=1`` is set, so a green run always means the services were there.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

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
