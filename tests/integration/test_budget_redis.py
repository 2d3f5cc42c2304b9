"""The fleet's budget ledger in real Redis: one atomic check-and-add for everyone."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from bulkgen.budget import LEDGER_TTL_S, RedisLedger, ledger_key
from bulkgen.metrics import Metrics
from bulkgen.redis_client import RedisClient
from bulkgen.redis_guard import RedisGuard
from tests.redis_cluster import RedisConnect

pytestmark = [pytest.mark.redis, pytest.mark.redis_cluster]


async def test_unseeded_then_seeded_with_a_ttl(redis_client: RedisClient) -> None:
    ledger = RedisLedger(redis_client)
    batch = uuid.uuid4()
    assert await ledger.reserve(batch, 10, 100, None) == ("unseeded", "redis")
    assert await ledger.reserve(batch, 10, 100, 85) == ("ok", "redis")
    assert await ledger.reserve(batch, 10, 100, 0) == ("wait", "redis")  # seed ignored now
    ttl_s = await redis_client.ttl(ledger_key(batch))
    assert 0 < ttl_s <= LEDGER_TTL_S
    await ledger.settle(batch, 10, 4, "redis")
    assert await ledger.spent_nusd(batch) == 89
    assert await ledger.reserve(batch, 12, 100, None) == ("exceeded", "redis")


async def test_concurrent_reservations_from_two_ledgers_never_pass_the_cap(
    redis_connect: RedisConnect,
) -> None:
    clients = [await redis_connect() for _ in range(2)]
    try:
        # What is tested is the script's atomicity, not the guard: a generous timeout keeps
        # 300 calls queued on a loaded machine from being bypassed to a local ledger.
        ledgers = [
            RedisLedger(c, guard=RedisGuard(timeout_ms=30_000, metrics=Metrics())) for c in clients
        ]
        batch = uuid.uuid4()
        await ledgers[0].reserve(batch, 0, 1_000, 0)  # seed
        answers = await asyncio.gather(
            *(ledgers[i % 2].reserve(batch, 7, 1_000, None) for i in range(300))
        )
        ok = [a for a, _ in answers if a == "ok"]
        assert len(ok) == 1_000 // 7
        assert set(a for a, _ in answers) == {"ok", "wait"}
        await asyncio.gather(*(ledgers[i % 2].settle(batch, 7, 3, "redis") for i in range(len(ok))))
        state = await clients[0].hgetall(ledger_key(batch))
        assert state == {b"spent": str(3 * len(ok)).encode(), b"reserved": b"0"}
    finally:
        for client in clients:
            await client.aclose()


async def test_dead_redis_falls_back_to_a_process_ledger() -> None:
    metrics = Metrics()
    dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0")
    try:
        ledger = RedisLedger(dead, metrics=metrics)
        batch = uuid.uuid4()
        assert await ledger.reserve(batch, 10, 100, None) == ("unseeded", "local")
        assert await ledger.reserve(batch, 60, 100, 30) == ("ok", "local")
        await ledger.settle(batch, 60, 50, "local")
        assert ledger.fallback.spent_nusd(batch) == 80
        assert await ledger.reserve(batch, 30, 100, None) == ("exceeded", "local")
    finally:
        await dead.aclose()
    assert metrics.total("budget.degraded") >= 3
