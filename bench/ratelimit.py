"""Rate-limit benchmark: how close to the provider's limit each client runs, and at what cost.

Every run gets a fresh simulator in its own process (OpenAI-compatible, over real HTTP,
latency proportional to output tokens), so buckets and ``/_sim/stats`` start clean. Per
scenario (one RPM-bound, one TPM-bound; limits chosen so ``--jobs`` take about a minute):

- ``bulkgen x1``: one ``bulkgen worker --burst`` process, limits ``auto`` (learned);
- ``bulkgen x3``: three such processes sharing Redis and one PostgreSQL database;
- ``seed c=8``: the seed's loop, a plain openai-SDK client, concurrency 8, backoff on 429
  ``min(1 s * 2**attempt, 30 s) + uniform(0, 0.5 s)``, 5 attempts;
- ``naive c=200``: the same loop at concurrency 200.

Figures: makespan; makespan / ideal (ideal = the batch's cost at exactly the binding
limit); the steady rate / limit (from the simulator's per-second counts of admitted
requests or tokens between 5% and 95% of the admitted total, so warm-up and tail are
left out); the busiest 10 s of that window / limit; the share of requests
answered 429; retries (provider requests beyond one per job); jobs that failed; answers
the simulator cut at ``max_tokens`` (``finish_reason=length``: bulkgen's jobs record the
retry this costs, the plain loops count them in the answers they get). Per scenario it also
prints how bulkgen's token estimate for the batch compares with what the simulator charges.

    .venv/bin/python bench/ratelimit.py --jobs 2000 --seed-jobs 300 --naive-jobs 1000

Writes its result to ``bench/results/ratelimit.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import redis.asyncio as aioredis

from bulkgen.db.migrate import migrate
from bulkgen.db.pool import create_pool
from bulkgen.intake import JobInput
from bulkgen.options import validate_options
from bulkgen.pipeline import CHARS_PER_TOKEN
from bulkgen.prompts import PromptTemplate
from bulkgen.service import Services, open_services
from bulkgen.settings import Settings
from bulkgen.simulator import SimConfig, SimulatorProcess
from bulkgen.simulator.control import sim_stats
from bulkgen.simulator.tokens import prompt_tokens
from record import Run, add_out_argument, postgres_version, redis_version

API_KEY = "sk-bench"
MODEL = "gpt-4o"
BULKGEN = str(Path(sys.executable).with_name("bulkgen"))
PEAK_WINDOW_S = 10
BASE_SIM = SimConfig(ttft_ms=300.0, tokens_per_s=500.0, jitter=0.1, seed=11, api_key=API_KEY)


@dataclass(frozen=True)
class Scenario:
    name: str
    bound: str  # "rpm" | "tpm": which limit binds
    sim: SimConfig


@dataclass(frozen=True)
class Outcome:
    """What a client reports of its own run."""

    done: int
    makespan_s: float
    truncated: int  # answers cut at max_tokens (finish_reason "length")


@dataclass(frozen=True)
class Row:
    scenario: str
    client: str
    jobs: int
    done: int
    failed: int
    makespan_s: float
    ideal_s: float
    steady_ratio: float
    peak_second_ratio: float
    requests: int
    answered_429: int
    share_429: float
    retries: int
    truncated: int
    truncated_share: float

    @property
    def makespan_ratio(self) -> float:
        return self.makespan_s / self.ideal_s if self.ideal_s else 0.0


def job_rows(jobs: int, tag: str) -> list[JobInput]:
    """Jobs with max_tokens spread 150..1400, so latency spreads ~0.45..3 s (seeded)."""
    rng = random.Random(7)
    return [
        JobInput(f"{tag} topic {i}", {}, {"max_tokens": rng.randrange(150, 1401)})
        for i in range(jobs)
    ]


def messages_of(row: JobInput) -> list[dict[str, str]]:
    """The exact messages bulkgen sends for a row, so every client pays the same tokens."""
    options = row.options(validate_options({"model": MODEL}, Settings()))
    rendered = PromptTemplate.default().render(row.template_variables(options))
    return [{"role": role, "content": content} for role, content in rendered]


def batch_cost_tokens(rows: list[JobInput]) -> int:
    """Tokens the simulator charges for one attempt of every row (prompt + max_tokens)."""
    total = 0
    for row in rows:
        texts = [m["content"] for m in messages_of(row)]
        total += prompt_tokens(texts) + int(row.overrides["max_tokens"])
    return total


def batch_estimate_tokens(rows: list[JobInput]) -> int:
    """What bulkgen reserves for one attempt of every row: prompt characters / 4, rounded
    down, plus max_tokens (the pipeline's estimate, before any answer corrects it)."""
    total = 0
    for row in rows:
        chars = sum(len(m["content"]) for m in messages_of(row))
        total += chars // CHARS_PER_TOKEN + int(row.overrides["max_tokens"])
    return total


def scenarios(jobs: int, minute_s: float) -> list[Scenario]:
    """RPM-bound and TPM-bound limits under which ``jobs`` take about ``minute_s``."""
    rpm = round(jobs * 60.0 / minute_s)
    tpm = round(batch_cost_tokens(job_rows(jobs, "probe")) * 60.0 / minute_s)
    return [
        Scenario("rpm-bound", "rpm", _with(rpm=rpm, tpm=tpm * 4)),
        Scenario("tpm-bound", "tpm", _with(rpm=rpm * 4, tpm=tpm)),
    ]


def _with(**changes: Any) -> SimConfig:
    data = {**BASE_SIM.__dict__, **changes}
    return SimConfig(**data)


# ----------------------------------------------------------------- measuring


async def first_request_epoch_s(base_url: str, stop: asyncio.Event) -> float:
    """Poll the simulator until it has seen a request: the start of a bulkgen makespan."""
    async with httpx.AsyncClient() as client:
        url = base_url.removesuffix("/v1") + "/_sim/stats"
        while not stop.is_set():
            if (await client.get(url)).json()["requests"] > 0:
                return time.time()
            await asyncio.sleep(0.02)
    return time.time()


def steady(per_second: list[dict[str, int]], field: str, limit_per_s: float) -> tuple[float, float]:
    """(mean rate / limit, busiest 10 s / limit) between 5% and 95% of the admitted total."""
    counts = [(p["t"], p[field]) for p in per_second]
    total = sum(c for _, c in counts)
    if not counts or total == 0:
        return 0.0, 0.0
    cumulative, start_t, end_t = 0, counts[0][0], counts[-1][0]
    for t, c in counts:
        before = cumulative
        cumulative += c
        if before < 0.05 * total <= cumulative:
            start_t = t + 1  # the second crossing 5% is still warming up
        if before < 0.95 * total <= cumulative:
            end_t = t - 1  # and the one crossing 95% may be partial
    window = [c for t, c in counts if start_t <= t <= end_t]
    if not window:
        return 0.0, 0.0
    span = min(PEAK_WINDOW_S, len(window))
    peak = max(sum(window[i : i + span]) for i in range(len(window) - span + 1)) / span
    return sum(window) / len(window) / limit_per_s, peak / limit_per_s


def make_row(
    scenario: Scenario,
    client: str,
    jobs: int,
    outcome: Outcome,
    stats: dict[str, Any],
) -> Row:
    sim = scenario.sim
    per_second = stats["per_second"]
    admitted_tokens = sum(p["tokens"] for p in per_second)
    ideal_s = max(
        jobs * 60.0 / (sim.rpm or 1e12),
        admitted_tokens * jobs / max(1, stats["ok"]) * 60.0 / (sim.tpm or 1e12),
    )
    if scenario.bound == "rpm":
        ratio, peak = steady(per_second, "requests", (sim.rpm or 0) / 60.0)
    else:
        ratio, peak = steady(per_second, "tokens", (sim.tpm or 0) / 60.0)
    requests = int(stats["requests"])
    refused = sum(stats["rate_limited"].values())
    return Row(
        scenario=scenario.name,
        client=client,
        jobs=jobs,
        done=outcome.done,
        failed=jobs - outcome.done,
        makespan_s=round(outcome.makespan_s, 2),
        ideal_s=round(ideal_s, 2),
        steady_ratio=round(ratio, 4),
        peak_second_ratio=round(peak, 3),
        requests=requests,
        answered_429=refused,
        share_429=round(refused / requests, 5) if requests else 0.0,
        retries=requests - jobs,
        truncated=outcome.truncated,
        truncated_share=round(outcome.truncated / stats["ok"], 5) if stats["ok"] else 0.0,
    )


# ----------------------------------------------------------------- clients


async def seed_loop(base_url: str, rows: list[JobInput], concurrency: int) -> Outcome:
    """The seed's client: fixed concurrency, exponential backoff with jitter on 429 only."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=120)
    queue: asyncio.Queue[JobInput] = asyncio.Queue()
    for row in rows:
        queue.put_nowait(row)
    done, truncated = [0], [0]
    rng = random.Random(5)

    async def one(row: JobInput) -> None:
        for attempt in range(1, 6):
            try:
                answer = await client.chat.completions.create(
                    model=MODEL,
                    messages=messages_of(row),  # type: ignore[arg-type]
                    max_tokens=int(row.overrides["max_tokens"]),
                )
            except openai.RateLimitError:
                if attempt == 5:
                    return  # exhausted: the job failed (loudly, unlike the seed)
                await asyncio.sleep(min(1.0 * 2**attempt, 30.0) + rng.uniform(0.0, 0.5))
            except openai.APIConnectionError:
                return  # the seed retried only 429s: any other error failed the job
            else:
                done[0] += 1
                truncated[0] += answer.choices[0].finish_reason == "length"
                return

    async def lane() -> None:
        while not queue.empty():
            await one(queue.get_nowait())

    started = time.monotonic()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    makespan_s = time.monotonic() - started
    await client.close()
    return Outcome(done[0], makespan_s, truncated[0])


@dataclass
class FleetRun:
    """A batch that ``workers`` worker processes ran to the end: its services (open for the
    caller's own queries), its id, and the epoch of the simulator's first request."""

    svc: Services
    batch_id: uuid.UUID
    started_epoch_s: float


@contextlib.asynccontextmanager
async def fleet_run(
    base_url: str,
    database_url: str,
    redis_url: str,
    rows: list[JobInput],
    workers: int,
    *,
    model: str,
    during: Callable[[asyncio.Task[float]], Awaitable[None]] | None = None,
) -> AsyncIterator[FleetRun]:
    """Flush the benchmark's Redis database, submit ``rows``, start ``workers`` burst
    worker processes and wait until they all exit. ``during`` runs beside them, given the
    task that ends with the epoch of the simulator's first request, and is cancelled when
    they end."""
    redis = aioredis.Redis.from_url(redis_url)
    await redis.flushdb()  # learned limits and cached results of earlier runs must not leak
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
        batch_id = await svc.submit(rows, svc.batch_options(model=model), account="bench")
        stop = asyncio.Event()
        first = asyncio.create_task(first_request_epoch_s(base_url, stop))
        quiet = asyncio.subprocess.DEVNULL
        procs = [
            await asyncio.create_subprocess_exec(
                BULKGEN, "worker", "--burst", env=env, stdout=quiet, stderr=quiet
            )
            for _ in range(workers)
        ]
        beside = asyncio.create_task(during(first)) if during else None
        for proc in procs:
            await proc.wait()
        stop.set()
        if beside is not None:
            beside.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beside
        yield FleetRun(svc, batch_id, await first)
    finally:
        await svc.aclose()


async def bulkgen_run(
    base_url: str, database_url: str, redis_url: str, rows: list[JobInput], workers: int
) -> Outcome:
    """Submit the batch, start ``workers`` worker processes, wait until they all exit.
    A job whose answer was cut at max_tokens is retried once with more room and says so
    (``max_tokens_grown``); a second cut fails it as ``truncated``."""
    async with fleet_run(base_url, database_url, redis_url, rows, workers, model=MODEL) as run:
        counts = {c.status: c.jobs for c in await run.svc.store.batch_counts(run.batch_id)}
        last, truncated = await run.svc.store.pool.fetchrow(
            "SELECT extract(epoch FROM max(finished_at)),"
            " count(*) FILTER (WHERE max_tokens_grown)"
            " + count(*) FILTER (WHERE error_kind = 'truncated' AND status = 'failed')"
            " FROM jobs WHERE batch_id = $1",
            run.batch_id,
        )
    return Outcome(counts.get("done", 0), float(last) - run.started_epoch_s, int(truncated))


# ----------------------------------------------------------------- orchestration


async def run_one(
    scenario: Scenario, client: str, jobs: int, args: argparse.Namespace, database_url: str
) -> Row:
    rows = job_rows(jobs, f"{scenario.name} {client} {uuid.uuid4().hex[:6]}")
    async with SimulatorProcess(scenario.sim) as sim:
        if client.startswith("bulkgen"):
            workers = int(client.rsplit("x", 1)[1])
            outcome = await bulkgen_run(sim.base_url, database_url, args.redis_url, rows, workers)
        else:
            concurrency = int(client.rsplit("=", 1)[1])
            outcome = await seed_loop(sim.base_url, rows, concurrency)
        stats = await sim_stats(sim.base_url)
    row = make_row(scenario, client, jobs, outcome, stats)
    print(json.dumps({"run": asdict(row)}), file=sys.stderr, flush=True)
    return row


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'scenario':<10} {'client':<12} {'jobs':>5} {'failed':>6} {'makespan':>9} "
        f"{'/ideal':>7} {'rate/limit':>10} {'peak 10s':>8} {'requests':>8} {'429 share':>10} "
        f"{'retries':>8} {'truncated':>9} {'trunc share':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.scenario:<10} {r.client:<12} {r.jobs:>5} {r.failed:>6} {r.makespan_s:>8.1f}s "
            f"{r.makespan_ratio:>7.2f} {r.steady_ratio:>10.3f} {r.peak_second_ratio:>8.3f} "
            f"{r.requests:>8} {r.share_429:>10.2%} {r.retries:>8} {r.truncated:>9} "
            f"{r.truncated_share:>11.2%}"
        )


async def with_database(admin_url: str, body: Any) -> Any:
    """Create a fresh database, migrate it, run ``body(url)``, always drop it."""
    name = f"bulkgen_bench_{os.getpid()}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    try:
        pool = await create_pool(url, max_size=2, min_size=1, command_timeout_s=60.0)
        await migrate(pool)
        await pool.close()
        return await body(url)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def estimate_vs_charge(jobs: int) -> dict[str, float]:
    """bulkgen's reservation for a batch against the simulator's charge for it: the gap is
    the message framing that characters / 4 does not see."""
    rows = job_rows(jobs, "probe")
    estimate, charge = batch_estimate_tokens(rows), batch_cost_tokens(rows)
    return {
        "estimate_tokens": estimate,
        "charged_tokens": charge,
        "estimate_over_charge": round(estimate / charge, 4),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    plan = [
        ("bulkgen x1", args.jobs),
        ("bulkgen x3", args.jobs),
        ("seed c=8", args.seed_jobs),
        ("naive c=200", args.naive_jobs or args.jobs),
    ]
    chosen = [s for s in scenarios(args.jobs, args.minute_s) if s.name in args.scenarios]

    async def body(database_url: str) -> list[Row]:
        rows = []
        for scenario in chosen:
            for client, jobs in plan:
                if client.split()[0] in args.clients:
                    rows.append(await run_one(scenario, client, jobs, args, database_url))
        return rows

    results: list[Row] = await with_database(args.admin_url, body)
    for s in chosen:
        print(f"# {s.name}: rpm={s.sim.rpm} tpm={s.sim.tpm} (per minute)")
    print_table(results)
    estimate = estimate_vs_charge(args.jobs)
    print(
        f"bulkgen's token estimate for the batch / the simulator's charge:"
        f" {estimate['estimate_tokens']} / {estimate['charged_tokens']}"
        f" = {estimate['estimate_over_charge']:.4f}"
    )
    for r in results:
        if r.client.startswith("bulkgen"):
            print(
                f"{r.scenario} {r.client}: {r.retries} retries ="
                f" {r.truncated} truncated answers + {r.answered_429} 429s"
                f" + {r.retries - r.truncated - r.answered_429} other"
            )
    return {
        "limits": {s.name: {"rpm": s.sim.rpm, "tpm": s.sim.tpm} for s in chosen},
        "rows": [{**asdict(r), "makespan_ratio": round(r.makespan_ratio, 3)} for r in results],
        "bulkgen_estimate": estimate,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--seed-jobs", type=int, default=300, help="jobs for seed c=8 (slow)")
    parser.add_argument("--naive-jobs", type=int, default=0, help="jobs for naive (0: --jobs)")
    parser.add_argument("--minute-s", type=float, default=60.0, help="target makespan")
    parser.add_argument("--scenarios", nargs="+", default=["rpm-bound", "tpm-bound"])
    parser.add_argument("--clients", nargs="+", default=["bulkgen", "seed", "naive"])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/10")
    add_out_argument(parser, "ratelimit")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    run = Run("ratelimit", args.out)
    figures = asyncio.run(main(args))
    run.finish(
        {
            "jobs": args.jobs,
            "seed_jobs": args.seed_jobs,
            "naive_jobs": args.naive_jobs or args.jobs,
            **figures,
        },
        postgresql=asyncio.run(postgres_version(args.admin_url)),
        redis=asyncio.run(redis_version(args.redis_url)),
    )
