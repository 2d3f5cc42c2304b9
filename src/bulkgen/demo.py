"""``bulkgen demo``: a whole batch, end to end, on a fresh machine.

Embedded PostgreSQL (unless ``DATABASE_URL`` is set), the simulator in its own process at a
realistic setting (500 RPM in simulated time, running 10x faster than the wall clock, a few
percent of 503s and empty answers), the 200 example keywords, live progress bars, and a
summary of what bulkgen guards against: peak database connections against the pool's cap,
provider 429s, retries and rate-limit waits, and ``done`` jobs with empty content (always 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from importlib import resources

from rich.console import Console
from rich.table import Table

from bulkgen.intake import JobInput, parse_csv
from bulkgen.metrics import Metrics
from bulkgen.models import JobStatus
from bulkgen.progress import batch_progress
from bulkgen.providers import OpenAICompatProvider
from bulkgen.service import BUILTIN_SIMULATOR, SIMULATOR_API_KEY, Services, services
from bulkgen.settings import Settings
from bulkgen.simulator import SimulatorProcess
from bulkgen.simulator.control import sim_stats

# The worker's built-in simulator, with a few faults so the summary shows them handled.
DEMO_SIMULATOR = replace(BUILTIN_SIMULATOR, faults={"503": 0.03, "empty": 0.02}, seed=7)


@dataclass(frozen=True)
class DemoReport:
    batch_id: str
    jobs: int
    done: int
    failed: int
    cancelled: int
    empty_done: int
    wall_s: float
    provider_requests: int
    provider_429s: int
    retries: int
    prompt_tokens: int
    completion_tokens: int
    peak_db_connections: int
    db_pool_max: int
    cost_usd: str = "0"  # money as exact decimal strings
    cache_hits: int = 0
    saved_usd: str = "0"
    concurrency_limits: dict[str, int] = field(default_factory=dict)  # model -> at the end

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def demo_keywords(jobs: int) -> list[JobInput]:
    text = (resources.files("bulkgen") / "data" / "keywords.csv").read_text(encoding="utf-8")
    base = parse_csv(text)
    rows = []
    for i in range(jobs):
        row = base[i % len(base)]
        suffix = f" ({i // len(base) + 1})" if i >= len(base) else ""
        rows.append(JobInput(row.keyword + suffix, row.variables, row.overrides))
    return rows


async def _sample_connections(svc: Services, peak: list[int]) -> None:
    while True:
        with contextlib.suppress(Exception):
            peak[0] = max(peak[0], await svc.store.connections_in_use())
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def _peak_connections(svc: Services) -> AsyncIterator[list[int]]:
    """Sample the pool's connections, as PostgreSQL sees them, while the block runs."""
    peak = [0]
    sampler = asyncio.create_task(_sample_connections(svc, peak))
    try:
        yield peak
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler


async def run_demo(settings: Settings, *, jobs: int, console: Console, show: bool) -> DemoReport:
    # The batch takes the fleet's default model (BULKGEN_MODEL); the simulator serves it.
    models = tuple(dict.fromkeys((*DEMO_SIMULATOR.models, settings.model)))
    async with SimulatorProcess(replace(DEMO_SIMULATOR, models=models)) as sim:
        provider = OpenAICompatProvider(
            sim.base_url, SIMULATOR_API_KEY, timeout_s=settings.provider_timeout_s
        )
        metrics = Metrics()
        try:
            async with services(settings, provider=provider, metrics=metrics) as svc:
                rows = demo_keywords(jobs)
                batch_id = await svc.submit(rows, svc.batch_options(), account="demo")
                started = time.monotonic()
                progress = (
                    batch_progress(svc.store, batch_id, len(rows), console)
                    if show
                    else contextlib.nullcontext()
                )
                async with _peak_connections(svc) as peak, progress:
                    await svc.worker(burst=True).run(install_signals=True)
                wall_s = time.monotonic() - started
                counts = {c.status: c for c in await svc.store.batch_counts(batch_id)}
                empty_done = await svc.store.batch_empty_done(batch_id)
                usage = await svc.store.batch_usage(batch_id, svc.prices)
        finally:
            await provider.aclose()
        stats = await sim_stats(sim.base_url)

    def n(status: str) -> int:
        return counts[status].jobs if status in counts else 0

    rejected = stats.get("rate_limited", {})
    return DemoReport(
        batch_id=str(batch_id),
        jobs=len(rows),
        done=n(JobStatus.DONE),
        failed=n(JobStatus.FAILED),
        cancelled=n(JobStatus.CANCELLED),
        empty_done=int(empty_done),
        wall_s=round(wall_s, 2),
        provider_requests=int(stats.get("requests", 0)),
        provider_429s=sum(rejected.values()) if isinstance(rejected, dict) else 0,
        retries=int(metrics.total("jobs.retried") + metrics.total("jobs.snoozed")),
        prompt_tokens=sum(c.prompt_tokens for c in counts.values()),
        completion_tokens=sum(c.completion_tokens for c in counts.values()),
        peak_db_connections=peak[0],
        db_pool_max=settings.db_pool_max,
        cost_usd=str(usage.cost_usd),
        cache_hits=usage.cache_hits,
        saved_usd=str(usage.saved_usd),
        concurrency_limits=concurrency_limits(metrics),
    )


def concurrency_limits(metrics: Metrics) -> dict[str, int]:
    """The concurrency the worker admitted to when it stopped, per model (the demo has one
    provider and one key): derived from the simulator's announced rates, or probed."""
    readings = metrics.readings().gauges
    return {
        dict(labels).get("model", ""): int(value)
        for (name, labels), value in sorted(readings.items())
        if name == "limiter.concurrency_limit"
    }


def summary_table(report: DemoReport) -> Table:
    table = Table(title=f"bulkgen demo - batch {report.batch_id}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        ("jobs", report.jobs),
        ("done", report.done),
        ("failed", report.failed),
        ("done with empty content", report.empty_done),
        ("wall time", f"{report.wall_s:.1f} s"),
        ("provider requests", report.provider_requests),
        ("provider 429s", report.provider_429s),
        ("retries and rate-limit waits", report.retries),
        ("tokens in / out", f"{report.prompt_tokens:,} / {report.completion_tokens:,}"),
        ("cost (list prices)", f"${Decimal(report.cost_usd):,.4f}"),
        ("cache hits / saved", f"{report.cache_hits:,} / ${Decimal(report.saved_usd):,.4f}"),
        ("peak DB connections", f"{report.peak_db_connections} (pool max {report.db_pool_max})"),
    ]
    rows += [
        (f"concurrency limit ({model})", limit)
        for model, limit in report.concurrency_limits.items()
    ] or [("concurrency limit", "unknown")]
    for what, value in rows:
        table.add_row(what, str(value))
    return table
