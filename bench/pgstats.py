"""What a measured stretch cost PostgreSQL, as the server itself counts it.

Shared by the benchmarks that compare write paths or queues on one server: a fresh
database per measurement, transactions committed (``pg_stat_database``), rows written
(``pg_stat_user_tables``), the connections a client held, and CPU time read from
``/proc`` (the server's processes: anything else the server does meanwhile is in it).
Counting on the server's side means a comparison does not rest on either side counting
itself: polls, heartbeats, plan loads and connection set-up are all in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


async def fresh_db(admin: asyncpg.Connection, admin_url: str) -> tuple[str, str]:  # type: ignore[type-arg]
    """A new empty database on the admin connection's server: its name and URL."""
    name = f"bulkgen_bench_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    return name, urlunsplit(urlsplit(admin_url)._replace(path="/" + name))


async def drop_db(admin: asyncpg.Connection, name: str) -> None:  # type: ignore[type-arg]
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def client_count(admin: asyncpg.Connection, name: str) -> int:  # type: ignore[type-arg]
    """Client connections to ``name`` right now."""
    await admin.execute("SELECT pg_stat_clear_snapshot()")
    return int(
        await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = $1 AND backend_type = 'client backend'",
            name,
        )
    )


async def backends_gone(admin: asyncpg.Connection, name: str) -> None:  # type: ignore[type-arg]
    """Wait until no client is connected to ``name``: a backend flushes its statistics to
    PostgreSQL's counters when it exits, so only then do they cover all it did."""
    for _ in range(500):
        if await client_count(admin, name) == 0:
            return
        await asyncio.sleep(0.02)
    raise RuntimeError(f"clients still connected to {name}")


async def transactions(admin: asyncpg.Connection, name: str) -> int:  # type: ignore[type-arg]
    await backends_gone(admin, name)
    await admin.execute("SELECT pg_stat_clear_snapshot()")
    return int(
        await admin.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = $1", name)
    )


async def row_writes(url: str) -> dict[str, int]:
    """Rows inserted, updated or deleted per table, as PostgreSQL counted them."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del AS writes FROM pg_stat_user_tables"
        )
    finally:
        await conn.close()
    return {r["relname"]: int(r["writes"]) for r in rows}


async def postmaster_pid(admin: asyncpg.Connection) -> int:  # type: ignore[type-arg]
    """The pid of the server the admin connection is on: its backend's parent."""
    return proc_stat(int(await admin.fetchval("SELECT pg_backend_pid()")))[1]


def proc_stat(pid: int) -> list[int]:
    """``/proc/<pid>/stat`` from its parent pid on, as numbers (the state left out)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return [0, *(int(f) for f in text[text.rfind(")") + 2 :].split()[1:])]


def process_tree_cpu_s(root: int) -> float:
    """CPU seconds used so far by ``root`` and its live children (not their children).

    A child's time moves to its parent's children counters (``cutime``, ``cstime``,
    counted here) when it exits and is reaped, so the sum stays whole across children
    that end between two readings: a server's backends, a process's helpers.
    """
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        pid = int(stat.parent.name)
        try:
            fields = proc_stat(pid)
        except (OSError, ValueError):  # ended while being read
            continue
        if pid == root or fields[1] == root:
            ticks += sum(fields[11:15])  # utime, stime, cutime, cstime
    return ticks / CLOCK_TICKS_PER_S


@dataclass
class Backends:
    """The processes serving one database, watched while a client runs: the most client
    connections seen at once, and the CPU time of every backend seen (autovacuum workers
    included), apart from whatever else the server does meanwhile.

    Sampled, so a backend's last moments before it exits (at most one interval) are
    missed.
    """

    admin: asyncpg.Connection  # type: ignore[type-arg]
    name: str
    every_s: float = 0.02
    peak_clients: int = 0
    ticks: dict[int, int] = field(default_factory=dict)

    @property
    def cpu_s(self) -> float:
        return sum(self.ticks.values()) / CLOCK_TICKS_PER_S

    async def sample(self) -> None:
        await self.admin.execute("SELECT pg_stat_clear_snapshot()")
        rows = await self.admin.fetch(
            "SELECT pid, backend_type FROM pg_stat_activity WHERE datname = $1", self.name
        )
        clients = sum(1 for r in rows if r["backend_type"] == "client backend")
        self.peak_clients = max(self.peak_clients, clients)
        for row in rows:
            with contextlib.suppress(OSError, ValueError):  # ended meanwhile
                used = sum(proc_stat(row["pid"])[11:13])  # utime, stime
                self.ticks[row["pid"]] = max(self.ticks.get(row["pid"], 0), used)

    async def watch(self) -> None:
        """Sample until cancelled."""
        while True:
            await self.sample()
            await asyncio.sleep(self.every_s)


@dataclass
class ServerCount:
    """PostgreSQL's own count of what one measured stretch cost the database."""

    admin: asyncpg.Connection  # type: ignore[type-arg]
    name: str
    url: str
    xacts: int = 0
    writes: dict[str, int] = field(default_factory=dict)

    async def start(self) -> None:
        self.writes = await row_writes(self.url)  # this reader's own commits land before...
        self.xacts = await transactions(self.admin, self.name)  # ...this count

    async def stop(self, jobs: int) -> dict[str, Any]:
        xacts = await transactions(self.admin, self.name)
        writes = await row_writes(self.url)
        delta = {t: n - self.writes.get(t, 0) for t, n in writes.items()}
        return {
            "transactions": xacts - self.xacts,
            "transactions_per_job": round((xacts - self.xacts) / jobs, 4),
            "row_writes_per_job": round(sum(delta.values()) / jobs, 4),
            "row_writes_by_table": {t: n for t, n in sorted(delta.items()) if n},
        }
