"""How fast a batch's jobs are finishing now, from their ``finished_at`` timestamps.

``GET /v1/batches/{id}`` is one request with no earlier sample to compare with (the event
stream has one and measures between its own polls), so the rate comes from the jobs
themselves: those that ran to an end (done or failed; a cancel ends thousands at once and
says nothing about speed) in the last ``window_s`` seconds. One statement over the batch's
rows through ``jobs_batch_idx``, like the counts beside it.
"""

from __future__ import annotations

import uuid

from bulkgen.db.pool import translate_errors
from bulkgen.db.store import Store

__all__ = ["BATCH_RECENT_FINISHED", "batch_recent_rate"]

# Jobs that ended in the window, and the seconds from the first of them to now.
BATCH_RECENT_FINISHED = """
SELECT count(*) AS jobs,
       coalesce(extract(epoch FROM now() - min(finished_at)), 0)::float8 AS span_s
FROM jobs
WHERE batch_id = $1 AND status IN ('done', 'failed')
  AND finished_at >= now() - make_interval(secs => $2)
"""


async def batch_recent_rate(
    store: Store, batch_id: uuid.UUID, window_s: float = 60.0
) -> float | None:
    """Jobs per second over the jobs that ended in the last ``window_s``: n jobs ending
    over a span leave n - 1 intervals between the first and now. None with fewer than two
    (nothing to measure: a batch not started, stalled, or long over)."""
    async with translate_errors("measuring the batch's rate"):
        row = await store.pool.fetchrow(BATCH_RECENT_FINISHED, batch_id, window_s)
    assert row is not None  # an aggregate always answers one row
    jobs, span_s = int(row["jobs"]), float(row["span_s"])
    if jobs < 2 or span_s <= 0:
        return None
    return (jobs - 1) / span_s
