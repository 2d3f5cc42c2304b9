"""Group-committed, coalesced status writes.

A job costs two writes to its ``jobs`` row (its claim and its finish) and far less than one
statement: a flush starts as soon as there is an outcome to write and no flush is running,
and the outcomes that arrive while it runs are written together by the next one, at most
``max_rows`` at a time, one statement per kind (done, retry, failed). An idle writer thus
writes an outcome at once, and a busy one batches as much as the database's own latency
lets pile up, with no timer in between. Nothing is written between the claim and the
finish.

``linger_ms`` (0 by default) trades latency for fewer statements: a flush first waits that
long for company, unless ``max_rows`` outcomes are already waiting. Every job then holds
its slot that much longer, so it only pays where the database, not the provider, is the
bottleneck.

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

# Backoff between flushes while the database fails: doubled after each failure up to the cap.
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0


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
        max_rows: int = 500,
        linger_ms: int = 0,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._worker_id = worker_id
        self._max_rows = max_rows
        self._linger_s = linger_ms / 1000
        self._metrics = metrics or default_metrics
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bulkgen-status-writer")

    async def write(self, row: Outcome) -> bool:
        """Queue one outcome; True once written, False if the fence refused it (taken over)."""
        pending = _Pending(row)
        self._pending.append(pending)
        self._wake.set()
        return await asyncio.shield(pending.written)

    async def close(self) -> None:
        """Write everything still pending, then stop. A flush under way is let finish, never
        cut in the middle; if the database still fails, the StorageError is raised here."""
        self._closing.set()
        self._wake.set()
        if self._task is not None:
            task, self._task = self._task, None
            await task
        while self._pending:
            await self._flush_once()

    async def _run(self) -> None:
        """Flush while there is something to write, then sleep until the next outcome."""
        backoff_s = BACKOFF_FIRST_S
        while True:
            if not self._pending:
                if self._closing.is_set():
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            if self._linger_s:
                await self._linger()
            try:
                await self._flush_once()
                backoff_s = BACKOFF_FIRST_S
            except StorageError as exc:
                if self._closing.is_set():
                    raise
                logger.warning(
                    "status_writer.flush_failed",
                    extra={"pending": len(self._pending), "error": str(exc)},
                )
                self._metrics.inc("db.flush_failed")
                with contextlib.suppress(TimeoutError):  # closing cuts the wait short
                    await asyncio.wait_for(self._closing.wait(), backoff_s)
                backoff_s = min(BACKOFF_MAX_S, backoff_s * 2)

    async def _linger(self) -> None:
        """Wait ``linger_ms`` for more outcomes; a full statement's worth, or close(), ends
        the wait early."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._linger_s
        while len(self._pending) < self._max_rows and not self._closing.is_set():
            left_s = deadline - loop.time()
            if left_s <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left_s)

    async def _flush_once(self) -> None:
        """Write up to ``max_rows`` outcomes, one statement per kind. Each outcome is
        settled as soon as the statement that wrote it commits, so a later failure re-queues
        only the outcomes not written yet, never rows already written."""
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
                await self._write_group(write, group)
            except StorageError as exc:  # transient: keep the rest, in order, for next time
                retry_later += [p for p in group if not p.written.done()]
                error = exc
        self._metrics.inc("db.status_rows", len(taken) - len(retry_later))
        if error is not None:
            self._pending[:0] = sorted(retry_later, key=taken.index)
            raise error

    async def _write_group(
        self, write: Callable[[uuid.UUID, Any], Awaitable[set[int]]], group: list[_Pending]
    ) -> None:
        """One statement for the whole group. If the database refuses the data itself (not
        a lost connection), write row by row so one bad row cannot hold back the others,
        and end the bad one ``failed``: a refused row retried forever would jam the writer.

        Each row is settled as soon as its statement commits. A transient error in the
        middle of the row-by-row pass then leaves only the rows not yet written for the
        retry; a row written alone and sent again would be refused by the fence (it is no
        longer running) and reported as taken over by another worker."""
        self._metrics.inc("db.status_statements")
        try:
            written = await write(self._worker_id, [p.row for p in group])
        except StorageError as exc:
            if exc.transient:
                raise
        else:
            _settle(group, written)
            return
        for pending in group:
            row = pending.row
            self._metrics.inc("db.status_statements")
            try:
                written = await write(self._worker_id, [row])
            except StorageError as exc:
                if exc.transient:
                    raise
                logger.error("job.outcome_refused", extra={"job_id": row.job_id, "error": str(exc)})
                refused = FailedRow(row.job_id, JobStatus.FAILED, 1, "unstorable", str(exc)[:500])
                written = await self._store.jobs_finish_failed(self._worker_id, [refused])
            _settle([pending], written)


def _settle(group: list[_Pending], written: set[int]) -> None:
    """Tell each caller whether its outcome was written (False: the fence refused it)."""
    for pending in group:
        if not pending.written.done():
            pending.written.set_result(pending.row.job_id in written)
