"""Enqueue cost: a 10,000-job batch inserted atomically.

Measures bulkgen's path (``Services.submit``: account, batch row and every job in one
transaction, one ``INSERT ... SELECT FROM unnest`` round trip) against two baselines in the
same run and the same database: one ``INSERT`` per job (``executemany``, the per-row
approach) and ``COPY`` (asyncpg's ``copy_records_to_table``). Also times parsing the CSV.

    .venv/bin/python bench/enqueue.py [--jobs 10000] [--repeat 5] [--admin-url URL]

Needs a PostgreSQL server (the machine's by default); creates and drops its own database.
Writes its result to ``bench/results/enqueue.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bulkgen.intake import parse_csv
from bulkgen.metrics import Metrics
from bulkgen.service import open_services
from bulkgen.settings import Settings
from record import Run, add_out_argument, postgres_version


def _csv(n: int) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["keyword", "audience", "tone"])
    for i in range(n):
        writer.writerow([f"keyword number {i}", "beginners", "friendly" if i % 2 else ""])
    return out.getvalue()


async def _time(repeat: int, body: Callable[[], Awaitable[object]]) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await body()
        times.append(time.perf_counter() - started)
    return times


async def main(jobs: int, repeat: int, admin_url: str) -> dict[str, float]:
    name = f"bulkgen_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(admin_url)._replace(path="/" + name))
    try:
        return await _run(jobs, repeat, url)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def _run(jobs: int, repeat: int, url: str) -> dict[str, float]:
    text = _csv(jobs)
    parse_s = await _time(repeat, lambda: asyncio.to_thread(parse_csv, text, max_rows=jobs))
    rows = parse_csv(text, max_rows=jobs)
    settings = Settings(
        database_url=url, openai_base_url="http://127.0.0.1:9/v1", openai_api_key="sk-bench"
    )
    svc = await open_services(settings, metrics=Metrics())
    try:
        account_id = await svc.store.account_ensure("bench")
        batch = await svc.store.pool.fetchval(
            "INSERT INTO batches (id, account_id, options, template, template_version, total)"
            " VALUES ($1, $2, '{}', '', '', 0) RETURNING id",
            uuid.uuid4(),
            account_id,
        )
        inputs = [
            {"keyword": r.keyword, "variables": r.variables, "overrides": r.overrides} for r in rows
        ]
        records = [(batch, account_id, json.dumps(i)) for i in inputs]

        async def ours() -> None:
            await svc.submit(rows, svc.batch_options(), account="bench")

        async def per_row() -> None:
            async with svc.store.pool.acquire() as conn, conn.transaction():
                await conn.executemany(
                    "INSERT INTO jobs (batch_id, account_id, input) VALUES ($1, $2, $3::jsonb)",
                    records,
                )

        copy_csv = io.StringIO()
        csv.writer(copy_csv).writerows(records)
        copy_bytes = copy_csv.getvalue().encode()

        async def copy() -> None:
            async with svc.store.pool.acquire() as conn, conn.transaction():
                await conn.copy_to_table(
                    "jobs",
                    source=io.BytesIO(copy_bytes),
                    columns=["batch_id", "account_id", "input"],
                    format="csv",
                )

        ours_s = await _time(repeat, ours)
        per_row_s = await _time(repeat, per_row)
        copy_s = await _time(repeat, copy)
        assert await svc.store.pool.fetchval("SELECT count(*) FROM jobs") == jobs * repeat * 3
    finally:
        await svc.aclose()
    med = statistics.median
    figures = {
        "jobs": jobs,
        "parse_csv_s": round(med(parse_s), 4),
        "submit_s": round(med(ours_s), 4),
        "per_row_insert_s": round(med(per_row_s), 4),
        "copy_s": round(med(copy_s), 4),
    }
    paths = [
        ("parse CSV", "parse_csv_s"),
        ("bulkgen submit (unnest)", "submit_s"),
        ("baseline: INSERT per row", "per_row_insert_s"),
        ("baseline: COPY", "copy_s"),
    ]
    for _, key in paths:
        figures[key.removesuffix("_s") + "_jobs_per_s"] = round(jobs / figures[key])
    figures["per_row_over_submit"] = round(figures["per_row_insert_s"] / figures["submit_s"], 2)
    figures["copy_over_submit"] = round(figures["copy_s"] / figures["submit_s"], 2)
    print(f"{'path':<28}{'median s':>10}{'jobs/s':>12}")
    for label, key in paths:
        print(f"{label:<28}{figures[key]:>10.4f}{jobs / figures[key]:>12,.0f}")
    print(
        f"per-row / submit: {figures['per_row_over_submit']:.2f};"
        f" COPY / submit: {figures['copy_over_submit']:.2f}"
    )
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    add_out_argument(parser, "enqueue")
    args = parser.parse_args()
    run = Run("enqueue", args.out)
    figures = asyncio.run(main(args.jobs, args.repeat, args.admin_url))
    run.finish(
        {"repeat": args.repeat, **figures},
        postgresql=asyncio.run(postgres_version(args.admin_url)),
    )
