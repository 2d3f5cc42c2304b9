"""Economy mode against online: the same batch, its provider cost, requests and wall time.

One batch of ``--jobs`` keywords runs twice against one simulator (its own process) and
one PostgreSQL database: online (one chat call per job, through the rate governor) and in
economy mode (through the simulator's Files and Batch APIs). Each run has an account of
its own, so no answer of the first run is a cache hit in the second. The same rate of
transient faults hits both: ``--fault-rate`` of online calls are answered 503, and the
same share of batch rows end in the error file with a 500; both are retried by the same
rules, so the economy cost may pass half the online one by its resubmissions only.

The simulator's chat clock runs ``--chat-time-scale`` times faster than real time (a
model answering at 60 tokens/s after 0.4 s), and its batch clock ``--batch-time-scale``
times faster: a provider batch validates for 60 simulated seconds, runs 50 rows a
simulated second, and finalizes for 60 s. Wall times are printed with both scales, and the
economy run's time in simulated hours. Provider requests are counted by the simulator:
chat calls online; for economy, every call to its Files and Batch APIs (uploads, creates,
polls, downloads) and the batch rows it ran.

    .venv/bin/python bench/economy.py [--jobs 2000] [--fault-rate 0.01]
        [--chat-time-scale 10] [--batch-time-scale 600]
        [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]

Creates and drops its own database. Writes ``bench/results/economy.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bulkgen.intake import JobInput
from bulkgen.metrics import Metrics
from bulkgen.models import BatchMode
from bulkgen.options import BatchOptions
from bulkgen.service import open_services
from bulkgen.settings import Settings
from bulkgen.simulator import SimConfig, SimulatorProcess
from bulkgen.simulator.config import BatchConfig
from bulkgen.simulator.control import sim_stats
from record import Run, add_out_argument, postgres_version

OPTIONS = BatchOptions(model="gpt-4o", max_tokens=1200, target_words=600)


def sim_config(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        rpm=5000,
        tpm=2_000_000,
        ttft_ms=400,
        tokens_per_s=60,
        jitter=0.2,
        time_scale=args.chat_time_scale,
        faults={"503": args.fault_rate} if args.fault_rate else {},
        seed=3,
        batch=BatchConfig(
            time_scale=args.batch_time_scale,
            requests_per_s=50.0,
            validating_s=60.0,
            finalizing_s=60.0,
            enqueued_tokens=None,
            faults={"500": args.fault_rate} if args.fault_rate else {},
        ),
    )


async def one_run(
    settings: Settings, rows: list[JobInput], mode: BatchMode, base_url: str
) -> dict[str, Any]:
    svc = await open_services(settings, metrics=Metrics())
    try:
        before = await sim_stats(base_url)
        batch_id = await svc.submit(rows, OPTIONS, account=f"bench-{mode}", mode=mode)
        started = time.perf_counter()
        await svc.worker(burst=True).run()
        wall_s = time.perf_counter() - started
        after = await sim_stats(base_url)
        counts = {c.status: c.jobs for c in await svc.store.batch_counts(batch_id)}
        usage = await svc.store.batch_usage(batch_id, svc.prices)
        empty = await svc.store.batch_empty_done(batch_id)
    finally:
        await svc.aclose()
    batch_before, batch_after = before["batch"], after["batch"]
    chat_calls = after["requests"] - before["requests"]
    batch_api_calls = batch_after["api_calls"] - batch_before["api_calls"]
    return {
        "mode": str(mode),
        "jobs": len(rows),
        "done": counts.get("done", 0),
        "empty_done": empty,
        "cost_usd": str(usage.cost_usd),
        "economy_saved_usd": str(usage.economy_saved_usd),
        "provider_requests": chat_calls + batch_api_calls,
        "chat_calls": chat_calls,
        "batch_api_calls": batch_api_calls,
        "file_uploads": batch_after["file_uploads"] - batch_before["file_uploads"],
        "batch_creates": batch_after["batch_creates"] - batch_before["batch_creates"],
        "batch_rows_run": batch_after["requests"] - batch_before["requests"],
        "wall_s": round(wall_s, 2),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    name = f"bulkgen_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    rows = [JobInput(f"economy bench keyword {i}", {}, {}) for i in range(args.jobs)]
    scale = args.batch_time_scale
    try:
        url = urlunsplit(urlsplit(args.admin_url)._replace(path="/" + name))
        async with SimulatorProcess(sim_config(args)) as sim:
            settings = Settings(
                database_url=url,
                redis_url=None,
                openai_base_url=sim.base_url,
                openai_api_key="sk-bench",
                poll_s=0.2,
                # The defaults (first poll after 30 s, doubling up to 10 min), in batch time.
                economy_poll_s=30 / scale,
                economy_max_poll_s=600 / scale,
                economy_tick_s=0.2,
                economy_retry_s=60 / scale,
            )
            online = await one_run(settings, rows, BatchMode.ONLINE, sim.base_url)
            economy = await one_run(settings, rows, BatchMode.ECONOMY, sim.base_url)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    online_cost, economy_cost = Decimal(online["cost_usd"]), Decimal(economy["cost_usd"])
    resent = economy["batch_rows_run"] - args.jobs
    return {
        "jobs": args.jobs,
        "fault_rate": args.fault_rate,
        "chat_time_scale": args.chat_time_scale,
        "batch_time_scale": scale,
        "online": online,
        "economy": economy,
        "cost_ratio": round(float(economy_cost / online_cost), 4) if online_cost else None,
        "rows_resent": resent,
        "cost_bound": round(0.5 * (1 + resent / args.jobs), 4),
        "requests_ratio": round(economy["provider_requests"] / online["provider_requests"], 4),
        "economy_simulated_hours": round(economy["wall_s"] * scale / 3600, 2),
    }


def print_table(result: dict[str, Any]) -> None:
    cols = (
        "done",
        "cost_usd",
        "provider_requests",
        "chat_calls",
        "batch_api_calls",
        "file_uploads",
        "batch_creates",
        "batch_rows_run",
        "wall_s",
    )
    print(f"{'mode':<10}" + "".join(f"{c:>18}" for c in cols))
    for mode in ("online", "economy"):
        print(f"{mode:<10}" + "".join(f"{result[mode][c]!s:>18}" for c in cols))
    print(
        f"economy / online: cost {result['cost_ratio']} (bound: 0.5 x (1 + "
        f"{result['rows_resent']} rows resent / {result['jobs']}) = {result['cost_bound']}), "
        f"provider requests {result['requests_ratio']}; economy took "
        f"{result['economy']['wall_s']} s wall = {result['economy_simulated_hours']} h of "
        f"batch time (x{result['batch_time_scale']}); online at chat time "
        f"x{result['chat_time_scale']}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--fault-rate", type=float, default=0.01)
    parser.add_argument("--chat-time-scale", type=float, default=10.0)
    parser.add_argument("--batch-time-scale", type=float, default=600.0)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    add_out_argument(parser, "economy")
    args = parser.parse_args()
    run = Run("economy", args.out)
    result = asyncio.run(main(args))
    print_table(result)
    run.finish(result, postgresql=asyncio.run(postgres_version(args.admin_url)))
