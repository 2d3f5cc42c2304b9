"""Jobs-table cost at scale: claim latency against the backlog, and statements per job.

1. Claim latency. The fair claim (``JOBS_CLAIM``: skip scan over accounts, per-account
   quota, round-robin, ``FOR UPDATE SKIP LOCKED``) is timed with 10,000 and with 1,000,000
   queued jobs, spread over 1 large and 50 small accounts. Baseline in the same run: the
   plain oldest-first claim most queues start with (not fair across accounts).
2. Write cost. 2,000 jobs run through a real worker against the simulator (no latency, no
   limits); the claim and status-write statements it sends are counted by its own metrics.
   Baseline in the same run, same simulator and database: the seed's writes, one
   ``UPDATE`` per status change (generating, formatting, done) through a shared pool. For
   both, PostgreSQL's own counters (``pg_stat_database``, ``pg_stat_user_tables``) give
   the transactions committed and the rows written, everything included (polls,
   heartbeats, plan loads, connection setup), so the comparison does not rest on either
   side counting itself.

    .venv/bin/python bench/claim.py [--big 1000000] [--small 10000] [--jobs 2000]

Creates and drops its own databases; writes its result to ``bench/results/claim.json``
(``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

import asyncpg
import openai

from bulkgen.db import queries as q
from bulkgen.db.migrate import migrate
from bulkgen.db.pool import create_pool
from bulkgen.intake import JobInput
from bulkgen.metrics import Metrics
from bulkgen.service import open_services
from bulkgen.settings import Settings
from bulkgen.simulator import SimConfig, SimulatorProcess
from pgstats import ServerCount, drop_db, fresh_db
from record import Run, add_out_argument, postgres_version

NAIVE_CLAIM = """
WITH c AS (
    SELECT id FROM jobs WHERE status = 'queued' AND run_after <= now()
    ORDER BY run_after, id LIMIT $2 FOR UPDATE SKIP LOCKED
)
UPDATE jobs j SET status = 'generating', lease_owner = $1
FROM c WHERE j.id = c.id RETURNING j.id
"""

BACKLOG = """
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

SETUP_TIMEOUT_S = 900.0

# The seed's write path: its table shape, and one UPDATE per status change.
SEED_POOL_MAX = 20
SEED_TABLE = """
CREATE TABLE seed_jobs (
    id bigserial PRIMARY KEY, keyword text NOT NULL,
    status text NOT NULL DEFAULT 'queued', content text
)
"""
SEED_FILL = """
INSERT INTO seed_jobs (keyword) SELECT 'keyword ' || g FROM generate_series(1, $1) g
RETURNING id, keyword
"""
SEED_STATUS = "UPDATE seed_jobs SET status = $1 WHERE id = $2"
SEED_DONE = "UPDATE seed_jobs SET status = $1, content = $2 WHERE id = $3"


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
        # Filling a 1M backlog takes longer than the pool's statement timeout on a busy machine.
        await pool.execute(BACKLOG, backlog - 50 * 20, timeout=SETUP_TIMEOUT_S)
        await pool.execute("VACUUM ANALYZE jobs", timeout=SETUP_TIMEOUT_S)
        timings: dict[str, list[float]] = {"fair": [], "naive": []}
        for _ in range(rounds):
            timings["fair"].append(await _timed_claim(pool, q.JOBS_CLAIM))
            timings["naive"].append(await _timed_claim(pool, NAIVE_CLAIM))
    finally:
        await pool.close()
    return {k: statistics.median(v) * 1000 for k, v in timings.items()}


async def bulkgen_writes(
    count: ServerCount, base_url: str, jobs: int, concurrency: int
) -> dict[str, Any]:
    """A real worker drains ``jobs``; its claim and status-write statements are counted by
    its own metrics, and everything it did by PostgreSQL."""
    settings = Settings(
        database_url=count.url, openai_base_url=base_url, openai_api_key="sk-bench",
        concurrency=concurrency,
    )  # fmt: skip
    svc = await open_services(settings, metrics=Metrics())
    try:
        rows = [JobInput(f"keyword {i}", {}, {}) for i in range(jobs)]
        await svc.submit(rows, svc.batch_options(max_tokens=300), account="bench")
    finally:
        await svc.aclose()
    await count.start()
    metrics = Metrics()
    svc = await open_services(settings, metrics=metrics)
    try:
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
        **await count.stop(jobs),
    }


async def _no_reset(conn: asyncpg.Connection) -> None:  # type: ignore[type-arg]
    """The seed's pool hands a connection back as it is; asyncpg's default resets it with
    one more statement per release, which the seed never sent."""


async def seed_writes(
    count: ServerCount, base_url: str, jobs: int, concurrency: int
) -> dict[str, Any]:
    """The baseline, run for real: the seed's shared pool of 20 and one ``UPDATE`` per
    status change (generating, formatting, done with the content) on a table of its shape,
    the same provider calls at the same concurrency."""
    setup = await asyncpg.connect(count.url)
    try:
        await setup.execute(SEED_TABLE)
        ids = await setup.fetch(SEED_FILL, jobs)
    finally:
        await setup.close()
    await count.start()
    pool = await asyncpg.create_pool(count.url, min_size=1, max_size=SEED_POOL_MAX, reset=_no_reset)
    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
    queue: asyncio.Queue[asyncpg.Record] = asyncio.Queue()
    for row in ids:
        queue.put_nowait(row)
    statements = [0]

    async def one(job: asyncpg.Record) -> None:
        await pool.execute(SEED_STATUS, "generating", job["id"])
        answer = await client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": f"Write an article. Keyword: {job['keyword']}"}],
            max_tokens=300,
        )
        await pool.execute(SEED_STATUS, "formatting", job["id"])
        await pool.execute(SEED_DONE, "done", answer.choices[0].message.content, job["id"])
        statements[0] += 3

    async def lane() -> None:
        while not queue.empty():
            await one(queue.get_nowait())

    try:
        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        wall_s = time.perf_counter() - started
        done = await pool.fetchval("SELECT count(*) FROM seed_jobs WHERE status = 'done'")
    finally:
        await client.close()
        await pool.close()
    return {
        "jobs_done": done,
        "wall_s": round(wall_s, 2),
        "status_statements": statements[0],
        "statements_per_job": round(statements[0] / jobs, 4),
        **await count.stop(jobs),
    }


async def write_cost(
    admin: asyncpg.Connection,  # type: ignore[type-arg]
    name: str,
    url: str,
    jobs: int,
    concurrency: int,
) -> dict[str, dict[str, Any]]:
    """bulkgen's worker, then the seed's writes, on one simulator (no latency, no limits)
    and one fresh database, each counted over its own run only."""
    count = ServerCount(admin, name, url)
    async with SimulatorProcess(SimConfig(rpm=None, tpm=None, seed=1)) as simulator:
        ours = await bulkgen_writes(count, simulator.base_url, jobs, concurrency)
        seed = await seed_writes(count, simulator.base_url, jobs, concurrency)
    return {"bulkgen": ours, "seed": seed}


def print_writes(writes: dict[str, dict[str, Any]]) -> None:
    cols = ("jobs_done", "wall_s", "statements_per_job", "transactions_per_job")
    cols += ("row_writes_per_job",)
    print(f"{'write path':<12}" + "".join(f"{c:>21}" for c in cols) + "  rows written, by table")
    for path, row in writes.items():
        line = "".join(f"{row[c]!s:>21}" for c in cols)
        print(f"{path:<12}{line}  {row['row_writes_by_table']}")
    ours, seed = writes["bulkgen"], writes["seed"]
    print(
        f"bulkgen: {ours['claim_statements']:.0f} claim + {ours['status_statements']:.0f}"
        f" status-write statements for {ours['jobs_done']} jobs;"
        f" seed: {seed['status_statements']} UPDATEs"
    )
    print(
        "seed / bulkgen: statements"
        f" {seed['statements_per_job'] / ours['statements_per_job']:.1f}x,"
        f" transactions {seed['transactions_per_job'] / ours['transactions_per_job']:.1f}x,"
        f" row writes {seed['row_writes_per_job'] / ours['row_writes_per_job']:.2f}x"
    )


async def main(args: argparse.Namespace) -> dict[str, object]:
    admin = await asyncpg.connect(args.admin_url)
    made: list[str] = []
    try:
        latency = {}
        for backlog in (args.small, args.big):
            name, url = await fresh_db(admin, args.admin_url)
            made.append(name)
            latency[backlog] = await claim_latency(url, backlog)
            fair, naive = latency[backlog]["fair"], latency[backlog]["naive"]
            print(f"backlog {backlog:>9,}: fair claim {fair:7.2f} ms, plain {naive:7.2f} ms")
        name, url = await fresh_db(admin, args.admin_url)
        made.append(name)
        writes = await write_cost(admin, name, url, args.jobs, args.concurrency)
    finally:
        for name in made:
            await drop_db(admin, name)
        await admin.close()
    growth = latency[args.big]["fair"] / latency[args.small]["fair"]
    print(f"fair claim latency, {args.big:,} / {args.small:,} backlog: {growth:.2f}x")
    print_writes(writes)
    ours, seed = writes["bulkgen"], writes["seed"]
    return {
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "claim_ms": {str(k): {m: round(v, 3) for m, v in d.items()} for k, d in latency.items()},
        "fair_claim_growth": round(growth, 2),
        "writes": writes,
        "seed_over_bulkgen_statements": round(
            seed["statements_per_job"] / ours["statements_per_job"], 1
        ),
        "seed_over_bulkgen_transactions": round(
            seed["transactions_per_job"] / ours["transactions_per_job"], 1
        ),
        "seed_over_bulkgen_row_writes": round(
            seed["row_writes_per_job"] / ours["row_writes_per_job"], 2
        ),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    add_out_argument(parser, "claim")
    args = parser.parse_args()
    run = Run("claim", args.out)
    figures = asyncio.run(main(args))
    run.finish(figures, postgresql=asyncio.run(postgres_version(args.admin_url)))
