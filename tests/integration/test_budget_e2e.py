"""Spending caps on whole batches: real PostgreSQL, Redis (db from BULKGEN_TEST_REDIS_URL) or
none, the simulator over HTTP. The cap holds across workers and across a restart."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from bulkgen.budget import ledger_key
from bulkgen.intake import JobInput
from bulkgen.options import BatchOptions
from bulkgen.service import Services
from bulkgen.simulator import SimConfig, running_simulator
from bulkgen.simulator.control import sim_stats

from .pipeline_support import make_settings, start, statuses

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

QUICK_SIM = SimConfig(rpm=None, tpm=None, ttft_ms=5, tokens_per_s=0, seed=21)
OPTIONS = BatchOptions(model="gpt-4o", max_tokens=300, target_words=120)
CAP = Decimal("0.03")
JOBS = 40


async def provider_requests(base_url: str) -> int:
    return int((await sim_stats(base_url))["requests"])


async def submit(svc: Services) -> uuid.UUID:
    rows = [JobInput(f"budget keyword {i}", {}, {}) for i in range(JOBS)]
    return await svc.submit(rows, OPTIONS, account="capped", budget_usd=CAP)


async def worst_case_usd(svc: Services, batch_id: uuid.UUID) -> Decimal:
    """The largest reservation one request of this batch could have made."""
    longest = await svc.store.pool.fetchval(
        "SELECT max(prompt_tokens) FROM jobs WHERE batch_id = $1", batch_id
    )
    return svc.prices.worst_case_cost_usd("gpt-4o", int(longest), OPTIONS.max_tokens)


def assert_stopped_at_cap(cost: Decimal, one_request: Decimal) -> None:
    assert cost <= CAP + one_request, f"spent {cost} over the cap {CAP}"
    assert cost >= CAP - 2 * one_request, f"stopped early: spent {cost} of {CAP}"


@pytest.mark.parametrize("with_redis", [True, False], ids=["redis", "in-process"])
async def test_batch_stops_at_its_cap(database_url: str, redis_url: str, with_redis: bool) -> None:
    async with running_simulator(QUICK_SIM) as base_url:
        settings = make_settings(
            database_url, base_url, redis_url=redis_url if with_redis else None
        )
        svc = await start(settings)
        try:
            batch_id = await submit(svc)
            await svc.worker(burst=True, concurrency=16).run()
            counts = await statuses(svc, batch_id)
            usage = await svc.store.batch_usage(batch_id, svc.prices)
            kinds = await svc.store.batch_errors(batch_id)
            one_request = await worst_case_usd(svc, batch_id)
        finally:
            await svc.aclose()
        requests = await provider_requests(base_url)
    assert set(counts) == {"done", "cancelled"} and sum(counts.values()) == JOBS
    assert counts["cancelled"] >= JOBS // 2  # the full batch would cost about twice the cap
    assert [k for k, _, _ in kinds] == ["budget_exceeded"]
    assert requests == counts["done"]  # cancelled jobs were never sent
    assert_stopped_at_cap(usage.cost_usd, one_request)


async def test_two_workers_share_one_cap(database_url: str, redis_url: str) -> None:
    """Two ledgers (as two processes would have) meet in Redis: the sum stays capped."""
    async with running_simulator(QUICK_SIM) as base_url:
        settings = make_settings(database_url, base_url, redis_url=redis_url)
        first, second = await start(settings), await start(settings)
        try:
            batch_id = await submit(first)
            await asyncio.gather(
                first.worker(burst=True, concurrency=8).run(),
                second.worker(burst=True, concurrency=8).run(),
            )
            usage = await first.store.batch_usage(batch_id, first.prices)
            one_request = await worst_case_usd(first, batch_id)
            counts = await statuses(first, batch_id)
        finally:
            await first.aclose()
            await second.aclose()
    assert counts.get("cancelled", 0) >= JOBS // 2
    assert_stopped_at_cap(usage.cost_usd, one_request)


async def test_a_restarted_fleet_continues_from_what_was_spent(
    database_url: str, redis_url: str, redis_client: aioredis.Redis
) -> None:
    async with running_simulator(QUICK_SIM) as base_url:
        settings = make_settings(database_url, base_url, redis_url=redis_url)
        svc = await start(settings)
        try:
            batch_id = await submit(svc)
            await svc.worker(burst=True, concurrency=8).run()
            spent = (await svc.store.batch_usage(batch_id, svc.prices)).cost_usd
        finally:
            await svc.aclose()
        sent = await provider_requests(base_url)
        # The fleet's ledger is gone (Redis restarted) and the cancelled jobs come back.
        assert await redis_client.delete(ledger_key(batch_id)) == 1
        restarted = await start(settings)
        try:
            requeued = await restarted.store.pool.execute(
                "UPDATE jobs SET status = 'queued', error_kind = NULL, finished_at = NULL"
                " WHERE batch_id = $1 AND status = 'cancelled'",
                batch_id,
            )
            await restarted.worker(burst=True, concurrency=8).run()
            after = (await restarted.store.batch_usage(batch_id, restarted.prices)).cost_usd
            one_request = await worst_case_usd(restarted, batch_id)
        finally:
            await restarted.aclose()
        sent_after = await provider_requests(base_url)
    assert int(requeued.split()[-1]) >= JOBS // 2
    # Seeded with the batch's recorded cost, the new fleet adds at most one request.
    assert after - spent <= one_request
    assert sent_after - sent <= 1
    assert_stopped_at_cap(after, one_request)
