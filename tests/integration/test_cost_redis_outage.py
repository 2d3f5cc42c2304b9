"""Redis dies in the middle of a batch: every job still ends ``done``, the cache is
bypassed (and counted), and a capped batch keeps its cap per process."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from bulkgen.intake import JobInput
from bulkgen.options import BatchOptions
from bulkgen.service import Services
from bulkgen.simulator import SimConfig, running_simulator

from .pipeline_support import make_settings, start, statuses

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

SLOW_SIM = SimConfig(rpm=None, tpm=None, ttft_ms=30, tokens_per_s=0, seed=31)
JOBS = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def private_redis() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test's own, so killing it disturbs nobody else."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)


async def wait_for_redis(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        for _ in range(100):
            with contextlib.suppress(Exception):
                if await client.ping():
                    return
            await asyncio.sleep(0.05)
        raise AssertionError("private redis-server did not start")
    finally:
        await client.aclose()


@pytest.mark.parametrize("budget_usd", [None, Decimal("100")], ids=["uncapped", "capped"])
async def test_redis_killed_mid_batch(
    database_url: str,
    private_redis: tuple[str, subprocess.Popen[bytes]],
    budget_usd: Decimal | None,
) -> None:
    url, proc = private_redis
    await wait_for_redis(url)
    async with running_simulator(SLOW_SIM) as base_url:
        svc = await start(make_settings(database_url, base_url, redis_url=url))
        try:
            rows = [JobInput(f"outage keyword {i % (JOBS - 10)}", {}, {}) for i in range(JOBS)]
            options = BatchOptions(model="gpt-4o", max_tokens=300, target_words=120)
            batch_id = await svc.submit(rows, options, budget_usd=budget_usd)
            worker = asyncio.create_task(svc.worker(burst=True, concurrency=8).run())
            await until_some_done(svc, batch_id, 20)
            proc.kill()
            proc.wait(timeout=5)
            await asyncio.wait_for(worker, 60)
            counts = await statuses(svc, batch_id)
        finally:
            await svc.aclose()
    assert counts == {"done": JOBS}
    assert svc.metrics.total("cache.bypassed") > 0
    if budget_usd is not None:
        assert svc.metrics.total("budget.degraded") > 0


async def until_some_done(svc: Services, batch_id: uuid.UUID, n: int) -> None:
    for _ in range(3000):  # up to a minute: a bound for a hang, not a speed requirement
        if (await statuses(svc, batch_id)).get("done", 0) >= n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the batch did not start")
