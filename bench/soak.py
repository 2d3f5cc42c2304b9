"""Soak: a long batch through a fleet that keeps losing workers, on a provider that fails.

20,000 jobs (distinct keywords, so no cache hit hides a lost job) go through 3 workers
(``bulkgen worker`` processes sharing PostgreSQL and Redis) while the simulator fails 1%
of requests with transient faults (5xx, connection resets, empty answers) and a worker is
SIGKILLed every 20 s and replaced at once. One worker, the survivor, is never killed: its
RSS over the whole run shows whether a long-lived worker grows.

Measured from the tables and the simulator's own counters, after the batch ends:

- **jobs lost**: enqueued jobs that are not ``done`` (every fault is transient, so every
  job must end done), **duplicate results** (done jobs with more than one result row),
  **empty done** (done jobs without a non-empty result): all must be 0;
- **re-paid calls**: provider requests beyond one per job done by a paid call, split into
  the injected faults and the rest (calls of killed workers, late outcomes fenced out),
  and set against what a crash may cost: the jobs the killed workers held when they died;
- **RSS** of every worker alive at each sample, and the survivor's from start to end.

The last line printed is a JSON summary; it is also written to ``bench/results/soak.json``
with the git commit. The database is a fresh one on ``--admin-url``'s server (dropped at
the end); the Redis database given is flushed before and after.

    .venv/bin/python bench/soak.py [--jobs 20000] [--workers 3] [--kill-every-s 20]
        [--latency-ms 700] [--rpm 3000] [--concurrency 24] [--fault-rate 0.01]
        [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]
        [--redis-url redis://127.0.0.1:6379/4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis

from bulkgen.intake import JobInput
from bulkgen.metrics import Metrics
from bulkgen.service import open_services
from bulkgen.settings import Settings
from bulkgen.simulator import SimConfig, SimulatorProcess
from bulkgen.simulator.control import sim_stats

RESULTS = Path(__file__).parent / "results" / "soak.json"
SAMPLE_EVERY_S = 10.0

# Transient faults only, in these shares of the total fault rate.
FAULT_MIX = {"503": 0.4, "502": 0.2, "reset": 0.2, "empty": 0.2}

# Shorter leases than the defaults so a killed worker's jobs come back within seconds, and
# a flush interval that keeps status writes batched.
WORKER_ENV = {
    "BULKGEN_LEASE_S": "10",
    "BULKGEN_HEARTBEAT_S": "2",
    "BULKGEN_POLL_S": "1",
    "BULKGEN_SHUTDOWN_GRACE_S": "5",
    "BULKGEN_PROVIDER_TIMEOUT_S": "30",
    "BULKGEN_DB_POOL_MAX": "8",
}


@dataclass
class Worker:
    slot: int
    process: subprocess.Popen[bytes]
    log_path: Path
    killed: bool = False


@dataclass
class Fleet:
    env: dict[str, str]
    concurrency: int
    log_dir: Path
    workers: list[Worker] = field(default_factory=list)

    def spawn(self, slot: int) -> Worker:
        log_path = self.log_dir / f"worker-{len(self.workers) + 1}-slot{slot}.log"
        command = [sys.executable, "-m", "bulkgen.cli", "worker", "--burst"]
        command.append(f"--concurrency={self.concurrency}")
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        worker = Worker(slot, process, log_path)
        self.workers.append(worker)
        return worker

    def in_slot(self, slot: int) -> Worker:
        return [w for w in self.workers if w.slot == slot][-1]

    def alive(self) -> list[Worker]:
        return [w for w in self.workers if w.process.poll() is None]


def rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` from /proc (Linux), or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


async def fresh_database(admin_url: str) -> tuple[str, str]:
    name = f"bulkgen_soak_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name, urlunsplit(urlsplit(admin_url)._replace(path="/" + name))


async def drop_database(admin_url: str, name: str) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def flush_redis(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


async def enqueue(database_url: str, jobs: int) -> uuid.UUID:
    settings = Settings(database_url=database_url, redis_url=None)
    svc = await open_services(settings, need_provider=False, metrics=Metrics())
    try:
        rows = [JobInput(f"soak keyword {i}", {}, {}) for i in range(jobs)]
        return await svc.submit(rows, svc.batch_options(max_tokens=600), account="soak")
    finally:
        await svc.aclose()


async def counts(conn: asyncpg.Connection) -> dict[str, int]:  # type: ignore[type-arg]
    rows = await conn.fetch("SELECT status, count(*) AS n FROM jobs GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


async def held_by(conn: asyncpg.Connection, pid: int) -> int:  # type: ignore[type-arg]
    """Jobs the worker process ``pid`` holds: what its death can cost at most."""
    held: int = await conn.fetchval(
        "SELECT count(*) FROM jobs j JOIN workers w ON w.id = j.lease_owner"
        " WHERE w.pid = $1 AND j.status IN ('generating', 'formatting')",
        pid,
    )
    return held


async def table_figures(conn: asyncpg.Connection) -> dict[str, int]:  # type: ignore[type-arg]
    row = await conn.fetchrow(
        """
        WITH per_job AS (
            SELECT j.id, j.status, j.cached, j.attempts, count(r.job_id) AS results,
                   count(r.job_id) FILTER (WHERE r.content ~ '[^[:space:]]') AS non_empty
            FROM jobs j LEFT JOIN results r ON r.job_id = j.id GROUP BY j.id
        )
        SELECT count(*) AS jobs,
               count(*) FILTER (WHERE status <> 'done') AS not_done,
               count(*) FILTER (WHERE status = 'done' AND results > 1) AS duplicate_results,
               count(*) FILTER (WHERE status = 'done' AND non_empty = 0) AS empty_done,
               count(*) FILTER (WHERE status <> 'done' AND results > 0) AS stray_results,
               count(*) FILTER (WHERE status = 'done' AND NOT cached) AS done_paid,
               count(*) FILTER (WHERE status = 'done' AND cached) AS done_cached,
               coalesce(max(attempts), 0) AS max_attempts
        FROM per_job
        """
    )
    assert row is not None
    return dict(row)


def log_counts(fleet: Fleet, *events: str) -> dict[str, int]:
    found = dict.fromkeys(events, 0)
    tracebacks = 0
    for worker in fleet.workers:
        text = worker.log_path.read_text(errors="replace")
        tracebacks += text.count("Traceback")
        for event in events:
            found[event] += text.count(f" {event} ")
    found["tracebacks"] = tracebacks
    return found


async def run(args: argparse.Namespace) -> dict[str, Any]:
    name, database_url = await fresh_database(args.admin_url)
    await flush_redis(args.redis_url)
    log_dir = Path(args.log_dir)
    faults = {kind: args.fault_rate * share for kind, share in FAULT_MIX.items()}
    sim = SimConfig(
        rpm=args.rpm, tpm=None, ttft_ms=args.latency_ms, tokens_per_s=0, jitter=0.3,
        faults=faults, seed=11,
    )  # fmt: skip
    try:
        started_enqueue = time.monotonic()
        await enqueue(database_url, args.jobs)
        print(f"enqueued {args.jobs:,} jobs in {time.monotonic() - started_enqueue:.1f} s")
        async with SimulatorProcess(sim) as simulator:
            env = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("BULKGEN_", "OPENAI_"))
                and k not in ("DATABASE_URL", "REDIS_URL")
            }
            env.update(WORKER_ENV)
            env.update(
                DATABASE_URL=database_url,
                REDIS_URL=args.redis_url,
                OPENAI_BASE_URL=simulator.base_url,
                OPENAI_API_KEY="sk-soak",
            )
            fleet = Fleet(env, args.concurrency, log_dir)
            result = await drive(args, fleet, database_url)
            stats = await sim_stats(simulator.base_url)
        conn = await asyncpg.connect(database_url)
        try:
            figures = await table_figures(conn)
        finally:
            await conn.close()
    finally:
        await drop_database(args.admin_url, name)
        await flush_redis(args.redis_url)
    return summarize(args, fleet, result, figures, stats)


@dataclass
class DriveResult:
    elapsed_s: float
    kills: int
    held_at_kills: int
    rss: list[dict[str, Any]]
    exit_codes: dict[str, int | None]


async def drive(args: argparse.Namespace, fleet: Fleet, database_url: str) -> DriveResult:
    """Run the fleet until every job is terminal, killing a worker every ``kill_every_s``."""
    for slot in range(args.workers):
        fleet.spawn(slot)
    conn = await asyncpg.connect(database_url)
    started = time.monotonic()
    next_kill = started + args.kill_every_s
    next_sample = started
    kills = held_at_kills = 0
    rss: list[dict[str, Any]] = []
    victims = list(range(1, args.workers))  # slot 0 is the survivor
    try:
        while True:
            now = time.monotonic()
            status = await counts(conn)
            pending = sum(n for s, n in status.items() if s not in ("done", "failed", "cancelled"))
            if now >= next_sample:
                rss.append(sample(fleet, now - started, status))
                next_sample += SAMPLE_EVERY_S
            if pending == 0:
                break
            if now >= next_kill and victims:
                slot = victims[kills % len(victims)]
                victim = fleet.in_slot(slot)
                held_at_kills += await held_by(conn, victim.process.pid)
                victim.killed = True
                victim.process.send_signal(signal.SIGKILL)
                victim.process.wait()
                kills += 1
                fleet.spawn(slot)
                next_kill += args.kill_every_s
            if now - started > args.max_minutes * 60:
                raise SystemExit(f"gave up after {args.max_minutes} minutes: {status}")
            await asyncio.sleep(0.5)
        elapsed_s = time.monotonic() - started
        exit_codes: dict[str, int | None] = {}
        for i, worker in enumerate(fleet.workers):
            if not worker.killed:
                try:
                    exit_codes[f"worker-{i + 1}"] = worker.process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    worker.process.kill()
                    exit_codes[f"worker-{i + 1}"] = None
        rss.append(sample(fleet, elapsed_s, await counts(conn), final=True))
    finally:
        await conn.close()
        for worker in fleet.alive():
            worker.process.kill()
    return DriveResult(elapsed_s, kills, held_at_kills, rss, exit_codes)


def sample(fleet: Fleet, t_s: float, status: dict[str, int], final: bool = False) -> dict[str, Any]:
    alive = {
        f"slot{w.slot}": mb for w in fleet.alive() if (mb := rss_mb(w.process.pid)) is not None
    }
    survivor = fleet.workers[0]
    point = {
        "t_s": round(t_s, 1),
        "done": status.get("done", 0),
        "survivor_rss_mb": None if final else rss_mb(survivor.process.pid),
        "rss_mb": {k: round(v, 1) for k, v in alive.items()},
    }
    shown = " ".join(f"{k}={v:.0f}" for k, v in alive.items())
    print(f"t={t_s:6.0f}s done={point['done']:>6,} rss MB: {shown}", flush=True)
    return point


def summarize(
    args: argparse.Namespace,
    fleet: Fleet,
    result: DriveResult,
    figures: dict[str, int],
    stats: dict[str, Any],
) -> dict[str, Any]:
    faults = sum(stats["faults"].values())
    re_paid = stats["requests"] - figures["done_paid"]
    logs = log_counts(fleet, "job.fenced_out", "worker.rescued", "worker.unrun_released")
    # From the first sample after start-up (the very first one sees a process still loading).
    survivor = [
        p["survivor_rss_mb"]
        for p in result.rss
        if p["survivor_rss_mb"] is not None and p["t_s"] >= SAMPLE_EVERY_S
    ]
    warm = survivor[len(survivor) // 4] if survivor else None
    summary: dict[str, Any] = {
        "commit": git_commit(),
        "jobs": args.jobs,
        "workers": args.workers,
        "kill_every_s": args.kill_every_s,
        "fault_rate": args.fault_rate,
        "latency_ms": args.latency_ms,
        "rpm": args.rpm,
        "concurrency": args.concurrency,
        "elapsed_s": round(result.elapsed_s, 1),
        "jobs_per_s": round(args.jobs / result.elapsed_s, 1),
        "jobs_lost": args.jobs - figures["jobs"] + figures["not_done"],
        "duplicate_results": figures["duplicate_results"],
        "stray_results": figures["stray_results"],
        "empty_done": figures["empty_done"],
        "done_paid": figures["done_paid"],
        "done_cached": figures["done_cached"],
        "max_attempts": figures["max_attempts"],
        "provider_requests": stats["requests"],
        "re_paid_calls": re_paid,
        "re_paid_faults": faults,
        "re_paid_other": re_paid - faults,
        "kills": result.kills,
        "held_at_kills": result.held_at_kills,
        "fenced_out": logs["job.fenced_out"],
        "rescues": logs["worker.rescued"],
        "unrun_released": logs["worker.unrun_released"],
        "worker_tracebacks": logs["tracebacks"],
        "unkilled_exit_codes": result.exit_codes,
        "survivor_rss_mb": {
            "start": round(survivor[0], 1) if survivor else None,
            "after_warmup": round(warm, 1) if warm else None,
            "end": round(survivor[-1], 1) if survivor else None,
            "max": round(max(survivor), 1) if survivor else None,
        },
        "rss_samples": result.rss,
    }
    return summary


def report(summary: dict[str, Any]) -> None:
    print()
    print(f"jobs              {summary['jobs']:>8,} in {summary['elapsed_s']:.0f} s "
          f"({summary['jobs_per_s']}/s), {summary['kills']} workers SIGKILLed")  # fmt: skip
    for key in ("jobs_lost", "duplicate_results", "empty_done", "stray_results"):
        verdict = "ok" if summary[key] == 0 else "FAIL"
        print(f"{key.replace('_', ' '):<18}{summary[key]:>8,}  {verdict}")
    print(f"re-paid calls     {summary['re_paid_calls']:>8,}  "
          f"({summary['re_paid_faults']:,} injected faults, {summary['re_paid_other']:,} other; "
          f"killed workers held {summary['held_at_kills']:,} jobs)")  # fmt: skip
    rss = summary["survivor_rss_mb"]
    print(f"survivor RSS MB   start {rss['start']}, after warm-up {rss['after_warmup']}, "
          f"end {rss['end']}, max {rss['max']}")  # fmt: skip
    print(f"worker tracebacks {summary['worker_tracebacks']:>8,}; "
          f"unkilled exit codes {summary['unkilled_exit_codes']}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kill-every-s", type=float, default=20.0)
    parser.add_argument("--latency-ms", type=float, default=700.0)
    parser.add_argument("--rpm", type=int, default=3000, help="The simulator's request limit.")
    parser.add_argument("--concurrency", type=int, default=24)
    parser.add_argument("--fault-rate", type=float, default=0.01)
    parser.add_argument("--max-minutes", type=float, default=40.0)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/4")
    parser.add_argument("--log-dir", default="/tmp/bulkgen-soak-logs")
    args = parser.parse_args()
    Path(args.log_dir).mkdir(parents=True, exist_ok=True)
    summary = asyncio.run(run(args))
    report(summary)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "rss_samples"}))


if __name__ == "__main__":
    main()
