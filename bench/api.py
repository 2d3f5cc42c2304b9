"""The HTTP API's cost: submit throughput, and status reads under 500 open event streams.

Runs one ``bulkgen serve --no-worker --port 0`` process against a fresh PostgreSQL database
and measures, on loopback:

- submit throughput: ``--batches`` batches of ``--items`` keywords each, ``POST /v1/batches``
  from ``--submitters`` concurrent clients, in batches/s and items/s. Baseline in the same
  run: the same batches through ``Services.submit`` in this process with the same
  concurrency, so the ratio is the API's own overhead (HTTP, JSON, auth, validation);
- status-read latency: ``--reads`` sequential ``GET /v1/batches/{id}``, p50/p99, while
  ``--sse-clients`` clients hold ``/v1/batches/{id}/events`` open (each stream polls the
  database once per ``BULKGEN_API_EVENTS_INTERVAL_S``, 1 s by default; no worker runs, so
  the batch never finishes and no stream ends). Baseline in the same run: as many reads
  with no stream open, half before the streams open and half after they close.
  Ratio = with / without.

The API rate-limits each account (``BULKGEN_API_RATE_PER_S``, ``BULKGEN_API_BURST``); the
bench sets both far above what it sends, so it measures the server, not the limiter. No
Redis is configured: the limiter is the process's own.

    .venv/bin/python bench/api.py [--batches 60] [--items 200] [--submitters 4]
                                  [--sse-clients 500] [--reads 300] [--admin-url URL]

Needs a PostgreSQL server (the machine's by default); creates and drops its own database.
Writes its result to ``bench/results/api.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from bulkgen.intake import parse_rows
from bulkgen.metrics import Metrics
from bulkgen.service import open_services
from bulkgen.settings import Settings
from record import Run, add_out_argument, postgres_version

# Every phase has a ceiling, so a stuck server ends the bench instead of hanging it.
START_TIMEOUT_S = 90.0
CONNECT_TIMEOUT_S = 120.0
PHASE_TIMEOUT_S = 180.0
# After the streams close: time for the server to end their poll loops before the reads.
STREAMS_DRAIN_S = 2.0
# File descriptors this process needs beyond one per event stream (pools, pipes, files).
SPARE_FDS = 256


def _raise_fd_limit(needed: int) -> int:
    """Raise the soft open-files limit towards ``needed`` (up to the hard limit), since
    every event stream holds a socket; refuse to start when even the hard limit is short.
    The server process inherits the raised limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise SystemExit(f"open-files limit {soft} is below the {needed} this run needs")
    return soft


def _items(count: int, batch: int) -> list[str]:
    return [f"keyword {batch}-{i}" for i in range(count)]


def _bench_env(url: str) -> dict[str, str]:
    """The server's environment: this database, no Redis, a rate limit out of the way."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("BULKGEN_", "REDIS_", "OPENAI_"))
    }
    env.update(
        DATABASE_URL=url,
        OPENAI_BASE_URL="http://127.0.0.1:9/v1",
        OPENAI_API_KEY="sk-bench",
        BULKGEN_API_RATE_PER_S="1000000",
        BULKGEN_API_BURST="1000000",
    )
    return env


@asynccontextmanager
async def _server(env: dict[str, str], log: Path) -> AsyncIterator[str]:
    """``bulkgen serve --no-worker --port 0``; yields its base URL, stops it on the way out."""
    with log.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bulkgen.cli",
            "serve",
            "--no-worker",
            "--port",
            "0",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert process.stdout is not None
        first = (await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT_S)).decode()
        if not first.startswith("bulkgen API on http://"):
            text = await asyncio.to_thread(log.read_text)
            raise SystemExit(f"serve did not start ({first!r}); its log:\n{text}")
        yield first.split()[3]
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


def _create_key(env: dict[str, str], account: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "bulkgen.cli", "accounts", "create", account],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"accounts create failed: {done.stderr}")
    return done.stdout.strip().splitlines()[-1]


async def _spread(count: int, workers: int, body: Callable[[int], Awaitable[None]]) -> float:
    """Run ``body(0..count-1)`` on ``workers`` concurrent tasks; the wall time in seconds."""
    next_index = iter(range(count))

    async def worker() -> None:
        for i in next_index:
            await body(i)

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(workers))), PHASE_TIMEOUT_S)
    return time.perf_counter() - started


async def _submit_direct(url: str, batches: int, items: int, submitters: int) -> float:
    settings = Settings(
        database_url=url, openai_base_url="http://127.0.0.1:9/v1", openai_api_key="sk-bench"
    )
    svc = await open_services(settings, metrics=Metrics(), need_provider=False)
    try:
        options = svc.batch_options()

        async def one(i: int) -> None:
            rows = parse_rows(_items(items, i), max_rows=items)
            await svc.submit(rows, options, account="direct")

        return await _spread(batches, submitters, one)
    finally:
        await svc.aclose()


async def _submit_api(
    client: httpx.AsyncClient, batches: int, items: int, submitters: int
) -> tuple[float, str]:
    """The wall time of every submit, and the path of one batch made (for the reads)."""
    made: list[str] = []

    async def one(i: int) -> None:
        answer = await client.post("/v1/batches", json={"items": _items(items, i)})
        if answer.status_code != 201:
            raise SystemExit(f"submit answered {answer.status_code}: {answer.text[:300]}")
        made.append(answer.json()["url"])

    return await _spread(batches, submitters, one), made[-1]


async def _reads(client: httpx.AsyncClient, path: str, count: int) -> list[float]:
    """``count`` sequential GETs of ``path``; each one's latency in milliseconds."""
    latencies = []
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    for _ in range(count):
        if time.monotonic() > deadline:
            raise SystemExit(f"reads took longer than {PHASE_TIMEOUT_S:.0f} s")
        started = time.perf_counter()
        answer = await client.get(path)
        latencies.append((time.perf_counter() - started) * 1000)
        if answer.status_code != 200:
            raise SystemExit(f"status read answered {answer.status_code}: {answer.text[:300]}")
    return latencies


def _percentile(values: list[float], q: int) -> float:
    """The q-th percentile (inclusive method: p99 of 300 reads lies among the top three)."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


class _Streams:
    """Event-stream clients on one batch. Each waits for its first progress event (the
    stream is then open and polling); with no worker the counts never change, so no
    further progress event follows, only keep-alive comments."""

    def __init__(self, client: httpx.AsyncClient, path: str) -> None:
        self.client = client
        self.path = path
        self.connected = 0
        self.failures: list[str] = []
        self._first = asyncio.Event()
        self._needed = 0
        self.tasks: list[asyncio.Task[None]] = []

    async def _one(self) -> None:
        try:
            async with self.client.stream("GET", self.path) as answer:
                if answer.status_code != 200:
                    self.failures.append(f"HTTP {answer.status_code}")
                    return
                seen_first = False
                async for line in answer.aiter_lines():
                    if not seen_first and line.startswith("event: progress"):
                        seen_first = True
                        self.connected += 1
                        if self.connected >= self._needed:
                            self._first.set()
        except (httpx.HTTPError, OSError) as exc:
            self.failures.append(type(exc).__name__)

    async def open(self, count: int) -> float:
        """Open ``count`` streams and wait until each has had its first event."""
        self._needed = count
        started = time.perf_counter()
        self.tasks = [asyncio.create_task(self._one()) for _ in range(count)]
        try:
            await asyncio.wait_for(self._first.wait(), CONNECT_TIMEOUT_S)
        except TimeoutError:
            raise SystemExit(
                f"only {self.connected} of {count} event streams connected in"
                f" {CONNECT_TIMEOUT_S:.0f} s; failures: {self.failures[:5]}"
            ) from None
        return time.perf_counter() - started

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        with suppress(asyncio.CancelledError):
            await asyncio.gather(*self.tasks, return_exceptions=True)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    name = f"bulkgen_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(args.admin_url)._replace(path="/" + name))
    try:
        return await _run(args, url)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def _run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    env = _bench_env(url)
    with tempfile.TemporaryDirectory(prefix="bulkgen-bench-api-") as tmp:
        return await _measure(args, url, env, Path(tmp) / "serve.log")


async def _measure(
    args: argparse.Namespace, url: str, env: dict[str, str], log: Path
) -> dict[str, Any]:
    async with _server(env, log) as base_url:
        key = await asyncio.to_thread(_create_key, env, "bench")
        headers = {"Authorization": f"Bearer {key}"}
        limits = httpx.Limits(max_connections=args.submitters + 2)
        async with httpx.AsyncClient(
            base_url=base_url, headers=headers, timeout=60, limits=limits
        ) as client:
            direct_s = await _submit_direct(url, args.batches, args.items, args.submitters)
            api_s, batch_path = await _submit_api(client, args.batches, args.items, args.submitters)
            await _reads(client, batch_path, 20)  # warm up the connection and the route
            # The baseline is read half before the streams open and half after they close,
            # so a machine growing busier or quieter during the run does not favour one side.
            quiet_ms = await _reads(client, batch_path, args.reads // 2)
            async with httpx.AsyncClient(
                base_url=base_url,
                headers=headers,
                timeout=httpx.Timeout(60, read=None),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
            ) as sse_client:
                streams = _Streams(sse_client, batch_path + "/events")
                try:
                    connect_s = await streams.open(args.sse_clients)
                    busy_ms = await _reads(client, batch_path, args.reads)
                    still_open = sum(1 for t in streams.tasks if not t.done())
                finally:
                    await streams.close()
            await asyncio.sleep(STREAMS_DRAIN_S)
            quiet_ms += await _reads(client, batch_path, args.reads - args.reads // 2)
    return _figures(args, direct_s, api_s, quiet_ms, busy_ms, connect_s, still_open)


def _figures(
    args: argparse.Namespace,
    direct_s: float,
    api_s: float,
    quiet_ms: list[float],
    busy_ms: list[float],
    connect_s: float,
    still_open: int,
) -> dict[str, Any]:
    items = args.batches * args.items
    figures: dict[str, Any] = {
        "batches": args.batches,
        "items_per_batch": args.items,
        "submitters": args.submitters,
        "direct_batches_per_s": round(args.batches / direct_s, 1),
        "direct_items_per_s": round(items / direct_s),
        "api_batches_per_s": round(args.batches / api_s, 1),
        "api_items_per_s": round(items / api_s),
        "api_over_direct_throughput": round(direct_s / api_s, 2),
        "reads": args.reads,
        "sse_clients": args.sse_clients,
        "sse_connect_s": round(connect_s, 2),
        "sse_open_at_end": still_open,
        "read_p50_ms_no_sse": round(_percentile(quiet_ms, 50), 2),
        "read_p99_ms_no_sse": round(_percentile(quiet_ms, 99), 2),
        "read_p50_ms_with_sse": round(_percentile(busy_ms, 50), 2),
        "read_p99_ms_with_sse": round(_percentile(busy_ms, 99), 2),
    }
    figures["p50_with_over_without"] = round(
        figures["read_p50_ms_with_sse"] / figures["read_p50_ms_no_sse"], 2
    )
    figures["p99_with_over_without"] = round(
        figures["read_p99_ms_with_sse"] / figures["read_p99_ms_no_sse"], 2
    )
    _print_table(figures)
    return figures


def _row(label: str, first: str, second: str) -> None:
    print(f"{label:<34}{first:>11}{second:>11}")


def _print_table(f: dict[str, Any]) -> None:
    print(
        f"submit: {f['batches']} batches of {f['items_per_batch']} items, {f['submitters']} at once"
    )
    _row("path", "batches/s", "items/s")
    _row(
        "baseline: Services.submit",
        f"{f['direct_batches_per_s']:.1f}",
        f"{f['direct_items_per_s']:,}",
    )
    _row("POST /v1/batches", f"{f['api_batches_per_s']:.1f}", f"{f['api_items_per_s']:,}")
    print(f"API / in-process throughput: {f['api_over_direct_throughput']:.2f}")
    print(f"status reads: {f['reads']} sequential GET /v1/batches/{{id}}")
    _row("event streams open", "p50 ms", "p99 ms")
    _row("baseline: 0", f"{f['read_p50_ms_no_sse']:.2f}", f"{f['read_p99_ms_no_sse']:.2f}")
    _row(
        str(f["sse_clients"]),
        f"{f['read_p50_ms_with_sse']:.2f}",
        f"{f['read_p99_ms_with_sse']:.2f}",
    )
    print(
        f"with / without: p50 {f['p50_with_over_without']:.2f},"
        f" p99 {f['p99_with_over_without']:.2f} ({f['sse_open_at_end']} streams still open"
        f" at the end; all connected in {f['sse_connect_s']:.1f} s)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--submitters", type=int, default=4)
    parser.add_argument("--sse-clients", type=int, default=500)
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    add_out_argument(parser, "api")
    args = parser.parse_args()
    fd_limit = _raise_fd_limit(args.sse_clients + SPARE_FDS)
    run = Run("api", args.out)
    figures = asyncio.run(main(args))
    run.finish(
        {"open_files_limit": fd_limit, **figures},
        postgresql=asyncio.run(postgres_version(args.admin_url)),
    )
