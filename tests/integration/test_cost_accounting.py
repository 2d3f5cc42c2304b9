"""Cost accounting and the result cache on whole batches: real PostgreSQL, real Redis, the
simulator over HTTP. Calls avoided are counted at the provider itself (its own stats)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis

from bulkgen.cache import CachedResult
from bulkgen.cache.result import encode
from bulkgen.intake import JobInput
from bulkgen.models import Usage
from bulkgen.options import BatchOptions
from bulkgen.pricing import default_price_table
from bulkgen.service import Services
from bulkgen.simulator import SimConfig, running_simulator
from bulkgen.simulator.control import sim_stats

from .pipeline_support import make_settings, start

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

# These tests count provider calls saved by the cache, so a cache read must not be given up
# because a busy machine answered it in more than the default 50 ms (that bypass is
# tested on its own in test_cache_outage.py).
PATIENT_MS = 5_000
QUICK_SIM = SimConfig(rpm=None, tpm=None, ttft_ms=2, tokens_per_s=0, seed=11)
OPTIONS = BatchOptions(model="gpt-4o", max_tokens=300, target_words=120)


def rows_with_duplicates(distinct: int, duplicates: int) -> list[JobInput]:
    """``distinct`` keywords, then ``duplicates`` repeats of the first ones, interleaved."""
    rows = [JobInput(f"keyword {i}", {}, {}) for i in range(distinct)]
    for i in range(duplicates):
        rows.insert(2 * i + 1, JobInput(f"keyword {i}", {}, {}))
    return rows


async def provider_requests(base_url: str) -> int:
    return int((await sim_stats(base_url))["requests"])


async def run(svc: Services, rows: list[JobInput], account: str = "acme") -> uuid.UUID:
    batch_id = await svc.submit(rows, OPTIONS, account=account)
    await svc.worker(burst=True, concurrency=16).run()
    return batch_id


async def job_rows(svc: Services, batch_id: uuid.UUID) -> list[dict[str, Any]]:
    return [row async for row in svc.store.results_iter(batch_id)]


async def test_duplicates_rerun_and_account_scope(database_url: str, redis_url: str) -> None:
    rows = rows_with_duplicates(40, 6)
    async with running_simulator(QUICK_SIM) as base_url:
        svc = await start(
            make_settings(database_url, base_url, redis_url=redis_url, cache_timeout_ms=PATIENT_MS)
        )
        try:
            first = await run(svc, rows)
            after_first = await provider_requests(base_url)
            again = await run(svc, rows)
            after_again = await provider_requests(base_url)
            other = await run(svc, rows, account="other")
            after_other = await provider_requests(base_url)
            usage_first = await svc.store.batch_usage(first)
            usage_again = await svc.store.batch_usage(again)
            usage_other = await svc.store.batch_usage(other)
        finally:
            await svc.aclose()
    assert after_first == 40  # exactly the duplicates avoided
    assert after_again - after_first == 0  # the whole re-run served within the TTL
    assert after_other - after_again == 40  # never shared across accounts by default
    assert (usage_first.paid_jobs, usage_first.cache_hits) == (40, 6)
    assert (usage_again.paid_jobs, usage_again.cache_hits) == (0, 46)
    assert usage_again.cost_usd == 0 and usage_again.saved_usd > 0
    assert (usage_other.paid_jobs, usage_other.cache_hits) == (40, 6)
    assert usage_again.saved_usd == usage_first.cost_usd + usage_first.saved_usd


async def test_global_scope_shares_across_accounts(database_url: str, redis_url: str) -> None:
    rows = rows_with_duplicates(10, 0)
    async with running_simulator(QUICK_SIM) as base_url:
        settings = make_settings(
            database_url,
            base_url,
            redis_url=redis_url,
            cache_timeout_ms=PATIENT_MS,
            cache_scope="global",
        )
        svc = await start(settings)
        try:
            await run(svc, rows, account="one")
            other = await run(svc, rows, account="two")
            usage = await svc.store.batch_usage(other)
        finally:
            await svc.aclose()
        assert await provider_requests(base_url) == 10
    assert (usage.paid_jobs, usage.cache_hits) == (0, 10)


async def test_cached_jobs_are_formatted_and_validated_like_fresh_ones(
    database_url: str, redis_url: str, redis_client: aioredis.Redis
) -> None:
    rows = rows_with_duplicates(6, 0)
    async with running_simulator(QUICK_SIM) as base_url:
        svc = await start(
            make_settings(database_url, base_url, redis_url=redis_url, cache_timeout_ms=PATIENT_MS)
        )
        try:
            fresh = await job_rows(svc, await run(svc, rows))
            cached = await job_rows(svc, await run(svc, rows))
            # Poison two entries with answers the validation refuses (too few words).
            keys = await svc.store.pool.fetch(
                "SELECT cache_key FROM jobs WHERE cache_key IS NOT NULL ORDER BY id LIMIT 2"
            )
            short = CachedResult("Too short to count.", Usage(5, 4), "gpt-4o", "stop")
            for key in keys:
                await redis_client.set(key["cache_key"], encode(short))
            before = await provider_requests(base_url)
            poisoned = await job_rows(svc, await run(svc, rows))
            regenerated = await provider_requests(base_url) - before
        finally:
            await svc.aclose()
    fields = ("content", "html", "title", "word_count", "finish_reason", "model")
    assert all(r["status"] == "done" and r["cached"] for r in cached)
    for a, b in zip(fresh, cached, strict=True):
        assert {f: a[f] for f in fields} == {f: b[f] for f in fields}
        assert b["html"].startswith("<") and b["word_count"] >= 30
    assert regenerated == 2  # the refused entries were paid for again, not made done
    assert sum(not r["cached"] for r in poisoned) == 2
    assert all(r["status"] == "done" and r["word_count"] >= 30 for r in poisoned)


async def test_status_json_adds_up_against_the_job_rows(database_url: str, redis_url: str) -> None:
    rows = rows_with_duplicates(12, 3)
    async with running_simulator(QUICK_SIM) as base_url:
        svc = await start(
            make_settings(database_url, base_url, redis_url=redis_url, cache_timeout_ms=PATIENT_MS)
        )
        try:
            batch_id = await run(svc, rows)
            jobs = await svc.store.pool.fetch(
                "SELECT j.cached, j.prompt_tokens, j.completion_tokens, r.model"
                " FROM jobs j JOIN results r ON r.job_id = j.id WHERE j.batch_id = $1",
                batch_id,
            )
        finally:
            await svc.aclose()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",  # status never calls the provider
        "OPENAI_API_KEY": "sk-test",
    }
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bulkgen.cli",
        "status",
        str(batch_id),
        "--json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await cli.communicate()
    assert cli.returncode == 0, err.decode()
    data = json.loads(out.decode().strip().splitlines()[-1])
    prices = default_price_table()

    def cost(of: list[Any]) -> Decimal:
        return sum(
            (
                prices.cost_usd(j["model"], Usage(j["prompt_tokens"], j["completion_tokens"]))
                for j in of
            ),
            Decimal(0),
        )

    paid = [j for j in jobs if not j["cached"]]
    hits = [j for j in jobs if j["cached"]]
    assert (data["done"], data["cache_hits"], data["paid_jobs"]) == (15, 3, 12)
    assert data["paid_prompt_tokens"] == sum(j["prompt_tokens"] for j in paid)
    assert data["paid_completion_tokens"] == sum(j["completion_tokens"] for j in paid)
    assert Decimal(data["cost_usd"]) == cost(paid) > 0
    assert Decimal(data["saved_usd"]) == cost(hits) > 0
    assert data["prompt_tokens"] == data["paid_prompt_tokens"] + data["cached_prompt_tokens"]
    assert data["budget_usd"] is None and data["unpriced_models"] == []
