"""``GET /v1/batches/{id}/events``: a batch's progress as server-sent events.

The stream polls the database, not the workers: one cheap statement per poll
(:meth:`~bulkgen.db.store.Store.batch_counts`, the batch's rows grouped by status), so it
shows the same thing whichever process runs the jobs, and an API process holds no state a
load balancer would have to pin. It sends

- ``event: progress`` whenever the figures changed since the last one (the first poll always
  sends one), with the rate measured between that sample and the previous one, the tokens
  so far and the 429 share of the batch's provider requests;
- ``: keep-alive`` comment lines when nothing was sent for ``events_keepalive_s``, so a
  proxy's idle timeout does not cut a long, quiet batch;
- one ``event: end`` when no job is queued or running any more; then the stream closes.

A client that goes away cancels the response's task (Starlette listens for the
disconnect), which ends the poll loop where it sleeps: nothing keeps polling for nobody.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from bulkgen.api.batches import BatchId, owned_batch
from bulkgen.api.deps import CallerDep, ServicesDep
from bulkgen.api.schemas import ErrorResponse
from bulkgen.api.settings import ApiSettings
from bulkgen.batch_status import counts_by_status, is_finished, pending, share_429
from bulkgen.db.store import StatusCount, Store

__all__ = ["Figures", "ProgressSample", "progress_events", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["batches"])

KEEP_ALIVE = ": keep-alive\n\n"


@dataclass(frozen=True, slots=True)
class Figures:
    """What else the same statement reads: tokens so far and the provider's answers."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    provider_requests: int = 0
    provider_429s: int = 0

    @classmethod
    def of(cls, rows: list[StatusCount]) -> Figures:
        return cls(
            prompt_tokens=sum(r.prompt_tokens for r in rows),
            completion_tokens=sum(r.completion_tokens for r in rows),
            provider_requests=sum(r.provider_calls for r in rows),
            provider_429s=sum(r.provider_429s for r in rows),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "provider_requests": self.provider_requests,
            "provider_429s": self.provider_429s,
            "provider_429_share": share_429(self.provider_requests, self.provider_429s),
        }


@dataclass(frozen=True, slots=True)
class ProgressSample:
    """Counts per status at one moment (``at_s`` on a monotonic clock)."""

    counts: dict[str, int]
    at_s: float
    figures: Figures = Figures()

    @property
    def done(self) -> int:
        """Jobs that will not run again: done, failed or cancelled."""
        return self.counts["done"] + self.counts["failed"] + self.counts["cancelled"]

    @property
    def finished(self) -> bool:
        return is_finished(self.counts)

    def rate_since(self, previous: ProgressSample | None) -> float | None:
        """Jobs finished per second between ``previous`` and this sample; None without one.

        Cancelled jobs are left out: cancelling a queued batch ends thousands of jobs in
        one statement, which says nothing about how fast jobs run."""
        if previous is None or self.at_s <= previous.at_s:
            return None
        ran = self.done - self.counts["cancelled"]
        ran_before = previous.done - previous.counts["cancelled"]
        return max(0, ran - ran_before) / (self.at_s - previous.at_s)

    def payload(self, total: int, rate: float | None) -> dict[str, Any]:
        left = pending(self.counts)
        eta_s = left / rate if rate and left else (0.0 if not left else None)
        return {
            "counts": self.counts,
            "finished": self.finished,
            "done": self.done,
            "total": total,
            "rate_jobs_per_s": None if rate is None else round(rate, 3),
            "eta_s": None if eta_s is None else round(eta_s, 1),
            **self.figures.as_dict(),
        }

    def changed_since(self, previous: ProgressSample | None) -> bool:
        return previous is None or (self.counts, self.figures) != (
            previous.counts,
            previous.figures,
        )


def sse_event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def progress_events(
    store: Store,
    batch_id: uuid.UUID,
    total: int,
    *,
    interval_s: float,
    keepalive_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[str]:
    """The event stream of one batch, as text chunks ready to send."""
    previous: ProgressSample | None = None
    last_sent_s = clock()
    try:
        while True:
            rows = await store.batch_counts(batch_id)
            counts = counts_by_status({r.status: r.jobs for r in rows})
            sample = ProgressSample(counts, clock(), Figures.of(rows))
            if sample.changed_since(previous):
                yield sse_event("progress", sample.payload(total, sample.rate_since(previous)))
                previous, last_sent_s = sample, sample.at_s
            if sample.finished:
                yield sse_event("end", {**sample.payload(total, None), "status": _final(sample)})
                return
            if sample.at_s - last_sent_s >= keepalive_s:
                yield KEEP_ALIVE
                last_sent_s = sample.at_s
            await asyncio.sleep(interval_s)
    finally:
        logger.info("api.events.closed", extra={"batch_id": str(batch_id)})


def _final(sample: ProgressSample) -> str:
    """One word for how the batch ended: the status that every job shares, or "mixed"."""
    ended = [s for s in ("done", "failed", "cancelled") if sample.counts[s]]
    return ended[0] if len(ended) == 1 else ("empty" if not ended else "mixed")


_EVENTS_CONTENT = {
    "text/event-stream": {
        # Before OpenAPI 3.2 a stream's `schema` describes each event, not the whole text.
        "schema": {
            "type": "object",
            "description": "One event: `progress` or, last, `end`; `data` is a JSON object.",
            "properties": {
                "event": {"type": "string", "enum": ["progress", "end"]},
                "data": {"type": "string"},
            },
        },
        "example": 'event: progress\ndata: {"counts":{"queued":3,"generating":2,"done":5,'
        '"failed":0,"cancelled":0},"finished":false,"done":5,"total":10,'
        '"rate_jobs_per_s":2.5,"eta_s":2.0,"prompt_tokens":450,"completion_tokens":4100,'
        '"provider_requests":6,"provider_429s":1,"provider_429_share":0.1667}\n\n'
        ": keep-alive\n\n"
        'event: end\ndata: {"counts":{...},"finished":true,"done":10,"total":10,'
        '"rate_jobs_per_s":null,"eta_s":0.0,...,"status":"done"}\n\n',
    }
}


@router.get(
    "/batches/{batch_id}/events",
    response_class=StreamingResponse,
    summary="Follow a batch's progress as server-sent events",
    responses={
        200: {"description": "Progress events, then one `end` event.", "content": _EVENTS_CONTENT},
        **{
            s: {"model": ErrorResponse, "description": d}
            for s, d in (
                (401, "No API key, or one that is wrong, rotated or revoked."),
                (404, "No such batch for this account."),
                (422, "The request is invalid; `field` says where."),
                (503, "The database is unavailable for a moment."),
            )
        },
    },
)
async def batch_events(
    batch_id: BatchId, request: Request, services: ServicesDep, caller: CallerDep
) -> StreamingResponse:
    """A `progress` event whenever the figures change (counts per status, done/total, the
    rate in jobs/s since the previous event and an ETA, tokens so far, provider requests
    and how many were answered 429), `: keep-alive` comments while
    nothing changes, and a final `end` event (with `status`: done, failed, cancelled or
    mixed) when no job is queued or running; then the stream ends."""
    record = await owned_batch(services, caller, batch_id)
    limits: ApiSettings = request.app.state.api_settings
    body = progress_events(
        services.store,
        batch_id,
        record.total,
        interval_s=limits.events_interval_s,
        keepalive_s=limits.events_keepalive_s,
    )
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body, media_type="text/event-stream", headers=headers)
