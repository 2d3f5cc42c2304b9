"""``GET /metrics``: Prometheus' text format, for the operator's monitoring.

No key, like ``/healthz``: scrapers carry no account, and nothing here names an account,
a batch or a prompt. Counters are this process's (its API and, under ``bulkgen serve``,
its worker); the job gauges are the whole database's.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from bulkgen.api.deps import ServicesDep
from bulkgen.api.exporter import Exporter
from bulkgen.db.job_gauges import jobs_active_counts
from bulkgen.errors import StorageError

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

_READ_TIMEOUT_S = 2.0
_EXAMPLE = """\
# HELP bulkgen_jobs_done_total Counter jobs.done.
# TYPE bulkgen_jobs_done_total counter
bulkgen_jobs_done_total{cached="False"} 42.0
# HELP bulkgen_jobs Unfinished jobs by status, in the whole database (every worker's).
# TYPE bulkgen_jobs gauge
bulkgen_jobs{status="queued"} 158.0
bulkgen_jobs{status="generating"} 8.0
bulkgen_jobs{status="batched"} 0.0
"""


@router.get(
    "/metrics",
    summary="Prometheus metrics of this process, and unfinished jobs by status",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}, "example": _EXAMPLE}}}
    },
)
async def metrics(request: Request, services: ServicesDep) -> Response:
    exporter: Exporter = request.app.state.exporter
    try:
        async with asyncio.timeout(_READ_TIMEOUT_S):
            jobs = await jobs_active_counts(services.store)
    except (StorageError, TimeoutError) as exc:
        # The in-process series still help most when the database is in trouble.
        logger.warning("metrics.jobs_unavailable", extra={"error": str(exc)})
        jobs = {}
    return Response(content=exporter.render(jobs), media_type=CONTENT_TYPE_LATEST)
