"""A small account arriving behind a large one: fair claim against plain FIFO, one run.

Account A has ``--a-jobs`` queued jobs (filled by PostgreSQL, see ``backlog.py``); one
worker (concurrency ``--concurrency``) drains them through a provider that answers at a
fixed rate (``--rate-per-s``, a token bucket of one served in arrival order, in process:
calls wait their turn, as on a saturated server). After ``--warm-s`` seconds, account B
submits ``--b-jobs`` jobs through ``Services.submit``. B's time is from its batch's
``created_at`` to its last ``finished_at`` (the database's clock). Its fair-share ideal:
B's jobs at half of the rate measured over that same stretch (two accounts with work, an
equal split).

Run twice on fresh databases: with the real ``JOBS_CLAIM``, and with a plain oldest-first
claim (``FOR UPDATE SKIP LOCKED``, ordered by ``run_after, id``, with an index of its own
so the baseline is not slowed by a sort). Under FIFO, B waits for the whole of A's backlog;
a run B has not finished after ``--cap-s`` seconds is stopped, and recorded with the jobs
of A that were ahead of B and the time they take at the measured rate.

    .venv/bin/python bench/fairness.py [--a-jobs 50000] [--b-jobs 20] [--rate-per-s 100]

Creates and drops its own databases; writes its result to ``bench/results/fairness.json``
(``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from typing import Any

import asyncpg

from backlog import drop_model, fill, model_batch
from bulkgen.db import queries as q
from bulkgen.intake import JobInput
from bulkgen.metrics import Metrics
from bulkgen.models import ChatRequest, Completion, Usage
from bulkgen.service import Services, open_services
from bulkgen.settings import Settings
from pgstats import drop_db, fresh_db
from queues import UNREACHABLE_RPM, UNREACHABLE_TPM, WORDS
from record import Run, add_out_argument, postgres_version

POLL_S = 0.05

FIFO_CLAIM = """
WITH c AS (
    SELECT id FROM jobs WHERE status = 'queued' AND run_after <= now()
    ORDER BY run_after, id LIMIT $2 FOR UPDATE SKIP LOCKED
)
UPDATE jobs j SET status = 'generating', lease_owner = $1, claims = j.claims + 1
FROM c WHERE j.id = c.id
RETURNING j.id, j.batch_id, j.account_id, j.input, j.attempts, j.rate_limited_ms,
          j.max_tokens_grown, j.claims
"""
FIFO_INDEX = "CREATE INDEX jobs_fifo_idx ON jobs (run_after, id) WHERE status = 'queued'"

B_PROGRESS = """
SELECT count(*) FILTER (WHERE status = 'done') AS done,
       extract(epoch FROM max(finished_at) - min(created_at))::float8 AS took_s,
       min(created_at) AS submitted_at, max(finished_at) AS finished_at
FROM jobs WHERE batch_id = $1
"""

DONE_BETWEEN = """
SELECT count(*) FROM jobs WHERE status = 'done' AND finished_at > $1 AND finished_at <= $2
"""

AHEAD_OF_B = "SELECT count(*) FROM jobs WHERE status = 'queued' AND batch_id <> $1"


class RateLimitedProvider:
    """Answers at ``rate_per_s``, one call after the other in arrival order, each with a
    short article of its own."""

    base_url = "rated://bench"
    api_key_id = "rated"

    def __init__(self, rate_per_s: float) -> None:
        self.interval_s = 1.0 / rate_per_s
        self.next_s = 0.0

    async def complete(self, request: ChatRequest) -> Completion:
        now_s = time.monotonic()
        turn_s = max(now_s, self.next_s)
        self.next_s = turn_s + self.interval_s
        await asyncio.sleep(turn_s - now_s)
        rng = random.Random(request.messages[-1][1])
        body = " ".join(rng.choice(WORDS) for _ in range(60))
        content = f"# An article\n\n{body.capitalize()}."
        usage = Usage(prompt_tokens=request.prompt_chars() // 4, completion_tokens=80)
        return Completion(content=content, usage=usage, finish_reason="stop", model=request.model)

    async def aclose(self) -> None:
        return None


def settings(url: str, concurrency: int) -> Settings:
    return Settings(
        database_url=url, redis_url=None, openai_api_key="sk-bench",
        openai_base_url=RateLimitedProvider.base_url, concurrency=concurrency,
        rpm=UNREACHABLE_RPM, tpm=UNREACHABLE_TPM, poll_s=0.5,
    )  # fmt: skip


async def wait_for_b(svc: Services, batch: uuid.UUID, b_jobs: int, cap_s: float) -> bool:
    deadline = time.monotonic() + cap_s
    while time.monotonic() < deadline:
        row = await svc.store.pool.fetchrow(B_PROGRESS, batch)
        if row["done"] == b_jobs:
            return True
        await asyncio.sleep(POLL_S)
    return False


async def one_claim(url: str, claim: str, args: argparse.Namespace) -> dict[str, Any]:
    """A's backlog, the worker running, B's submit, until B is done or the cap."""
    svc = await open_services(
        settings(url, args.concurrency),
        provider=RateLimitedProvider(args.rate_per_s),
        metrics=Metrics(),
    )
    try:
        model = await model_batch(svc)
        pool = svc.store.pool
        await fill(pool, model, accounts=1, jobs_per_account=args.a_jobs, prefix="a")
        await drop_model(pool, model)
        if claim == "fifo":
            await pool.execute(FIFO_INDEX)
        worker = svc.worker()
        running = asyncio.create_task(worker.run())
        try:
            await asyncio.sleep(args.warm_s)
            rows = [JobInput(f"b keyword {i}", {}, {}) for i in range(args.b_jobs)]
            batch = await svc.submit(rows, svc.batch_options(), account="b")
            ahead = await pool.fetchval(AHEAD_OF_B, batch)
            finished = await wait_for_b(svc, batch, args.b_jobs, args.cap_s)
            stopped_at = await pool.fetchval("SELECT now()")
        finally:
            worker.stop()
            await running
        b = await pool.fetchrow(B_PROGRESS, batch)
        until = b["finished_at"] if finished else stopped_at
        span_s = (until - b["submitted_at"]).total_seconds()
        rate = await pool.fetchval(DONE_BETWEEN, b["submitted_at"], until) / span_s
    finally:
        await svc.aclose()
    ideal_s = args.b_jobs / (rate / 2)
    result: dict[str, Any] = {
        "b_finished": finished,
        "b_done": b["done"],
        "a_jobs_queued_when_b_arrived": ahead,
        "measured_rate_per_s": round(rate, 1),
        "b_ideal_s": round(ideal_s, 3),
        "b_took_s": round(b["took_s"], 3) if finished else None,
        "b_over_ideal": round(b["took_s"] / ideal_s, 2) if finished else None,
    }
    if not finished:  # FIFO: B waits behind every job of A queued before it
        projected_s = (ahead + args.b_jobs) / rate
        result["b_projected_s"] = round(projected_s, 1)
        result["b_projected_over_ideal"] = round(projected_s / ideal_s, 1)
    return result


async def on_fresh_db(claim: str, args: argparse.Namespace) -> dict[str, Any]:
    admin = await asyncpg.connect(args.admin_url)
    name, url = await fresh_db(admin, args.admin_url)
    real_claim = q.JOBS_CLAIM
    if claim == "fifo":
        q.JOBS_CLAIM = FIFO_CLAIM  # the store reads the statement from the module per call
    try:
        return await one_claim(url, claim, args)
    finally:
        q.JOBS_CLAIM = real_claim
        await drop_db(admin, name)
        await admin.close()


def print_row(claim: str, row: dict[str, Any]) -> None:
    took = f"{row['b_took_s']:.2f}" if row["b_finished"] else f">{row['b_projected_s']:.0f}*"
    over = (
        f"{row['b_over_ideal']:.2f}x" if row["b_finished"] else f"{row['b_projected_over_ideal']}x*"
    )
    print(
        f"{claim:<6} {row['a_jobs_queued_when_b_arrived']:>9} {row['measured_rate_per_s']:>7.1f}"
        f" {row['b_ideal_s']:>8.2f} {took:>10} {over:>10}"
    )


async def main(args: argparse.Namespace) -> dict[str, Any]:
    print(
        f"{'claim':<6} {'A ahead':>9} {'rate/s':>7} {'ideal s':>8} {'B took s':>10} {'B/ideal':>10}"
    )
    runs = {}
    for claim in ("fair", "fifo"):
        runs[claim] = await on_fresh_db(claim, args)
        print_row(claim, runs[claim])
    if not runs["fifo"]["b_finished"]:
        print(f"* B unfinished after {args.cap_s:.0f} s: projected from A's jobs ahead of it")
    fair, fifo = runs["fair"], runs["fifo"]
    fifo_s = fifo["b_took_s"] if fifo["b_finished"] else fifo["b_projected_s"]
    speedup = round(fifo_s / fair["b_took_s"], 1) if fair["b_finished"] else None
    print(f"B's time, FIFO / fair: {speedup}x")
    return {
        "a_jobs": args.a_jobs,
        "b_jobs": args.b_jobs,
        "rate_per_s": args.rate_per_s,
        "concurrency": args.concurrency,
        "warm_s": args.warm_s,
        "cap_s": args.cap_s,
        "runs": runs,
        "fifo_over_fair_b_time": speedup,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a-jobs", type=int, default=50_000)
    parser.add_argument("--b-jobs", type=int, default=20)
    parser.add_argument("--rate-per-s", type=float, default=100.0)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--warm-s", type=float, default=5.0)
    parser.add_argument("--cap-s", type=float, default=900.0)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    add_out_argument(parser, "fairness")
    args = parser.parse_args()
    run = Run("fairness", args.out)
    figures = asyncio.run(main(args))
    run.finish(figures, postgresql=asyncio.run(postgres_version(args.admin_url)))
