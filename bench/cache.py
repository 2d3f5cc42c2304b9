"""Result cache: provider calls avoided, and what the cache adds to each job's latency.

One 2,000-job batch with 15% duplicate requests (300 rows repeat an earlier keyword), run
three times against the same PostgreSQL database, Redis and simulator, in each of
``--rounds`` rounds (a cold cache and a new account each), so run-to-run spread shows:

1. cache on, first run: the duplicates must be served by the cache or single-flight;
2. the same batch again within the TTL: every job must be served from the cache;
3. cache off (``cache_enabled=False``): the baseline, every job pays a provider call.

Calls are counted by the simulator itself (``/_sim/stats``). Redis calls that passed
``cache_timeout_ms`` or failed, and so were skipped (a miss, or a store not made), are
counted too (``cache_bypassed``): on a busy machine they explain a duplicate that paid.
Latency is measured around ``SingleFlight.run`` per job: for a job that called the
provider, the cache's *added* latency is the time in ``run`` minus the time in the provider
call (lookup, lock, store); for a hit it is the whole ``run`` (it replaces the call). The
same wrapper runs with the cache off, so both columns pay the same measuring cost.

    .venv/bin/python bench/cache.py [--jobs 2000] [--duplicates 0.15] [--concurrency 32]
        [--rounds 3]
        [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]
        [--redis-url redis://127.0.0.1:6379/9]

Creates and drops its own database; flushes the given Redis database before and after.
Writes its result to ``bench/results/cache.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis

from bulkgen.cache import CachedResult, SingleFlight, Source
from bulkgen.intake import JobInput
from bulkgen.metrics import Metrics
from bulkgen.options import BatchOptions
from bulkgen.service import open_services
from bulkgen.settings import Settings
from bulkgen.simulator import SimConfig, SimulatorProcess
from bulkgen.simulator.control import sim_stats
from record import Run, add_out_argument, postgres_version, redis_version

SIM = SimConfig(rpm=None, tpm=None, ttft_ms=0, tokens_per_s=0, seed=5)
OPTIONS = BatchOptions(model="gpt-4o", max_tokens=400, target_words=150)


@dataclass
class TimedFlight:
    """Wraps a SingleFlight; records per job the time in ``run`` and in ``produce``."""

    inner: SingleFlight
    overhead_s: list[float] = field(default_factory=list)  # jobs that called the provider
    hit_s: list[float] = field(default_factory=list)  # jobs served without a call
    call_s: list[float] = field(default_factory=list)  # the provider calls themselves

    async def run(
        self, key: str, produce: Callable[[], Awaitable[CachedResult]]
    ) -> tuple[CachedResult, Source]:
        spent = [0.0]

        async def timed() -> CachedResult:
            started = time.perf_counter()
            try:
                return await produce()
            finally:
                spent[0] += time.perf_counter() - started

        started = time.perf_counter()
        result, source = await self.inner.run(key, timed)
        total = time.perf_counter() - started
        if source == "provider":
            self.overhead_s.append(total - spent[0])
            self.call_s.append(spent[0])
        else:
            self.hit_s.append(total)
        return result, source


def batch_rows(jobs: int, duplicate_share: float, seed: int = 1) -> list[JobInput]:
    """``jobs`` rows of which ``duplicate_share`` repeat an earlier row, shuffled."""
    duplicates = round(jobs * duplicate_share)
    distinct = [f"cache bench keyword {i}" for i in range(jobs - duplicates)]
    rng = random.Random(seed)
    keywords = distinct + [rng.choice(distinct) for _ in range(duplicates)]
    rng.shuffle(keywords)
    return [JobInput(k, {}, {}) for k in keywords]


def pct_ms(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)


async def provider_requests(base_url: str) -> int:
    return int((await sim_stats(base_url))["requests"])


async def one_run(
    settings: Settings, rows: list[JobInput], concurrency: int, base_url: str, account: str
) -> dict[str, Any]:
    metrics = Metrics()
    svc = await open_services(settings, metrics=metrics)
    flight = TimedFlight(svc.singleflight)
    svc.singleflight = flight  # type: ignore[assignment]
    try:
        calls_before = await provider_requests(base_url)
        batch_id = await svc.submit(rows, OPTIONS, account=account)
        started = time.perf_counter()
        await svc.worker(burst=True, concurrency=concurrency).run()
        wall_s = time.perf_counter() - started
        counts = {c.status: c.jobs for c in await svc.store.batch_counts(batch_id)}
        usage = await svc.store.batch_usage(batch_id, svc.prices)
    finally:
        await svc.aclose()
    calls = await provider_requests(base_url) - calls_before
    return {
        "jobs": len(rows),
        "done": counts.get("done", 0),
        "provider_calls": calls,
        "calls_avoided": len(rows) - calls,
        "cache_hits": usage.cache_hits,
        "cache_bypassed": int(metrics.total("cache.bypassed")),
        "cost_usd": str(usage.cost_usd),
        "saved_usd": str(usage.saved_usd),
        "wall_s": round(wall_s, 2),
        "added_ms_p50": pct_ms(flight.overhead_s, 0.50),
        "added_ms_p99": pct_ms(flight.overhead_s, 0.99),
        "hit_ms_p50": pct_ms(flight.hit_s, 0.50),
        "hit_ms_p99": pct_ms(flight.hit_s, 0.99),
        "call_ms_p50": pct_ms(flight.call_s, 0.50),
        "call_ms_p99": pct_ms(flight.call_s, 0.99),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    name = f"bulkgen_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    redis = aioredis.Redis.from_url(args.redis_url)
    await redis.flushdb()
    try:
        url = urlunsplit(urlsplit(args.admin_url)._replace(path="/" + name))
        async with SimulatorProcess(SIM) as sim:
            base = Settings(
                database_url=url,
                redis_url=args.redis_url,
                openai_base_url=sim.base_url,
                openai_api_key="sk-bench",
                poll_s=0.2,
            )
            rows = batch_rows(args.jobs, args.duplicates)
            rounds = []
            for i in range(args.rounds):
                await redis.flushdb()  # each round starts with a cold cache
                rounds.append(await one_round(base, rows, args.concurrency, sim.base_url, i))
    finally:
        await redis.flushdb()
        await redis.aclose()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    distinct = len({r.keyword for r in rows})
    return {"jobs": args.jobs, "distinct_requests": distinct, "rounds": rounds}


async def one_round(
    base: Settings, rows: list[JobInput], concurrency: int, base_url: str, number: int
) -> dict[str, Any]:
    """Cache on, the same batch again, then cache off; each under its own account."""
    account = f"bench-{number}"
    off = base.model_copy(update={"cache_enabled": False})
    return {
        "cache_first_run": await one_run(base, rows, concurrency, base_url, account),
        "cache_rerun": await one_run(base, rows, concurrency, base_url, account),
        "cache_off": await one_run(off, rows, concurrency, base_url, account + "-off"),
    }


def print_table(result: dict[str, Any]) -> None:
    cols = (
        "provider_calls",
        "calls_avoided",
        "cache_hits",
        "cache_bypassed",
        "wall_s",
        "added_ms_p50",
        "added_ms_p99",
        "hit_ms_p50",
        "hit_ms_p99",
        "call_ms_p50",
        "call_ms_p99",
        "cost_usd",
        "saved_usd",
    )
    print(f"{'round':<6}{'run':<16}" + "".join(f"{c:>15}" for c in cols))
    for number, runs in enumerate(result["rounds"]):
        for run in ("cache_first_run", "cache_rerun", "cache_off"):
            line = "".join(f"{runs[run][c]!s:>15}" for c in cols)
            print(f"{number:<6}{run:<16}{line}")
    for number, runs in enumerate(result["rounds"]):
        off, first = runs["cache_off"], runs["cache_first_run"]
        print(
            f"round {number}: added latency on a miss, p50:"
            f" {first['added_ms_p50'] - off['added_ms_p50']:.3f} ms,"
            f" p99: {first['added_ms_p99'] - off['added_ms_p99']:.3f} ms (cache on minus off);"
            f" provider call p50 with the cache off: {off['call_ms_p50']:.3f} ms"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--duplicates", type=float, default=0.15)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="repeat the three runs")
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    add_out_argument(parser, "cache")
    args = parser.parse_args()
    run = Run("cache", args.out)
    result = asyncio.run(main(args))
    print_table(result)
    run.finish(
        {
            "duplicates": args.duplicates,
            "concurrency": args.concurrency,
            "rounds_run": args.rounds,
            **result,
        },
        postgresql=asyncio.run(postgres_version(args.admin_url)),
        redis=asyncio.run(redis_version(args.redis_url)),
    )
