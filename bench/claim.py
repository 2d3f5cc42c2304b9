"""Jobs-table cost at scale: claim latency against the backlog, and statements per job.

1. Claim latency. The fair claim (``JOBS_CLAIM``: skip scan over accounts, per-account
   quota, round-robin, ``FOR UPDATE SKIP LOCKED``) is timed with 10,000 and with 1,000,000
   queued jobs, spread over 1 large and 50 small accounts. Baseline in the same run: the
   plain oldest-first claim most queues start with (not fair across accounts).
2. Write cost. 2,000 jobs run through a real worker against the simulator (no latency, no
   limits); the SQL statements it sends for claims and status writes are counted and set
   against the seed's one statement per status change (generating, formatting, done).

    .venv/bin/python bench/claim.py [--big 1000000] [--small 10000] [--jobs 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bulkgen.db import queries as q
from bulkgen.db.migrate import migrate
from bulkgen.db.pool import create_pool
from bulkgen.intake import JobInput
from bulkgen.metrics import Metrics
from bulkgen.service import open_services
from bulkgen.settings import Settings
from bulkgen.simulator import SimConfig, SimulatorProcess

NAIVE_CLAIM = """
WITH c AS (
    SELECT id FROM jobs WHERE status = 'queued' AND run_after <= now()
    ORDER BY run_after, id LIMIT $2 FOR UPDATE SKIP LOCKED
)
UPDATE jobs j SET status = 'generating', lease_owner = $1
FROM c WHERE j.id = c.id RETURNING j.id
"""

SEED = """
WITH a AS (
    INSERT INTO accounts (name) SELECT 'acct' || g FROM generate_series(0, 50) g RETURNING id
), b AS (
    INSERT INTO batches (id, account_id, options, template, template_version, total)
    SELECT gen_random_uuid(), id, '{}', '', '', 0 FROM a RETURNING id, account_id
)
INSERT INTO jobs (batch_id, account_id, input)
SELECT b.id, b.account_id, '{"keyword": "k"}'::jsonb
FROM b, generate_series(1, CASE WHEN b.account_id = (SELECT min(id) FROM a) THEN $1::int
                                ELSE 20 END)
"""


async def _fresh_db(admin: asyncpg.Connection, admin_url: str) -> tuple[str, str]:  # type: ignore[type-arg]
    name = f"bulkgen_bench_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    return name, urlunsplit(urlsplit(admin_url)._replace(path="/" + name))


async def _timed_claim(pool: asyncpg.Pool, sql: str) -> float:  # type: ignore[type-arg]
    """One claim of 50, rolled back so every round sees the same backlog."""
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            started = time.perf_counter()
            rows = await conn.fetch(sql, uuid.uuid4(), 50)
            elapsed = time.perf_counter() - started
            assert len(rows) == 50
        finally:
            await tx.rollback()
    return elapsed


async def claim_latency(url: str, backlog: int, rounds: int = 40) -> dict[str, float]:
    pool = await create_pool(url, max_size=2, min_size=1, command_timeout_s=60.0)
    try:
        await migrate(pool)
        await pool.execute(SEED, backlog - 50 * 20)
        await pool.execute("VACUUM ANALYZE jobs")
        timings: dict[str, list[float]] = {"fair": [], "naive": []}
        for _ in range(rounds):
            timings["fair"].append(await _timed_claim(pool, q.JOBS_CLAIM))
            timings["naive"].append(await _timed_claim(pool, NAIVE_CLAIM))
    finally:
        await pool.close()
    return {k: statistics.median(v) * 1000 for k, v in timings.items()}


async def statements_per_job(url: str, jobs: int) -> dict[str, float]:
    sim = SimConfig(rpm=None, tpm=None, seed=1)
    async with SimulatorProcess(sim) as simulator:
        settings = Settings(
            database_url=url, openai_base_url=simulator.base_url, openai_api_key="sk-bench",
            concurrency=200, status_flush_ms=100,
        )  # fmt: skip
        metrics = Metrics()
        svc = await open_services(settings, metrics=metrics)
        try:
            rows = [JobInput(f"keyword {i}", {}, {}) for i in range(jobs)]
            await svc.submit(rows, svc.batch_options(max_tokens=300), account="bench")
            started = time.perf_counter()
            await svc.worker(burst=True).run()
            wall_s = time.perf_counter() - started
            done = await svc.store.pool.fetchval("SELECT count(*) FROM jobs WHERE status = 'done'")
        finally:
            await svc.aclose()
    claims = metrics.total("db.claim_statements")
    writes = metrics.total("db.status_statements")
    return {
        "jobs_done": done,
        "wall_s": round(wall_s, 2),
        "claim_statements": claims,
        "status_statements": writes,
        "statements_per_job": round((claims + writes) / jobs, 4),
        "seed_statements_per_job": 3.0,
    }


async def main(big: int, small: int, jobs: int, admin_url: str) -> dict[str, object]:
    admin = await asyncpg.connect(admin_url)
    made: list[str] = []
    try:
        latency = {}
        for backlog in (small, big):
            name, url = await _fresh_db(admin, admin_url)
            made.append(name)
            latency[backlog] = await claim_latency(url, backlog)
            fair, naive = latency[backlog]["fair"], latency[backlog]["naive"]
            print(f"backlog {backlog:>9,}: fair claim {fair:7.2f} ms, naive {naive:7.2f} ms")
        name, url = await _fresh_db(admin, admin_url)
        made.append(name)
        writes = await statements_per_job(url, jobs)
    finally:
        for name in made:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    growth = latency[big]["fair"] / latency[small]["fair"]
    print(f"fair claim latency, {big:,} / {small:,} backlog: {growth:.2f}x")
    per_job = writes["statements_per_job"]
    print(f"statements per job: {per_job} (seed: 3.0, {3.0 / per_job:.0f}x more)")
    return {
        "claim_ms": {str(k): {m: round(v, 3) for m, v in d.items()} for k, d in latency.items()},
        "fair_claim_growth": round(growth, 2),
        **writes,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=2_000)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.big, args.small, args.jobs, args.admin_url))))
