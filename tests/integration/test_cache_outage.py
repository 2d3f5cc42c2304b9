"""Redis down, hanging or lost mid-run: every run still completes, within the timeout."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from bulkgen.cache import (
    BypassPolicy,
    CachedResult,
    RedisCache,
    RedisGuard,
    SingleFlight,
    build_cache,
)
from bulkgen.metrics import Metrics
from bulkgen.models import Usage
from bulkgen.settings import Settings

pytestmark = pytest.mark.redis

TIMEOUT_MS = 50
# "Returns within about the timeout", as a bound no busy machine comes near (100 times the
# timeout) while a hung Redis without one would never return at all.
BOUND_S = 5.0
RESULT = CachedResult("An article about tea.", Usage(10, 20), "gpt-4o", "stop")


async def produce() -> CachedResult:
    return RESULT


async def timed_runs(flight: SingleFlight, n: int, key: str = "bulkgen:gen:k") -> list[float]:
    durations = []
    for _ in range(n):
        started = time.monotonic()
        assert await flight.run(key, produce) == (RESULT, "provider")
        durations.append(time.monotonic() - started)
    return durations


async def test_dead_redis_is_bypassed(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0")
    try:
        _, flight = build_cache(Settings(cache_timeout_ms=TIMEOUT_MS), dead, metrics)
        with caplog.at_level(logging.WARNING, logger="bulkgen.cache"):
            durations = await timed_runs(flight, 30)
    finally:
        await dead.aclose()
    assert max(durations) < BOUND_S
    assert metrics.total("cache.bypassed") >= 30
    assert metrics.total("cache.miss") == 30
    warnings = [r for r in caplog.records if r.getMessage() == "cache.bypassed"]
    assert len(warnings) == 1  # rate-limited, not one line per job


@pytest.fixture
async def blackhole_url() -> AsyncIterator[str]:
    """A TCP server that accepts connections and never answers: a hung Redis."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(4096):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()
        await server.wait_closed()


async def test_hung_redis_costs_at_most_the_timeout(blackhole_url: str) -> None:
    metrics = Metrics()
    hung = aioredis.Redis.from_url(blackhole_url)
    try:
        _, flight = build_cache(Settings(cache_timeout_ms=TIMEOUT_MS), hung, metrics)
        durations = await timed_runs(flight, 10)
    finally:
        await hung.aclose()
    assert max(durations) < BOUND_S
    assert metrics.total("cache.bypassed") >= 10


class FreezableProxy:
    """Forwards TCP to Redis until frozen; frozen, it swallows bytes both ways."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.frozen = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                if not self.frozen:
                    writer.write(chunk)
                    await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        for pipe in (self._pipe(reader, up_writer), self._pipe(up_reader, writer)):
            task = asyncio.create_task(pipe)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def test_redis_lost_mid_run_then_recovers(redis_url: str) -> None:
    parts = urlsplit(redis_url)
    proxy = FreezableProxy(parts.port or 6379)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}{parts.path}")
    metrics = Metrics()
    # Through a Python proxy on a loaded 2-core machine a healthy call can pass 250 ms; the
    # healthy phases must not be mistaken for an outage, so this test allows a second.
    guard = RedisGuard(timeout_ms=1000, metrics=metrics, policy=BypassPolicy(backoff_s=0.2))
    cache = RedisCache(client, ttl_s=60, metrics=metrics, guard=guard)
    flight = SingleFlight(cache, client, lock_ttl_s=5, wait_s=1, metrics=metrics, guard=guard)
    try:
        assert await flight.run("bulkgen:gen:k", produce) == (RESULT, "provider")
        assert await flight.run("bulkgen:gen:k", produce) == (RESULT, "cache")
        proxy.frozen = True
        durations = await timed_runs(flight, 5)  # the hit is unreachable: pay, don't fail
        assert max(durations) < BOUND_S
        assert metrics.total("cache.bypassed") >= 5
        proxy.frozen = False
        await asyncio.sleep(0.3)  # past the back-off window
        assert await flight.run("bulkgen:gen:k", produce) == (RESULT, "cache")
    finally:
        await client.aclose()
        await proxy.stop()
        server.close()
        await server.wait_closed()
