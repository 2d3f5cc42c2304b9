"""All database access of bulkgen, over the process's one pool.

Each method takes a connection for one statement (or one short transaction) and gives it
back at once: nothing here is ever held across a provider call.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from bulkgen.accounting import BatchUsage, BudgetSeed, UsageLine, summarize
from bulkgen.db import queries as q
from bulkgen.db.idempotency import IdempotencyKey, idempotency_key_claim
from bulkgen.db.pool import translate_errors
from bulkgen.errors import StorageError
from bulkgen.models import BatchMode, JobStatus
from bulkgen.pricing import PriceTable, PriceTier


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    id: int
    batch_id: uuid.UUID
    account_id: int
    input: dict[str, Any]
    attempts: int
    rate_limited_ms: int
    max_tokens_grown: bool
    claims: int = 0  # which claim of this job this is; outcomes are fenced on it


@dataclass(frozen=True, slots=True)
class BatchRecord:
    id: uuid.UUID
    account_id: int
    account: str
    options: dict[str, Any]
    template: str
    template_version: str
    total: int
    budget_usd: Decimal | None
    created_at: datetime
    cancelled_at: datetime | None
    cancel_reason: str | None
    mode: str = BatchMode.ONLINE
    deadline_at: datetime | None = None  # economy: when what is missing may go online
    fallback_online: bool = False


@dataclass(frozen=True, slots=True)
class StatusCount:
    status: str
    jobs: int
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    cached: int
    provider_calls: int = 0  # requests sent to the provider, over every claim
    provider_429s: int = 0  # of those, answered 429


@dataclass(frozen=True, slots=True)
class DoneRow:
    job_id: int
    content: str
    html: str
    title: str
    word_count: int
    finish_reason: str
    model: str
    cached: bool
    prompt_tokens: int
    completion_tokens: int
    cache_key: str | None
    claim: int | None = None  # the claim it finishes (None: owner fence only)
    cache_read_tokens: int = 0  # of prompt_tokens, read from the provider's prompt cache
    calls: int = 0  # requests this claim sent to the provider
    calls_429: int = 0  # of those, answered 429
    batch_api: bool = False  # answered through a provider batch: billed at batch prices


@dataclass(frozen=True, slots=True)
class RetryRow:
    job_id: int
    delay_s: float
    burnt: int
    rate_limited_ms: int
    grow_max_tokens: bool
    error_kind: str
    error_message: str
    claim: int | None = None
    calls: int = 0
    calls_429: int = 0


@dataclass(frozen=True, slots=True)
class FailedRow:
    job_id: int
    status: JobStatus  # FAILED or CANCELLED
    burnt: int
    error_kind: str
    error_message: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    claim: int | None = None
    cache_read_tokens: int | None = None
    calls: int = 0
    calls_429: int = 0
    batch_api: bool = False


class Store:
    """Named operations on accounts, batches, jobs, results and workers."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self.pool = pool

    async def account_ensure(self, name: str) -> int:
        """The account's id, created if it does not exist; an existing one is not written."""
        async with translate_errors("creating the account"), self.pool.acquire() as conn:
            return await _account_ensure(conn, name)

    async def batch_create(
        self,
        *,
        account: int | str,
        options: dict[str, Any],
        template: str,
        template_version: str,
        inputs: Sequence[dict[str, Any]],
        budget_usd: Decimal | None = None,
        idempotency: IdempotencyKey | None = None,
        mode: BatchMode = BatchMode.ONLINE,
        deadline_s: float | None = None,
        fallback_online: bool = False,
    ) -> uuid.UUID:
        """Insert a batch and all its jobs atomically: all of them or none, in one
        transaction with the account (its id, or its name: created if missing, only read
        if not), the idempotency key and the NOTIFY.

        With an idempotency key already used by an identical request, nothing is written
        and that request's batch id is returned (see :mod:`bulkgen.db.idempotency`).
        """
        batch_id = uuid.uuid4()
        async with (
            translate_errors("enqueuing the batch"),
            self.pool.acquire() as conn,
            conn.transaction(),
        ):
            account_id = (
                account if isinstance(account, int) else await _account_ensure(conn, account)
            )
            if idempotency is not None:
                earlier = await idempotency_key_claim(conn, account_id, idempotency, batch_id)
                if earlier is not None:
                    return earlier
            await conn.execute(
                q.BATCH_INSERT_WITH_JOBS,
                batch_id,
                account_id,
                options,
                template,
                template_version,
                len(inputs),
                budget_usd,
                list(inputs),
                mode,
                deadline_s,
                fallback_online,
            )
        return batch_id

    async def batch_get(self, batch_id: uuid.UUID) -> BatchRecord | None:
        async with translate_errors("reading the batch"):
            row = await self.pool.fetchrow(q.BATCH_GET, batch_id)
        return BatchRecord(**dict(row)) if row else None

    async def batches_get(self, batch_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, BatchRecord]:
        """Several batches by id in one statement; those that do not exist are left out."""
        async with translate_errors("reading batches"):
            rows = await self.pool.fetch(q.BATCHES_GET, list(batch_ids))
        return {row["id"]: BatchRecord(**dict(row)) for row in rows}

    async def batch_counts(self, batch_id: uuid.UUID) -> list[StatusCount]:
        async with translate_errors("counting the batch"):
            rows = await self.pool.fetch(q.BATCH_COUNTS, batch_id)
        return [StatusCount(**dict(r)) for r in rows]

    async def batch_empty_done(self, batch_id: uuid.UUID) -> int:
        async with translate_errors("counting empty results"):
            count: int = await self.pool.fetchval(q.BATCH_EMPTY_DONE, batch_id)
        return count

    async def batch_errors(self, batch_id: uuid.UUID) -> list[tuple[str, int, str]]:
        async with translate_errors("reading batch errors"):
            rows = await self.pool.fetch(q.BATCH_ERRORS, batch_id)
        return [(r["error_kind"], r["jobs"], r["example"] or "") for r in rows]

    async def batch_cancel(self, batch_id: uuid.UUID, reason: str = "cancelled") -> int:
        """Cancel queued jobs at once; running ones finish. Returns jobs cancelled now."""
        async with translate_errors("cancelling the batch"):
            status: str = await self.pool.execute(q.BATCH_CANCEL, batch_id, reason)
        return int(status.split()[-1])

    async def jobs_claim(self, worker_id: uuid.UUID, n: int) -> list[ClaimedJob]:
        if n <= 0:
            return []
        async with translate_errors("claiming jobs"):
            rows = await self.pool.fetch(q.JOBS_CLAIM, worker_id, n)
        return [ClaimedJob(**dict(r)) for r in rows]

    async def jobs_pending(self, batch_id: uuid.UUID | None = None, *, economy: bool = True) -> int:
        """Jobs not finished yet; ``economy=False`` leaves out those of economy batches
        (``batched``), for a worker that cannot send them."""
        async with translate_errors("counting pending jobs"):
            count: int = await self.pool.fetchval(q.JOBS_PENDING_COUNT, batch_id, economy)
        return count

    async def worker_register(self, worker_id: uuid.UUID, host: str, pid: int) -> None:
        async with translate_errors("registering the worker"):
            await self.pool.execute(q.WORKER_REGISTER, worker_id, host, pid)

    async def worker_heartbeat(self, worker_id: uuid.UUID) -> bool:
        """False when the row is gone (another worker judged us dead): re-register."""
        async with translate_errors("worker heartbeat"):
            found = await self.pool.fetchval(q.WORKER_HEARTBEAT, worker_id)
        return found is not None

    async def worker_delete(self, worker_id: uuid.UUID) -> None:
        async with translate_errors("removing the worker"):
            await self.pool.execute(q.WORKER_DELETE, worker_id)

    async def jobs_of_owner(self, worker_id: uuid.UUID) -> set[int]:
        """The jobs the database says this worker is running."""
        async with translate_errors("listing the worker's jobs"):
            rows = await self.pool.fetch(q.JOBS_OF_OWNER, worker_id)
        return {r["id"] for r in rows}

    async def jobs_rescue(self, lease_s: float, max_attempts: int) -> int:
        async with translate_errors("rescuing jobs of dead workers"):
            rows = await self.pool.fetch(q.JOBS_RESCUE, lease_s, max_attempts)
        return len(rows)

    async def jobs_release(self, worker_id: uuid.UUID, job_ids: Sequence[int]) -> int:
        if not job_ids:
            return 0
        async with translate_errors("releasing jobs"):
            rows = await self.pool.fetch(q.JOBS_RELEASE, worker_id, list(job_ids))
        return len(rows)

    async def jobs_finish_done(self, worker_id: uuid.UUID, rows: Sequence[DoneRow]) -> set[int]:
        """Write results and mark done, fenced on the owner; returns the ids written.

        One statement (the update in a CTE, the results inserted by its main query), so it
        is its own transaction: an explicit BEGIN and COMMIT around it would only add two
        round trips. The deferred check that a ``done`` job has its result runs at that
        statement's commit."""
        async with translate_errors("finishing jobs"):
            return await _finish_done(self.pool, worker_id, rows)

    async def jobs_finish_retry(self, worker_id: uuid.UUID, rows: Sequence[RetryRow]) -> set[int]:
        async with translate_errors("scheduling retries"):
            return await _finish_retry(self.pool, worker_id, rows)

    async def jobs_finish_failed(self, worker_id: uuid.UUID, rows: Sequence[FailedRow]) -> set[int]:
        async with translate_errors("failing jobs"):
            return await _finish_failed(self.pool, worker_id, rows)

    async def jobs_finish_and_claim(
        self, worker_id: uuid.UUID, outcomes: Sequence[DoneRow | RetryRow | FailedRow], n: int
    ) -> tuple[set[int], list[ClaimedJob]]:
        """Write outcomes (fenced, as the three methods above) and claim up to ``n`` jobs,
        in one transaction: the ids written, and the jobs claimed.

        A worker whose jobs end together frees their slots by writing their outcomes; the
        claim that fills those slots rides in the same transaction instead of one of its
        own, which halves the transactions a busy worker makes. All or nothing: if any
        statement (or the deferred done-needs-result check at commit) fails, no outcome is
        written and nothing is claimed."""
        async with (
            translate_errors("finishing and claiming jobs"),
            self.pool.acquire() as conn,
            conn.transaction(),
        ):
            written = await _finish_done(
                conn, worker_id, [r for r in outcomes if isinstance(r, DoneRow)]
            )
            written |= await _finish_retry(
                conn, worker_id, [r for r in outcomes if isinstance(r, RetryRow)]
            )
            written |= await _finish_failed(
                conn, worker_id, [r for r in outcomes if isinstance(r, FailedRow)]
            )
            claimed = await conn.fetch(q.JOBS_CLAIM, worker_id, n) if n > 0 else []
        return written, [ClaimedJob(**dict(r)) for r in claimed]

    async def results_iter(
        self, batch_id: uuid.UUID, page_size: int = 500
    ) -> AsyncIterator[dict[str, Any]]:
        """Every job of a batch with its result (if any), in id order, page by page."""
        after = 0
        while True:
            async with translate_errors("reading results"):
                rows = await self.pool.fetch(q.RESULTS_OF_BATCH, batch_id, after, page_size)
            for row in rows:
                yield dict(row)
            if len(rows) < page_size:
                return
            after = rows[-1]["id"]

    async def connections_in_use(self, application_name: str = "bulkgen") -> int:
        async with translate_errors("counting connections"):
            count: int = await self.pool.fetchval(q.CONNECTIONS_OF_APP, application_name)
        return count

    async def batch_usage(
        self, batch_id: uuid.UUID, prices: PriceTable | None = None
    ) -> BatchUsage:
        """Tokens, cost, cache hits and savings of a batch, from its jobs' own rows."""
        async with translate_errors("reading batch usage"):
            rows = await self.pool.fetch(q.BATCH_USAGE, batch_id)
        lines = (UsageLine(**{**dict(r), "tier": PriceTier(r["tier"])}) for r in rows)
        return summarize(lines, prices)

    async def batch_budget_seed(
        self, batch_id: uuid.UUID, prices: PriceTable | None = None
    ) -> BudgetSeed:
        """A batch's cap and its cost so far: what a worker's budget ledger starts from.

        Called once per batch per worker (and again only if the fleet's ledger lapsed),
        never per job. A vanished batch has no cap.
        """
        async with translate_errors("reading the batch budget"):
            cap: Decimal | None = await self.pool.fetchval(q.BATCH_BUDGET_GET, batch_id)
        if cap is None:
            return BudgetSeed(None, Decimal(0))
        usage = await self.batch_usage(batch_id, prices)
        async with translate_errors("reading the batch budget"):
            # What its provider batches hold (economy mode): the worst case of those still
            # running, and billed answers no job row keeps.
            held: Decimal = await self.pool.fetchval(q.PROVIDER_BATCHES_HELD, batch_id)
        return BudgetSeed(cap, usage.cost_usd + held)


async def _account_ensure(conn: PoolConnectionProxy[Any], name: str) -> int:
    """One statement in the common cases (the account exists, or this call creates it); a
    second only when another transaction created it at the same moment."""
    account_id: int | None = await conn.fetchval(q.ACCOUNT_ENSURE, name)
    if account_id is None:
        account_id = await conn.fetchval(q.ACCOUNT_ID_OF_NAME, name)
    if account_id is None:  # created and deleted again in between
        raise StorageError(f"the account {name!r} vanished while it was being created")
    return account_id


def pg_text(text: str) -> str:
    """Text PostgreSQL can store: no NUL characters, no lone surrogates. A provider can
    send either inside valid JSON; refusing the write would strand the job."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


# Where a finish statement runs: the pool (a transaction of its own) or a connection
# inside a caller's transaction.
Executor: TypeAlias = "asyncpg.Pool[Any] | PoolConnectionProxy[Any]"


async def _finish_done(db: Executor, worker_id: uuid.UUID, rows: Sequence[DoneRow]) -> set[int]:
    if not rows:
        return set()
    written = await db.fetch(q.JOBS_FINISH_DONE, worker_id, *_done_columns(rows))
    return {r["job_id"] for r in written}


async def _finish_retry(db: Executor, worker_id: uuid.UUID, rows: Sequence[RetryRow]) -> set[int]:
    if not rows:
        return set()
    written = await db.fetch(q.JOBS_FINISH_RETRY, worker_id, *_retry_columns(rows))
    return {r["id"] for r in written}


async def _finish_failed(db: Executor, worker_id: uuid.UUID, rows: Sequence[FailedRow]) -> set[int]:
    if not rows:
        return set()
    written = await db.fetch(q.JOBS_FINISH_FAILED, worker_id, *_failed_columns(rows))
    return {r["id"] for r in written}


def _columns(rows: Sequence[tuple[object, ...]]) -> list[list[object]]:
    """Rows as the parallel arrays the finish statements ``unnest``."""
    return [list(column) for column in zip(*rows, strict=True)]


def _done_columns(rows: Sequence[DoneRow]) -> list[list[object]]:
    return _columns(
        [
            (
                r.job_id,
                pg_text(r.content),
                pg_text(r.html),
                pg_text(r.title),
                r.word_count,
                r.finish_reason,
                r.model,
                r.cached,
                r.prompt_tokens,
                r.completion_tokens,
                r.cache_key,
                r.claim,
                r.cache_read_tokens,
                r.calls,
                r.calls_429,
                r.batch_api,
            )
            for r in rows
        ]
    )


def _retry_columns(rows: Sequence[RetryRow]) -> list[list[object]]:
    return _columns(
        [
            (
                r.job_id,
                r.delay_s,
                r.burnt,
                r.rate_limited_ms,
                r.grow_max_tokens,
                r.error_kind,
                pg_text(r.error_message[:2000]),
                r.claim,
                r.calls,
                r.calls_429,
            )
            for r in rows
        ]
    )


def _failed_columns(rows: Sequence[FailedRow]) -> list[list[object]]:
    return _columns(
        [
            (
                r.job_id,
                r.status,
                r.burnt,
                r.error_kind,
                pg_text(r.error_message[:2000]),
                r.prompt_tokens,
                r.completion_tokens,
                r.claim,
                r.cache_read_tokens,
                r.calls,
                r.calls_429,
                r.batch_api,
            )
            for r in rows
        ]
    )


async def prune_batches(store: Store, *, older_than_days: int, chunk: int = 100) -> tuple[int, int]:
    """Delete finished batches older than the cutoff, chunk by chunk; (batches, jobs)."""
    batches = jobs = 0
    while True:
        async with translate_errors("pruning old batches"):
            rows = await store.pool.fetch(q.BATCHES_PRUNE, older_than_days, chunk)
        if not rows:
            return batches, jobs
        batches += len(rows)
        jobs += rows[0]["jobs"]
