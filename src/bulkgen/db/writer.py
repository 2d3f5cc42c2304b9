"""Group-committed, coalesced status writes.

A job costs two writes to its ``jobs`` row (its claim and its finish) and far less than one
statement: outcomes are written together, at most ``max_rows`` at a time, one statement per
kind (done, retry, failed). Nothing is written between the claim and the finish.

When to flush is :class:`FlushPolicy`'s decision. It batches when there is something to
batch and never waits when there is not:

- when no other job of this worker is still running (``running`` reports 0), nothing can
  join the outcomes waiting, so they are written at once: a worker running one job at a
  time, or the last jobs of a drain, never wait;
- while other jobs still run, the outcomes wait for them as long as they keep finishing:
  each new outcome within ``quiet_s`` of the last extends the wait, up to ``max_wait_s``
  after the first. Jobs that finish together (a claim's worth of cache hits, fast models, a
  burst of failures) are thus written by one statement instead of one per database round
  trip, while an outcome whose neighbours are in the middle of a long provider call waits
  ``quiet_s`` at most, a sliver of that call;
- ``max_rows`` outcomes waiting, or ``close()``, end any wait.

A writer that is not told what runs (``running`` None, as in tests and tools) flushes as
soon as an outcome waits and no flush is running: what arrives meanwhile goes with the
next flush. ``linger_s`` (0 by default, ``BULKGEN_STATUS_LINGER_MS``) adds a fixed wait for
company on top, for deployments where the database, not the provider, is the bottleneck.

With a :class:`Refill` (the worker gives one), a flush also claims the jobs that fill the
slots its outcomes free, in the same transaction (``Store.jobs_finish_and_claim``): a busy
worker then makes one transaction per round of jobs instead of two. If that transaction is
refused for its data, the flush is written the plain way (below), without a claim.

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

from bulkgen.db.store import ClaimedJob, DoneRow, FailedRow, RetryRow, Store
from bulkgen.errors import StorageError
from bulkgen.metrics import Metrics
from bulkgen.metrics import metrics as default_metrics
from bulkgen.models import JobStatus

logger = logging.getLogger(__name__)

Outcome = DoneRow | RetryRow | FailedRow

# Backoff between flushes while the database fails: doubled after each failure up to the cap.
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0

# Waiting for the jobs still running: 25 ms is several jobs' worth of the worker's own work
# (render, validation, formatting) when answers come at once, with room for the process to
# be kept off a busy CPU for a while (at 10 ms, flushes split in two on a loaded machine),
# and little next to a provider call; the cap bounds what a steady trickle of outcomes can
# add to a job's slot. A slot is held while its outcome waits, so the cap is taken from the
# rate a worker keeps: at 200 ms one worker held to a provider's RPM limit ran at 0.943 of
# it instead of 0.980 (bench/ratelimit.py, rpm-bound); at 50 ms it is back at 0.980, and
# answers that come at once (an instant provider) still go 20-50 to a statement.
QUIET_S = 0.025
MAX_WAIT_S = 0.05


@dataclass(frozen=True)
class FlushPolicy:
    """When the outcomes waiting should be written (see the module docstring). Pure: the
    writer passes what it sees, and the policy answers how much longer to wait."""

    max_rows: int = 500
    linger_s: float = 0.0
    quiet_s: float = QUIET_S
    max_wait_s: float = MAX_WAIT_S

    def wait_s(self, *, waiting: int, running: int | None, age_s: float, quiet_s: float) -> float:
        """Seconds to wait at most before flushing (0: flush now), given ``waiting``
        outcomes, the oldest ``age_s`` old, the newest ``quiet_s`` old, and ``running``
        jobs of this worker that have not reported yet (None: unknown)."""
        if waiting <= 0:
            return 0.0
        if waiting >= self.max_rows:
            return 0.0
        linger_left_s = self.linger_s - age_s
        if running is None or running <= 0:
            return max(0.0, linger_left_s)  # no one else can come but by chance
        company_left_s = min(self.quiet_s - quiet_s, self.max_wait_s - age_s)
        return max(0.0, linger_left_s, company_left_s)


@dataclass(frozen=True)
class Refill:
    """How a flush claims the next jobs along with its outcomes (see the module docstring).

    ``size(freed)``: jobs to claim once ``freed`` outcomes of running jobs are written (0:
    no claim, e.g. while stopping). ``started(jobs)``: hand the claimed jobs over to run.
    ``lock``: held from before the claim until ``started`` returns, the worker's claim
    lock, so nothing ever sees claimed jobs the worker has not started yet."""

    size: Callable[[int], int]
    started: Callable[[list[ClaimedJob]], None]
    lock: asyncio.Lock


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
        policy: FlushPolicy | None = None,
        running: Callable[[], int] | None = None,
        metrics: Metrics | None = None,
        refill: Refill | None = None,
    ) -> None:
        """``running``: how many jobs of this worker have not handed their outcome over
        yet; with it the writer waits for them while they keep finishing. ``refill``:
        claim with each flush (module docstring)."""
        self._store = store
        self._worker_id = worker_id
        self._policy = policy or FlushPolicy()
        self._max_rows = self._policy.max_rows
        self._running = running
        self._refill = refill
        self._first_s = 0.0  # loop time the oldest waiting outcome arrived
        self._last_s = 0.0  # loop time the newest one arrived
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
        now_s = asyncio.get_running_loop().time()
        if not self._pending:
            self._first_s = now_s
        self._last_s = now_s
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
            await self._gather()
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

    async def _gather(self) -> None:
        """Wait as long as the policy says company is worth waiting for; a new outcome
        asks it again, and close() ends the wait."""
        loop = asyncio.get_running_loop()
        while self._pending and not self._closing.is_set():
            now_s = loop.time()
            wait_s = self._policy.wait_s(
                waiting=len(self._pending),
                running=None if self._running is None else self._running(),
                age_s=now_s - self._first_s,
                quiet_s=now_s - self._last_s,
            )
            if wait_s <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)

    async def _flush_once(self) -> None:
        """Write up to ``max_rows`` outcomes: with the next claim in one transaction when a
        :class:`Refill` wants one, else one statement per kind. Each outcome is settled as
        soon as the statement that wrote it commits, so a later failure re-queues only the
        outcomes not written yet, never rows already written."""
        if not self._pending:
            return
        taken, self._pending = self._pending[: self._max_rows], self._pending[self._max_rows :]
        try:
            if await self._write_with_claim(taken):
                return
        except StorageError:
            self._pending[:0] = taken  # nothing of it was written: all of it goes again
            raise
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

    async def _write_with_claim(self, taken: list[_Pending]) -> bool:
        """Write ``taken`` and claim what fills the slots it frees, in one transaction.
        False when no claim is wanted or the database refused the data (not a lost
        connection, which raises): the caller then writes ``taken`` the plain way, where a
        bad row fails alone."""
        refill = self._refill
        if refill is None:
            return False
        async with refill.lock:
            size = refill.size(len(taken))
            if size <= 0:
                return False
            try:
                written, claimed = await self._store.jobs_finish_and_claim(
                    self._worker_id, [p.row for p in taken], size
                )
            except StorageError as exc:
                if exc.transient:
                    raise
                logger.warning("status_writer.claim_refused", extra={"error": str(exc)})
                return False
            self._metrics.inc("db.status_statements", len({type(p.row) for p in taken}))
            self._metrics.inc("db.claim_statements")
            self._metrics.inc("db.claims_with_outcomes")
            self._metrics.inc("db.status_rows", len(taken))
            _settle(taken, written)
            refill.started(claimed)
        return True

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
