"""The HTTP API as an ASGI application, built by :func:`create_app` from the process's
services, so a test can run it in-process against a real database and ``bulkgen serve``
runs the very same object under uvicorn."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from bulkgen import __version__
from bulkgen.api import batches, events, health, jobs, metrics
from bulkgen.api.body_limit import BodyLimit
from bulkgen.api.dashboard import mount_dashboard
from bulkgen.api.errors import install_error_handlers
from bulkgen.api.exporter import Exporter
from bulkgen.api.rate_limit import build_account_limiter
from bulkgen.api.schemas import ErrorResponse
from bulkgen.api.settings import ApiSettings
from bulkgen.service import Services

__all__ = ["create_app"]

_DESCRIPTION = """\
Bulk article generation: submit a batch of keywords, follow its progress, download the
articles. Every `/v1` route needs `Authorization: Bearer <key>` (an API key from
`bulkgen accounts create NAME`) and sees only that account's batches and jobs.

Each account may make `BULKGEN_API_RATE_PER_S` requests a second (`BULKGEN_API_BURST` at
once); past that, `429` with `Retry-After` in seconds.

Errors always have the shape `{"error": {"kind", "message", "row", "field"}}`.
"""

_RATE_LIMITED: dict[int | str, dict[str, Any]] = {
    429: {
        "model": ErrorResponse,
        "description": "The account made more requests than its rate allows; "
        "`Retry-After` says in how many seconds to try again.",
        "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
    }
}


def create_app(services: Services, settings: ApiSettings | None = None) -> FastAPI:
    """An app over ``services``; the caller owns them (opens before, closes after)."""
    settings = settings or ApiSettings()
    app = FastAPI(
        title="bulkgen",
        version=__version__,
        description=_DESCRIPTION,
        redoc_url=None,
    )
    app.state.services = services
    app.state.api_settings = settings
    app.state.exporter = Exporter(services.metrics, services.store.pool)
    app.state.account_limiter = build_account_limiter(
        services.redis, settings.account_rate, metrics=services.metrics
    )
    install_error_handlers(app)
    app.include_router(batches.router, responses=_RATE_LIMITED)
    app.include_router(events.router, responses=_RATE_LIMITED)
    app.include_router(jobs.router, responses=_RATE_LIMITED)
    app.include_router(health.router)
    app.include_router(metrics.router)
    mount_dashboard(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app
