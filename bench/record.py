"""A benchmark's result on disk, with the commit it measured and the machine it ran on.

Every script in ``bench/`` starts a :class:`Run` before measuring and ends with
:meth:`Run.finish`, which prints the result as one JSON line and writes it to
``bench/results/<name>.json`` (or ``--out``). A figure quoted in ``BENCHMARKS.md`` can then
be traced to a file, the commit it measured, whether the tree had local changes, the
command line, and how busy the machine was (load averages at start and end: the cores are
shared, and a busy machine moves latencies).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"


def add_out_argument(parser: argparse.ArgumentParser, name: str) -> None:
    """``--out``: where the JSON result goes (``bench/results/<name>.json`` by default)."""
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR / f"{name}.json", help="JSON result file"
    )


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO_DIR, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def git_state() -> dict[str, Any]:
    """The commit measured, and whether the tree differed from it. Result files written
    by earlier benchmarks of the same session do not count as a difference."""
    changes = _git("status", "--porcelain", "--", ".", ":(exclude)bench/results")
    return {"commit": _git("rev-parse", "HEAD"), "dirty": bool(changes)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None
    return round(pages * page_size / 2**30, 1)


def _relative(path: str) -> str:
    """A path inside the repository as seen from its root, so results name no checkout."""
    try:
        return str(Path(path).absolute().relative_to(REPO_DIR))
    except ValueError:
        return path


def command_line() -> str:
    return shlex.join([_relative(sys.executable), _relative(sys.argv[0]), *sys.argv[1:]])


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def postgres_version(url: str) -> str:
    """The server's own version string (``SHOW server_version``)."""
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


async def redis_version(url: str) -> str:
    client = aioredis.Redis.from_url(url)
    try:
        return str((await client.info("server"))["redis_version"])
    finally:
        await client.aclose()


@dataclass
class Run:
    """One benchmark run, from before its first measurement to its result file."""

    name: str
    out: Path
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_s: float = field(default_factory=time.monotonic)
    load_at_start: tuple[float, ...] = field(default_factory=os.getloadavg)
    # Read when the run starts: the code measured is the code loaded then, whatever the tree
    # holds by the time a long run ends.
    source: dict[str, Any] = field(default_factory=git_state)

    def finish(
        self,
        figures: dict[str, Any],
        *,
        postgresql: str | None = None,
        redis: str | None = None,
    ) -> dict[str, Any]:
        """Print the result as one JSON line and write it to ``out``; return it."""
        result = {
            "benchmark": self.name,
            **self.source,
            "date": self.started.isoformat(timespec="seconds"),
            "duration_s": round(time.monotonic() - self.started_s, 1),
            "command": command_line(),
            "machine": {
                **machine(),
                "load_avg_1_5_15_at_start": [round(x, 2) for x in self.load_at_start],
                "load_avg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
            },
            "postgresql": postgresql,
            "redis": redis,
            "figures": figures,
        }
        print(json.dumps(result), flush=True)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(result, indent=2) + "\n")
        return result
