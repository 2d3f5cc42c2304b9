"""The fair claim with 5,000 accounts waiting, against 50 in the same run.

For each size (``--baseline-accounts``, then ``--accounts``, each with
``--jobs-per-account`` queued jobs, on its own fresh database filled by one
``INSERT ... SELECT generate_series``, see ``backlog.py``):

1. Claim latency of the real ``JOBS_CLAIM``, claims of 50: ``--rounds`` claims each rolled
   back (every round sees the same backlog), then ``--rounds`` claims that commit one after
   the other (a drain: each sees the rows the previous ones took; at most half of the
   backlog), p50 and p99. The taken jobs are put back and the table vacuumed before step 2.
2. Throughput: ``--workers`` worker processes (``Services.worker(burst=True)``, concurrency
   ``--concurrency`` each) with an instant in-process provider (the ~800-word article of
   ``queues.py``), for at most ``--drain-s`` seconds; jobs/s from the database's own
   ``finished_at`` stamps, from the first job finished to the last (start-up left out).
3. Fairness, from every finished job's account and ``finished_at``:

   - served share: at the moment half of the finished jobs were done, each account's
     jobs done over its fair share of the jobs done so far (an equal split, capped by each
     account's demand and the rest shared out again); Jain's index over those ratios
     (1 is perfectly fair, 1/n is one account served alone);
   - completion (only when everything was drained): each account's completion time
     against its ideal under processor sharing at the measured rate; Jain's index over
     ideal / actual.

    .venv/bin/python bench/scale.py [--accounts 5000] [--jobs-per-account 100]

Creates and drops its own databases; writes its result to ``bench/results/scale.json``
(``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
import uuid
from collections import defaultdict
from typing import Any

import asyncpg

from backlog import drop_model, fill, model_batch
from bulkgen.db import queries as q
from bulkgen.db.migrate import migrate
from bulkgen.db.pool import create_pool
from bulkgen.metrics import Metrics
from bulkgen.service import open_services
from bulkgen.settings import Settings
from pgstats import drop_db, fresh_db
from queues import UNREACHABLE_RPM, UNREACHABLE_TPM, InstantProvider
from record import Run, add_out_argument, postgres_version

CLAIM_SIZE = 50
WORKER_POOL_MAX = 6  # 4 workers share the server's 100 connections with everything else
STOP_GRACE_S = 60.0

PUT_BACK = """
UPDATE jobs SET status = 'queued', lease_owner = NULL WHERE status = 'generating'
"""

FINISHED = """
SELECT account_id, extract(epoch FROM finished_at - $1::timestamptz)::float8 AS at_s
FROM jobs WHERE status = 'done'
"""

DEMANDS = "SELECT account_id, count(*)::int AS jobs FROM jobs GROUP BY account_id"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def spread_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {"p50": round(statistics.median(ms), 2), "p99": round(percentile(ms, 99), 2)}


def jain(values: list[float]) -> float:
    """Jain's fairness index: 1 when all are equal, 1/n when one has everything."""
    total = sum(values)
    squares = sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else 1.0


def equal_split(total: float, demands: dict[int, int]) -> dict[int, float]:
    """``total`` shared equally, no account getting more than its demand (water-filling)."""
    share: dict[int, float] = {}
    left, waiting = total, sorted(demands, key=demands.__getitem__)
    while waiting:
        each = left / len(waiting)
        account = waiting[0]
        if demands[account] <= each:
            share[account] = demands[account]
            left -= demands[account]
            waiting.pop(0)
        else:
            share.update(dict.fromkeys(waiting, each))
            break
    return share


def processor_sharing_s(demands: dict[int, int], rate: float) -> dict[int, float]:
    """When each account would finish if the rate were split equally among the accounts
    with work left, all starting at 0."""
    done_at: dict[int, float] = {}
    elapsed = served = 0.0
    order = sorted(demands, key=demands.__getitem__)
    for i, account in enumerate(order):
        elapsed += (demands[account] - served) * (len(order) - i) / rate
        served = demands[account]
        done_at[account] = elapsed
    return done_at


def fairness(finished: list[tuple[int, float]], demands: dict[int, int]) -> dict[str, Any]:
    times = sorted(at for _, at in finished)
    half_s = times[len(times) // 2 - 1] if len(times) >= 2 else times[-1]
    done: dict[int, int] = defaultdict(int)
    last: dict[int, float] = defaultdict(float)
    for account, at in finished:
        if at <= half_s:
            done[account] += 1
        last[account] = max(last[account], at)
    fair = equal_split(sum(done.values()), demands)
    result: dict[str, Any] = {
        "served_share_jain_at_half": round(
            jain([done[a] / fair[a] for a in demands if fair[a] > 0]), 4
        ),
        "served_share_at_half_min_max": [
            round(min(done[a] / fair[a] for a in demands), 3),
            round(max(done[a] / fair[a] for a in demands), 3),
        ],
        "completion_jain": None,
    }
    if len(finished) == sum(demands.values()):
        ideal = processor_sharing_s(demands, (len(finished) - 1) / times[-1])
        ratios = [ideal[a] / last[a] for a in demands if last[a] > 0]
        result["completion_jain"] = round(jain(ratios), 4)
    return result


async def timed_claim(pool: asyncpg.Pool, *, keep: bool) -> float:  # type: ignore[type-arg]
    """One claim of 50 by a new owner; rolled back unless ``keep``."""
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            started = time.perf_counter()
            rows = await conn.fetch(q.JOBS_CLAIM, uuid.uuid4(), CLAIM_SIZE)
            elapsed = time.perf_counter() - started
        except BaseException:
            await tx.rollback()
            raise
        if keep:
            await tx.commit()
        else:
            await tx.rollback()
    if not rows:
        raise RuntimeError("a claim came back empty")
    return elapsed


async def claim_latency(
    pool: asyncpg.Pool,  # type: ignore[type-arg]
    rounds: int,
    jobs: int,
) -> dict[str, dict[str, float]]:
    """Rolled-back claims, then committing ones taking at most half of the ``jobs``."""
    rolled_back = [await timed_claim(pool, keep=False) for _ in range(rounds)]
    draining_rounds = max(1, min(rounds, jobs // (2 * CLAIM_SIZE)))
    draining = [await timed_claim(pool, keep=True) for _ in range(draining_rounds)]
    await pool.execute(PUT_BACK)
    await pool.execute("VACUUM ANALYZE jobs", timeout=600.0)
    return {"rolled_back": spread_ms(rolled_back), "draining": spread_ms(draining)}


def worker_settings(url: str, concurrency: int) -> Settings:
    return Settings(
        database_url=url, redis_url=None, openai_api_key="sk-bench",
        openai_base_url=InstantProvider.base_url, concurrency=concurrency,
        rpm=UNREACHABLE_RPM, tpm=UNREACHABLE_TPM, db_pool_max=WORKER_POOL_MAX,
    )  # fmt: skip


async def _work(url: str, concurrency: int) -> None:
    svc = await open_services(
        worker_settings(url, concurrency), provider=InstantProvider(), metrics=Metrics()
    )
    try:
        await svc.worker(burst=True).run(install_signals=True)
    finally:
        await svc.aclose()


def work(url: str, concurrency: int) -> None:
    """One worker process: drains until the queue is empty or SIGTERM."""
    asyncio.run(_work(url, concurrency))


def join_until(procs: list[Any], deadline_s: float) -> None:
    """Until every process has ended or the monotonic clock reads ``deadline_s``."""
    for proc in procs:
        proc.join(max(0.0, deadline_s - time.monotonic()))


async def drain(
    pool: asyncpg.Pool,  # type: ignore[type-arg]
    url: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """``args.workers`` worker processes for at most ``args.drain_s``; then stopped."""
    started_at = await pool.fetchval("SELECT now()")
    spawn = multiprocessing.get_context("spawn")
    procs = [
        spawn.Process(target=work, args=(url, args.concurrency), daemon=True)
        for _ in range(args.workers)
    ]
    for proc in procs:
        proc.start()
    await asyncio.to_thread(join_until, procs, time.monotonic() + args.drain_s)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()  # SIGTERM: the worker hands its running jobs back
    for proc in procs:
        await asyncio.to_thread(proc.join, STOP_GRACE_S)
        if proc.exitcode != 0:
            raise RuntimeError(f"a worker process ended with {proc.exitcode}")
    stamps = [(r["account_id"], r["at_s"]) for r in await pool.fetch(FINISHED, started_at)]
    demands = {r["account_id"]: r["jobs"] for r in await pool.fetch(DEMANDS)}
    if len(stamps) < 2:
        raise RuntimeError("fewer than two jobs finished")
    # From the first job finished: the workers' start-up (spawn, imports, connections) is
    # no part of the drain, and would weigh most on the smallest one.
    first_s = min(at for _, at in stamps)
    finished = [(account, at - first_s) for account, at in stamps]
    last_s = max(at for _, at in finished)
    return {
        "startup_s": round(first_s, 2),
        "seconds": round(last_s, 2),
        "jobs_done": len(finished),
        "drained_all": len(finished) == sum(demands.values()),
        "jobs_per_s": round((len(finished) - 1) / last_s, 1),
        **fairness(finished, demands),
    }


async def one_size(admin_url: str, accounts: int, args: argparse.Namespace) -> dict[str, Any]:
    admin = await asyncpg.connect(admin_url)
    name, url = await fresh_db(admin, admin_url)
    try:
        svc = await open_services(
            worker_settings(url, 1), provider=InstantProvider(), metrics=Metrics()
        )
        try:
            model = await model_batch(svc)
        finally:
            await svc.aclose()
        pool = await create_pool(url, max_size=2, min_size=1, command_timeout_s=600.0)
        try:
            await migrate(pool)
            filling = time.perf_counter()
            await fill(
                pool, model, accounts=accounts, jobs_per_account=args.jobs_per_account,
                prefix="acct",
            )  # fmt: skip
            await drop_model(pool, model)
            fill_s = time.perf_counter() - filling
            claims = await claim_latency(pool, args.rounds, accounts * args.jobs_per_account)
            drained = await drain(pool, url, args)
        finally:
            await pool.close()
    finally:
        await drop_db(admin, name)
        await admin.close()
    return {
        "accounts": accounts,
        "jobs": accounts * args.jobs_per_account,
        "fill_s": round(fill_s, 1),
        "claim_ms": claims,
        "drain": drained,
    }


def print_row(row: dict[str, Any]) -> None:
    claim, drained = row["claim_ms"], row["drain"]
    completion = drained["completion_jain"]
    print(
        f"{row['accounts']:>8,} {row['jobs']:>9,}"
        f" {claim['rolled_back']['p50']:>9.2f} {claim['rolled_back']['p99']:>9.2f}"
        f" {claim['draining']['p50']:>9.2f} {claim['draining']['p99']:>9.2f}"
        f" {drained['jobs_done']:>8} {drained['seconds']:>8.1f} {drained['jobs_per_s']:>7.1f}"
        f" {drained['served_share_jain_at_half']:>8.4f}"
        f" {'-' if completion is None else f'{completion:.4f}':>9}"
    )


async def main(args: argparse.Namespace) -> dict[str, Any]:
    print(
        f"{'accounts':>8} {'jobs':>9} {'rb p50':>9} {'rb p99':>9} {'drn p50':>9} {'drn p99':>9}"
        f" {'done':>8} {'drain s':>8} {'jobs/s':>7} {'J half':>8} {'J compl':>9}"
    )
    sizes = {}
    for label, accounts in (("baseline", args.baseline_accounts), ("scale", args.accounts)):
        sizes[label] = await one_size(args.admin_url, accounts, args)
        print_row(sizes[label])
    base, scale = sizes["baseline"], sizes["scale"]
    ratios = {
        "claim_p50_rolled_back": round(
            scale["claim_ms"]["rolled_back"]["p50"] / base["claim_ms"]["rolled_back"]["p50"], 2
        ),
        "claim_p50_draining": round(
            scale["claim_ms"]["draining"]["p50"] / base["claim_ms"]["draining"]["p50"], 2
        ),
        "jobs_per_s": round(scale["drain"]["jobs_per_s"] / base["drain"]["jobs_per_s"], 2),
    }
    print(
        f"{args.accounts:,} / {args.baseline_accounts:,} accounts: claim p50"
        f" {ratios['claim_p50_rolled_back']:.2f}x (rolled back),"
        f" {ratios['claim_p50_draining']:.2f}x (draining); jobs/s {ratios['jobs_per_s']:.2f}x"
    )
    return {
        "jobs_per_account": args.jobs_per_account,
        "workers": args.workers,
        "concurrency_per_worker": args.concurrency,
        "claim_size": CLAIM_SIZE,
        "rounds": args.rounds,
        "drain_s_cap": args.drain_s,
        "sizes": sizes,
        "scale_over_baseline": ratios,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=5_000)
    parser.add_argument("--baseline-accounts", type=int, default=50)
    parser.add_argument("--jobs-per-account", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--drain-s", type=float, default=180.0)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    add_out_argument(parser, "scale")
    args = parser.parse_args()
    run = Run("scale", args.out)
    figures = asyncio.run(main(args))
    run.finish(figures, postgresql=asyncio.run(postgres_version(args.admin_url)))
