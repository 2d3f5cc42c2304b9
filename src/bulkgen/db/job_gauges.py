"""Jobs by status for a scrape: only the unfinished ones, counted from their partial indexes.

A scrape comes every few seconds from every monitoring system pointed at every API process,
so it must stay cheap whatever the table holds: counting done, failed and cancelled jobs
would walk every row the service has ever finished (millions, until pruned). Queued and
generating are the figures an operator watches (backlog, work in flight), with batched (the
jobs of economy batches, waiting for or held by a provider batch), and each is read from
the partial index that holds exactly those rows, in one statement.
"""

from __future__ import annotations

from bulkgen.db import queries as q
from bulkgen.db.pool import translate_errors
from bulkgen.db.store import Store

__all__ = ["jobs_active_counts"]


async def jobs_active_counts(store: Store) -> dict[str, int]:
    """``{"queued": n, "generating": m, "batched": b}`` over every batch of every account."""
    async with translate_errors("counting unfinished jobs"):
        row = await store.pool.fetchrow(q.JOBS_ACTIVE_COUNTS)
    assert row is not None  # a SELECT without FROM always answers one row
    return {"queued": row["queued"], "generating": row["generating"], "batched": row["batched"]}
