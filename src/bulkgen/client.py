"""``bulkgen.Client``: the HTTP API from Python, for a product that submits on its users'
behalf. Async, on httpx, and independent of the server side (it imports nothing of
``api/``, ``db/``, the service or the worker), so it installs and runs anywhere.

Answers are the API's JSON as plain dicts (the API's OpenAPI schema documents them).
Errors are the project's own, translated here from HTTP in one place:

- 422 ``invalid_input`` / ``invalid_request`` -> :class:`~bulkgen.errors.InputError`
  (``row`` and ``field`` as the server named them)
- 422 ``invalid_options`` -> :class:`~bulkgen.errors.ConfigError`
- any other error status, or no answer at all -> :class:`~bulkgen.errors.ApiError`
  (``status`` is None when the server could not be reached; ``kind`` is the API's)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Mapping
from decimal import Decimal
from types import TracebackType
from typing import Any, Self

import httpx

from bulkgen.errors import ApiError, BulkgenError, ConfigError, InputError

__all__ = ["Client"]

BatchRef = str | uuid.UUID


class Client:
    """``async with Client(base_url, api_key) as client: ...``; one connection pool."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        # The read timeout outlasts the server's keep-alive comments (every 15 s), so a
        # quiet event stream is not mistaken for a dead one.
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(timeout_s, read=max(timeout_s, 60.0)),
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def submit(
        self,
        items: list[Any],
        options: Mapping[str, Any] | None = None,
        template: str | None = None,
        budget_usd: Decimal | str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Enqueue a batch (keywords, or objects with a ``keyword``); the answer has its
        ``id``. With ``idempotency_key``, sending the same batch again is safe."""
        body: dict[str, Any] = {"items": items, "options": dict(options or {})}
        if template is not None:
            body["template"] = template
        if budget_usd is not None:
            body["budget_usd"] = str(budget_usd)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return await self._json("POST", "/v1/batches", json=body, headers=headers)

    async def get(self, batch_id: BatchRef) -> dict[str, Any]:
        """Counts per status, usage, cost, rate and ETA of one batch."""
        return await self._json("GET", f"/v1/batches/{batch_id}")

    async def cancel(self, batch_id: BatchRef) -> dict[str, Any]:
        return await self._json("POST", f"/v1/batches/{batch_id}/cancel")

    async def retry(self, batch_id: BatchRef) -> dict[str, Any]:
        """Failed jobs go back to the queue with fresh attempts."""
        return await self._json("POST", f"/v1/batches/{batch_id}/retry")

    async def jobs(
        self, batch_id: BatchRef, status: str | None = None, *, page_size: int = 100
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The batch's jobs page by page (each a list of job dicts), following cursors."""
        params: dict[str, Any] = {"limit": page_size}
        if status is not None:
            params["status"] = status
        while True:
            page = await self._json("GET", f"/v1/batches/{batch_id}/jobs", params=params)
            yield page["items"]
            if page["next_cursor"] is None:
                return
            params["cursor"] = page["next_cursor"]

    async def results(self, batch_id: BatchRef) -> AsyncIterator[dict[str, Any]]:
        """Every job with its article or error, one dict per line, read as it streams in:
        a batch of any size never sits whole in memory."""
        url = f"/v1/batches/{batch_id}/results"
        async with self._stream(url, params={"format": "jsonl"}) as response:
            async for line in response.aiter_lines():
                if line.strip():
                    row: dict[str, Any] = json.loads(line)
                    yield row

    async def events(self, batch_id: BatchRef) -> AsyncIterator[dict[str, Any]]:
        """The batch's progress as it happens: dicts with ``event`` ("progress" or, last,
        "end"), ``counts``, ``done``, ``total``, ``rate_jobs_per_s``, ``eta_s``, the tokens so
        far and ``provider_429_share``."""
        async with self._stream(f"/v1/batches/{batch_id}/events") as response:
            name, data = "message", ""
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    continue  # a keep-alive comment
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
                elif not line and data:
                    event: dict[str, Any] = {"event": name, **json.loads(data)}
                    yield event
                    if name == "end":
                        return
                    name, data = "message", ""
        raise ApiError(
            "the event stream ended before its end event", status=None, kind="stream_ended"
        )

    async def _json(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise _unreachable(exc) from exc
        if response.is_error:
            raise _error_of(response)
        answer: dict[str, Any] = response.json()
        return answer

    def _stream(self, url: str, **kwargs: Any) -> _Streamed:
        return _Streamed(self._http, url, kwargs)


class _Streamed:
    """``async with`` a streamed GET whose error answers raise like any other."""

    def __init__(self, http: httpx.AsyncClient, url: str, kwargs: dict[str, Any]) -> None:
        self._context = http.stream("GET", url, **kwargs)

    async def __aenter__(self) -> httpx.Response:
        try:
            response = await self._context.__aenter__()
        except httpx.HTTPError as exc:
            raise _unreachable(exc) from exc
        if not response.is_error:
            return response
        try:
            await response.aread()
            error = _error_of(response)
        except httpx.HTTPError as exc:
            error = _unreachable(exc)
        finally:
            await self._context.__aexit__(None, None, None)
        raise error

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._context.__aexit__(exc_type, exc, tb)


def _unreachable(exc: httpx.HTTPError) -> ApiError:
    return ApiError(f"the API did not answer: {exc!r}", status=None, kind="connection_error")


def _error_of(response: httpx.Response) -> BulkgenError:
    """The project's error for an error answer of the API (``{"error": {...}}``)."""
    try:
        detail = response.json()["error"]
        kind, message = str(detail["kind"]), str(detail["message"])
        row, field = detail.get("row"), detail.get("field")
    except (ValueError, KeyError, TypeError):
        kind, message, row, field = "http_error", response.text[:500], None, None
    if response.status_code == 422 and kind == "invalid_options":
        return ConfigError(message)
    if response.status_code == 422:
        # The server's message already says where; keep it as sent, with the place as data.
        error = InputError(message)
        error.row, error.field = row, field
        return error
    retry_after = response.headers.get("Retry-After")
    return ApiError(
        message,
        status=response.status_code,
        kind=kind,
        retry_after_s=float(retry_after) if retry_after and retry_after.isdigit() else None,
    )
