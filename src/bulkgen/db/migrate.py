"""Numbered ``.sql`` migrations, applied once each, in order, under an advisory lock so that
several workers starting at once do not race."""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

import asyncpg

from bulkgen.db.pool import translate_errors

logger = logging.getLogger(__name__)

_LOCK_ID = 0x62756C6B  # "bulk"


def available_migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every packaged migration, sorted by version."""
    folder = resources.files("bulkgen.db") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(pool: asyncpg.Pool[Any]) -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date)."""
    applied: list[str] = []
    async with translate_errors("database migration"), pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in available_migrations():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        version,
                        name,
                    )
                logger.info("db.migrated", extra={"migration": name})
                applied.append(name)
        finally:
            try:
                await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
            except BaseException:
                # Releases skip the reset query (see db.pool): a lock still held must not
                # go back to the pool, where it would block every later migration.
                conn.terminate()
                raise
    return applied
