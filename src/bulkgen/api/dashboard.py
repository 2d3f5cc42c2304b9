"""The dashboard: server-rendered pages over the same accounts, batches and jobs as ``/v1``.

Signing in stores the API key in a cookie that is ``HttpOnly`` (no script reads it),
``SameSite=Strict`` (no other site's page sends it) and ``Secure`` when the request came
over TLS. Every page checks it with the API's own rules: :func:`bulkgen.accounts.authenticate`
for the key, :func:`bulkgen.api.deps.admit` for the account's request rate, and the
account-scoped queries of :mod:`bulkgen.db.account_scope`, so another account's batch is
"not found" here exactly as in the API.

The ``/v1`` routes accept only the ``Authorization`` header, never the cookie: the API's
contract stays what its OpenAPI schema says. The browser instead reaches the few things it
needs through dashboard routes of its own: ``/batches/{id}/events`` (the API's event stream
for a cookie holder), ``/batches/{id}/figures`` (the batch's figures as JSON, read again
while it runs) and ``POST /batches/{id}/retry``. Every POST here also checks that the
request comes from this very origin (``Origin`` or ``Sec-Fetch-Site``), besides the
``SameSite=Strict`` cookie, so a form on another site cannot act for the account.

Pages carry a Content Security Policy that allows only this origin's scripts and styles and
no inline code; a stored article is sanitized HTML, and the policy is a second wall.
"""

from __future__ import annotations

import uuid
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from bulkgen.accounts import Caller, authenticate
from bulkgen.api.batches import BatchId, owned_batch
from bulkgen.api.deps import ServicesDep, admit
from bulkgen.api.errors import ApiError
from bulkgen.api.events import batch_events
from bulkgen.api.jobs import JobId
from bulkgen.api.schemas import BatchDetail, BatchSummary, JobDetail, JobSummary
from bulkgen.batch_status import read_batch_status
from bulkgen.db.account_scope import (
    batch_retry_failed,
    batches_page,
    batches_status_counts,
    job_of_account,
    jobs_page,
)
from bulkgen.db.batch_rate import batch_recent_rate
from bulkgen.service import Services

__all__ = ["SESSION_COOKIE", "mount_dashboard", "router"]

SESSION_COOKIE = "bulkgen_session"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
_HERE = Path(__file__).parent
_BATCHES_SHOWN = 50
_JOBS_SHOWN = 100  # per list on a batch's page; the API pages through the rest

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=_HERE / "templates")


def _usd(value: str | Decimal | None) -> str:
    """Money for people: a dollar sign and four decimals (cents hide the cost of one job)."""
    if value is None:
        return "-"
    try:
        return f"${Decimal(value):,.4f}"
    except InvalidOperation:
        return str(value)


templates.env.filters["usd"] = _usd


def mount_dashboard(app: Any) -> None:
    """Add the dashboard's pages and its static files to ``app``."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=_HERE / "static"), name="static")


def _page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


async def _session_caller(request: Request) -> Caller | None:
    """The account whose key the session cookie holds, charged one request; None when
    there is no cookie or its key is no longer valid (rotated, revoked)."""
    key = request.cookies.get(SESSION_COOKIE)
    if not key:
        return None
    caller = await authenticate(request.app.state.services.store, key)
    if caller is not None:
        await admit(request, caller)
    return caller


def _same_origin(request: Request) -> bool:
    """Whether a state-changing request was sent by a page of this very site."""
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        return urlsplit(origin).netloc == request.headers.get("host")
    return request.headers.get("sec-fetch-site") == "same-origin"


def _require_same_origin(request: Request) -> None:
    if not _same_origin(request):
        raise ApiError(403, "forbidden", "cross-site request refused")


def _to_sign_in() -> RedirectResponse:
    return RedirectResponse("/", status_code=303)


@router.get("/", response_class=HTMLResponse)
async def home(request: Request, services: ServicesDep) -> Response:
    """The account's batches, newest first; the sign-in form without a valid session."""
    caller = await _session_caller(request)
    if caller is None:
        return _page(request, "sign_in.html", error=None)
    records = await batches_page(services.store, caller.id, before=None, limit=_BATCHES_SHOWN)
    counts = await batches_status_counts(services.store, [r.id for r in records])
    batches = [BatchSummary.of(r, counts[r.id]) for r in records]
    return _page(request, "batches.html", caller=caller, batches=batches)


@router.post("/session")
async def sign_in(
    request: Request, services: ServicesDep, key: Annotated[str, Form(max_length=200)] = ""
) -> Response:
    """Check the key once and keep it in the session cookie; a wrong key shows the form
    again with the reason and sets nothing."""
    _require_same_origin(request)
    caller = await authenticate(services.store, key.strip())
    if caller is None:
        error = "That API key is not valid: it is wrong, or it was rotated or revoked."
        return _page(request, "sign_in.html", status_code=401, error=error)
    response = _to_sign_in()
    response.set_cookie(
        SESSION_COOKIE,
        key.strip(),
        httponly=True,
        secure=request.url.scheme == "https",
        samesite="strict",
        path="/",
    )
    return response


@router.post("/session/end")
async def sign_out(request: Request) -> Response:
    _require_same_origin(request)
    response = _to_sign_in()
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


async def _batch_detail(services: Services, caller: Caller, batch_id: uuid.UUID) -> BatchDetail:
    """What the batch page shows, read the way ``GET /v1/batches/{id}`` reads it."""
    record = await owned_batch(services, caller, batch_id)
    status = await read_batch_status(services.store, record, services.prices)
    return BatchDetail.of(status, await batch_recent_rate(services.store, batch_id))


@router.get("/batches/{batch_id}", response_class=HTMLResponse)
async def batch_page(batch_id: BatchId, request: Request, services: ServicesDep) -> Response:
    """One batch: progress, usage, cost and savings, errors by kind, its failed jobs and
    links to its articles."""
    caller = await _session_caller(request)
    if caller is None:
        return _to_sign_in()
    detail = await _batch_detail(services, caller, batch_id)
    failed = await jobs_page(
        services.store, caller.id, batch_id, status="failed", after_id=0, limit=_JOBS_SHOWN
    )
    done = await jobs_page(
        services.store, caller.id, batch_id, status="done", after_id=0, limit=_JOBS_SHOWN
    )
    return _page(
        request,
        "batch.html",
        caller=caller,
        batch=detail,
        failed=[JobSummary.of(j) for j in failed],
        done_jobs=[JobSummary.of(j) for j in done],
        retried=request.query_params.get("retried"),
    )


@router.get("/batches/{batch_id}/events")
async def batch_page_events(
    batch_id: BatchId, request: Request, services: ServicesDep
) -> StreamingResponse:
    """The API's event stream of a batch, for a browser that holds the session cookie
    (``EventSource`` cannot send an ``Authorization`` header)."""
    caller = await _session_caller(request)
    if caller is None:
        raise ApiError(401, "unauthorized", "sign in first")
    return await batch_events(batch_id, request, services, caller)


@router.get("/batches/{batch_id}/figures")
async def batch_page_figures(
    batch_id: BatchId, request: Request, services: ServicesDep
) -> JSONResponse:
    """The batch's figures (what ``GET /v1/batches/{id}`` returns) for a cookie holder: the
    page reads them again while the batch runs, so cost, tokens and the 429 share move."""
    caller = await _session_caller(request)
    if caller is None:
        raise ApiError(401, "unauthorized", "sign in first")
    detail = await _batch_detail(services, caller, batch_id)
    return JSONResponse(detail.model_dump(mode="json"), headers={"Cache-Control": "no-store"})


@router.post("/batches/{batch_id}/retry")
async def batch_page_retry(batch_id: BatchId, request: Request, services: ServicesDep) -> Response:
    """Requeue the batch's failed jobs, then show the batch again with how many."""
    _require_same_origin(request)
    caller = await _session_caller(request)
    if caller is None:
        return _to_sign_in()
    requeued = await batch_retry_failed(services.store, caller.id, batch_id)
    if requeued is None:
        raise ApiError(404, "not_found", f"no batch {batch_id}")
    return RedirectResponse(f"/batches/{batch_id}?retried={requeued}", status_code=303)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(job_id: JobId, request: Request, services: ServicesDep) -> Response:
    """One job: its article as the stored sanitized HTML (never the raw Markdown), or its
    error."""
    caller = await _session_caller(request)
    if caller is None:
        return _to_sign_in()
    detail = await job_of_account(services.store, caller.id, job_id)
    if detail is None:
        raise ApiError(404, "not_found", f"no job {job_id}")
    return _page(request, "job.html", caller=caller, job=JobDetail.of_detail(detail))
