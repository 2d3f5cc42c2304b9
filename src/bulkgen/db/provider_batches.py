"""Provider batches in PostgreSQL: the durable state of economy mode.

Every write of a step is fenced on the worker's lease of the row, so a worker whose lease
lapsed (it froze, or was taken for dead) writes nothing; the jobs a provider batch holds
are finished through :class:`~bulkgen.db.store.Store` with the provider batch's id as their
owner, by the same fenced statements as a worker's jobs.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import asyncpg

from bulkgen.db import queries as q
from bulkgen.db.pool import translate_errors
from bulkgen.db.store import ClaimedJob


@dataclass(frozen=True, slots=True)
class ProviderBatchRow:
    """A provider batch as the database holds it."""

    id: uuid.UUID
    batch_id: uuid.UUID
    model: str
    state: str  # preparing -> submitted -> processed
    provider_id: str | None
    provider_status: str | None
    input_file_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    requests: int
    completed: int
    failed: int
    reserved_usd: Decimal
    created_at: datetime
    expires_at: datetime | None
    poll_interval_s: float
    failures: int  # steps failed in a row
    stopping: bool  # its batch was cancelled or went online: send nothing, cancel at provider


@dataclass(frozen=True, slots=True)
class ProviderAnswer:
    """What the provider last said of a batch: its status, counts and files."""

    status: str
    completed: int
    failed: int
    output_file_id: str | None
    error_file_id: str | None

    def columns(self) -> tuple[str, int, int, str | None, str | None]:
        """As the statements that record it take it, in this order."""
        return (self.status, self.completed, self.failed, self.output_file_id, self.error_file_id)


class ProviderBatchStore:
    """Named operations on ``provider_batches`` and the jobs they hold."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self.pool = pool

    async def dispatch(
        self, worker_id: uuid.UUID, *, max_requests: int, lease_s: float
    ) -> tuple[uuid.UUID, list[ClaimedJob]] | None:
        """A new provider batch, leased to this worker, holding up to ``max_requests`` of
        the oldest waiting jobs of one batch and model; None when no job waits."""
        pb_id = uuid.uuid4()
        async with translate_errors("dispatching economy jobs"):
            rows = await self.pool.fetch(
                q.ECONOMY_DISPATCH, pb_id, worker_id, max_requests, lease_s
            )
        if not rows:
            return None
        return pb_id, [ClaimedJob(**dict(r)) for r in rows]

    async def lease(self, worker_id: uuid.UUID, lease_s: float) -> ProviderBatchRow | None:
        """The provider batch most overdue for its next step, leased to this worker."""
        async with translate_errors("leasing a provider batch"):
            row = await self.pool.fetchrow(q.PROVIDER_BATCH_LEASE, worker_id, lease_s)
        return ProviderBatchRow(**dict(row)) if row else None

    async def extend(
        self, pb_id: uuid.UUID, worker_id: uuid.UUID, lease_s: float
    ) -> Literal["held", "stopping", "lost"]:
        """Keep the lease: ``lost`` when another worker has it now, ``stopping`` when the
        batch was cancelled or went online meanwhile (nothing more may be sent)."""
        async with translate_errors("extending a provider batch lease"):
            stopping = await self.pool.fetchval(
                q.PROVIDER_BATCH_LEASE_EXTEND, pb_id, worker_id, lease_s
            )
        if stopping is None:
            return "lost"
        return "stopping" if stopping else "held"

    async def provider_id(self, pb_id: uuid.UUID) -> str | None:
        async with translate_errors("reading a provider batch"):
            found: str | None = await self.pool.fetchval(q.PROVIDER_BATCH_PROVIDER_ID, pb_id)
        return found

    async def jobs(self, pb_id: uuid.UUID) -> list[ClaimedJob]:
        """The jobs this provider batch still holds (not written yet)."""
        async with translate_errors("reading a provider batch's jobs"):
            rows = await self.pool.fetch(q.PROVIDER_BATCH_JOBS, pb_id)
        return [ClaimedJob(**dict(r)) for r in rows]

    async def jobs_return(
        self, pb_id: uuid.UUID, worker_id: uuid.UUID, job_ids: Sequence[int], delay_s: float
    ) -> int:
        """Jobs it will not send after all go back, without an attempt, while this worker
        holds its lease: to waiting, or queued or cancelled if their batch went online or
        was cancelled."""
        if not job_ids:
            return 0
        async with translate_errors("returning economy jobs"):
            rows = await self.pool.fetch(
                q.PROVIDER_BATCH_JOBS_RETURN, pb_id, list(job_ids), delay_s, worker_id
            )
        return len(rows)

    async def reserve(
        self,
        batch_id: uuid.UUID,
        pb_id: uuid.UUID,
        worker_id: uuid.UUID,
        choose: Callable[[Decimal | None, Decimal], Awaitable[Decimal]],
    ) -> bool:
        """Hold part of the batch's cap for this provider batch, in one transaction with
        the batch row locked, so two provider batches of one batch never both count the
        same room: ``choose(cap, held)`` (cap None: none; held: what the batch's other
        provider batches hold) returns the amount to hold. False: the lease was lost."""
        async with (
            translate_errors("reserving the batch budget"),
            self.pool.acquire() as conn,
            conn.transaction(),
        ):
            await conn.execute(q.PROVIDER_BATCH_BUDGET_LOCK, batch_id)
            row = await conn.fetchrow(q.PROVIDER_BATCH_BUDGET, batch_id, pb_id)
            cap, held = (None, Decimal(0)) if row is None else (row["cap"], row["held"])
            amount = await choose(cap, held)
            written = await conn.fetchval(q.PROVIDER_BATCH_RESERVE, pb_id, worker_id, amount)
        return written is not None

    async def held(self, batch_id: uuid.UUID) -> Decimal:
        """What the batch's provider batches hold against its cap."""
        async with translate_errors("reading provider batch reservations"):
            amount: Decimal = await self.pool.fetchval(q.PROVIDER_BATCHES_HELD, batch_id)
        return amount

    async def submitted(
        self,
        pb_id: uuid.UUID,
        worker_id: uuid.UUID,
        *,
        provider_id: str,
        input_file_id: str,
        provider_status: str,
        requests: int,
        expires_at: int | None,
        poll_s: float,
    ) -> bool:
        """Record the provider's batch id; False when the lease was lost meanwhile."""
        async with translate_errors("recording a provider batch"):
            row = await self.pool.fetchval(
                q.PROVIDER_BATCH_SUBMITTED,
                pb_id,
                worker_id,
                provider_id,
                input_file_id,
                provider_status,
                requests,
                expires_at,
                poll_s,
            )
        return row is not None

    async def polled(
        self, pb_id: uuid.UUID, worker_id: uuid.UUID, answer: ProviderAnswer, next_poll_s: float
    ) -> bool:
        async with translate_errors("recording a provider batch poll"):
            row = await self.pool.fetchval(
                q.PROVIDER_BATCH_POLLED, pb_id, worker_id, *answer.columns(), next_poll_s
            )
        return row is not None

    async def processed(
        self,
        pb_id: uuid.UUID,
        worker_id: uuid.UUID,
        answer: ProviderAnswer,
        error: str | None,
        unrecorded_usd: Decimal = Decimal(0),
    ) -> bool:
        """Done with it: its hold on the cap is released, but for ``unrecorded_usd``, the
        billed cost of answers no job row keeps (rejected and retried)."""
        async with translate_errors("recording a processed provider batch"):
            row = await self.pool.fetchval(
                q.PROVIDER_BATCH_PROCESSED,
                pb_id,
                worker_id,
                *answer.columns(),
                error,
                unrecorded_usd,
            )
        return row is not None

    async def drop(self, pb_id: uuid.UUID, worker_id: uuid.UUID) -> bool:
        """Forget a provider batch that sent nothing and holds no job."""
        async with translate_errors("dropping an empty provider batch"):
            row = await self.pool.fetchval(q.PROVIDER_BATCH_DROP, pb_id, worker_id)
        return row is not None

    async def postponed(
        self, pb_id: uuid.UUID, worker_id: uuid.UUID, delay_s: float, error: str
    ) -> int | None:
        """Try the step again later; the steps failed in a row so far (None: lease lost)."""
        async with translate_errors("postponing a provider batch"):
            failures: int | None = await self.pool.fetchval(
                q.PROVIDER_BATCH_POSTPONED, pb_id, worker_id, delay_s, error[:2000]
            )
        return failures

    async def fallback(self) -> int:
        """Economy batches past their deadline that asked for it go online; jobs queued."""
        async with translate_errors("falling back to online"):
            jobs = await self.pool.fetchval(q.ECONOMY_FALLBACK)
        return int(jobs or 0)

    async def open_count(self) -> int:
        async with translate_errors("counting open provider batches"):
            count: int = await self.pool.fetchval(q.PROVIDER_BATCHES_OPEN)
        return count

    async def of_batch(self, batch_id: uuid.UUID) -> list[ProviderBatchRow]:
        async with translate_errors("reading provider batches"):
            rows = await self.pool.fetch(q.PROVIDER_BATCHES_OF_BATCH, batch_id)
        return [ProviderBatchRow(**dict(r)) for r in rows]
