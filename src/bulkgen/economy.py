"""Economy mode: a batch's jobs sent through the provider's Batch API, at half the price.

Every worker runs :class:`Economy` beside its claim loop. One pass (:meth:`Economy.tick`):

1. **Fall back**: economy batches past their deadline that asked for it become online
   batches; their waiting jobs are queued for workers (``db.provider_batches``).
2. **Dispatch**: the oldest waiting jobs of one (batch, model) go into a new provider
   batch, one statement that writes the ``provider_batches`` row (leased to this worker)
   and marks the jobs as held by it, *before* anything is sent. Then each job's request is
   built as an online job's would be (same template, options and cache key); a cache hit
   is written at once and never reaches the provider; the batch's spending cap must hold
   the worst case of every request left (what does not fit waits for held money, or ends
   ``cancelled`` when even an empty ledger could not pay for it); the JSONL file is
   uploaded and the provider batch created with the row's id as metadata, then recorded.
3. **Advance** provider batches due for a step, one at a time under a lease: a ``preparing``
   row whose worker died is first looked for at the provider by its metadata (a worker that
   died between creating the batch and recording it leaves a batch to find, not to create
   again); a ``submitted`` one is polled, with the interval doubling up to a ceiling, or
   cancelled when its bulkgen batch was; an ended one has its output and error files read
   and every answer goes through the same validation and formatting as an online answer.

What the provider did not run (expired, cancelled, missing rows) waits for the next
provider batch without burning an attempt; a row that failed is retried or failed by the
online rules (:meth:`~bulkgen.pipeline.Pipeline.on_error`). Answers are written by the
same statements as a worker's outcomes, fenced on the provider batch as the jobs' owner
and on their claim, so writing a batch's answers twice (a worker died half-way through)
stores each result once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TypeVar

from bulkgen.cache import cache_key, cache_scope
from bulkgen.cache.result import CachedResult
from bulkgen.db.provider_batches import ProviderAnswer, ProviderBatchRow, ProviderBatchStore
from bulkgen.db.store import ClaimedJob, DoneRow, FailedRow, RetryRow, Store
from bulkgen.db.writer import Outcome
from bulkgen.errors import (
    BulkgenError,
    InputError,
    ProviderError,
    RendererUnavailable,
    RequestTooLarge,
    StorageError,
)
from bulkgen.formatting import ParsedMarkdown, format_article, validate_completion
from bulkgen.metrics import Metrics
from bulkgen.models import ChatRequest, Completion, JobStatus
from bulkgen.pipeline import CHARS_PER_TOKEN, BatchPlan, Pipeline, done_row
from bulkgen.pricing import PriceTable, PriceTier
from bulkgen.providers.openai_batch import (
    BatchLimits,
    OpenAIBatchClient,
    ProviderBatch,
    RowAnswered,
    RowFailed,
    RowResult,
    build_input_files,
    request_line,
)

logger = logging.getLogger(__name__)

METADATA_KEY = "bulkgen_provider_batch"
TOKEN_LIMIT = "token_limit_exceeded"  # a batch refused for the model's enqueued-token limit
WRITE_CHUNK = 500  # outcomes per statement while an ended batch's answers are written
RENDER_CHUNK = 64  # requests built at once while a provider batch is prepared
MAX_STEP_FAILURES = 5  # failed steps in a row before a provider batch is given up

T = TypeVar("T")


@dataclass(frozen=True)
class EconomyConfig:
    limits: BatchLimits
    lease_s: float  # one step of a provider batch (an upload may be large) holds it this long
    poll_s: float  # the first poll after creation; doubles up to max_poll_s
    max_poll_s: float
    tick_s: float  # how often a worker looks for economy work when there was none
    retry_s: float  # a step that failed (provider or database unreachable) is tried again after
    # A worker looking for a batch created by a worker that died lists the provider's batches
    # back to the row's creation, less this margin for the two clocks' skew.
    clock_skew_s: float = 600.0


@dataclass(frozen=True)
class _Line:
    job: ClaimedJob
    request: ChatRequest
    key: str
    worst_usd: Decimal


class Economy:
    def __init__(
        self,
        *,
        worker_id: uuid.UUID,
        store: Store,
        provider_batches: ProviderBatchStore,
        client: OpenAIBatchClient,
        pipeline: Pipeline,
        plan: Callable[[uuid.UUID], Awaitable[BatchPlan]],
        prices: PriceTable,
        config: EconomyConfig,
        metrics: Metrics,
        written: Callable[[Outcome], None] = lambda _outcome: None,
    ) -> None:
        self.worker_id = worker_id
        self.store = store
        self.batches = provider_batches
        self.client = client
        self.pipeline = pipeline
        self._plan = plan
        self.prices = prices
        self.config = config
        self.metrics = metrics
        self._written = written  # told of each outcome the database took (progress displays)
        # Requests per provider batch, learned: halved when the provider refuses a batch
        # for its enqueued-token limit, doubled back (up to the configured limit) when one
        # completes.
        self.request_cap = config.limits.max_requests

    async def run(self, stopping: asyncio.Event) -> None:
        """Tick until ``stopping`` is set; a pass that found work is followed at once."""
        while not stopping.is_set():
            try:
                busy = await self.tick(stopping)
            except StorageError as exc:  # the database is away: the leases keep the state
                logger.warning("economy.tick_failed", extra={"error": str(exc)})
                busy = False
            except Exception:  # a bug must not end economy mode for this worker's life
                logger.exception("economy.tick_crashed")
                busy = False
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), self.config.tick_s)

    async def tick(self, stopping: asyncio.Event | None = None) -> bool:
        """One pass: fall back, dispatch, advance. True when something was done."""
        busy = False
        fallen = await self.batches.fallback()
        if fallen:
            logger.info("economy.fallback_online", extra={"jobs": fallen})
            busy = True
        while stopping is None or not stopping.is_set():
            taken = await self.batches.dispatch(
                self.worker_id,
                max_requests=self.request_cap,
                lease_s=self.config.lease_s,
            )
            if taken is None:
                break
            pb_id, jobs = taken
            self.metrics.inc("economy.dispatched", len(jobs))
            await self._prepare(pb_id, jobs, recovering_since=None)
            busy = True
        while stopping is None or not stopping.is_set():
            row = await self.batches.lease(self.worker_id, self.config.lease_s)
            if row is None:
                break
            await self._advance(row)
            busy = True
        return busy

    # ------------------------------------------------------------ preparing and sending

    async def _prepare(
        self,
        pb_id: uuid.UUID,
        jobs: Sequence[ClaimedJob],
        *,
        recovering_since: float | None,
        failures: int = 0,
    ) -> None:
        """Build, upload and create the provider batch for ``jobs``; record it.

        ``recovering_since`` (epoch seconds of the row's creation) says an earlier worker
        may have created it already: look for it first."""
        try:
            if recovering_since is not None and await self._recover(pb_id, recovering_since):
                return
            await self._send(pb_id, jobs)
        except Exception as exc:
            await self._step_failed(pb_id, exc, failures, lost=False)

    async def _recover(self, pb_id: uuid.UUID, created_at_s: float) -> bool:
        found = await self.client.find(
            {METADATA_KEY: str(pb_id)},
            created_since=int(created_at_s - self.config.clock_skew_s),
        )
        if not found:
            return False
        kept, *extra = found  # newest first; a second one can exist only after a lost race
        for batch in extra:
            await self.client.cancel(batch.id)
        jobs = await self.batches.jobs(pb_id)
        recorded = await self._record(pb_id, kept, requests=kept.total or len(jobs))
        logger.warning(
            "economy.recovered",
            extra={"provider_batch": str(pb_id), "provider_id": kept.id, "recorded": recorded},
        )
        return True

    async def _send(self, pb_id: uuid.UUID, jobs: Sequence[ClaimedJob]) -> None:
        if not await self._still_sending(pb_id):
            return
        lines, outcomes = await self._lines(pb_id, jobs)
        if lines is None:
            return  # the lease was lost while the requests were built
        if not await self._still_sending(pb_id):
            return
        await self._write(pb_id, outcomes)
        lines, outcomes, waiting = await self._within_budget(pb_id, lines)
        if lines is None:
            return
        await self._write(pb_id, outcomes)
        pairs = ((str(ln.job.id), ln.request) for ln in lines)
        files = build_input_files(pairs, self.config.limits)
        sent = files[0] if files else None
        in_file = set() if sent is None else set(sent.custom_ids)
        later = [ln.job.id for ln in lines if str(ln.job.id) not in in_file]
        await self.batches.jobs_return(pb_id, self.worker_id, later, 0.0)  # the next one sends
        await self.batches.jobs_return(pb_id, self.worker_id, waiting, self.config.retry_s)
        if sent is None:  # answered from the cache, failed, or waiting for money: nothing to send
            await self.batches.drop(pb_id, self.worker_id)
            return
        if not await self._still_sending(pb_id):
            return
        file_id = await self.client.upload(sent, filename=f"{pb_id}.jsonl")
        if not await self._still_sending(pb_id):
            return
        batch = await self.client.create(file_id, metadata={METADATA_KEY: str(pb_id)})
        if not await self._record(pb_id, batch, requests=len(sent.custom_ids)):
            # Fenced out: another worker took the row over meanwhile. If it found this batch
            # by its metadata, it recorded it and keeps it; otherwise it sends its own, and
            # ours must not run beside it.
            if await self.batches.provider_id(pb_id) != batch.id:
                await self.client.cancel(batch.id)
            return
        self.metrics.inc("economy.provider_batches")
        logger.info(
            "economy.submitted",
            extra={
                "provider_batch": str(pb_id),
                "provider_id": batch.id,
                "requests": len(sent.custom_ids),
            },
        )

    async def _still_sending(self, pb_id: uuid.UUID) -> bool:
        """Keep the lease before a step that sends; False when nothing more may be sent:
        the lease went to another worker (it carries on), or the batch was cancelled or
        went online (the jobs still held are given back, and the empty row dropped)."""
        state = await self.batches.extend(pb_id, self.worker_id, self.config.lease_s)
        if state == "stopping":
            held = [job.id for job in await self.batches.jobs(pb_id)]
            await self.batches.jobs_return(pb_id, self.worker_id, held, 0.0)
            await self.batches.drop(pb_id, self.worker_id)
            logger.info("economy.not_sent", extra={"provider_batch": str(pb_id)})
        return state == "held"

    async def _record(self, pb_id: uuid.UUID, batch: ProviderBatch, *, requests: int) -> bool:
        return await self.batches.submitted(
            pb_id,
            self.worker_id,
            provider_id=batch.id,
            input_file_id=batch.input_file_id,
            provider_status=batch.status,
            requests=requests,
            expires_at=batch.expires_at,
            poll_s=self.config.poll_s,
        )

    async def _lines(
        self, pb_id: uuid.UUID, jobs: Sequence[ClaimedJob]
    ) -> tuple[list[_Line] | None, list[Outcome]]:
        """Each job's request, or its outcome when it needs none (a cache hit, a row whose
        template cannot render). The lease is kept while they are built; None: it was lost."""
        lines: list[_Line] = []
        outcomes: list[Outcome] = []
        for chunk in _chunks(jobs, RENDER_CHUNK):
            state = await self.batches.extend(pb_id, self.worker_id, self.config.lease_s)
            if state == "lost":
                return None, []
            for job, built in zip(
                chunk, await asyncio.gather(*(self._line(j) for j in chunk)), strict=True
            ):
                if isinstance(built, _Line):
                    lines.append(built)
                else:
                    outcomes.append(_claimed(built, job))
        return lines, outcomes

    async def _line(self, job: ClaimedJob) -> _Line | Outcome:
        plan = await self._plan(job.batch_id)
        try:
            request = await self.pipeline.build_request(job, plan)
        except InputError as exc:
            return FailedRow(job.id, JobStatus.FAILED, 1, "invalid_input", str(exc))
        key = self._key(request, plan)
        hit = await self.pipeline.singleflight.lookup(key)
        if hit is not None:
            parsed = self.pipeline.still_valid(hit)
            if parsed is not None:  # priced at batch prices: what the cache saved
                return _done(job, hit, key, parsed, cached=True, batch_api=True)
        size = len(request_line(str(job.id), request))
        if size > self.config.limits.max_bytes:
            message = (
                f"the request takes {size:,} bytes, more than the {self.config.limits.max_bytes:,}"
                " a Batch API input file may hold"
            )
            return FailedRow(job.id, JobStatus.FAILED, 1, "invalid_input", message)
        prompt_tokens = request.prompt_chars() // CHARS_PER_TOKEN
        worst = self.prices.worst_case_cost_usd(
            request.model, prompt_tokens, request.max_tokens, tier=PriceTier.BATCH
        )
        return _Line(job, request, key, worst)

    def _key(self, request: ChatRequest, plan: BatchPlan) -> str:
        return cache_key(
            scope=cache_scope(plan.cache_scope_mode, str(plan.account_id)),
            base_url=self.pipeline.provider.base_url,
            request=request,
            template_version=plan.template.version,
        )

    async def _within_budget(
        self, pb_id: uuid.UUID, lines: list[_Line]
    ) -> tuple[list[_Line] | None, list[Outcome], list[int]]:
        """(lines the batch's cap holds, outcomes of jobs it never could, ids of jobs that
        wait for money held by provider batches, this one's included). No cap: all go.
        None: the lease was lost.

        A provider batch holds the worst case of its requests until its answers are
        written; the answers usually cost less, so the jobs that did not fit wait for that.
        Only when nothing is held any more and not even one request fits do they end
        ``cancelled`` (``budget_exceeded``), as online jobs do. The hold is written in the
        same transaction that reads the room, with the batch row locked."""
        if not lines:
            return lines, [], []
        batch_id = lines[0].job.batch_id
        kept: list[_Line] = []
        room_left = Decimal(0)
        capped = False

        async def choose(cap: Decimal | None, held: Decimal) -> Decimal:
            nonlocal room_left, capped
            kept.clear()
            if cap is None:
                kept.extend(lines)
                return Decimal(0)
            capped = True
            spent = (await self.store.batch_usage(batch_id, self.prices)).cost_usd
            room_left = cap - spent - held
            for line in lines:
                if line.worst_usd > room_left:
                    break
                kept.append(line)
                room_left -= line.worst_usd
            return sum((ln.worst_usd for ln in kept), Decimal(0))

        if not await self.batches.reserve(batch_id, pb_id, self.worker_id, choose):
            return None, [], []
        rest = lines[len(kept) :]
        if not capped or not rest:
            return kept, [], []
        held = await self.batches.held(batch_id)  # this provider batch's hold included
        if kept or held > 0:  # money comes back when those batches' answers are written
            return kept, [], [ln.job.id for ln in rest]
        self.metrics.inc("jobs.cancelled", len(rest), error_kind="budget_exceeded")
        message = f"BudgetExceeded: batch {batch_id}: the cap cannot pay for this request"
        over = [
            _claimed(
                FailedRow(ln.job.id, JobStatus.CANCELLED, 0, "budget_exceeded", message), ln.job
            )
            for ln in rest
        ]
        return kept, over, []

    async def _step_failed(
        self, pb_id: uuid.UUID, exc: BaseException, failures: int, *, lost: bool
    ) -> None:
        """A step that failed is tried again after ``retry_s``. A provider that refuses it
        (not retryable), or fails it ``MAX_STEP_FAILURES`` times in a row, ends the
        provider batch: its jobs go through the retry rules (an attempt each), so no job
        waits on a provider batch forever. ``lost``: the provider batch had been created,
        and can no longer be followed; its jobs are retried whatever the error said
        about the batch, which says nothing about them."""
        self.metrics.inc("economy.step_failed")
        known = isinstance(exc, ProviderError | StorageError | RendererUnavailable)
        if known:
            logger.warning(
                "economy.step_failed", extra={"provider_batch": str(pb_id), "error": str(exc)}
            )
        else:
            logger.exception("economy.step_crashed", extra={"provider_batch": str(pb_id)})
        error = f"{type(exc).__name__}: {exc}"
        give_up = isinstance(exc, ProviderError) and (
            not exc.retryable or failures + 1 >= MAX_STEP_FAILURES
        )
        try:
            if give_up and isinstance(exc, ProviderError):
                if lost:
                    exc = ProviderError(f"the provider batch could not be followed: {error}")
                await self._give_up(pb_id, exc)
            else:
                await self.batches.postponed(pb_id, self.worker_id, self.config.retry_s, error)
        except StorageError as storage:
            logger.warning("economy.step_failed", extra={"error": str(storage)})

    async def _give_up(self, pb_id: uuid.UUID, exc: ProviderError) -> None:
        """End the provider batch (this worker still holds its lease): its jobs go through
        the retry rules with ``exc``, and the row is dropped or marked processed."""
        jobs = await self.batches.jobs(pb_id)
        outcomes = [_claimed(self.pipeline.on_error(job, exc), job) for job in jobs]
        await self._write(pb_id, outcomes)
        answer = ProviderAnswer("abandoned", 0, 0, None, None)
        why = f"given up: {type(exc).__name__}: {exc}"
        if not await self.batches.drop(pb_id, self.worker_id):
            await self.batches.processed(pb_id, self.worker_id, answer, why[:2000])
        logger.error(
            "economy.given_up",
            extra={"provider_batch": str(pb_id), "jobs": len(jobs), "error": str(exc)},
        )

    # ------------------------------------------------------------ polling and answers

    async def _advance(self, row: ProviderBatchRow) -> None:
        try:
            if row.state == "preparing":
                jobs = await self.batches.jobs(row.id)
                await self._prepare(
                    row.id,
                    jobs,
                    recovering_since=row.created_at.timestamp(),
                    failures=row.failures,
                )
                return
            assert row.provider_id is not None  # submitted rows have one
            batch = await self.client.retrieve(row.provider_id)
            if row.stopping and not batch.ended and batch.status != "cancelling":
                batch = await self.client.cancel(batch.id)
                logger.info("economy.cancelled", extra={"provider_batch": str(row.id)})
            if not batch.ended:
                doubled = max(self.config.poll_s, row.poll_interval_s * 2)
                interval = min(self.config.max_poll_s, doubled)
                await self.batches.polled(row.id, self.worker_id, _answer(batch), interval)
                return
            await self._process(row, batch)
        except Exception as exc:
            await self._step_failed(row.id, exc, row.failures, lost=True)

    async def _process(self, row: ProviderBatchRow, batch: ProviderBatch) -> None:
        """Write an ended batch's answers, a chunk at a time, then mark it processed."""
        results = await self.client.results(batch, model=row.model)
        jobs = await self.batches.jobs(row.id)
        why = "; ".join(batch.errors) or f"the provider batch ended {batch.status}"
        self._learn(batch, len(jobs))
        unrecorded = Decimal(0)
        for chunk in _chunks(jobs, WRITE_CHUNK):
            if await self.batches.extend(row.id, self.worker_id, self.config.lease_s) == "lost":
                return  # taken over: the rest is written by the new holder, fenced
            outcomes: list[Outcome] = []
            for job in chunk:
                result = results.get(str(job.id))
                outcome = await self._outcome(job, result, batch, why, len(jobs))
                if isinstance(outcome, RetryRow) and isinstance(result, RowAnswered):
                    unrecorded += self._billed(result.completion, row.model)
                outcomes.append(_claimed(outcome, job))
            await self._write(row.id, outcomes)
        errors = "; ".join(batch.errors) or None
        answer = _answer(batch)
        await self.batches.processed(row.id, self.worker_id, answer, errors, unrecorded)
        self.metrics.inc("economy.processed")
        logger.info(
            "economy.processed",
            extra={
                "provider_batch": str(row.id),
                "status": batch.status,
                "answered": sum(isinstance(r, RowAnswered) for r in results.values()),
                "jobs": len(jobs),
            },
        )

    def _billed(self, completion: Completion, model: str) -> Decimal:
        """What an answer cost at batch prices: a rejected one keeps no job row's tokens."""
        return self.prices.cost_usd(
            completion.model or model, completion.usage, tier=PriceTier.BATCH
        )

    async def _outcome(
        self,
        job: ClaimedJob,
        result: RowResult | None,
        batch: ProviderBatch,
        why: str,
        requests: int,
    ) -> Outcome:
        """The outcome of one job of an ended provider batch of ``requests`` jobs."""
        if isinstance(result, RowFailed):
            return _stamped(self.pipeline.on_error(job, result.error), result.error)
        if result is None and batch.status == "failed":  # refused whole, nothing ran
            if any(error.startswith(TOKEN_LIMIT) for error in batch.errors):
                if requests <= 1:  # alone, the request is more than the limit allows
                    return self.pipeline.on_error(job, RequestTooLarge(why))
                return RetryRow(job.id, self.config.retry_s, 0, 0, False, "batch_token_limit", why)
            return self.pipeline.on_error(job, ProviderError(why))
        if not isinstance(result, RowAnswered):  # never ran: expired, cancelled, missing
            code = result.code if result is not None else batch.status
            message = result.message if result is not None and result.message else why
            return RetryRow(job.id, 0.0, 0, 0, False, f"batch_{code}", message)
        completion = result.completion
        try:
            parsed = validate_completion(completion, min_words=self.pipeline.config.min_words)
        except BulkgenError as exc:
            outcome = self.pipeline.on_error(job, exc)
            if isinstance(outcome, FailedRow):  # the rejected answer was billed
                usage = completion.usage
                outcome = replace(
                    outcome,
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                    cache_read_tokens=usage.cache_read_tokens,
                    batch_api=True,
                )
            return _stamped(outcome, None)
        cached = CachedResult.from_completion(completion)
        key = None
        with contextlib.suppress(BulkgenError):  # the answer stands without a cache entry
            plan = await self._plan(job.batch_id)
            key = self._key(await self.pipeline.build_request(job, plan), plan)
            await self.pipeline.singleflight.remember(key, cached)
        return _done(job, cached, key, parsed, cached=False, batch_api=True)

    def _learn(self, batch: ProviderBatch, requests: int) -> None:
        cap = self.request_cap
        if batch.status == "failed" and any(e.startswith(TOKEN_LIMIT) for e in batch.errors):
            cap = max(1, min(cap, requests) // 2)
        elif batch.status == "completed":
            cap = min(self.config.limits.max_requests, cap * 2)
        if cap != self.request_cap:
            logger.info("economy.request_cap", extra={"before": self.request_cap, "after": cap})
            self.request_cap = cap

    async def _write(self, owner: uuid.UUID, outcomes: Sequence[Outcome]) -> None:
        done = [o for o in outcomes if isinstance(o, DoneRow)]
        retry = [o for o in outcomes if isinstance(o, RetryRow)]
        failed = [o for o in outcomes if isinstance(o, FailedRow)]
        written = await self.store.jobs_finish_done(owner, done)
        written |= await self.store.jobs_finish_retry(owner, retry)
        written |= await self.store.jobs_finish_failed(owner, failed)
        for outcome in outcomes:
            if outcome.job_id in written:
                self._written(outcome)
        if written:
            self.metrics.inc("economy.outcomes", len(written))


def _answer(batch: ProviderBatch) -> ProviderAnswer:
    return ProviderAnswer(
        batch.status, batch.completed, batch.failed, batch.output_file_id, batch.error_file_id
    )


def _done(
    job: ClaimedJob,
    result: CachedResult,
    key: str | None,
    parsed: ParsedMarkdown,
    *,
    cached: bool,
    batch_api: bool,
) -> DoneRow:
    article = format_article(parsed, fallback_title=job.input["keyword"])
    calls = 0 if cached else 1
    return done_row(job, article, result, key=key, cached=cached, calls=calls, batch_api=batch_api)


def _stamped(outcome: Outcome, error: ProviderError | None) -> Outcome:
    """A row the provider ran counts as one request (a 429 row as one answered 429)."""
    if isinstance(outcome, DoneRow):
        return outcome
    calls_429 = 1 if error is not None and error.status_code == 429 else 0
    return replace(outcome, calls=1, calls_429=calls_429)


def _claimed(outcome: Outcome, job: ClaimedJob) -> Outcome:
    """Fenced on the claim that put the job in its provider batch."""
    return replace(outcome, claim=job.claims)


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
