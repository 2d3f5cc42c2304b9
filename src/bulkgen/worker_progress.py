"""What a running worker shows, so nobody stares at a silent terminal for minutes.

- **In a terminal**: a live display (Rich) of two lines, to fit 80 columns: the elapsed
  time, a bar over the work in sight (what this worker finished plus what is left), the
  rate over the last half minute and an estimate of the time left; then done, failed,
  retried, in flight and left. It stays on screen when the worker stops; log lines print
  above it.
- **Elsewhere** (a file, a pipe, a service manager): a ``worker.progress`` event every
  ``every_s`` seconds with the same counts and the rate since the previous line (none
  while the worker is idle and nothing changed), and a ``worker.summary`` event when it
  stops, so a log shows how far a worker got without a line per job.

Counts are this worker's (:class:`~bulkgen.worker.WorkerTally`); ``retried`` counts every
return to the queue (a retry later or a rate-limit wait), so one job may count several
times. ``left`` is the whole queue's - jobs queued, or running on any worker - so each
worker of a fleet shows the work left overall (see :class:`_Left`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from rich.console import Console, RenderableType
from rich.file_proxy import FileProxy
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from bulkgen.db.store import Store
from bulkgen.errors import StorageError
from bulkgen.worker import Worker

logger = logging.getLogger(__name__)

LOG_EVERY_S = 10.0
RATE_WINDOW_S = 30.0

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class ProgressSnapshot:
    """A worker's counts at one instant (``at_s``, monotonic); ``left`` None: not known."""

    at_s: float
    done: int
    cached: int
    failed: int
    cancelled: int
    retried: int
    in_flight: int
    left: int | None

    @classmethod
    def of(cls, worker: Worker, left: int | None, at_s: float) -> ProgressSnapshot:
        t = worker.tally
        return cls(at_s, t.done, t.cached, t.failed, t.cancelled, t.retried, worker.in_flight, left)

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.cancelled

    def per_min_since(self, earlier: ProgressSnapshot) -> float:
        """Jobs finished per minute between ``earlier`` and this snapshot."""
        elapsed_s = self.at_s - earlier.at_s
        if elapsed_s <= 0:
            return 0.0
        return (self.finished - earlier.finished) * 60.0 / elapsed_s

    def idle_since(self, earlier: ProgressSnapshot) -> bool:
        """Nothing running, nothing left, nothing new since ``earlier``: no news to log."""
        return (
            self.in_flight == 0
            and not self.left
            and (self.finished, self.retried) == (earlier.finished, earlier.retried)
        )

    def eta_s(self, per_min: float) -> float | None:
        """Seconds until ``left`` is done at ``per_min``; None when it cannot be told."""
        if self.left is None or per_min <= 0:
            return None
        return self.left * 60.0 / per_min

    def fields(self, per_min: float) -> dict[str, object]:
        """The counts as log event fields (``left`` shown as ``?`` while not known)."""
        return {
            "done": self.done,
            "cached": self.cached,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "retried": self.retried,
            "in_flight": self.in_flight,
            "left": "?" if self.left is None else self.left,
            "per_min": round(per_min, 1),
        }

    def counts_text(self) -> str:
        """The live display's second line: where the jobs are."""
        done = f"done {self.done:,}" + (f" ({self.cached:,} cached)" if self.cached else "")
        parts = [done, f"failed {self.failed:,}"]
        if self.cancelled:
            parts.append(f"cancelled {self.cancelled:,}")
        parts += [f"retried {self.retried:,}", f"in flight {self.in_flight:,}"]
        parts.append("left ?" if self.left is None else f"left {self.left:,}")
        return " · ".join(parts)

    def pace_text(self, per_min: float, *, final: bool = False) -> str:
        """How fast, and how long still; ``final``: the worker has stopped and ``per_min``
        is its average over the whole run."""
        if final:
            return f"{per_min:,.0f}/min on average"
        if self.in_flight == 0 and self.left == 0:
            return "waiting for jobs"
        eta_s = self.eta_s(per_min)
        return f"{per_min:,.0f}/min · eta " + ("?" if eta_s is None else _clock_text(eta_s))


def _clock_text(seconds: float) -> str:
    """``0:04:07``: hours, minutes, seconds, as Rich shows elapsed time."""
    whole = int(seconds + 0.5)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class RateWindow:
    """The finishing rate over the last ``window_s`` or a little more (measured from the
    newest snapshot that is a whole window old): recent enough to follow a slowdown, long
    enough not to jump with every completion. Pure: snapshots carry their time."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._seen: deque[ProgressSnapshot] = deque()

    def add(self, snapshot: ProgressSnapshot) -> float:
        """Record ``snapshot``; jobs per minute since the oldest one still in the window."""
        self._seen.append(snapshot)
        while len(self._seen) > 2 and snapshot.at_s - self._seen[1].at_s >= self.window_s:
            self._seen.popleft()
        return snapshot.per_min_since(self._seen[0])


class _Left:
    """Jobs left in the queue (queued, or running anywhere), read from the database at most
    every ``poll_s``. Between reads, what this worker finished meanwhile is subtracted: exact
    for a lone worker, an overestimate for a fleet until the next read. A failed read keeps
    the last figure: the display never stops a worker."""

    def __init__(self, store: Store, poll_s: float, clock: Clock) -> None:
        self._store = store
        self._poll_s = poll_s
        self._clock = clock
        self._read: int | None = None
        self._finished_at_read = 0
        self._read_at_s = float("-inf")

    async def get(self, worker: Worker, *, fresh: bool = False) -> int | None:
        finished = worker.tally.finished
        now_s = self._clock()
        if fresh or now_s - self._read_at_s >= self._poll_s:
            self._read_at_s = now_s
            with contextlib.suppress(StorageError):
                self._read = await self._store.jobs_pending()
                self._finished_at_read = finished
        if self._read is None:
            return None
        return max(worker.in_flight, self._read - (finished - self._finished_at_read))


@contextlib.asynccontextmanager
async def worker_progress(
    worker: Worker,
    store: Store,
    console: Console,
    *,
    every_s: float = LOG_EVERY_S,
    refresh_s: float = 0.5,
    left_poll_s: float = 2.0,
    clock: Clock = time.monotonic,
) -> AsyncIterator[None]:
    """Show ``worker``'s progress while the block runs: live on ``console`` if it is a
    terminal, as log events otherwise."""
    left = _Left(store, left_poll_s, clock)
    if console.is_terminal:
        body = _live(worker, left, console, refresh_s, clock)
    else:
        body = _log_lines(worker, left, every_s, clock)
    async with body:
        yield


class _TwoLines(Progress):
    """The bar and its pace on one line, the counts on the next, so the display fits an
    80-column terminal."""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        for task in self.tasks:
            yield Text("  " + str(task.fields.get("counts", "")))


@contextlib.asynccontextmanager
async def _live(
    worker: Worker, left: _Left, console: Console, refresh_s: float, clock: Clock
) -> AsyncIterator[None]:
    progress = _TwoLines(
        SpinnerColumn(finished_text="[green]✓[/]"),
        TextColumn("[bold]worker[/]"),
        TimeElapsedColumn(),
        BarColumn(bar_width=24),
        TextColumn("{task.completed:,.0f}/{task.fields[in_sight]}"),
        TextColumn("{task.fields[pace]}"),
        console=console,
        transient=False,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    task = progress.add_task("worker", total=None, in_sight="?", pace="starting", counts="")
    window = RateWindow()
    first = ProgressSnapshot.of(worker, None, clock())
    shown_total = 0

    async def show(*, final: bool = False) -> None:
        nonlocal shown_total
        snap = ProgressSnapshot.of(worker, await left.get(worker, fresh=final), clock())
        total = None if snap.left is None else snap.finished + snap.left
        if total is not None and not final:
            # A count read while outcomes are being written can be a few jobs short for
            # one refresh; a bar whose end jumps back and forth reads as lost jobs.
            total = shown_total = max(total, shown_total)
        per_min = snap.per_min_since(first) if final else window.add(snap)
        progress.update(
            task,
            completed=snap.finished,
            total=total,
            in_sight="?" if total is None else f"{total:,}",
            pace=snap.pace_text(per_min, final=final),
            counts=snap.counts_text(),
        )

    async def refresh() -> None:
        while True:
            await show()
            await asyncio.sleep(refresh_s)

    with progress, _logs_through(console):
        refresher = asyncio.create_task(refresh(), name="bulkgen-worker-progress")
        try:
            yield
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            await show(final=True)  # the final counts, not the last refresh's


@contextlib.contextmanager
def _logs_through(console: Console) -> Iterator[None]:
    """Send log lines bound for the console's stream through the console while the live
    line is up, so they print above it instead of tearing it."""
    stream = console.file
    swapped: list[logging.StreamHandler[Any]] = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is stream:
            handler.setStream(FileProxy(console, stream))
            swapped.append(handler)
    try:
        yield
    finally:
        for handler in swapped:
            handler.setStream(stream)


@contextlib.asynccontextmanager
async def _log_lines(
    worker: Worker, left: _Left, every_s: float, clock: Clock
) -> AsyncIterator[None]:
    first = ProgressSnapshot.of(worker, None, clock())

    async def log_every() -> None:
        last = first
        while True:
            await asyncio.sleep(every_s)
            snap = ProgressSnapshot.of(worker, await left.get(worker, fresh=True), clock())
            if not snap.idle_since(last):
                logger.info("worker.progress", extra=snap.fields(snap.per_min_since(last)))
            last = snap

    logging_task = asyncio.create_task(log_every(), name="bulkgen-worker-progress")
    try:
        yield
    finally:
        logging_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await logging_task
        final = ProgressSnapshot.of(worker, await left.get(worker, fresh=True), clock())
        logger.info("worker.summary", extra=final.fields(final.per_min_since(first)))
