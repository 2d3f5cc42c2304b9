"""``/v1/jobs/{id}``: one job with its article, or its error."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from bulkgen.api.deps import CallerDep, ServicesDep
from bulkgen.api.errors import ApiError
from bulkgen.api.schemas import ErrorResponse, JobDetail
from bulkgen.db.account_scope import job_of_account

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["jobs"])

JobId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The job's id.")]


@router.get(
    "/jobs/{job_id}",
    response_model=JobDetail,
    summary="A job with its article or its error",
    responses={
        401: {"model": ErrorResponse, "description": "No valid API key."},
        404: {"model": ErrorResponse, "description": "No such job for this account."},
        422: {"model": ErrorResponse, "description": "The id is not a job id."},
        503: {"model": ErrorResponse, "description": "The database is unavailable."},
    },
)
async def get_job(job_id: JobId, services: ServicesDep, caller: CallerDep) -> JobDetail:
    detail = await job_of_account(services.store, caller.id, job_id)
    if detail is None:
        raise ApiError(404, "not_found", f"no job {job_id}")
    return JobDetail.of_detail(detail)
