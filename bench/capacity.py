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

``--change``: instead, the simulator's ``max_inflight`` is changed mid-run through
``/_sim/config`` (``--phases``, 8 -> 32 -> 8 by default, ``--phase-s`` apart) under W
workers sharing Redis, and every 0.1 s the fleet's probed limit is read where the
workers share it (Redis), beside the simulator's requests in flight. Figures per change:
how long the limit took to follow it (to 7/8 of a larger capacity, or to within 2 of a
smaller one), the requests and overload answers of that phase.

Writes its result to ``bench/results/capacity.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import httpx
import openai
import redis.asyncio as aioredis

from bulkgen.intake import JobInput
from bulkgen.limits import LimitKey, api_key_id
from bulkgen.limits.redis_backend import read_fleet_limit
from bulkgen.simulator import SimConfig, SimulatorProcess
from bulkgen.simulator.control import sim_configure, sim_stats
from ratelimit import fleet_run, steady, with_database
from record import Run, add_out_argument, postgres_version, redis_version

API_KEY = "sk-bench"
MODEL = "gpt-4o"


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
    base_url: str,
    database_url: str,
    redis_url: str,
    jobs: int,
    workers: int,
    during: Callable[[asyncio.Task[float]], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """W burst workers on a fresh batch; ``during`` runs beside them, given the task that
    ends with the epoch of the simulator's first request, and is cancelled when they end."""
    rows = job_rows(jobs, f"capacity {uuid.uuid4().hex[:6]}")
    async with fleet_run(
        base_url, database_url, redis_url, rows, workers, model=MODEL, during=during
    ) as run:
        row = await run.svc.store.pool.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'done') AS done,"
            " coalesce(sum(attempts), 0) AS attempts,"
            " count(*) FILTER (WHERE max_tokens_grown) AS grown,"
            " extract(epoch FROM max(finished_at)) AS last"
            " FROM jobs WHERE batch_id = $1",
            run.batch_id,
        )
    return {
        "done": int(row["done"]),
        "attempts": int(row["attempts"]),
        "grown": int(row["grown"]),
        "makespan_s": float(row["last"]) - run.started_epoch_s,
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


@dataclass(frozen=True)
class Follow:
    client: str
    change: str  # "8 -> 32"
    at_s: float  # since the first request
    followed_s: float | None  # None: not within the phase
    requests: int
    overloaded: int
    overload_share: float
    limit_range: str  # the fleet's limit in the phase's second half, min-max
    inflight_peak: int  # the most requests the simulator saw at once in the phase (sampled)


@dataclass(frozen=True)
class Sample:
    epoch_s: float
    limit: int  # the fleet's probed limit, 0 while none is shared
    inflight: int  # at the simulator
    requests: int  # cumulative, at the simulator
    overloaded: int


async def sample_forever(base_url: str, redis_url: str, samples: list[Sample]) -> None:
    """The fleet's limit as the workers share it in Redis, and the simulator's counts."""
    key = LimitKey(base_url, api_key_id(API_KEY), MODEL)
    redis = aioredis.Redis.from_url(redis_url)
    url = base_url.removesuffix("/v1") + "/_sim/stats"
    try:
        async with httpx.AsyncClient() as client:
            while True:
                stats = (await client.get(url)).json()
                reading = await read_fleet_limit(redis, key)
                samples.append(
                    Sample(
                        time.time(),
                        reading.limit if reading else 0,
                        int(stats["inflight"]),
                        int(stats["requests"]),
                        int(stats["overloaded"]),
                    )
                )
                await asyncio.sleep(0.1)
    finally:
        await redis.aclose()


async def change_capacity(
    base_url: str, phases: list[int], phase_s: float, first: asyncio.Task[float]
) -> list[tuple[float, int]]:
    """Set ``max_inflight`` to each phase's value, ``phase_s`` apart from the first request."""
    changes = [(await first, phases[0])]
    for index, capacity in enumerate(phases[1:], start=1):
        await asyncio.sleep(max(0.0, changes[0][0] + index * phase_s - time.time()))
        await sim_configure(base_url, {"max_inflight": capacity})
        changes.append((time.time(), capacity))
    return changes


def follow_rows(
    client: str, samples: list[Sample], changes: list[tuple[float, int]], end_s: float
) -> list[Follow]:
    rows, previous = [], 0
    for index, (at_s, capacity) in enumerate(changes):
        until_s = changes[index + 1][0] if index + 1 < len(changes) else end_s
        phase = [s for s in samples if at_s <= s.epoch_s < until_s]
        if not phase:
            continue
        if capacity > previous:
            hit = next((s for s in phase if s.limit >= 0.875 * capacity), None)
        else:
            hit = next((s for s in phase if 0 < s.limit <= capacity + 2), None)
        late = [s.limit for s in phase if s.epoch_s >= (at_s + until_s) / 2] or [0]
        requests = phase[-1].requests - phase[0].requests
        overloaded = phase[-1].overloaded - phase[0].overloaded
        rows.append(
            Follow(
                client=client,
                change=f"{previous} -> {capacity}",
                at_s=round(at_s - changes[0][0], 1),
                followed_s=None if hit is None else round(hit.epoch_s - at_s, 2),
                requests=requests,
                overloaded=overloaded,
                overload_share=round(overloaded / requests, 4) if requests else 0.0,
                limit_range=f"{min(late)}-{max(late)}",
                inflight_peak=max(s.inflight for s in phase),
            )
        )
        previous = capacity
    return rows


def change_jobs(args: argparse.Namespace) -> int:
    """Enough jobs to keep every phase busy at its capacity, and some."""
    return int(1.2 * args.phase_s * sum(args.phases) / (args.latency_ms / 1000.0))


async def change_one(workers: int, args: argparse.Namespace, database_url: str) -> list[Follow]:
    samples: list[Sample] = []
    changes: list[tuple[float, int]] = []
    config = replace(sim_config(args), max_inflight=args.phases[0])
    jobs = change_jobs(args)

    async with SimulatorProcess(config) as sim:

        async def during(first: asyncio.Task[float]) -> None:
            sampler = asyncio.create_task(sample_forever(sim.base_url, args.redis_url, samples))
            try:
                done = await change_capacity(sim.base_url, args.phases, args.phase_s, first)
                changes.extend(done)
                await asyncio.Event().wait()  # sample until the workers are done
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler

        got = await bulkgen_run(
            sim.base_url, database_url, args.redis_url, jobs, workers, during=during
        )
    end_s = changes[0][0] + len(args.phases) * args.phase_s if changes else 0.0
    rows = follow_rows(f"bulkgen x{workers}", samples, changes, end_s)
    for row in rows:
        print(json.dumps({"follow": asdict(row)}), file=sys.stderr, flush=True)
    print(
        json.dumps({"run": {"workers": workers, "jobs": jobs, **got}}), file=sys.stderr, flush=True
    )
    return rows


async def change_main(args: argparse.Namespace) -> dict[str, Any]:
    async def body(database_url: str) -> list[Follow]:
        rows: list[Follow] = []
        for workers in args.workers:
            rows += await change_one(workers, args, database_url)
        return rows

    rows: list[Follow] = await with_database(args.admin_url, body)
    print(
        f"# max_inflight {' -> '.join(map(str, args.phases))}, {args.phase_s:.0f} s apart,"
        f" latency={args.latency_ms:.0f} ms (one round trip)"
    )
    header = (
        f"{'client':<11} {'change':>9} {'at':>6} {'followed in':>11} {'round trips':>11} "
        f"{'requests':>8} {'overloaded':>10} {'share':>7} {'limit late':>10} {'peak':>5}"
    )
    print(header)
    print("-" * len(header))
    round_trip_s = args.latency_ms / 1000.0
    for r in rows:
        followed = "never" if r.followed_s is None else f"{r.followed_s:.1f} s"
        trips = "" if r.followed_s is None else f"{r.followed_s / round_trip_s:.1f}"
        print(
            f"{r.client:<11} {r.change:>9} {r.at_s:>5.1f}s {followed:>11} {trips:>11} "
            f"{r.requests:>8} {r.overloaded:>10} {r.overload_share:>7.2%} {r.limit_range:>10} "
            f"{r.inflight_peak:>5}"
        )
    return {
        "jobs": change_jobs(args),
        "phases": args.phases,
        "phase_s": args.phase_s,
        "latency_ms": args.latency_ms,
        "overload_status": args.overload_status,
        "follow": [asdict(r) for r in rows],
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
    parser.add_argument("--change", action="store_true", help="change max_inflight mid-run")
    parser.add_argument("--phases", type=int, nargs="+", default=[8, 32, 8])
    parser.add_argument("--phase-s", type=float, default=10.0)
    add_out_argument(parser, "capacity")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    run = Run("capacity_change" if args.change else "capacity", args.out)
    figures = asyncio.run(change_main(args) if args.change else main(args))
    run.finish(
        {"jobs": args.jobs, "workers": args.workers, **figures},
        postgresql=asyncio.run(postgres_version(args.admin_url)),
        redis=asyncio.run(redis_version(args.redis_url)),
    )
