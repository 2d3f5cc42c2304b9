"""The Redis backend in one process: sharing, learned limits, and degrading when Redis dies."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket

import pytest
import redis.asyncio as aioredis

from bulkgen.errors import RateLimited
from bulkgen.limits import LimitKey, build_governor
from bulkgen.limits.keys import PREFIX, redis_keys
from bulkgen.metrics import Metrics
from bulkgen.models import Completion, Usage
from bulkgen.redis_client import RedisClient
from bulkgen.settings import Settings
from tests.redis_cluster import all_keys

pytestmark = [pytest.mark.redis, pytest.mark.redis_cluster]

KEY = LimitKey("http://127.0.0.1:9/v1", "redis", "gpt-redis")


def completion(headers: dict[str, str] | None = None) -> Completion:
    return Completion("x", Usage(5, 5), "stop", KEY.model, headers=headers or {}, latency_s=0.5)


async def test_learned_limits_are_shared_and_keys_are_prefixed(
    redis_client: RedisClient,
) -> None:
    one = await build_governor(Settings(), redis_client, metrics=Metrics())
    two = await build_governor(Settings(), redis_client, metrics=Metrics())
    async with one.slot(KEY, 10) as slot:
        await slot.record(completion({"x-ratelimit-limit-requests": "900"}))
    assert two.policy(KEY).limit_rpm() is None
    async with two.slot(KEY, 10) as slot:
        await slot.record(completion())
    assert two.policy(KEY).limit_rpm() == 900
    keys = await all_keys(redis_client, "*")
    assert keys and all(k.startswith(PREFIX) for k in keys)
    learned = [k for k in keys if k.endswith(":learned")]
    assert learned and 0 < await redis_client.pttl(learned[0]) <= 3_600_000


async def test_pause_is_seen_by_another_governor(redis_client: RedisClient) -> None:
    one = await build_governor(Settings(rpm=6_000), redis_client, metrics=Metrics())
    two = await build_governor(Settings(rpm=6_000), redis_client, metrics=Metrics())
    with pytest.raises(RateLimited):
        async with one.slot(KEY, 10):
            raise RateLimited("429", retry_after_s=1.0)
    pause_until_ms = float(await redis_client.get(redis_keys(KEY).pause_until) or 0)
    async with two.slot(KEY, 10):
        seconds, micros = await redis_client.time()
    # Judged on Redis's clock, which set the pause: admitted only once it was over.
    assert seconds * 1000 + micros / 1000 >= pause_until_ms > 0
    assert two.policy(KEY).factor < 1.0  # the fleet slows down, not only the one that hit it


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _start_private_redis(port: int) -> asyncio.subprocess.Process:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is required for this test"
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = await asyncio.create_subprocess_exec(binary, *args, stdout=asyncio.subprocess.DEVNULL)
    client = aioredis.Redis(port=port)
    try:
        for _ in range(100):
            try:
                await client.ping()
                return proc
            except (OSError, aioredis.ConnectionError):
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    proc.kill()
    await proc.wait()
    raise AssertionError("private redis-server did not start")


async def test_redis_going_away_degrades_to_local(caplog: pytest.LogCaptureFixture) -> None:
    """A private real redis-server, killed mid-run: no exception reaches the caller."""
    port = _free_port()
    server = await _start_private_redis(port)
    client = aioredis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
    metrics = Metrics()
    gov = await build_governor(Settings(rpm=60_000), client, metrics=metrics)
    try:
        for _ in range(5):
            async with gov.slot(KEY, 10) as slot:
                await slot.record(completion())
        assert metrics.total("limiter.redis_fallback") == 0
        server.kill()
        await server.wait()
        with caplog.at_level(logging.WARNING, logger="bulkgen.limits.redis_backend"):
            for _ in range(20):
                async with gov.slot(KEY, 10) as slot:
                    await slot.record(completion({"x-ratelimit-limit-requests": "50000"}))
            with pytest.raises(RateLimited):  # a 429 while degraded still pauses, locally
                async with gov.slot(KEY, 10):
                    raise RateLimited("429", retry_after_s=0.2)
            async with gov.slot(KEY, 10) as slot:
                await slot.record(completion())
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
        await gov.aclose()
        await client.aclose()
    assert metrics.total("limiter.admitted") == 27
    assert metrics.total("limiter.redis_fallback") >= 1
    assert any(r.getMessage() == "limiter.redis_unavailable" for r in caplog.records)
