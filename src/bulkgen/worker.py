"""The worker: claims jobs, runs pipelines under a concurrency cap, keeps its lease alive,
and shuts down without losing anything.

- **Claim** several jobs per statement (``FOR UPDATE SKIP LOCKED``), as many as there are
  free slots, fairly across accounts. While other jobs still run, a claim waits until half
  the slots are free or ``CLAIM_GATHER_S`` has passed (see :func:`claim_quorum`); an idle
  worker claims at once. LISTEN/NOTIFY wakes it on new work; polling every
  ``poll_s`` is the fallback (a lost notification costs latency, never a job).
- **Lease**: one heartbeat row per worker (writes per worker, not per job). Every
  heartbeat also re-queues jobs of workers whose heartbeat went stale, so any worker can die
  at any moment and its jobs come back; a worker rescues only once its own heartbeat has
  been healthy for a whole lease, so after a database outage the first worker back does
  not take the others' live jobs before they could beat again.
- **Unrun jobs**: every heartbeat compares the jobs the database says this worker runs
  with the jobs it really runs; the difference (a claim that committed but whose answer
  was lost) goes back to the queue without burning an attempt.
- **Finish**: outcomes go through the batched status writer, fenced on this worker's id;
  a flush also claims the jobs that fill the slots it frees, in the same transaction
  (:class:`~bulkgen.db.writer.Refill`), so a busy worker claims without a transaction of
  its own.
- **Stop** (SIGINT/SIGTERM or ``stop()``): claim nothing more, give in-flight jobs
  ``shutdown_grace_s`` to finish, return the rest to the queue untouched.
- **Burst**: exit once no job is queued or running anywhere (arq's ``burst``), which is
  what tests, the demo and ``bulkgen worker --burst`` use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import Literal

from bulkgen.db.store import BatchRecord, ClaimedJob, DoneRow, FailedRow, RetryRow, Store
from bulkgen.db.writer import FlushPolicy, Outcome, Refill, StatusWriter
from bulkgen.economy import Economy
from bulkgen.errors import BulkgenError, ConfigError, StorageError
from bulkgen.metrics import Metrics
from bulkgen.models import JobStatus
from bulkgen.options import stored_options
from bulkgen.pipeline import BatchPlan, Pipeline
from bulkgen.prompts import PromptTemplate

logger = logging.getLogger(__name__)

# How long free slots wait for more to free up before a smaller claim goes out anyway: a
# few ms of idle slots when jobs end one by one behind long provider calls, and when they
# end together (the writer writes them together) the quorum is met at once.
CLAIM_GATHER_S = 0.02


def claim_quorum(capacity: int) -> int:
    """Free slots worth a claim of their own while other jobs still run: half of them.

    Claiming for each slot as it frees makes claims as small as the status writes that
    free them, one statement (and transaction) for a job or two; waiting for half the
    slots makes a claim carry at least half a full one. A worker with nothing in flight
    claims at once, whatever it has free."""
    return max(1, capacity // 2)


@dataclass(frozen=True)
class WorkerConfig:
    """The worker's knobs. Those a user can set come from :class:`~bulkgen.settings.Settings`
    through ``service.worker_config`` and have no default here; only the run mode and a
    tuning constant do."""

    concurrency: int | None  # None: follow the limiter (Little's law)
    concurrency_auto_max: int
    lease_s: float
    heartbeat_s: float
    poll_s: float
    shutdown_grace_s: float
    status_linger_ms: int
    max_attempts: int
    cache_scope: Literal["account", "global"]
    burst: bool = False
    # Batch plans a worker keeps, the least recently used dropped first. A plan is one small
    # row (options and template text) and the plans a claim lacks cost one read together,
    # so a few hundred cover the batches a claim over many accounts brings, while memory
    # stays flat however many batches a worker sees in its life.
    plan_cache_size: int = 512


@dataclass
class WorkerTally:
    """Outcomes this worker wrote since it started, for progress displays.

    Counted once the database has taken the outcome, so a job another worker took over
    (fenced out) is not counted here, and a job counts again each time it is retried.
    """

    done: int = 0
    cached: int = 0  # of done: answered from the cache or an identical request in flight
    failed: int = 0
    cancelled: int = 0
    retried: int = 0  # sent back to the queue: a retry later, or a rate-limit wait

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.cancelled

    def count(self, outcome: Outcome) -> None:
        if isinstance(outcome, DoneRow):
            self.done += 1
            self.cached += outcome.cached
        elif isinstance(outcome, RetryRow):
            self.retried += 1
        elif outcome.status == "cancelled":
            self.cancelled += 1
        else:
            self.failed += 1


class Worker:
    def __init__(
        self, store: Store, pipeline: Pipeline, config: WorkerConfig, *, metrics: Metrics
    ) -> None:
        self.id = uuid.uuid4()
        self.store = store
        self.pipeline = pipeline
        self.config = config
        self.metrics = metrics
        # Held while claiming and while looking for unrun jobs, so a claim whose rows are
        # on their way is never mistaken for one whose answer was lost.
        self._claim_lock = asyncio.Lock()
        self.writer = StatusWriter(
            store,
            self.id,
            policy=FlushPolicy(linger_s=config.status_linger_ms / 1000),
            running=lambda: self._running,
            metrics=metrics,
            refill=Refill(self._refill_size, self._start_all, self._claim_lock),
        )
        self.tally = WorkerTally()
        self.economy: Economy | None = None  # set by the service when it can send batches
        self._warned_economy = False
        self._inflight: dict[asyncio.Task[None], ClaimedJob] = {}
        self._running = 0  # jobs in flight that have not handed their outcome over yet
        self._plans: OrderedDict[uuid.UUID, asyncio.Future[BatchPlan]] = OrderedDict()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._healthy_since_s: float | None = None  # monotonic; None while beats fail
        self._failing_since_s = 0.0

    @property
    def in_flight(self) -> int:
        """Jobs claimed and not finished yet."""
        return len(self._inflight)

    def stop(self) -> None:
        """Stop claiming; in-flight jobs get the grace period."""
        self._stopping.set()
        self._wake.set()

    async def run(self, *, install_signals: bool = False) -> None:
        await self.store.worker_register(self.id, socket.gethostname(), os.getpid())
        self._healthy_since_s = time.monotonic()
        self.writer.start()
        if install_signals:
            self._install_signals()
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="bulkgen-heartbeat"),
            asyncio.create_task(self._listen(), name="bulkgen-listen"),
        ]
        economy = None
        if self.economy is not None:
            economy = asyncio.create_task(self.economy.run(self._stopping), name="bulkgen-economy")
        logger.info("worker.started", extra={"worker_id": str(self.id)})
        try:
            await self._claim_loop()
        finally:
            self._stopping.set()
            await self._drain()
            if economy is not None:  # it ends its step; a step cut short is resumed by the
                # next worker to take the provider batch's lease, so nothing waits for it
                await asyncio.wait({economy}, timeout=self.config.shutdown_grace_s)
                background.append(economy)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self.writer.close()
            with contextlib.suppress(StorageError):
                await self.store.worker_delete(self.id)
            logger.info("worker.stopped", extra={"worker_id": str(self.id)})

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)

    async def _claim_loop(self) -> None:
        loop = asyncio.get_running_loop()
        short_since_s: float | None = None  # when free slots began waiting for company
        while not self._stopping.is_set():
            self._wake.clear()  # before the claim: a hint arriving during it is kept
            capacity = self._capacity()
            free = capacity - len(self._inflight)
            if 0 < free < claim_quorum(capacity) and self._inflight:
                now_s = loop.time()
                short_since_s = now_s if short_since_s is None else short_since_s
                left_s = CLAIM_GATHER_S - (now_s - short_since_s)
                if left_s > 0:
                    await self._wait(timeout_s=left_s)  # until a job ends, or the bound
                    continue
            short_since_s = None
            claimed: list[ClaimedJob] = []
            if free > 0 and self.pipeline.allows_claim():
                claimed = await self._claim(free)
            if claimed and len(claimed) == free:
                await self._wait(timeout_s=None)  # full: until a job ends or a stop
                continue
            if claimed:
                continue  # a short claim (fair shares, contention): there may be more
            if (
                self.config.burst
                and not self._inflight
                and not claimed
                and (await self._queue_is_empty())
            ):
                return
            await self._wait(timeout_s=self.config.poll_s)

    async def _claim(self, free: int) -> list[ClaimedJob]:
        async with self._claim_lock:
            free = min(free, self._capacity() - len(self._inflight))  # the writer may have
            if free <= 0:  # claimed meanwhile
                return []
            try:
                claimed = await self.store.jobs_claim(self.id, free)
                self.metrics.inc("db.claim_statements")
            except StorageError as exc:  # if it committed anyway, the heartbeat gives it back
                logger.warning("worker.claim_failed", extra={"error": str(exc)})
                self.metrics.inc("db.claim_failed")
                return []
            self._start_all(claimed)
        return claimed

    def _refill_size(self, freed: int) -> int:
        """Jobs a status flush should claim along with ``freed`` outcomes of this worker's
        jobs: the slots free once they are written. 0 while stopping or while a breaker
        holds claims back."""
        if self._stopping.is_set() or not self.pipeline.allows_claim():
            return 0
        return max(0, self._capacity() - (len(self._inflight) - freed))

    def _capacity(self) -> int:
        """A user-set cap wins; otherwise as many jobs as the limiter can keep busy, plus a
        few waiting at admission so a freed slot is refilled without a claim round trip."""
        if self.config.concurrency is not None:
            return self.config.concurrency
        wanted = self.pipeline.auto_concurrency()
        return max(1, min(self.config.concurrency_auto_max, wanted + max(2, wanted // 4)))

    async def _queue_is_empty(self) -> bool:
        """No job left that this worker can run, and no provider batch left to finish. A
        worker without economy mode (given a provider of its own in code) cannot send an
        economy batch's jobs: it says so once and does not wait for them."""
        try:
            if await self.store.jobs_pending(economy=self.economy is not None) > 0:
                return False
            if self.economy is not None:
                return await self.economy.batches.open_count() == 0
            if not self._warned_economy and await self.store.jobs_pending() > 0:
                self._warned_economy = True
                logger.warning("worker.economy_unavailable")
            return True
        except StorageError:
            return False

    async def _wait(self, *, timeout_s: float | None) -> None:
        """Until a job ends, a notification or a stop arrives, or the timeout passes."""
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait(
                {wake, *self._inflight}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            wake.cancel()

    def _start_all(self, jobs: list[ClaimedJob]) -> None:
        self._load_plans_together(jobs)
        for job in jobs:
            task = asyncio.create_task(self._run_job(job), name=f"bulkgen-job-{job.id}")
            self._inflight[task] = job
            task.add_done_callback(self._inflight.pop)

    async def plan(self, batch_id: uuid.UUID) -> BatchPlan:
        """The batch's shared options and template, loaded once per worker (one in-flight
        load per batch, however many of its jobs start at once) and kept while the batch is
        among the ``plan_cache_size`` most recently used; evicting one that is still loading
        is harmless, its jobs hold the load they await."""
        loading = self._plans.get(batch_id)
        if loading is None:
            loading = self._remember(batch_id, self._load_plan(batch_id))
        else:
            self._plans.move_to_end(batch_id)
        try:
            return await asyncio.shield(loading)
        except BaseException:
            if loading.done() and self._plans.get(batch_id) is loading:
                del self._plans[batch_id]  # a failed load is retried by the next job
            raise

    def _remember(
        self, batch_id: uuid.UUID, load: Awaitable[BatchPlan]
    ) -> asyncio.Future[BatchPlan]:
        loading = asyncio.ensure_future(load)
        # A load dropped from the cache before any job awaited it is not an error to report.
        loading.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._plans[batch_id] = loading
        while len(self._plans) > self.config.plan_cache_size:
            self._plans.popitem(last=False)
        return loading

    def _prefetch_plan(self, payload: str) -> None:
        """A new batch was announced (the notification carries its id): read its plan
        while its first jobs are being claimed, not after. A worker whose claim goes to
        another worker has read one small row for nothing."""
        try:
            batch_id = uuid.UUID(payload)
        except ValueError:  # other notifications (an economy fallback) carry no batch
            return
        if batch_id not in self._plans and not self._stopping.is_set():
            self._remember(batch_id, self._load_plan(batch_id))

    def _load_plans_together(self, jobs: list[ClaimedJob]) -> None:
        """The plans a claim needs and this worker lacks, read by one statement: a claim
        over many accounts (each with a batch of its own) would otherwise cost one read per
        job. A single missing plan is left to its first job to load, as any other."""
        missing = list(dict.fromkeys(j.batch_id for j in jobs if j.batch_id not in self._plans))
        if len(missing) < 2:
            return
        reading = asyncio.ensure_future(self.store.batches_get(missing))
        for batch_id in missing:
            self._remember(batch_id, self._plan_from(reading, batch_id))

    async def _plan_from(
        self, reading: asyncio.Future[dict[uuid.UUID, BatchRecord]], batch_id: uuid.UUID
    ) -> BatchPlan:
        batch = (await asyncio.shield(reading)).get(batch_id)
        if batch is None:
            raise ConfigError(f"batch {batch_id} does not exist")
        return self._plan_of(batch)

    async def _load_plan(self, batch_id: uuid.UUID) -> BatchPlan:
        batch = await self.store.batch_get(batch_id)
        if batch is None:
            raise ConfigError(f"batch {batch_id} does not exist")
        return self._plan_of(batch)

    def _plan_of(self, batch: BatchRecord) -> BatchPlan:
        return BatchPlan(
            account_id=batch.account_id,
            options=stored_options(batch.options),
            template=PromptTemplate.from_text(batch.template),
            cache_scope_mode=self.config.cache_scope,
            capped=batch.budget_usd is not None,
        )

    async def _run_job(self, job: ClaimedJob) -> None:
        self._running += 1
        try:
            outcome = await self._outcome(job)
        finally:
            self._running -= 1  # the writer waits no longer for this one
        if await self.writer.write(replace(outcome, claim=job.claims)):
            self.tally.count(outcome)
        else:
            # Another worker took the job over after our lease lapsed; its result wins.
            self.metrics.inc("jobs.fenced_out")
            logger.warning("job.fenced_out", extra={"job_id": job.id})

    async def _outcome(self, job: ClaimedJob) -> Outcome:
        try:
            plan = await self.plan(job.batch_id)
            return await self.pipeline.run(job, plan)
        except StorageError as exc:  # the batch could not be read: try again soon, no attempt
            return RetryRow(job.id, 1.0, 0, 0, False, "storage", str(exc))
        except BulkgenError as exc:  # the stored batch itself is unusable
            return FailedRow(job.id, JobStatus.FAILED, 0, "invalid_batch", str(exc))
        except Exception as exc:  # a bug must fail the job loudly, not strand it
            logger.exception("job.crashed", extra={"job_id": job.id})
            return FailedRow(
                job.id, JobStatus.FAILED, 1, "internal", f"{type(exc).__name__}: {exc}"
            )

    async def _drain(self) -> None:
        if not self._inflight:
            return
        _, pending = await asyncio.wait(set(self._inflight), timeout=self.config.shutdown_grace_s)
        leftovers = [self._inflight[t] for t in pending if t in self._inflight]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if leftovers:
            with contextlib.suppress(StorageError):
                released = await self.store.jobs_release(self.id, [j.id for j in leftovers])
                logger.info("worker.released", extra={"jobs": released})

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            try:
                await self._beat()
                await self._give_back_unrun()
                await self._rescue()
            except StorageError as exc:
                if self._healthy_since_s is not None:
                    self._failing_since_s = time.monotonic()
                self._healthy_since_s = None
                logger.warning("worker.heartbeat_failed", extra={"error": str(exc)})

    async def _beat(self) -> None:
        if not await self.store.worker_heartbeat(self.id):
            await self.store.worker_register(self.id, socket.gethostname(), os.getpid())
        if self._healthy_since_s is None:
            self._healthy_since_s = time.monotonic()
            logger.warning(
                "worker.heartbeat_recovered",
                extra={"outage_s": round(self._healthy_since_s - self._failing_since_s, 1)},
            )

    async def _give_back_unrun(self) -> None:
        """Jobs the database says this worker runs but it does not (a claim that committed
        after its connection died) would stay ``generating`` for the worker's whole life:
        they go back to the queue, in their place, without an attempt. Not while stopping:
        the drain releases what it interrupts itself."""
        if self._stopping.is_set():
            return
        if self._claim_lock.locked():  # a claim (or a flush claiming) is on its way: look
            return  # next beat, rather than hold the heartbeat up behind it
        async with self._claim_lock:
            unrun = await self.store.jobs_of_owner(self.id) - {
                job.id for job in self._inflight.values()
            }
            released = await self.store.jobs_release(self.id, sorted(unrun)) if unrun else 0
        if released:
            self.metrics.inc("jobs.unrun_released", released)
            logger.warning("worker.unrun_released", extra={"jobs": released})
            self._wake.set()

    async def _rescue(self) -> None:
        """Re-queue jobs of workers whose heartbeat went stale, but only once this worker's
        own heartbeat has been healthy for a whole lease: right after an outage every
        worker's beat is stale, including those still running their jobs."""
        if self._healthy_since_s is None:
            return
        healthy_s = time.monotonic() - self._healthy_since_s
        if healthy_s < self.config.lease_s:
            return
        rescued = await self.store.jobs_rescue(self.config.lease_s, self.config.max_attempts)
        if rescued:
            self.metrics.inc("jobs.rescued", rescued)
            logger.warning(
                "worker.rescued", extra={"jobs": rescued, "healthy_s": round(healthy_s, 3)}
            )
            self._wake.set()

    async def _listen(self) -> None:
        """LISTEN on one pooled connection; a hint only, polling covers its loss.

        The connection is closed rather than handed back: releases skip the reset query
        (see ``db.pool``), and closing is the one way out that cannot fail half-way or be
        interrupted, so the LISTEN never reaches another caller."""

        def on_notify(_conn: object, _pid: int, _channel: str, payload: object, /) -> None:
            self._wake.set()
            self._prefetch_plan(str(payload))

        while True:
            try:
                async with self.store.pool.acquire() as conn:
                    lost = asyncio.Event()
                    conn.add_termination_listener(lambda _conn, ev=lost: ev.set())
                    await conn.add_listener("bulkgen_jobs", on_notify)
                    try:
                        await lost.wait()
                    finally:
                        conn.terminate()
            except Exception as exc:  # a lost listener is only a lost hint
                logger.warning("worker.listen_failed", extra={"error": str(exc)})
                await asyncio.sleep(self.config.poll_s)
