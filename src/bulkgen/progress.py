"""Live progress of a batch (Rich bars: done, failed, queued, running, and for an economy
batch its jobs waiting for or held by the provider's Batch API; rate, ETA), read from the
database by polling, so it works the same for a worker in this process or on a fleet."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from bulkgen.db.store import StatusCount, Store
from bulkgen.errors import StorageError
from bulkgen.models import JobStatus

TERMINAL = (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True)
class BatchCounts:
    total: int
    by_status: dict[str, int]

    @classmethod
    def of(cls, total: int, counts: list[StatusCount]) -> BatchCounts:
        return cls(total, {c.status: c.jobs for c in counts})

    def get(self, status: str) -> int:
        return self.by_status.get(status, 0)

    @property
    def finished(self) -> int:
        return sum(self.get(s) for s in TERMINAL)

    @property
    def running(self) -> int:
        return self.get(JobStatus.GENERATING)


def _new_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[eta]}"),  # the batch's time left, on the done row only
        console=console,
        transient=False,
    )


@contextlib.asynccontextmanager
async def batch_progress(
    store: Store, batch_id: uuid.UUID, total: int, console: Console, *, interval_s: float = 0.5
) -> AsyncIterator[None]:
    """Show bars until the block ends (the caller decides when the batch is over)."""
    progress = _new_progress(console)
    rows = {
        name: progress.add_task(name, total=total, rate="", eta="")
        for name in ("done", "failed", "queued", "running")
    }

    loop = asyncio.get_running_loop()
    started = loop.time()

    async def show() -> None:
        with contextlib.suppress(StorageError):  # a lost read only delays the bars
            counts = BatchCounts.of(total, await store.batch_counts(batch_id))
            rate = counts.finished / max(loop.time() - started, 1e-6)
            progress.update(
                rows["done"],
                completed=counts.get(JobStatus.DONE),
                rate=f"{rate:5.1f} jobs/s",
                eta=_time_left(total - counts.finished, rate),
            )
            progress.update(rows["failed"], completed=counts.get(JobStatus.FAILED))
            progress.update(rows["queued"], completed=counts.get(JobStatus.QUEUED))
            progress.update(rows["running"], completed=counts.running)
            batched = counts.get(JobStatus.BATCHED)
            if batched and "batched" not in rows:  # an economy batch: jobs at the provider
                rows["batched"] = progress.add_task("batched", total=total, rate="", eta="")
            if "batched" in rows:
                progress.update(rows["batched"], completed=batched)

    async def refresh() -> None:
        while True:
            await show()
            await asyncio.sleep(interval_s)

    with progress:
        task = asyncio.create_task(refresh())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await show()  # the final counts, not the last poll's


def _time_left(jobs_left: int, jobs_per_s: float) -> str:
    """``1:05 left`` at the current rate; nothing before the first job ends or after the last."""
    if jobs_left <= 0 or jobs_per_s <= 0:
        return ""
    minutes, seconds = divmod(round(jobs_left / jobs_per_s), 60)
    return f"{minutes}:{seconds:02d} left"


async def wait_for_batch(store: Store, batch_id: uuid.UUID, *, interval_s: float = 0.5) -> None:
    """Until no job of the batch is queued or running."""
    while await store.jobs_pending(batch_id) > 0:  # noqa: ASYNC110 - the database is the event source
        await asyncio.sleep(interval_s)
