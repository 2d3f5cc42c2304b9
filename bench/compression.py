"""Storing results: lz4 against pglz, PostgreSQL's default TOAST compression.

A finished job stores its article twice (Markdown and sanitised HTML, ~6 KB and ~7 KB for
800 words), both over the TOAST threshold, so every finish compresses them. This inserts
``--rows`` results of ``queues.py``'s ~800-word article (different for every row) the way
the status writer does (``unnest``, ``--per-statement`` rows a statement) into a table
shaped like ``results``, once per method, on a fresh database, and reports per row:

- the statement's wall time and the server backend's CPU time (``/proc``, the backend
  serving the connection: compression runs there);
- the bytes the table takes, TOAST included.

``none`` (``STORAGE EXTERNAL``: out of line, uncompressed) is measured as a floor. lz4 needs
a server built with it; without it that row is reported as unavailable.

    .venv/bin/python bench/compression.py [--rows 2000] [--per-statement 20] [--repeat 3]

Writes its result to ``bench/results/compression.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import asyncpg

from bulkgen.formatting import format_article
from pgstats import CLOCK_TICKS_PER_S, drop_db, fresh_db, proc_stat
from queues import article
from record import Run, add_out_argument, postgres_version

METHODS = {
    "pglz": "SET COMPRESSION pglz",
    "lz4": "SET COMPRESSION lz4",
    "none": "SET STORAGE EXTERNAL",
}

TABLE = """
CREATE TABLE results_bench (
    job_id bigint PRIMARY KEY, content text NOT NULL, html text NOT NULL, title text NOT NULL
)
"""
INSERT = """
INSERT INTO results_bench (job_id, content, html, title)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[])
"""


def _cpu_s(pid: int) -> float:
    """The backend's own CPU time (``utime`` + ``stime``) so far."""
    return sum(proc_stat(pid)[11:13]) / CLOCK_TICKS_PER_S


async def measure(
    conn: asyncpg.Connection,  # type: ignore[type-arg]
    method: str,
    rows: list[tuple[str, str, str]],
    per_statement: int,
    repeat: int,
) -> dict[str, Any]:
    """The best of ``repeat`` passes, each into an emptied table."""
    await conn.execute("DROP TABLE IF EXISTS results_bench")
    await conn.execute(TABLE)
    clause = METHODS[method]
    try:
        await conn.execute(f"ALTER TABLE results_bench ALTER content {clause}, ALTER html {clause}")
    except asyncpg.FeatureNotSupportedError as exc:
        return {"available": False, "reason": str(exc)}
    backend = await conn.fetchval("SELECT pg_backend_pid()")
    best_wall_s = best_cpu_s = float("inf")
    for _ in range(repeat):
        await conn.execute("TRUNCATE results_bench")
        cpu_s, started = _cpu_s(backend), time.perf_counter()
        for first in range(0, len(rows), per_statement):
            chunk = rows[first : first + per_statement]
            ids = list(range(first, first + len(chunk)))
            await conn.execute(INSERT, ids, *map(list, zip(*chunk, strict=True)))
        best_wall_s = min(best_wall_s, time.perf_counter() - started)
        best_cpu_s = min(best_cpu_s, _cpu_s(backend) - cpu_s)
    size = await conn.fetchval("SELECT pg_total_relation_size('results_bench')")
    return {
        "available": True,
        "wall_ms_per_row": round(best_wall_s * 1000 / len(rows), 4),
        "backend_cpu_ms_per_row": round(best_cpu_s * 1000 / len(rows), 4),
        "bytes_per_row": size // len(rows),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for i in range(args.rows):
        markdown = article(f"keyword {i}")
        rows.append((markdown, format_article(markdown, fallback_title="x").html, f"t{i}"))
    chars = sum(len(m) + len(h) for m, h, _ in rows) // len(rows)
    admin = await asyncpg.connect(args.admin_url)
    name, url = await fresh_db(admin, args.admin_url)
    try:
        conn = await asyncpg.connect(url)
        try:
            methods = {
                m: await measure(conn, m, rows, args.per_statement, args.repeat) for m in METHODS
            }
        finally:
            await conn.close()
    finally:
        await drop_db(admin, name)
        await admin.close()
    print(f"{len(rows):,} rows of {chars:,} characters (Markdown + HTML)")
    print(f"{'method':8} {'wall ms/row':>12} {'backend CPU ms/row':>19} {'bytes/row':>10}")
    for method, figures in methods.items():
        if not figures["available"]:
            print(f"{method:8} unavailable: {figures['reason']}")
            continue
        print(
            f"{method:8} {figures['wall_ms_per_row']:12.4f}"
            f" {figures['backend_cpu_ms_per_row']:19.4f} {figures['bytes_per_row']:10,}"
        )
    ratios: dict[str, float | None] = {"lz4_over_pglz_cpu": None, "lz4_over_pglz_bytes": None}
    if methods["lz4"]["available"]:
        lz4, pglz = methods["lz4"], methods["pglz"]
        ratios = {
            "lz4_over_pglz_cpu": round(
                lz4["backend_cpu_ms_per_row"] / pglz["backend_cpu_ms_per_row"], 3
            ),
            "lz4_over_pglz_wall": round(lz4["wall_ms_per_row"] / pglz["wall_ms_per_row"], 3),
            "lz4_over_pglz_bytes": round(lz4["bytes_per_row"] / pglz["bytes_per_row"], 3),
        }
        print(
            f"lz4 / pglz: backend CPU {ratios['lz4_over_pglz_cpu']}x,"
            f" wall {ratios['lz4_over_pglz_wall']}x, bytes {ratios['lz4_over_pglz_bytes']}x"
        )
    return {
        "rows": len(rows),
        "chars_per_row": chars,
        "per_statement": args.per_statement,
        "repeat": args.repeat,
        "methods": methods,
        "ratios": ratios,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--per-statement", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    add_out_argument(parser, "compression")
    args = parser.parse_args()
    run = Run("compression", args.out)
    figures = asyncio.run(main(args))
    run.finish(figures, postgresql=asyncio.run(postgres_version(args.admin_url)))
