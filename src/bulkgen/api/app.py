"""The HTTP API as an ASGI application, built by :func:`create_app` from the process's
services, so a test can run it in-process against a real database and ``bulkgen serve``
runs the very same object under uvicorn."""

from __future__ import annotations

from fastapi import FastAPI

from bulkgen import __version__
from bulkgen.api import batches, events, health, jobs, metrics
from bulkgen.api.body_limit import BodyLimit
from bulkgen.api.errors import install_error_handlers
from bulkgen.api.exporter import Exporter
from bulkgen.api.settings import ApiSettings
from bulkgen.service import Services

__all__ = ["create_app"]

_DESCRIPTION = """\
Bulk article generation: submit a batch of keywords, follow its progress, download the
articles. Every `/v1` route needs `Authorization: Bearer <key>` (an API key from
`bulkgen accounts create NAME`) and sees only that account's batches and jobs.

Errors always have the shape `{"error": {"kind", "message", "row", "field"}}`.
"""


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
    install_error_handlers(app)
    app.include_router(batches.router)
    app.include_router(events.router)
    app.include_router(jobs.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app
