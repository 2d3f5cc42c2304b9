"""Capacity benchmark: a server that announces no limits and takes N requests at once.

The simulator runs in its own process with ``--max-inflight N`` and a fixed latency (no
jitter, no output-speed term), no rate limits and so no rate-limit headers: above N
requests in flight it answers 503 "overloaded" (or a bare 429, ``--overload-status``) at
once, as a self-hosted inference server does. The best any client can do is N / latency
answers a second. Clients, each on a fresh simulator:

- ``bulkgen xW``: W ``bulkgen worker --burst`` processes (sharing Redis and one PostgreSQL
  database), limits ``auto``: the concurrency is probed (``limits/adaptive.py``);
- ``oracle c=N``: a plain openai-SDK client told the answer, exactly N requests in flight
  (the baseline: what knowing the capacity gives).

Figures: makespan; answers per second in the steady part of the run (5%-95% of the
answers, from the simulator's per-second counts) / (N / latency); the share of requests
answered "overloaded"; the most requests the simulator saw at once; attempts charged
beyond one per job, split into truncation retries (the simulator cut an answer at
``max_tokens``) and the rest (which overload answers must never be); jobs failed.

    .venv/bin/python bench/capacity.py --jobs 600 --workers 1

Writes its result to ``bench/results/capacity.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import openai
import redis.asyncio as aioredis

from bulkgen.intake import JobInput
from bulkgen.service import open_services
from bulkgen.settings import Settings
from bulkgen.simulator import SimConfig, SimulatorProcess
from bulkgen.simulator.control import sim_stats
from ratelimit import first_request_epoch_s, steady, with_database
from record import Run, add_out_argument, postgres_version, redis_version

API_KEY = "sk-bench"
MODEL = "gpt-4o"
BULKGEN = str(Path(sys.executable).with_name("bulkgen"))


@dataclass(frozen=True)
class Row:
    client: str
    jobs: int
    done: int
    failed: int
    makespan_s: float
    steady_per_s: float
    capacity_per_s: float
    steady_ratio: float
    requests: int
    overloaded: int
    overload_share: float
    inflight_peak: int
    attempts: int
    truncation_retries: int
    other_charged: int


def sim_config(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        rpm=None, tpm=None, ttft_ms=args.latency_ms, tokens_per_s=0.0, jitter=0.0, seed=13,
        api_key=API_KEY, max_inflight=args.max_inflight, overload_status=args.overload_status,
    )  # fmt: skip


def job_rows(jobs: int, tag: str) -> list[JobInput]:
    return [JobInput(f"{tag} topic {i}", {}, {}) for i in range(jobs)]


async def bulkgen_run(
    base_url: str, database_url: str, redis_url: str, jobs: int, workers: int
) -> dict[str, Any]:
    redis = aioredis.Redis.from_url(redis_url)
    await redis.flushdb()  # nothing learned by an earlier run may leak into this one
    await redis.aclose()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "OPENAI_BASE_URL": base_url,
        "OPENAI_API_KEY": API_KEY,
    }
    settings = Settings(
        database_url=database_url, redis_url=redis_url, openai_base_url=base_url,
        openai_api_key=API_KEY,
    )  # fmt: skip
    svc = await open_services(settings)
    try:
        rows = job_rows(jobs, f"capacity {uuid.uuid4().hex[:6]}")
        batch_id = await svc.submit(rows, svc.batch_options(model=MODEL), account="bench")
        stop = asyncio.Event()
        first = asyncio.create_task(first_request_epoch_s(base_url, stop))
        quiet = asyncio.subprocess.DEVNULL
        procs = [
            await asyncio.create_subprocess_exec(
                BULKGEN, "worker", "--burst", env=env, stdout=quiet, stderr=quiet
            )
            for _ in range(workers)
        ]
        for proc in procs:
            await proc.wait()
        stop.set()
        started_epoch_s = await first
        row = await svc.store.pool.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'done') AS done,"
            " coalesce(sum(attempts), 0) AS attempts,"
            " count(*) FILTER (WHERE max_tokens_grown) AS grown,"
            " extract(epoch FROM max(finished_at)) AS last"
            " FROM jobs WHERE batch_id = $1",
            batch_id,
        )
    finally:
        await svc.aclose()
    return {
        "done": int(row["done"]),
        "attempts": int(row["attempts"]),
        "grown": int(row["grown"]),
        "makespan_s": float(row["last"]) - started_epoch_s,
    }


async def oracle_run(base_url: str, jobs: int, concurrency: int) -> dict[str, Any]:
    """Exactly ``concurrency`` requests in flight; one attempt per job, nothing retried."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=60)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(jobs):
        queue.put_nowait(i)
    done = [0]

    async def lane() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            messages = [{"role": "user", "content": f"Write an article. Keyword: oracle {i}"}]
            try:
                await client.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
            except openai.APIError:
                continue
            done[0] += 1

    started = time.monotonic()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    makespan_s = time.monotonic() - started
    await client.close()
    return {"done": done[0], "attempts": jobs, "grown": 0, "makespan_s": makespan_s}


async def run_one(
    client: str, args: argparse.Namespace, database_url: str, capacity_per_s: float
) -> Row:
    async with SimulatorProcess(sim_config(args)) as sim:
        if client.startswith("bulkgen"):
            workers = int(client.rsplit("x", 1)[1])
            got = await bulkgen_run(sim.base_url, database_url, args.redis_url, args.jobs, workers)
        else:
            got = await oracle_run(sim.base_url, args.jobs, args.max_inflight)
        stats = await sim_stats(sim.base_url)
    ratio, _ = steady(stats["per_second"], "requests", capacity_per_s)
    requests, overloaded = int(stats["requests"]), int(stats["overloaded"])
    row = Row(
        client=client,
        jobs=args.jobs,
        done=got["done"],
        failed=args.jobs - got["done"],
        makespan_s=round(got["makespan_s"], 2),
        steady_per_s=round(ratio * capacity_per_s, 2),
        capacity_per_s=round(capacity_per_s, 2),
        steady_ratio=round(ratio, 4),
        requests=requests,
        overloaded=overloaded,
        overload_share=round(overloaded / requests, 5) if requests else 0.0,
        inflight_peak=int(stats["max_inflight_seen"]),
        attempts=got["attempts"],
        truncation_retries=got["grown"],
        other_charged=got["attempts"] - got["done"] - got["grown"],
    )
    print(json.dumps({"run": asdict(row)}), file=sys.stderr, flush=True)
    return row


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'client':<12} {'jobs':>5} {'failed':>6} {'makespan':>9} {'answers/s':>9} "
        f"{'/capacity':>9} {'requests':>8} {'overloaded':>10} {'share':>7} {'peak':>5} "
        f"{'attempts':>8} {'trunc':>6} {'other':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.client:<12} {r.jobs:>5} {r.failed:>6} {r.makespan_s:>8.1f}s "
            f"{r.steady_per_s:>9.2f} {r.steady_ratio:>9.3f} {r.requests:>8} "
            f"{r.overloaded:>10} {r.overload_share:>7.2%} {r.inflight_peak:>5} "
            f"{r.attempts:>8} {r.truncation_retries:>6} {r.other_charged:>6}"
        )


async def main(args: argparse.Namespace) -> dict[str, Any]:
    capacity_per_s = args.max_inflight / (args.latency_ms / 1000.0)
    clients = [f"bulkgen x{w}" for w in args.workers] + [f"oracle c={args.max_inflight}"]

    async def body(database_url: str) -> list[Row]:
        return [await run_one(c, args, database_url, capacity_per_s) for c in clients]

    rows: list[Row] = await with_database(args.admin_url, body)
    print(
        f"# max_inflight={args.max_inflight} latency={args.latency_ms:.0f} ms"
        f" overload_status={args.overload_status}: capacity {capacity_per_s:.1f} answers/s"
    )
    print_table(rows)
    oracle = rows[-1]
    for r in rows[:-1]:
        share = r.steady_per_s / oracle.steady_per_s if oracle.steady_per_s else 0.0
        print(f"{r.client} / {oracle.client}: steady answers/s {share:.3f}")
    return {
        "max_inflight": args.max_inflight,
        "latency_ms": args.latency_ms,
        "overload_status": args.overload_status,
        "capacity_per_s": capacity_per_s,
        "rows": [asdict(r) for r in rows],
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--max-inflight", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=500.0)
    parser.add_argument("--overload-status", type=int, choices=(503, 429), default=503)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/10")
    add_out_argument(parser, "capacity")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    run = Run("capacity", args.out)
    figures = asyncio.run(main(args))
    run.finish(
        {"jobs": args.jobs, "workers": args.workers, **figures},
        postgresql=asyncio.run(postgres_version(args.admin_url)),
        redis=asyncio.run(redis_version(args.redis_url)),
    )
