"""Every error the API answers has one shape: ``{"error": {"kind", "message", "row",
"field"}}``. The project's exceptions are mapped to status codes here, in one place:

- :class:`ApiError` -> its own status (401, 404, 413, 422, ...)
- request validation (FastAPI) -> 422 ``invalid_request`` naming the field
- :class:`~bulkgen.errors.InputError` -> 422 ``invalid_input`` with its row and field
- :class:`~bulkgen.errors.ConfigError` -> 422 ``invalid_options``
- :class:`~bulkgen.errors.Conflict` -> 409 with its kind
- :class:`~bulkgen.errors.StorageError` -> 503 ``storage_unavailable`` when it may pass
  (with ``Retry-After``), 500 ``storage_error`` otherwise
- anything else -> 500 ``internal``, logged with its traceback (never with a key)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bulkgen.errors import ConfigError, Conflict, InputError, StorageError

__all__ = ["ApiError", "error_response", "install_error_handlers"]

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer other than success, raised anywhere in a route."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        row: int | None = None,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.row = row
        self.field = field
        self.headers = dict(headers or {})


def error_response(
    status: int,
    kind: str,
    message: str,
    *,
    row: int | None = None,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"kind": kind, "message": message, "row": row, "field": field}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


_HTTP_KINDS = {404: "not_found", 405: "method_not_allowed"}


def _validation_field(loc: tuple[object, ...]) -> str | None:
    """``("query", "limit")`` -> ``"limit"``; the body's own location is left out."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(
        exc.status, exc.kind, exc.message, row=exc.row, field=exc.field, headers=exc.headers
    )


async def _invalid_request(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    field = _validation_field(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid request"))
    return error_response(
        422, "invalid_request", f"{field}: {message}" if field else message, field=field
    )


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = _HTTP_KINDS.get(exc.status_code, "http_error")
    return error_response(exc.status_code, kind, str(exc.detail), headers=exc.headers)


async def _input_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InputError)
    return error_response(422, "invalid_input", str(exc), row=exc.row, field=exc.field)


async def _config_error(_: Request, exc: Exception) -> JSONResponse:
    return error_response(422, "invalid_options", str(exc))


async def _conflict(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Conflict)
    return error_response(409, exc.kind, str(exc))


async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StorageError)
    logger.warning("api.storage_error", extra={"path": request.url.path, "error": str(exc)})
    if exc.transient:
        return error_response(
            503,
            "storage_unavailable",
            "the database is unavailable; try again shortly",
            headers={"Retry-After": "1"},
        )
    return error_response(500, "storage_error", "the database refused the operation")


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    logger.error("api.internal_error", exc_info=exc, extra={"path": request.url.path})
    return error_response(500, "internal", "internal error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(InputError, _input_error)
    app.add_exception_handler(ConfigError, _config_error)
    app.add_exception_handler(Conflict, _conflict)
    app.add_exception_handler(StorageError, _storage_error)
    app.add_exception_handler(Exception, _internal)
