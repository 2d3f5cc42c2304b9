"""What the API accepts and answers, as pydantic models: the OpenAPI schema is built from
these, with an example for each. Money is a decimal string, never a float, so no cent is
rounded away; times are ISO 8601 with a time zone."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bulkgen.accounting import BatchUsage
from bulkgen.batch_status import BatchStatus, counts_by_status, is_finished, pending
from bulkgen.db.account_scope import ArticleRow, JobDetailRow, JobRow
from bulkgen.db.store import BatchRecord
from bulkgen.models import BatchMode

__all__ = [
    "Article",
    "BatchCreated",
    "BatchDetail",
    "BatchPage",
    "BatchRequest",
    "BatchSummary",
    "Budget",
    "CancelResult",
    "ErrorResponse",
    "Health",
    "JobDetail",
    "JobPage",
    "JobStatusName",
    "JobSummary",
    "Readiness",
    "RetryResult",
]

JobStatusName = Literal["queued", "generating", "batched", "done", "failed", "cancelled"]
Budget = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=6)]
DeadlineHours = Annotated[float, Field(gt=0, le=24 * 365)]

_BATCH_ID = "0f8e7a52-6f3c-4c55-9d2e-2f4b8f0c1a77"
_CREATED = "2025-01-15T10:30:00Z"


def _examples(*examples: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": list(examples)})


class ErrorDetail(BaseModel):
    kind: str = Field(description="A stable, machine-readable name of what went wrong.")
    message: str = Field(description="What went wrong, for people.")
    row: int | None = Field(None, description="1-based item (row) the error is about.")
    field: str | None = Field(None, description="The field or option the error is about.")


class ErrorResponse(BaseModel):
    model_config = _examples(
        {
            "error": {
                "kind": "invalid_input",
                "message": "row 2, field 'keyword': keyword is empty",
                "row": 2,
                "field": "keyword",
            }
        }
    )
    error: ErrorDetail


class BatchRequest(BaseModel):
    """A batch to enqueue. Items are keywords, or objects like the rows of a JSONL file:
    a ``keyword``, template variables, and per-row option overrides."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        "sourdough starter",
                        {"keyword": "cold brew", "audience": "baristas", "tone": "playful"},
                    ],
                    "options": {"model": "gpt-4o", "tone": "friendly", "target_words": 600},
                    "budget_usd": "5.00",
                }
            ]
        },
    )
    items: list[Any] = Field(
        description="1 to 10,000 keywords (strings) or objects with a `keyword` field.",
        json_schema_extra={"items": {"anyOf": [{"type": "string"}, {"type": "object"}]}},
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Batch options: model, tone, language, target_words, max_tokens, "
        "temperature (and template).",
    )
    template: str | None = Field(None, description="A Jinja2 prompt template for every item.")
    budget_usd: Budget | None = Field(None, description="Spending cap for the batch, in USD.")
    mode: BatchMode = Field(
        BatchMode.ONLINE,
        description="online: one call per job, as fast as the rate limits allow. economy: "
        "through the provider's Batch API, at half the price, within a day.",
    )
    deadline_h: DeadlineHours | None = Field(
        None,
        description="With fallback_online: hours after which what is still missing runs "
        "online (default: the server's BULKGEN_ECONOMY_DEADLINE_H, 24).",
    )
    fallback_online: bool = Field(
        False, description="Economy mode: at the deadline, run what is still missing online."
    )


class BatchCreated(BaseModel):
    model_config = _examples(
        {"id": _BATCH_ID, "total": 2, "replayed": False, "url": f"/v1/batches/{_BATCH_ID}"}
    )
    id: uuid.UUID
    total: int = Field(description="Jobs enqueued: one per item.")
    replayed: bool = Field(
        description="True when an Idempotency-Key matched an earlier identical request: "
        "this is that request's batch, and nothing new was enqueued."
    )
    url: str


class JobCounts(BaseModel):
    queued: int = 0
    generating: int = 0
    batched: int = Field(
        default=0, description="Economy mode: waiting for or held by a provider batch."
    )
    done: int = 0
    failed: int = 0
    cancelled: int = 0


_COUNTS_EXAMPLE = {"queued": 0, "generating": 1, "done": 1, "failed": 0, "cancelled": 0}


_SUMMARY_EXAMPLE: dict[str, Any] = {
    "id": _BATCH_ID,
    "created_at": _CREATED,
    "cancelled_at": None,
    "total": 2,
    "mode": "online",
    "finished": False,
    "counts": _COUNTS_EXAMPLE,
    "options": {"model": "gpt-4o", "tone": "friendly"},
    "budget_usd": "5.000000",
}


class BatchSummary(BaseModel):
    model_config = _examples(_SUMMARY_EXAMPLE)
    id: uuid.UUID
    created_at: datetime
    cancelled_at: datetime | None
    total: int
    mode: BatchMode = BatchMode.ONLINE
    finished: bool = Field(description="No job is queued or running any more.")
    counts: JobCounts
    options: dict[str, Any]
    budget_usd: str | None

    @classmethod
    def of(cls, record: BatchRecord, jobs_by_status: dict[str, int]) -> BatchSummary:
        counts = counts_by_status(jobs_by_status)
        return cls(
            id=record.id,
            created_at=record.created_at,
            cancelled_at=record.cancelled_at,
            total=record.total,
            mode=BatchMode(record.mode),
            finished=is_finished(counts),
            counts=JobCounts.model_validate(counts),
            options=record.options,
            budget_usd=None if record.budget_usd is None else str(record.budget_usd),
        )


class BatchPage(BaseModel):
    model_config = _examples({"items": [_SUMMARY_EXAMPLE], "next_cursor": None})
    items: list[BatchSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class UsageReport(BaseModel):
    paid_jobs: int
    paid_prompt_tokens: int
    paid_completion_tokens: int
    cost_usd: str
    failed_cost_usd: str
    cache_hits: int
    cached_prompt_tokens: int
    cached_completion_tokens: int
    saved_usd: str
    economy_saved_usd: str = Field(
        "0",
        description="What the jobs answered through the provider's Batch API would have "
        "cost online, less what they cost.",
    )
    unpriced_models: list[str]

    @classmethod
    def of(cls, usage: BatchUsage) -> UsageReport:
        return cls.model_validate(usage.as_dict())


class ErrorKind(BaseModel):
    kind: str
    jobs: int
    example: str


class BatchDetail(BaseModel):
    model_config = _examples(
        {
            "id": _BATCH_ID,
            "account": "acme",
            "created_at": _CREATED,
            "cancelled_at": None,
            "cancel_reason": None,
            "total": 2,
            "mode": "online",
            "deadline_at": None,
            "finished": True,
            "counts": {"queued": 0, "generating": 0, "done": 2, "failed": 0, "cancelled": 0},
            "prompt_tokens": 180,
            "completion_tokens": 1650,
            "cached": 0,
            "usage": {
                "paid_jobs": 2,
                "paid_prompt_tokens": 180,
                "paid_completion_tokens": 1650,
                "cost_usd": "0.016950",
                "failed_cost_usd": "0",
                "cache_hits": 0,
                "cached_prompt_tokens": 0,
                "cached_completion_tokens": 0,
                "saved_usd": "0",
                "economy_saved_usd": "0",
                "unpriced_models": [],
            },
            "budget_usd": "5.000000",
            "errors": [],
            "options": {"model": "gpt-4o", "tone": "friendly"},
            "template_version": "3f1c2a9b0d4e5f60",
            "rate_jobs_per_s": None,
            "eta_s": 0.0,
            "provider_requests": 3,
            "provider_429s": 1,
            "provider_429_share": 0.3333,
        }
    )
    id: uuid.UUID
    account: str
    created_at: datetime
    cancelled_at: datetime | None
    cancel_reason: str | None
    total: int
    mode: BatchMode = Field(description="online, or economy (the provider's Batch API).")
    deadline_at: datetime | None = Field(
        description="Economy mode: when what is still missing goes online, if asked."
    )
    finished: bool
    counts: JobCounts
    prompt_tokens: int
    completion_tokens: int
    cached: int = Field(description="Jobs answered from the result cache.")
    usage: UsageReport
    budget_usd: str | None
    errors: list[ErrorKind] = Field(description="Failed and cancelled jobs by error kind.")
    options: dict[str, Any]
    template_version: str
    rate_jobs_per_s: float | None = Field(
        description="Jobs ending per second over the last minute (done or failed); null "
        "when fewer than two ended in it."
    )
    eta_s: float | None = Field(
        description="Seconds until no job is left to run at that rate: 0 once finished, "
        "null while there is no rate to go by."
    )
    provider_requests: int = Field(
        description="Requests its jobs sent to the provider, retries included (cache hits "
        "and shared answers send none)."
    )
    provider_429s: int = Field(description="Of those, the ones answered 429.")
    provider_429_share: float | None = Field(
        description="provider_429s / provider_requests; null before the first request."
    )

    @classmethod
    def of(cls, status: BatchStatus, rate_jobs_per_s: float | None = None) -> BatchDetail:
        record = status.record
        left = pending(status.counts)
        eta_s = left / rate_jobs_per_s if left and rate_jobs_per_s else None
        return cls(
            id=record.id,
            account=record.account,
            created_at=record.created_at,
            cancelled_at=record.cancelled_at,
            cancel_reason=record.cancel_reason,
            total=record.total,
            mode=BatchMode(record.mode),
            deadline_at=record.deadline_at,
            finished=status.finished,
            counts=JobCounts.model_validate(status.counts),
            prompt_tokens=status.prompt_tokens,
            completion_tokens=status.completion_tokens,
            cached=status.cached,
            usage=UsageReport.of(status.usage),
            budget_usd=None if record.budget_usd is None else str(record.budget_usd),
            errors=[ErrorKind(kind=e.kind, jobs=e.jobs, example=e.example) for e in status.errors],
            options=record.options,
            template_version=record.template_version,
            rate_jobs_per_s=None if rate_jobs_per_s is None else round(rate_jobs_per_s, 3),
            eta_s=0.0 if not left else (None if eta_s is None else round(eta_s, 1)),
            provider_requests=status.provider_requests,
            provider_429s=status.provider_429s,
            provider_429_share=status.provider_429_share,
        )


class JobError(BaseModel):
    kind: str
    message: str | None


_JOB_EXAMPLE: dict[str, Any] = {
    "id": 41,
    "batch_id": _BATCH_ID,
    "keyword": "cold brew",
    "status": "done",
    "attempts": 1,
    "cached": False,
    "prompt_tokens": 90,
    "completion_tokens": 820,
    "error": None,
    "created_at": _CREATED,
    "finished_at": "2025-01-15T10:30:09Z",
}


class JobSummary(BaseModel):
    model_config = _examples(_JOB_EXAMPLE)
    id: int
    batch_id: uuid.UUID
    keyword: str
    status: str
    attempts: int
    cached: bool
    prompt_tokens: int | None
    completion_tokens: int | None
    error: JobError | None = Field(description="The last error, if the job met one.")
    created_at: datetime
    finished_at: datetime | None

    @staticmethod
    def fields_of(job: JobRow) -> dict[str, Any]:
        return {
            "id": job.id,
            "batch_id": job.batch_id,
            "keyword": job.input.get("keyword", ""),
            "status": job.status,
            "attempts": job.attempts,
            "cached": job.cached,
            "prompt_tokens": job.prompt_tokens,
            "completion_tokens": job.completion_tokens,
            "error": None
            if job.error_kind is None
            else JobError(kind=job.error_kind, message=job.error_message),
            "created_at": job.created_at,
            "finished_at": job.finished_at,
        }

    @classmethod
    def of(cls, job: JobRow) -> JobSummary:
        return cls(**cls.fields_of(job))


class JobPage(BaseModel):
    model_config = _examples({"items": [_JOB_EXAMPLE], "next_cursor": "eyJhZnRlciI6IDQxfQ"})
    items: list[JobSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class Article(BaseModel):
    title: str
    content: str = Field(description="The article as Markdown.")
    html: str = Field(description="The article as sanitized HTML.")
    word_count: int
    finish_reason: str
    model: str

    @classmethod
    def of(cls, article: ArticleRow) -> Article:
        return cls(
            title=article.title,
            content=article.content,
            html=article.html,
            word_count=article.word_count,
            finish_reason=article.finish_reason,
            model=article.model,
        )


class JobDetail(JobSummary):
    model_config = _examples(
        {
            **_JOB_EXAMPLE,
            "variables": {"audience": "baristas"},
            "overrides": {"tone": "playful"},
            "article": {
                "title": "Cold Brew at Home",
                "content": "# Cold Brew at Home\n\nCold brew is ...",
                "html": "<h1>Cold Brew at Home</h1>\n<p>Cold brew is ...</p>",
                "word_count": 612,
                "finish_reason": "stop",
                "model": "gpt-4o",
            },
        }
    )
    variables: dict[str, str]
    overrides: dict[str, Any]
    article: Article | None = Field(description="The article of a done job; null otherwise.")

    @classmethod
    def of_detail(cls, detail: JobDetailRow) -> JobDetail:
        job = detail.job
        return cls(
            **cls.fields_of(job),
            variables=job.input.get("variables") or {},
            overrides=job.input.get("overrides") or {},
            article=None if detail.article is None else Article.of(detail.article),
        )


class CancelResult(BaseModel):
    model_config = _examples({"batch_id": _BATCH_ID, "cancelled": 1998})
    batch_id: uuid.UUID
    cancelled: int = Field(
        description="Queued jobs cancelled now; running ones end when their call returns."
    )


class RetryResult(BaseModel):
    model_config = _examples({"batch_id": _BATCH_ID, "requeued": 3})
    batch_id: uuid.UUID
    requeued: int = Field(description="Failed jobs put back in the queue with fresh attempts.")


class Health(BaseModel):
    model_config = _examples({"status": "ok"})
    status: Literal["ok"]


class Readiness(BaseModel):
    model_config = _examples(
        {"status": "ok", "checks": {"database": "ok", "redis": "not configured"}}
    )
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]
