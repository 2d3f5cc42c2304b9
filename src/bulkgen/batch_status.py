"""What a batch has done so far: counts per status, tokens, cost, cache savings, errors.

One computation for every face: ``bulkgen status`` prints it, the API's
``GET /v1/batches/{id}`` returns it, so the two can never disagree about a batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bulkgen.accounting import BatchUsage
from bulkgen.db.store import BatchRecord, Store
from bulkgen.models import JobStatus
from bulkgen.pricing import PriceTable

__all__ = [
    "STATUSES",
    "BatchStatus",
    "ErrorKindCount",
    "counts_by_status",
    "is_finished",
    "pending",
    "read_batch_status",
    "share_429",
]

STATUSES = tuple(status.value for status in JobStatus)


@dataclass(frozen=True, slots=True)
class ErrorKindCount:
    kind: str
    jobs: int
    example: str  # one of the messages, to show what went wrong


@dataclass(frozen=True, slots=True)
class BatchStatus:
    record: BatchRecord
    counts: dict[str, int]  # every status of STATUSES, zero when none
    prompt_tokens: int
    completion_tokens: int
    cached: int
    usage: BatchUsage
    errors: tuple[ErrorKindCount, ...]
    provider_requests: int = 0  # sent by its jobs, over every claim that wrote an outcome
    provider_429s: int = 0  # of those, answered 429

    @property
    def finished(self) -> bool:
        return is_finished(self.counts)

    @property
    def provider_429_share(self) -> float | None:
        """The part of its provider requests answered 429; None before the first one."""
        return share_429(self.provider_requests, self.provider_429s)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (money as strings), the shape ``bulkgen status --json`` prints."""
        record = self.record
        return {
            "batch_id": str(record.id),
            "account": record.account,
            "total": record.total,
            "mode": record.mode,
            "deadline_at": None if record.deadline_at is None else record.deadline_at.isoformat(),
            **self.counts,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached": self.cached,
            **self.usage.as_dict(),
            "budget_usd": None if record.budget_usd is None else str(record.budget_usd),
            "provider_requests": self.provider_requests,
            "provider_429s": self.provider_429s,
            "provider_429_share": self.provider_429_share,
            "errors": {e.kind: e.jobs for e in self.errors},
        }


def share_429(requests: int, answered_429: int) -> float | None:
    """``answered_429`` of ``requests`` as a fraction, to four places; None without a request."""
    return round(answered_429 / requests, 4) if requests else None


def counts_by_status(jobs_by_status: Mapping[str, int]) -> dict[str, int]:
    """Every name of :data:`STATUSES` with its jobs (zero when none)."""
    by_status = dict.fromkeys(STATUSES, 0)
    for status, jobs in jobs_by_status.items():
        # Any other status is a running one: it counts with the jobs being generated.
        by_status[status if status in by_status else "generating"] += jobs
    return by_status


def pending(counts: Mapping[str, int]) -> int:
    """Jobs not finished yet: queued, running, or with a provider batch (economy mode)."""
    return counts["queued"] + counts["generating"] + counts["batched"]


def is_finished(counts: Mapping[str, int]) -> bool:
    """No job left queued or running (``counts`` as :func:`counts_by_status` gives them)."""
    return pending(counts) == 0


async def read_batch_status(
    store: Store, record: BatchRecord, prices: PriceTable | None = None
) -> BatchStatus:
    """The status of a batch already read (and, for the API, already scoped to its account)."""
    counts = await store.batch_counts(record.id)
    errors = await store.batch_errors(record.id)
    usage = await store.batch_usage(record.id, prices)
    return BatchStatus(
        record=record,
        counts=counts_by_status({c.status: c.jobs for c in counts}),
        prompt_tokens=sum(c.prompt_tokens for c in counts),
        completion_tokens=sum(c.completion_tokens for c in counts),
        cached=sum(c.cached for c in counts),
        usage=usage,
        errors=tuple(ErrorKindCount(kind, jobs, example) for kind, jobs, example in errors),
        provider_requests=sum(c.provider_calls for c in counts),
        provider_429s=sum(c.provider_429s for c in counts),
    )
