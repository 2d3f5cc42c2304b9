"""One account's batches and jobs, as the API reads and changes them.

Every statement here takes the account id and filters on it in SQL, so a batch or job of
another account is indistinguishable from one that does not exist: the caller cannot
forget the check, because there is no unscoped variant to call by mistake.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bulkgen.db import queries as q
from bulkgen.db.pool import translate_errors
from bulkgen.db.store import BatchRecord, Store
from bulkgen.errors import Conflict

__all__ = [
    "ArticleRow",
    "JobDetailRow",
    "JobRow",
    "batch_of_account",
    "batch_retry_failed",
    "batches_page",
    "batches_status_counts",
    "job_of_account",
    "jobs_page",
]


@dataclass(frozen=True, slots=True)
class JobRow:
    id: int
    batch_id: uuid.UUID
    status: str
    input: dict[str, Any]
    attempts: int
    error_kind: str | None
    error_message: str | None
    cached: bool
    prompt_tokens: int | None
    completion_tokens: int | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class ArticleRow:
    title: str
    content: str
    html: str
    word_count: int
    finish_reason: str
    model: str


@dataclass(frozen=True, slots=True)
class JobDetailRow:
    job: JobRow
    article: ArticleRow | None  # only a done job has one


async def batch_of_account(
    store: Store, account_id: int, batch_id: uuid.UUID
) -> BatchRecord | None:
    async with translate_errors("reading the batch"):
        row = await store.pool.fetchrow(q.BATCH_GET_OF_ACCOUNT, batch_id, account_id)
    return BatchRecord(**dict(row)) if row else None


async def batches_page(
    store: Store,
    account_id: int,
    *,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[BatchRecord]:
    """Up to ``limit`` batches, newest first, older than ``before`` (created_at, id)."""
    created, batch_id = before if before is not None else (None, None)
    async with translate_errors("listing batches"):
        rows = await store.pool.fetch(q.BATCHES_OF_ACCOUNT, account_id, created, batch_id, limit)
    return [BatchRecord(**dict(r)) for r in rows]


async def batches_status_counts(
    store: Store, batch_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, dict[str, int]]:
    """Jobs per status for several batches in one statement (a page, not one per batch)."""
    if not batch_ids:
        return {}
    async with translate_errors("counting batches"):
        rows = await store.pool.fetch(q.BATCHES_STATUS_COUNTS, list(batch_ids))
    counts: dict[uuid.UUID, dict[str, int]] = {b: {} for b in batch_ids}
    for r in rows:
        counts[r["batch_id"]][r["status"]] = r["jobs"]
    return counts


async def jobs_page(
    store: Store,
    account_id: int,
    batch_id: uuid.UUID,
    *,
    status: str | None,
    after_id: int,
    limit: int,
) -> list[JobRow]:
    """Up to ``limit`` jobs of the batch in id order, after ``after_id``."""
    async with translate_errors("listing jobs"):
        rows = await store.pool.fetch(
            q.JOBS_OF_BATCH, batch_id, account_id, status, after_id, limit
        )
    return [JobRow(**dict(r)) for r in rows]


_ARTICLE_FIELDS = ("title", "content", "html", "word_count", "finish_reason", "model")


async def job_of_account(store: Store, account_id: int, job_id: int) -> JobDetailRow | None:
    async with translate_errors("reading the job"):
        row = await store.pool.fetchrow(q.JOB_GET_OF_ACCOUNT, job_id, account_id)
    if row is None:
        return None
    values = dict(row)
    article = {k: values.pop(k) for k in _ARTICLE_FIELDS}
    return JobDetailRow(
        job=JobRow(**values),
        article=None if article["content"] is None else ArticleRow(**article),
    )


async def batch_retry_failed(store: Store, account_id: int, batch_id: uuid.UUID) -> int | None:
    """Put the batch's failed jobs back in the queue with fresh attempts, and wake the
    workers; returns how many, or None when the account has no such batch.

    A cancelled batch raises :class:`Conflict`: its cancel sticks, so nothing is re-queued.
    """
    async with (
        translate_errors("retrying failed jobs"),
        store.pool.acquire() as conn,
        conn.transaction(),
    ):
        row = await conn.fetchrow(q.BATCH_RETRY_FAILED, batch_id, account_id)
        assert row is not None  # the statement always answers one row
        if row["requeued"]:
            await conn.execute(q.JOBS_NOTIFY, str(batch_id))
    if not row["found"]:
        return None
    if row["cancelled"]:
        raise Conflict(
            f"batch {batch_id} was cancelled; its failed jobs cannot be retried",
            kind="batch_cancelled",
        )
    requeued: int = row["requeued"]
    return requeued
