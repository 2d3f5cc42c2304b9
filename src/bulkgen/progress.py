"""Live progress of a batch (Rich bars: done, failed, queued, rate, ETA), read from the
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
    TimeRemainingColumn,
)

from bulkgen.db.store import StatusCount, Store
from bulkgen.errors import StorageError

TERMINAL = ("done", "failed", "cancelled")


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
        return self.get("generating") + self.get("formatting")


def _new_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
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
        name: progress.add_task(name, total=total, rate="")
        for name in ("done", "failed", "queued", "running")
    }

    async def refresh() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            with contextlib.suppress(StorageError):
                counts = BatchCounts.of(total, await store.batch_counts(batch_id))
                elapsed = max(loop.time() - started, 1e-6)
                rate = f"{counts.finished / elapsed:5.1f} jobs/s"
                progress.update(rows["done"], completed=counts.get("done"), rate=rate)
                progress.update(rows["failed"], completed=counts.get("failed"), rate="")
                progress.update(rows["queued"], completed=counts.get("queued"), rate="")
                progress.update(rows["running"], completed=counts.running, rate="")
            await asyncio.sleep(interval_s)

    with progress:
        task = asyncio.create_task(refresh())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(StorageError):
                counts = BatchCounts.of(total, await store.batch_counts(batch_id))
                progress.update(rows["done"], completed=counts.get("done"))
                progress.update(rows["failed"], completed=counts.get("failed"))
                progress.update(rows["queued"], completed=counts.get("queued"))
                progress.update(rows["running"], completed=counts.running)


async def wait_for_batch(store: Store, batch_id: uuid.UUID, *, interval_s: float = 0.5) -> None:
    """Until no job of the batch is queued or running."""
    while await store.jobs_pending(batch_id) > 0:  # noqa: ASYNC110 - the database is the event source
        await asyncio.sleep(interval_s)
