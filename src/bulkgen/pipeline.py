"""One job, start to finish, without a database connection: prompt -> cache and
single-flight -> limiter -> budget -> provider -> validate -> format -> outcome.

The pipeline returns an outcome row (done, retry, failed or cancelled) and never writes
it: the worker hands it to the status writer, which writes many at once. Every error ends
as a retry or a failure (most through the retry policy), and ``done`` is built only from
content that passed validation, so no path leads to an empty ``done``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Literal

from bulkgen.budget import BudgetLedger
from bulkgen.cache import CachedResult, SingleFlight, cache_key, cache_scope
from bulkgen.db.store import ClaimedJob, DoneRow, FailedRow, RetryRow
from bulkgen.db.writer import Outcome
from bulkgen.errors import (
    BudgetContended,
    BudgetExceeded,
    BulkgenError,
    InputError,
    ProviderOverloaded,
    QuotaExhausted,
    RateLimited,
    RendererUnavailable,
    StorageError,
)
from bulkgen.formatting import Article, ParsedMarkdown, format_article, validate_completion
from bulkgen.intake import JobInput
from bulkgen.limits import LimitKey, RateGovernor
from bulkgen.metrics import Metrics
from bulkgen.models import ChatRequest, Completion, JobStatus, Usage
from bulkgen.options import BatchOptions
from bulkgen.prompts import PromptTemplate
from bulkgen.providers import Provider
from bulkgen.renderer import TemplateRenderer
from bulkgen.retry import RetryPolicy

logger = logging.getLogger(__name__)


BUDGET_RETRY_S = 5.0
STORAGE_RETRY_S = 1.0
RENDERER_RETRY_S = 5.0

# A rough, provider-agnostic prompt size: the admission reserves this plus max_tokens and
# reconciles with the provider's own usage count afterwards.
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class BatchPlan:
    """What every job of a batch shares, loaded once per batch per worker."""

    account_id: int
    options: BatchOptions
    template: PromptTemplate
    cache_scope_mode: Literal["account", "global"] = "account"
    # False when the batch's row (read for this plan) shows it has no budget cap: the
    # budget ledger then need not read that row again. True: it may have one.
    capped: bool = True


@dataclass(frozen=True)
class PipelineConfig:
    min_words: int
    max_tokens_growth: float = 2.0


@dataclass
class Receipt:
    """What one claim of a job sent to the provider: how many requests, how many of them
    were answered 429, what the last answer was billed (None: no answer), and the parse of
    the last answer that passed validation, which formatting renders."""

    model: str = ""
    usage: Usage | None = None
    calls: int = 0
    calls_429: int = 0
    parsed: ParsedMarkdown | None = None

    def answered(self, completion: Completion, model: str) -> None:
        self.model = completion.model or model
        self.usage = completion.usage

    def stamped(self, outcome: Outcome) -> Outcome:
        """``outcome`` carrying this claim's request counts, which its row adds up."""
        if not self.calls:
            return outcome
        return dataclasses.replace(outcome, calls=self.calls, calls_429=self.calls_429)


class Pipeline:
    def __init__(
        self,
        *,
        provider: Provider,
        governor: RateGovernor,
        singleflight: SingleFlight,
        retry: RetryPolicy,
        config: PipelineConfig,
        metrics: Metrics,
        renderer: TemplateRenderer,
        budget: BudgetLedger | None = None,
    ) -> None:
        self.budget = budget
        self.renderer = renderer
        self.provider = provider
        self.governor = governor
        self.singleflight = singleflight
        self.retry = retry
        self.config = config
        self.metrics = metrics
        self._limit_keys: set[LimitKey] = set()

    def allows_claim(self) -> bool:
        """False while a circuit breaker is open for a provider key this worker uses:
        jobs then stay queued with their attempts intact."""
        return all(self.governor.allows_claim(key) for key in self._limit_keys)

    def auto_concurrency(self) -> int:
        """In-flight calls the limiter can sustain for the keys this worker has used."""
        if not self._limit_keys:
            return 1
        return sum(self.governor.concurrency_limit(key) for key in self._limit_keys)

    async def build_request(self, job: ClaimedJob, plan: BatchPlan) -> ChatRequest:
        """The exact request a job sends; also what its cache key is made of. The prompt
        renders in a child process, so a slow template never stalls the event loop."""
        job_input = JobInput(
            keyword=job.input["keyword"],
            variables=job.input.get("variables", {}),
            overrides=job.input.get("overrides", {}),
        )
        options = job_input.options(plan.options)
        max_tokens = options.max_tokens
        if job.max_tokens_grown:
            max_tokens = int(max_tokens * self.config.max_tokens_growth)
        messages = await self.renderer.render(plan.template, job_input.template_variables(options))
        return ChatRequest(
            model=options.model,
            messages=messages,
            max_tokens=max_tokens,
            temperature=options.temperature,
        )

    async def run(self, job: ClaimedJob, plan: BatchPlan) -> Outcome:
        receipt = Receipt()
        return receipt.stamped(await self._run(job, plan, receipt))

    async def _run(self, job: ClaimedJob, plan: BatchPlan, receipt: Receipt) -> Outcome:
        started = time.monotonic()
        if not plan.capped and self.budget is not None:
            self.budget.note_uncapped(job.batch_id)  # a cap never changes after submit
        try:
            request = await self.build_request(job, plan)
            key = cache_key(
                scope=cache_scope(plan.cache_scope_mode, str(plan.account_id)),
                base_url=self.provider.base_url,
                request=request,
                template_version=plan.template.version,
            )
            result, source = await self.singleflight.run(
                key, lambda: self._paid(job.batch_id, request, receipt)
            )
            # Our own call's answer was validated (and parsed) in _paid; any other again.
            parsed = receipt.parsed if source == "provider" else self.still_valid(result)
            if parsed is None:
                self.metrics.inc("cache.rejected")
                result, source = await self._paid(job.batch_id, request, receipt), "provider"
                parsed = receipt.parsed
            assert parsed is not None  # _paid returns only what it validated
            article = format_article(parsed, fallback_title=job.input["keyword"])
        except InputError as exc:
            return FailedRow(job.id, JobStatus.FAILED, 1, "invalid_input", str(exc))
        except BudgetExceeded as exc:
            return self._over_budget(job, exc)
        except BudgetContended as exc:  # the rest of the cap is held by calls in flight
            return self._budget_wait(job, exc)
        except StorageError as exc:  # a database blip is not the job's fault
            return RetryRow(job.id, STORAGE_RETRY_S, 0, 0, False, "storage", str(exc))
        except RendererUnavailable as exc:  # nor is a worker that cannot start a process
            logger.warning("job.renderer_unavailable", extra={"job_id": job.id, "error": str(exc)})
            return RetryRow(job.id, RENDERER_RETRY_S, 0, 0, False, "renderer", str(exc))
        except BulkgenError as exc:
            return _billed(self.on_error(job, exc), receipt)
        cached = source != "provider"
        self.metrics.inc("jobs.done", cached=cached)
        self.metrics.observe("job.seconds", time.monotonic() - started)
        return done_row(job, article, result, key=key, cached=cached)

    async def _paid(
        self, batch_id: uuid.UUID, request: ChatRequest, receipt: Receipt
    ) -> CachedResult:
        """One admitted provider call, inside the batch's budget, validated before anyone
        (the cache included) sees it.

        The budget is reserved only once the limiter has admitted the call, so a call
        waiting out a rate limit holds no money, and the hold is replaced by the billed
        cost as soon as the provider answers, whatever the answer (see bulkgen.budget)."""
        limit_key = LimitKey(self.provider.base_url, self.provider.api_key_id, request.model)
        self._limit_keys.add(limit_key)
        prompt_tokens = request.prompt_chars() // CHARS_PER_TOKEN
        async with self.governor.slot(limit_key, prompt_tokens + request.max_tokens) as slot:
            held = None
            if self.budget is not None:
                held = await self.budget.reserve(
                    batch_id, request.model, prompt_tokens, request.max_tokens
                )
            try:
                receipt.calls += 1
                try:
                    completion = await self.provider.complete(request)
                except (RateLimited, QuotaExhausted):  # the provider's two kinds of 429
                    receipt.calls_429 += 1
                    raise
                except ProviderOverloaded as exc:
                    if exc.status_code == 429:  # a bare 429 counts in the batch's 429 share
                        receipt.calls_429 += 1
                    raise
                receipt.answered(completion, request.model)
                await slot.record(completion)
            finally:
                if self.budget is not None:
                    await self.budget.settle(held, receipt.model or request.model, receipt.usage)
        self.metrics.inc("provider.completions", model=request.model)
        receipt.parsed = validate_completion(completion, min_words=self.config.min_words)
        return CachedResult.from_completion(completion)  # the provider fills in the model

    def still_valid(self, result: CachedResult) -> ParsedMarkdown | None:
        """A cached or shared answer passes the same validation as a fresh one: an entry
        written under other rules (a lower ``min_words``, an older version) is regenerated
        for this job rather than becoming ``done``, and never loops through retries.
        Returns the answer's parse, or None when it no longer passes."""
        completion = Completion(result.content, result.usage, result.finish_reason, result.model)
        try:
            return validate_completion(completion, min_words=self.config.min_words)
        except BulkgenError:
            return None

    def _budget_wait(self, job: ClaimedJob, exc: BudgetContended) -> Outcome:
        """Snooze without an attempt, like a rate-limit wait and bounded by the same total:
        money held by a call that never settles (its worker died) must not keep the rest of
        the batch waiting forever."""
        waited_s = job.rate_limited_ms / 1000
        if waited_s + BUDGET_RETRY_S > self.retry.rate_limit_max_wait_s:
            return self._over_budget(job, BudgetExceeded(f"{exc}; waited {waited_s:.0f} s"))
        self.metrics.inc("jobs.snoozed", error_kind="budget_wait")
        waited_ms = int(BUDGET_RETRY_S * 1000)
        return RetryRow(job.id, BUDGET_RETRY_S, 0, waited_ms, False, "budget_wait", str(exc))

    def _over_budget(self, job: ClaimedJob, exc: BudgetExceeded) -> Outcome:
        """Not sent, so no attempt is burnt; ``cancelled`` says the job itself was fine."""
        self.metrics.inc("jobs.cancelled", error_kind="budget_exceeded")
        logger.warning("job.budget_exceeded", extra={"job_id": job.id, "error": str(exc)})
        return FailedRow(
            job.id, JobStatus.CANCELLED, 0, "budget_exceeded", f"BudgetExceeded: {exc}"
        )

    def on_error(self, job: ClaimedJob, exc: BulkgenError) -> Outcome:
        attempts = job.attempts + 1
        decision = self.retry.decide(
            exc,
            attempts=attempts,
            rate_limited_s=job.rate_limited_ms / 1000,
            grew_max_tokens=job.max_tokens_grown,
        )
        message = f"{type(exc).__name__}: {exc}"
        burnt = 1 if decision.burns_attempt else 0
        if decision.action == "fail":
            self.metrics.inc("jobs.failed", error_kind=decision.error_kind)
            logger.error(
                "job.failed",
                extra={
                    "job_id": job.id,
                    "attempts": job.attempts + burnt,
                    "error_kind": decision.error_kind,
                    "error": message,
                },
            )
            return FailedRow(job.id, JobStatus.FAILED, burnt, decision.error_kind, message)
        self.metrics.inc(
            "jobs.retried" if burnt else "jobs.snoozed", error_kind=decision.error_kind
        )
        snoozed_ms = 0 if burnt else int(decision.delay_s * 1000)
        return RetryRow(
            job.id,
            decision.delay_s,
            burnt,
            snoozed_ms,
            decision.grow_max_tokens,
            decision.error_kind,
            message,
        )


def done_row(
    job: ClaimedJob,
    article: Article,
    result: CachedResult,
    *,
    key: str | None,
    cached: bool,
    calls: int = 0,
    batch_api: bool = False,
) -> DoneRow:
    """The ``done`` outcome of ``job``: its formatted article and the answer's usage."""
    return DoneRow(
        job_id=job.id,
        content=article.markdown,
        html=article.html,
        title=article.title,
        word_count=article.word_count,
        finish_reason=result.finish_reason,
        model=result.model,
        cached=cached,
        prompt_tokens=result.usage.prompt_tokens,
        completion_tokens=result.usage.completion_tokens,
        cache_key=key,
        cache_read_tokens=result.usage.cache_read_tokens,
        calls=calls,
        batch_api=batch_api,
    )


def _billed(outcome: Outcome, receipt: Receipt) -> Outcome:
    """A job that fails after a billed answer (empty, truncated) keeps that answer's tokens,
    so its cost shows in the batch's accounting; retried attempts are not kept per job."""
    if isinstance(outcome, FailedRow) and receipt.usage is not None:
        return dataclasses.replace(
            outcome,
            prompt_tokens=receipt.usage.prompt_tokens,
            completion_tokens=receipt.usage.completion_tokens,
            cache_read_tokens=receipt.usage.cache_read_tokens,
        )
    return outcome
