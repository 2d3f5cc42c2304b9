"""``/healthz`` (the process answers) and ``/readyz`` (it can do its work: PostgreSQL and,
when configured, Redis answer). Neither needs a key: load balancers call them."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from bulkgen.api.deps import ServicesDep
from bulkgen.api.schemas import Health, Readiness
from bulkgen.db.health import database_ping
from bulkgen.errors import StorageError

__all__ = ["router"]

router = APIRouter(tags=["health"])

_CHECK_TIMEOUT_S = 2.0


@router.get("/healthz", response_model=Health, summary="The process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="PostgreSQL and (when configured) Redis answer",
    responses={503: {"model": Readiness, "description": "A dependency does not answer."}},
)
async def readyz(services: ServicesDep) -> JSONResponse:
    checks = {"database": await _database(services), "redis": await _redis(services)}
    ready = all(v in ("ok", "not configured") for v in checks.values())
    body = Readiness(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


async def _database(services: ServicesDep) -> str:
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_S):
            await database_ping(services.store)
    except (StorageError, TimeoutError):
        return "unavailable"
    return "ok"


async def _redis(services: ServicesDep) -> str:
    if services.redis is None:
        return "not configured"
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_S):
            await services.redis.ping()
    except Exception:  # any failure to answer means not ready; the reason is not the caller's
        return "unavailable"
    return "ok"
