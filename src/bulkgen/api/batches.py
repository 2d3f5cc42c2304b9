"""``/v1/batches``: submit, list, read, page through jobs, download, cancel, retry.

Every route reads the batch through :mod:`bulkgen.db.account_scope` with the caller's
account id first, so another account's batch answers 404 exactly like a missing one.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import Field

from bulkgen.accounts import Caller
from bulkgen.api.cursors import (
    decode_batch_cursor,
    decode_job_cursor,
    encode_batch_cursor,
    encode_job_cursor,
)
from bulkgen.api.deps import CallerDep, ServicesDep
from bulkgen.api.errors import ApiError
from bulkgen.api.schemas import (
    BatchCreated,
    BatchDetail,
    BatchPage,
    BatchRequest,
    BatchSummary,
    CancelResult,
    ErrorResponse,
    JobPage,
    JobStatusName,
    JobSummary,
    RetryResult,
)
from bulkgen.api.settings import ApiSettings
from bulkgen.api.submit import read_draft, validate_draft
from bulkgen.batch_status import read_batch_status
from bulkgen.db.account_scope import (
    batch_of_account,
    batch_retry_failed,
    batches_page,
    batches_status_counts,
    jobs_page,
)
from bulkgen.db.batch_rate import batch_recent_rate
from bulkgen.db.idempotency import IdempotencyKey, check_replay, idempotency_key_get
from bulkgen.db.store import BatchRecord
from bulkgen.export import csv_lines, jsonl_line
from bulkgen.service import Services

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["batches"])


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        401: "No API key, or one that is wrong, rotated or revoked.",
        404: "No such batch for this account.",
        409: "The batch's state refuses the request.",
        413: "The request body is larger than the limit.",
        415: "The body is neither JSON nor a multipart upload.",
        422: "The request is invalid; `row` and `field` say where.",
        503: "The database is unavailable for a moment.",
    }
    return {s: {"model": ErrorResponse, "description": described[s]} for s in statuses}


BatchId = Annotated[uuid.UUID, Field(description="The batch's id, as returned on submit.")]
IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Any unique string per intended batch: a retried request with the same "
        "key and body returns the first one's batch instead of creating another.",
    ),
]


async def owned_batch(services: Services, caller: Caller, batch_id: uuid.UUID) -> BatchRecord:
    record = await batch_of_account(services.store, caller.id, batch_id)
    if record is None:
        raise ApiError(404, "not_found", f"no batch {batch_id}")
    return record


def _upload_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": {
                "type": "string",
                "format": "binary",
                "description": "CSV with a keyword column, or JSONL (.csv, .jsonl, .ndjson).",
            },
            "options": {"type": "string", "description": "Batch options as a JSON object."},
            "template": {"type": "string"},
            "budget_usd": {"type": "string", "description": "Spending cap in USD."},
            "mode": {"type": "string", "enum": ["online", "economy"]},
            "deadline_h": {"type": "string", "description": "Economy mode: hours it may take."},
            "fallback_online": {"type": "string", "enum": ["true", "false"]},
        },
    }


_SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": BatchRequest.model_json_schema(
                    ref_template="#/components/schemas/{model}"
                )
            },
            "multipart/form-data": {"schema": _upload_schema()},
        },
    }
}


@router.post(
    "/batches",
    status_code=201,
    response_model=BatchCreated,
    summary="Submit a batch",
    openapi_extra=_SUBMIT_BODY,
    responses={
        200: {"model": BatchCreated, "description": "A replay of an earlier identical request."},
        **_errors(401, 409, 413, 415, 422, 503),
    },
)
async def submit_batch(
    request: Request,
    response: Response,
    services: ServicesDep,
    caller: CallerDep,
    idempotency_key: IdempotencyHeader = None,
) -> BatchCreated:
    """Validate the whole batch (nothing is enqueued if any item is invalid), then enqueue
    it in one transaction. With an `Idempotency-Key`, repeating the request is safe."""
    limits: ApiSettings = request.app.state.api_settings
    draft = await read_draft(request)
    claim = None
    if idempotency_key is not None:
        claim = IdempotencyKey(idempotency_key, draft.request_hash)
        stored = await idempotency_key_get(services.store, caller.id, idempotency_key)
        if stored is not None:
            return await _replayed(services, caller, check_replay(stored, claim), response)
    rows, options = validate_draft(draft, limits, services.settings)
    batch_id = await services.submit(
        rows,
        options,
        account=caller.name,
        budget_usd=draft.budget_usd,
        idempotency=claim,
        mode=draft.mode,
        deadline_h=draft.deadline_h,
        fallback_online=draft.fallback_online,
    )
    response.headers["Location"] = f"/v1/batches/{batch_id}"
    return BatchCreated(id=batch_id, total=len(rows), replayed=False, url=f"/v1/batches/{batch_id}")


async def _replayed(
    services: Services, caller: Caller, batch_id: uuid.UUID, response: Response
) -> BatchCreated:
    record = await owned_batch(services, caller, batch_id)
    response.status_code = 200
    response.headers["Location"] = f"/v1/batches/{batch_id}"
    return BatchCreated(
        id=batch_id, total=record.total, replayed=True, url=f"/v1/batches/{batch_id}"
    )


@router.get(
    "/batches",
    response_model=BatchPage,
    summary="List batches, newest first",
    responses=_errors(401, 422, 503),
)
async def list_batches(
    services: ServicesDep,
    caller: CallerDep,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> BatchPage:
    before = decode_batch_cursor(cursor) if cursor is not None else None
    records = await batches_page(services.store, caller.id, before=before, limit=limit + 1)
    page, more = records[:limit], len(records) > limit
    counts = await batches_status_counts(services.store, [r.id for r in page])
    return BatchPage(
        items=[BatchSummary.of(r, counts[r.id]) for r in page],
        next_cursor=encode_batch_cursor(page[-1].created_at, page[-1].id) if more else None,
    )


@router.get(
    "/batches/{batch_id}",
    response_model=BatchDetail,
    summary="A batch's progress, usage, cost and errors",
    responses=_errors(401, 404, 422, 503),
)
async def get_batch(batch_id: BatchId, services: ServicesDep, caller: CallerDep) -> BatchDetail:
    """The same figures as `bulkgen status`: counts per status, tokens, cost, cache hits
    and savings, and errors by kind; with the current rate (jobs that ended in the last
    minute, from their finish times) and the ETA of the jobs left at that rate."""
    record = await owned_batch(services, caller, batch_id)
    status = await read_batch_status(services.store, record, services.prices)
    return BatchDetail.of(status, await batch_recent_rate(services.store, batch_id))


@router.get(
    "/batches/{batch_id}/jobs",
    response_model=JobPage,
    summary="A batch's jobs, in order",
    responses=_errors(401, 404, 422, 503),
)
async def list_jobs(
    batch_id: BatchId,
    services: ServicesDep,
    caller: CallerDep,
    status: JobStatusName | None = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobPage:
    await owned_batch(services, caller, batch_id)
    after = decode_job_cursor(cursor) if cursor is not None else 0
    jobs = await jobs_page(
        services.store, caller.id, batch_id, status=status, after_id=after, limit=limit + 1
    )
    page, more = jobs[:limit], len(jobs) > limit
    return JobPage(
        items=[JobSummary.of(j) for j in page],
        next_cursor=encode_job_cursor(page[-1].id) if more else None,
    )


_RESULTS_CONTENT = {
    "application/x-ndjson": {
        "schema": {"type": "string"},
        "example": '{"id": 41, "input": {"keyword": "cold brew"}, "status": "done", ...}\n',
    },
    "text/csv": {
        "schema": {"type": "string"},
        "example": "id,keyword,status,title,...\r\n41,cold brew,done,Cold Brew at Home,...\r\n",
    },
}


@router.get(
    "/batches/{batch_id}/results",
    response_class=StreamingResponse,
    summary="Download every job with its article or error",
    responses={
        200: {"description": "One line per job, in job order.", "content": _RESULTS_CONTENT},
        **_errors(401, 404, 422, 503),
    },
)
async def batch_results(
    batch_id: BatchId,
    services: ServicesDep,
    caller: CallerDep,
    format: Literal["jsonl", "csv"] = "jsonl",
) -> StreamingResponse:
    """Streamed page by page from the database, never held whole: any batch size fits.
    CSV cells that a spreadsheet would run as a formula start with an apostrophe."""
    await owned_batch(services, caller, batch_id)
    rows = services.store.results_iter(batch_id)
    body: AsyncIterator[str]
    if format == "csv":
        body, media = csv_lines(rows), "text/csv; charset=utf-8"
    else:
        body, media = (jsonl_line(row) async for row in rows), "application/x-ndjson"
    disposition = f'attachment; filename="batch-{batch_id}.{format}"'
    return StreamingResponse(body, media_type=media, headers={"Content-Disposition": disposition})


@router.post(
    "/batches/{batch_id}/cancel",
    response_model=CancelResult,
    summary="Cancel a batch",
    responses=_errors(401, 404, 422, 503),
)
async def cancel_batch(batch_id: BatchId, services: ServicesDep, caller: CallerDep) -> CancelResult:
    """Queued jobs end at once; running ones end when their provider call returns.
    Cancelling twice is harmless."""
    await owned_batch(services, caller, batch_id)
    return CancelResult(batch_id=batch_id, cancelled=await services.store.batch_cancel(batch_id))


@router.post(
    "/batches/{batch_id}/retry",
    response_model=RetryResult,
    summary="Retry a batch's failed jobs",
    responses=_errors(401, 404, 409, 422, 503),
)
async def retry_batch(batch_id: BatchId, services: ServicesDep, caller: CallerDep) -> RetryResult:
    """Failed jobs (only those) go back to the queue with fresh attempts. A cancelled batch
    answers 409: its cancel sticks."""
    requeued = await batch_retry_failed(services.store, caller.id, batch_id)
    if requeued is None:
        raise ApiError(404, "not_found", f"no batch {batch_id}")
    return RetryResult(batch_id=batch_id, requeued=requeued)
