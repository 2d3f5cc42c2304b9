"""Queue overhead: bulkgen against PgQueuer and Procrastinate, one run, one PostgreSQL.

bulkgen drains ``--jobs`` jobs through one in-process worker whose provider answers at
once with a ~800-word Markdown article (different for every keyword, so the cache never
answers) and a plausible usage: everything but the provider's latency is real (render,
rate governor, cache, validation, formatting, result rows). The peers drain as many
no-op jobs with their documented defaults. For each system, at each ``--concurrency``,
on a fresh database:

- jobs/s: jobs over the drain's wall time;
- transactions and row writes per job: PostgreSQL's own counters (``pg_stat_database``,
  ``pg_stat_user_tables``) over the consumer's whole life (connect, drain, close);
- PostgreSQL CPU ms per job: the CPU time of the server's processes over the same
  stretch (anything else the server does meanwhile is in it: see the load averages
  recorded); and, apart, that of the backends serving the benchmark's database alone
  (sampled with the connections, so each backend's last few ms are missed);
- worker CPU ms per job: this process and its children, over the same stretch (bulkgen
  renders prompts in child processes);
- peak connections: client connections to the database, sampled every 20 ms.

Then enqueue-to-start latency on an idle worker: one job at a time, ``--latency-samples``
times, each from the moment the enqueue call returned to the moment the job's code (the
provider's ``complete`` for bulkgen) was entered.

    .venv/bin/python bench/queues.py [--jobs 10000] [--concurrency 1,20,50]
                                     [--systems bulkgen,pgqueuer,procrastinate]

``--systems`` measures only those named (all three by default): bulkgen alone, to compare
two versions of it, or a peer alone; a ratio whose figures are missing is printed as None.

The peers come from the ``bench`` extra (``pip install -e '.[dev,bench]'``); one that
cannot be imported or fails is reported and recorded as unavailable, and the others are
still measured. Creates and drops its own databases; writes its result to
``bench/results/queues.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import importlib.metadata
import os
import random
import statistics
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg

from bulkgen.intake import JobInput
from bulkgen.metrics import Metrics
from bulkgen.models import ChatRequest, Completion, Usage
from bulkgen.service import Services, open_services
from bulkgen.settings import Settings
from pgstats import (
    Backends,
    ServerCount,
    backends_gone,
    drop_db,
    fresh_db,
    postmaster_pid,
    process_tree_cpu_s,
)
from record import Run, add_out_argument, postgres_version

IDLE_CONCURRENCY = 20  # the worker's concurrency while idle latency is measured
LATENCY_SPACING_S = 0.3
SAMPLE_EVERY_S = 0.02
START_TIMEOUT_S = 30.0

# An instant provider sends no rate-limit headers; without configured limits the governor
# would ramp concurrency up from 1 as it does for an unknown provider. Limits far above
# anything reachable keep admission out of the way (the instant answers report no
# latency, so Little's law sizes concurrency on the policy's 10 s assumption).
UNREACHABLE_RPM = 1_000_000_000
UNREACHABLE_TPM = 1_000_000_000_000

VOCABULARY = (
    "plan budget garden kitchen window season market travel energy water light paper "
    "choice method result habit detail option routine storage surface pattern signal "
    "measure balance comfort project tool schedule record review step cost value space "
    "timber fabric spring summer autumn winter morning evening local simple careful "
    "practical modern steady quiet bright narrow broad common useful reliable honest "
    "check choose compare prepare clean store repair improve reduce measure follow keep "
    "start finish build select protect adjust test replace order sort label mark"
)
WORDS = VOCABULARY.split()


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(9, 16))]
    return " ".join(words).capitalize() + "."


def _paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(_sentence(rng) for _ in range(sentences))


@functools.cache
def article(keyword: str) -> str:
    """A Markdown article of about 800 words, the same for the same keyword. Kept once
    written: :meth:`Bulkgen.enqueue` writes every one the drain will ask for before the
    drain is measured, so the provider's own CPU stays out of bulkgen's figures."""
    rng = random.Random(hashlib.sha256(keyword.encode()).digest())
    parts = [f"# {keyword.title()}: a practical guide", _paragraph(rng, 5)]
    for section in range(5):
        parts.append(f"## {_sentence(rng)[:-1]}")
        parts.append(_paragraph(rng, 5))
        if section == 2:
            parts.append("\n".join(f"- {_sentence(rng)}" for _ in range(6)))
        parts.append(_paragraph(rng, 4))
    parts += ["## Conclusion", _paragraph(rng, 3)]
    return "\n\n".join(parts)


def _keyword(request: ChatRequest) -> str:
    """The keyword as the default template states it, or the whole prompt otherwise."""
    prompt = request.messages[-1][1]
    for line in prompt.splitlines():
        if line.startswith("Write an article about: "):
            return line.removeprefix("Write an article about: ")
    return prompt


class InstantProvider:
    """A provider answering at once; records when each call came in."""

    base_url = "instant://bench"
    api_key_id = "instant"

    def __init__(self) -> None:
        self.entered_s: list[float] = []

    async def complete(self, request: ChatRequest) -> Completion:
        self.entered_s.append(time.perf_counter())
        content = article(_keyword(request))
        usage = Usage(
            prompt_tokens=request.prompt_chars() // 4, completion_tokens=len(content) // 4
        )
        return Completion(content=content, usage=usage, finish_reason="stop", model=request.model)

    async def aclose(self) -> None:
        return None


async def wait_for_calls(entered_s: list[float], count: int) -> None:
    """Until ``count`` jobs have started (a job that never starts fails the run)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while len(entered_s) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(entered_s)} of {count} jobs started")
        await asyncio.sleep(0.0005)


async def spaced_latencies(
    enqueue_one: Callable[[int], Awaitable[None]], entered_s: list[float], samples: int
) -> list[float]:
    """Enqueue one job at a time on an idle worker; seconds from enqueue to start."""
    latencies = []
    for i in range(samples):
        await asyncio.sleep(LATENCY_SPACING_S)
        await enqueue_one(i)
        returned_s = time.perf_counter()
        await wait_for_calls(entered_s, i + 1)
        latencies.append(entered_s[i] - returned_s)
    return latencies


@dataclass(frozen=True)
class Drained:
    """A drain's wall time, and what else the system reported about it."""

    wall_s: float
    notes: dict[str, Any] = field(default_factory=dict)


class Queue(Protocol):
    """One system under test."""

    name: str

    async def enqueue(self, url: str, jobs: int) -> None:
        """Install the schema and enqueue ``jobs``; every connection closed after."""

    async def drain(self, url: str, jobs: int, concurrency: int) -> Drained:
        """Run a consumer until the queue is empty."""

    async def idle_latency(self, url: str, samples: int) -> list[float]:
        """Enqueue-to-start latencies on an idle consumer, in seconds."""


class Bulkgen:
    name = "bulkgen"

    @staticmethod
    def _settings(url: str, concurrency: int) -> Settings:
        return Settings(
            database_url=url, redis_url=None, openai_api_key="sk-bench",
            openai_base_url=InstantProvider.base_url, concurrency=concurrency,
            rpm=UNREACHABLE_RPM, tpm=UNREACHABLE_TPM,
        )  # fmt: skip

    async def _open(self, url: str, concurrency: int, provider: InstantProvider) -> Services:
        return await open_services(
            self._settings(url, concurrency), provider=provider, metrics=Metrics()
        )

    async def _submit(self, svc: Services, keywords: list[str]) -> None:
        rows = [JobInput(k, {}, {}) for k in keywords]
        await svc.submit(rows, svc.batch_options(), account="bench")

    async def enqueue(self, url: str, jobs: int) -> None:
        svc = await self._open(url, 1, InstantProvider())
        try:
            for first in range(0, jobs, 10_000):  # one batch holds at most 10,000 jobs
                last = min(jobs, first + 10_000)
                keywords = [f"keyword {i}" for i in range(first, last)]
                await self._submit(svc, keywords)
                for keyword in keywords:  # the instant provider's answers, written up front
                    article(keyword)
        finally:
            await svc.aclose()

    async def drain(self, url: str, jobs: int, concurrency: int) -> Drained:
        """A burst worker; its own metrics show admission never held a job back."""
        svc = await self._open(url, concurrency, InstantProvider())
        try:
            started = time.perf_counter()
            await svc.worker(burst=True).run()
            wall_s = time.perf_counter() - started
            done = await svc.store.pool.fetchval("SELECT count(*) FROM jobs WHERE status = 'done'")
        finally:
            await svc.aclose()
        if done != jobs:
            raise RuntimeError(f"bulkgen finished {done} of {jobs} jobs")
        readings = svc.metrics.snapshot()
        waited_s = [v for k, v in readings.items() if k.startswith("limiter.waited_s.max_s")]
        return Drained(
            wall_s,
            {
                "claim_statements": int(svc.metrics.total("db.claim_statements")),
                "status_statements": int(svc.metrics.total("db.status_statements")),
                "admission_wait_max_ms": round(max(waited_s, default=0.0) * 1000, 2),
            },
        )

    async def idle_latency(self, url: str, samples: int) -> list[float]:
        provider = InstantProvider()
        svc = await self._open(url, IDLE_CONCURRENCY, provider)
        try:
            worker = svc.worker()
            running = asyncio.create_task(worker.run())
            try:
                return await spaced_latencies(
                    lambda i: self._submit(svc, [f"idle keyword {i}"]), provider.entered_s, samples
                )
            finally:
                worker.stop()
                await running
        finally:
            await svc.aclose()


class PgQueuerQueue:
    """PgQueuer on one asyncpg connection, as its documentation sets it up; the
    concurrency is the entrypoint's ``concurrency_limit`` (``max_concurrent_tasks``
    cannot go below twice the dequeue batch)."""

    name = "pgqueuer"

    async def enqueue(self, url: str, jobs: int) -> None:
        from pgqueuer import Queries

        conn = await asyncpg.connect(url)
        try:
            queries = Queries.from_asyncpg_connection(conn)
            await queries.install()
            if jobs:
                await queries.enqueue(["noop"] * jobs, [None] * jobs, [0] * jobs)
        finally:
            await conn.close()

    @staticmethod
    def _manager(conn: asyncpg.Connection, concurrency: int, entered_s: list[float]) -> Any:  # type: ignore[type-arg]
        from pgqueuer import Queries, QueueManager

        manager = QueueManager(Queries.from_asyncpg_connection(conn))

        @manager.entrypoint("noop", concurrency_limit=concurrency)
        async def noop(job: object) -> None:
            entered_s.append(time.perf_counter())

        return manager

    async def drain(self, url: str, jobs: int, concurrency: int) -> Drained:
        from pgqueuer.types import QueueExecutionMode

        conn = await asyncpg.connect(url)
        try:
            entered_s: list[float] = []
            manager = self._manager(conn, concurrency, entered_s)
            started = time.perf_counter()
            await manager.run(mode=QueueExecutionMode.drain)
            wall_s = time.perf_counter() - started
            left = await conn.fetchval("SELECT count(*) FROM pgqueuer")
        finally:
            await conn.close()
        if left or len(entered_s) != jobs:
            raise RuntimeError(f"pgqueuer ran {len(entered_s)} of {jobs} jobs, {left} left")
        return Drained(wall_s)

    async def idle_latency(self, url: str, samples: int) -> list[float]:
        from pgqueuer import Queries

        conn, producer = await asyncpg.connect(url), await asyncpg.connect(url)
        try:
            entered_s: list[float] = []
            manager = self._manager(conn, IDLE_CONCURRENCY, entered_s)
            running = asyncio.create_task(manager.run())
            try:
                queries = Queries.from_asyncpg_connection(producer)

                async def one(_: int) -> None:
                    await queries.enqueue("noop", None)

                return await spaced_latencies(one, entered_s, samples)
            finally:
                manager.shutdown.set()
                await running
        finally:
            await producer.close()
            await conn.close()


class ProcrastinateQueue:
    """Procrastinate with its psycopg connector and its worker's defaults, but for the
    concurrency; ``wait=False`` makes its worker stop once the queue is empty."""

    name = "procrastinate"

    @staticmethod
    def _app(url: str, entered_s: list[float]) -> Any:
        import procrastinate

        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

        @app.task(name="noop")
        async def noop() -> None:
            entered_s.append(time.perf_counter())

        return app

    async def enqueue(self, url: str, jobs: int) -> None:
        app = self._app(url, [])
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            if jobs:
                await app.tasks["noop"].batch_defer_async(*({} for _ in range(jobs)))

    async def drain(self, url: str, jobs: int, concurrency: int) -> Drained:
        entered_s: list[float] = []
        app = self._app(url, entered_s)
        async with app.open_async():
            started = time.perf_counter()
            await app.run_worker_async(
                concurrency=concurrency, wait=False, install_signal_handlers=False
            )
            wall_s = time.perf_counter() - started
        if len(entered_s) != jobs:
            raise RuntimeError(f"procrastinate ran {len(entered_s)} of {jobs} jobs")
        return Drained(wall_s)

    async def idle_latency(self, url: str, samples: int) -> list[float]:
        entered_s: list[float] = []
        app = self._app(url, entered_s)
        async with app.open_async():
            running = asyncio.create_task(
                app.run_worker_async(concurrency=IDLE_CONCURRENCY, install_signal_handlers=False)
            )
            try:
                task = app.tasks["noop"]
                return await spaced_latencies(lambda _: task.defer_async(), entered_s, samples)
            finally:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running


async def measure(
    admin: asyncpg.Connection,  # type: ignore[type-arg]
    admin_url: str,
    queue: Queue,
    jobs: int,
    concurrency: int,
) -> dict[str, Any]:
    """One drain of ``jobs`` on a fresh database, counted from before its consumer
    connects to after its last connection is gone."""
    name, url = await fresh_db(admin, admin_url)
    try:
        await queue.enqueue(url, jobs)
        count = ServerCount(admin, name, url)
        await count.start()
        server, backends = await postmaster_pid(admin), Backends(admin, name, SAMPLE_EVERY_S)
        sampler = asyncio.create_task(backends.watch())
        server_s, worker_s = process_tree_cpu_s(server), process_tree_cpu_s(os.getpid())
        try:
            drained = await queue.drain(url, jobs, concurrency)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler  # a sampler that failed fails the measurement
        await backends_gone(admin, name)
        await asyncio.sleep(0.1)  # the postmaster reaps its ended backends: their CPU is whole
        server_s = process_tree_cpu_s(server) - server_s
        worker_s = process_tree_cpu_s(os.getpid()) - worker_s
        counted = await count.stop(jobs)
    finally:
        await drop_db(admin, name)
    return {
        "jobs_per_s": round(jobs / drained.wall_s, 1),
        "wall_s": round(drained.wall_s, 3),
        "transactions_per_job": counted["transactions_per_job"],
        "row_writes_per_job": counted["row_writes_per_job"],
        "pg_cpu_ms_per_job": round(server_s * 1000 / jobs, 3),
        "db_backends_cpu_ms_per_job": round(backends.cpu_s * 1000 / jobs, 3),
        "worker_cpu_ms_per_job": round(worker_s * 1000 / jobs, 3),
        "peak_connections": backends.peak_clients,
        "row_writes_by_table": counted["row_writes_by_table"],
        "load_avg_1m": round(os.getloadavg()[0], 2),
        **drained.notes,
    }


async def idle(
    admin: asyncpg.Connection,  # type: ignore[type-arg]
    admin_url: str,
    queue: Queue,
    samples: int,
) -> dict[str, Any]:
    name, url = await fresh_db(admin, admin_url)
    try:
        await queue.enqueue(url, 0)
        latencies = sorted(s * 1000 for s in await queue.idle_latency(url, samples))
    finally:
        await drop_db(admin, name)
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    return {
        "samples": len(latencies),
        "p50_ms": round(statistics.median(latencies), 2),
        "p95_ms": round(p95, 2),
        "max_ms": round(latencies[-1], 2),
    }


QUEUES: tuple[Queue, ...] = (Bulkgen(), PgQueuerQueue(), ProcrastinateQueue())


def _unavailable(queue: Queue, exc: BaseException) -> str:
    reason = f"{type(exc).__name__}: {exc}"
    print(f"{queue.name}: unavailable ({reason})", flush=True)
    traceback.print_exception(exc)
    return reason


async def measure_all(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Every queue at each concurrency in turn (so a change in the machine's load hits
    them alike), then each one's idle latency. A peer failing is recorded, not fatal."""
    queues = [q for q in QUEUES if q.name in args.systems]
    results: dict[str, dict[str, Any]] = {q.name: {"drain": {}} for q in queues}
    admin = await asyncpg.connect(args.admin_url)
    try:
        for concurrency in args.concurrency:
            for queue in queues:
                if "unavailable" in results[queue.name]:
                    continue
                try:
                    row = await measure(admin, args.admin_url, queue, args.jobs, concurrency)
                except Exception as exc:
                    if queue.name == "bulkgen":
                        raise
                    results[queue.name]["unavailable"] = _unavailable(queue, exc)
                    continue
                results[queue.name]["drain"][str(concurrency)] = row
                print(f"{queue.name:<14} c{concurrency:<3} {row}", flush=True)
        for queue in queues:
            if "unavailable" in results[queue.name]:
                continue
            try:
                results[queue.name]["idle_latency"] = await idle(
                    admin, args.admin_url, queue, args.latency_samples
                )
            except Exception as exc:
                if queue.name == "bulkgen":
                    raise
                results[queue.name]["unavailable"] = _unavailable(queue, exc)
    finally:
        await admin.close()
    return results


COLUMNS = (
    ("jobs_per_s", "jobs/s"),
    ("transactions_per_job", "xacts/job"),
    ("row_writes_per_job", "rows/job"),
    ("pg_cpu_ms_per_job", "PG CPU ms/job"),
    ("db_backends_cpu_ms_per_job", "its backends ms/job"),
    ("worker_cpu_ms_per_job", "worker CPU ms/job"),
    ("peak_connections", "peak conns"),
    ("load_avg_1m", "load 1m"),
)


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print(f"{'system':<14}{'conc':>5}" + "".join(f"{title:>21}" for _, title in COLUMNS))
    for system, result in results.items():
        if "unavailable" in result:
            print(f"{system:<14}  unavailable: {result['unavailable']}")
        for concurrency, row in result["drain"].items():
            cells = "".join(f"{row[key]!s:>21}" for key, _ in COLUMNS)
            print(f"{system:<14}{concurrency:>5}{cells}")
    print(f"{'idle latency':<19}{'p50 ms':>19}{'p95 ms':>19}{'max ms':>19}")
    for system, result in results.items():
        if "idle_latency" in result:
            lat = result["idle_latency"]
            print(f"{system:<19}{lat['p50_ms']:>19}{lat['p95_ms']:>19}{lat['max_ms']:>19}")


def _figure(results: dict[str, dict[str, Any]], system: str, *path: str) -> float | None:
    value: Any = results.get(system, {})
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value)


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or not bottom else round(top / bottom, 2)


def ratios(results: dict[str, dict[str, Any]], concurrencies: list[int]) -> dict[str, Any]:
    """What the queue-overhead goals are judged by; None where a figure is missing."""

    def fig(system: str, concurrency: int, key: str) -> float | None:
        return _figure(results, system, "drain", str(concurrency), key)

    out: dict[str, Any] = {
        "bulkgen_over_pgqueuer_jobs_per_s_c1": _ratio(
            fig("bulkgen", 1, "jobs_per_s"), fig("pgqueuer", 1, "jobs_per_s")
        ),
        "bulkgen_over_procrastinate_jobs_per_s_c20": _ratio(
            fig("bulkgen", 20, "jobs_per_s"), fig("procrastinate", 20, "jobs_per_s")
        ),
        "bulkgen_over_pgqueuer_pg_cpu_per_job_c20": _ratio(
            fig("bulkgen", 20, "pg_cpu_ms_per_job"), fig("pgqueuer", 20, "pg_cpu_ms_per_job")
        ),
        "bulkgen_over_pgqueuer_db_backends_cpu_per_job_c20": _ratio(
            fig("bulkgen", 20, "db_backends_cpu_ms_per_job"),
            fig("pgqueuer", 20, "db_backends_cpu_ms_per_job"),
        ),
        "bulkgen_over_pgqueuer_idle_latency_p50": _ratio(
            _figure(results, "bulkgen", "idle_latency", "p50_ms"),
            _figure(results, "pgqueuer", "idle_latency", "p50_ms"),
        ),
    }
    for key in ("transactions_per_job", "row_writes_per_job"):
        out[key] = {
            f"c{c}": {system: fig(system, c, key) for system in results} for c in concurrencies
        }
    return out


def print_ratios(figures: dict[str, Any]) -> None:
    for name, value in figures.items():
        if isinstance(value, dict):
            for concurrency, by_system in value.items():
                print(f"{name} {concurrency}: {by_system}")
        else:
            print(f"{name}: {value}")


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results = await measure_all(args)
    print_table(results)
    judged = ratios(results, args.concurrency)
    print_ratios(judged)
    return {
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "systems_measured": args.systems,
        "peer_versions": {name: _version(name) for name in ("pgqueuer", "procrastinate")},
        "latency_samples": args.latency_samples,
        "idle_concurrency": IDLE_CONCURRENCY,
        "systems": results,
        "ratios": judged,
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _concurrencies(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def _systems(text: str) -> list[str]:
    known = [q.name for q in QUEUES]
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(known))
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"a comma-separated list of {', '.join(known)}; unknown: {', '.join(unknown)}"
        )
    return [name for name in known if name in names]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--concurrency", type=_concurrencies, default=[1, 20, 50])
    parser.add_argument(
        "--systems", type=_systems, default=[q.name for q in QUEUES], help="which to measure"
    )
    parser.add_argument("--latency-samples", type=int, default=20)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    add_out_argument(parser, "queues")
    args = parser.parse_args()
    run = Run("queues", args.out)
    figures = asyncio.run(main(args))
    run.finish(figures, postgresql=asyncio.run(postgres_version(args.admin_url)))
