"""What a measured stretch cost PostgreSQL, as the server itself counts it.

Shared by the benchmarks that compare write paths or queues on one server: a fresh
database per measurement, transactions committed (``pg_stat_database``), rows written
(``pg_stat_user_tables``), the CPU time of the server's processes and the connections a
client held. Counting on the server's side means a comparison does not rest on either
side counting itself: polls, heartbeats, plan loads and connection set-up are all in.
"""

from __future__ import annotations

import asyncio
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


def server_cpu_s() -> float:
    """CPU seconds used so far by every process named ``postgres`` on this machine.

    A backend's own time moves to the postmaster's children counters (``cutime``,
    ``cstime``) when it exits and is reaped, so the sum stays whole across connections
    that close between two readings. It covers everything the server did meanwhile,
    other databases and other clients included.
    """
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while being read
            continue
        comm_end = text.rfind(")")
        if text[text.find("(") + 1 : comm_end] != "postgres":
            continue
        fields = text[comm_end + 2 :].split()
        ticks += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / CLOCK_TICKS_PER_S


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
