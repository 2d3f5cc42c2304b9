"""Batched, coalesced status writes.

A job costs two writes to its ``jobs`` row (its claim and its finish) and far less than one
statement: outcomes of all jobs finishing within ``flush_ms`` are written together, at most
``max_rows`` at a time, one statement per kind (done, retry, failed). Nothing is written
between the claim and the finish.

A caller awaits its outcome's write, so a worker never reports a job finished that the
database does not know about. If the database is away, outcomes wait in memory and the
flush is retried with backoff; nothing is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bulkgen.db.store import DoneRow, FailedRow, RetryRow, Store
from bulkgen.errors import StorageError
from bulkgen.metrics import Metrics
from bulkgen.metrics import metrics as default_metrics
from bulkgen.models import JobStatus

logger = logging.getLogger(__name__)

Outcome = DoneRow | RetryRow | FailedRow


@dataclass
class _Pending:
    row: Outcome
    written: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class StatusWriter:
    def __init__(
        self,
        store: Store,
        worker_id: uuid.UUID,
        *,
        flush_ms: int,
        max_rows: int = 500,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._worker_id = worker_id
        self._flush_s = flush_ms / 1000
        self._max_rows = max_rows
        self._metrics = metrics or default_metrics
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bulkgen-status-writer")

    async def write(self, row: Outcome) -> bool:
        """Queue one outcome; True once written, False if the fence refused it (taken over)."""
        pending = _Pending(row)
        self._pending.append(pending)
        if len(self._pending) >= self._max_rows:
            self._wake.set()
        return await asyncio.shield(pending.written)

    async def close(self) -> None:
        """Write everything still pending, then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._pending:
            await self._flush_once()

    async def _run(self) -> None:
        backoff_s = self._flush_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_s)
            self._wake.clear()
            try:
                await self._flush_once()
                backoff_s = self._flush_s
            except StorageError as exc:
                backoff_s = min(5.0, backoff_s * 2)
                logger.warning(
                    "status_writer.flush_failed",
                    extra={"pending": len(self._pending), "error": str(exc)},
                )
                self._metrics.inc("db.flush_failed")
                await asyncio.sleep(backoff_s)

    async def _flush_once(self) -> None:
        """Write up to ``max_rows`` outcomes, one statement per kind. Each kind is settled
        as soon as its statement commits, so a later kind's failure re-queues only its own
        rows, never rows already written."""
        if not self._pending:
            return
        taken, self._pending = self._pending[: self._max_rows], self._pending[self._max_rows :]
        retry_later: list[_Pending] = []
        error: StorageError | None = None
        for kind, write in (
            (DoneRow, self._store.jobs_finish_done),
            (RetryRow, self._store.jobs_finish_retry),
            (FailedRow, self._store.jobs_finish_failed),
        ):
            group = [p for p in taken if isinstance(p.row, kind)]
            if not group:
                continue
            try:
                written = await self._write_kind(write, [p.row for p in group])
            except StorageError as exc:  # transient: keep them, in order, for the next flush
                retry_later += group
                error = exc
                continue
            for p in group:
                if not p.written.done():
                    p.written.set_result(p.row.job_id in written)
        self._metrics.inc("db.status_rows", len(taken) - len(retry_later))
        if error is not None:
            self._pending[:0] = sorted(retry_later, key=taken.index)
            raise error

    async def _write_kind(
        self, write: Callable[[uuid.UUID, Any], Awaitable[set[int]]], rows: list[Outcome]
    ) -> set[int]:
        """One statement for the whole group. If the database refuses the data itself (not
        a lost connection), write row by row so one bad row cannot hold back the others,
        and end the bad one ``failed``: a refused row retried forever would jam the writer."""
        self._metrics.inc("db.status_statements")
        try:
            return await write(self._worker_id, rows)
        except StorageError as exc:
            if exc.transient:
                raise
        written: set[int] = set()
        for row in rows:
            self._metrics.inc("db.status_statements")
            try:
                written |= await write(self._worker_id, [row])
            except StorageError as exc:
                if exc.transient:
                    raise
                logger.error("job.outcome_refused", extra={"job_id": row.job_id, "error": str(exc)})
                refused = FailedRow(row.job_id, JobStatus.FAILED, 1, "unstorable", str(exc)[:500])
                written |= await self._store.jobs_finish_failed(self._worker_id, [refused])
        return written
