"""Whether the database answers: one trivial statement through the pool."""

from __future__ import annotations

from bulkgen.db import queries as q
from bulkgen.db.pool import translate_errors
from bulkgen.db.store import Store

__all__ = ["database_ping"]


async def database_ping(store: Store) -> None:
    """Returns when PostgreSQL answered; raises StorageError when it did not."""
    async with translate_errors("checking the database"):
        await store.pool.fetchval(q.DATABASE_PING)
