"""``/v1/files`` and ``/v1/batches``: OpenAI's Files and Batch APIs, as the official SDK
calls them (``client.files.*``, ``client.batches.*``).

    POST   /v1/files                  upload: multipart ``file`` + ``purpose=batch`` -> File
    GET    /v1/files                  list: ``after``, ``limit``, ``order``, ``purpose``
    GET    /v1/files/{id}             the File object
    GET    /v1/files/{id}/content     its bytes (an input, output or error file)
    DELETE /v1/files/{id}             gives its room in the store back
    POST   /v1/batches                create: ``input_file_id``, ``endpoint``
                                      (``/v1/chat/completions``), ``completion_window``
                                      (``24h``), ``metadata`` (16 string pairs at most)
    GET    /v1/batches                list, newest first: ``after``, ``limit`` (1-100, 20)
    GET    /v1/batches/{id}           the Batch object, its state computed now
    POST   /v1/batches/{id}/cancel    validating or in progress -> cancelling

Errors have OpenAI's envelope: a bad request 400, an unknown id 404, cancelling a batch
that already ended 409, an upload past the store's bound 413 (``file_too_large``). A batch
whose input is refused is still created, and fails after validating with the reasons in
``errors`` (see :mod:`batches`), as OpenAI does. A batch writes its output and error files
the first time it is seen ended, so a batch nobody looks at costs nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from bulkgen.simulator import protocol
from bulkgen.simulator.asgi import Receive, Scope, Send, read_body, read_body_bounded, respond
from bulkgen.simulator.batches import (
    ACTIVE,
    ENDPOINT,
    Batch,
    BatchClock,
    batch_error,
    model_of,
    plan_rows,
    read_input,
    run_rows,
)
from bulkgen.simulator.config import SimConfig
from bulkgen.simulator.files import FileStore, StoredFile, UploadError, parse_upload

_JSON = b"application/json"
_MULTIPART_SLACK_BYTES = 64 * 1024  # boundaries and part headers around the file itself
_METADATA_MAX_PAIRS, _METADATA_KEY_CHARS, _METADATA_VALUE_CHARS = 16, 64, 512
_T = TypeVar("_T")


class ApiError(Exception):
    """An answer in OpenAI's error envelope."""

    def __init__(
        self, status: int, message: str, param: str | None = None, *, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> bytes:
        return protocol.error_body(self.message, "invalid_request_error", self.code, self.param)


@dataclass
class BatchStats:
    """What the Files and Batch APIs did: calls, and the rows run for them."""

    api_calls: int = 0  # every request to /v1/files and /v1/batches, polls included
    file_uploads: int = 0
    batch_creates: int = 0
    requests: int = 0  # batch rows run (answered, refused or faulted)
    requests_failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class BatchApi:
    """The Files and Batch APIs of one simulator: its file store, batches and batch clock."""

    def __init__(
        self,
        config: SimConfig,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.stats = BatchStats()
        self._config = config
        self._wall = wall
        self._clock = BatchClock(clock, config.batch.time_scale)
        self._files = FileStore(config.batch.files_max_bytes)
        self._batches: dict[str, Batch] = {}

    def configure(self, config: SimConfig) -> None:
        """A live change: the clock's scale and the store's bound apply at once; a batch
        keeps the pace it was created with."""
        self._config = config
        self._clock.set_scale(config.batch.time_scale)
        self._files.max_bytes = config.batch.files_max_bytes

    @staticmethod
    def serves(path: str) -> bool:
        return path in ("/v1/files", "/v1/batches") or path.startswith(
            ("/v1/files/", "/v1/batches/")
        )

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.stats.api_calls += 1
        parts = scope["path"].rstrip("/").split("/")[2:]
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        try:
            status, body, content_type = await self._route(scope, parts, query, receive)
        except ApiError as exc:
            status, body, content_type = exc.status, exc.body(), _JSON
        delay_s = self._config.batch.answer_delay_s.get(_call_name(scope["method"], parts), 0.0)
        if delay_s > 0:  # the call took effect; its answer waits (see BATCH_DELAYED_ANSWERS)
            await asyncio.sleep(delay_s)
        await respond(send, status, body, content_type=content_type)

    async def _route(
        self, scope: Scope, parts: list[str], query: dict[str, str], receive: Receive
    ) -> tuple[int, bytes, bytes]:
        match scope["method"], parts:
            case "POST", ["files"]:
                return _ok(self._upload(_header(scope, b"content-type"), await self._body(receive)))
            case "GET", ["files"]:
                return _ok(self._list_files(query))
            case "GET", ["files", file_id]:
                return _ok(self._file(file_id).to_json())
            case "GET", ["files", file_id, "content"]:
                return 200, self._file(file_id).content, b"application/octet-stream"
            case "DELETE", ["files", file_id]:
                self._file(file_id)
                self._files.delete(file_id)
                return _ok({"id": file_id, "object": "file", "deleted": True})
            case "POST", ["batches"]:
                return _ok(self._create(_json_object(await read_body(receive))))
            case "GET", ["batches"]:
                return _ok(self._list_batches(query))
            case "GET", ["batches", batch_id]:
                return _ok(self._view(self._batch(batch_id)))
            case "POST", ["batches", batch_id, "cancel"]:
                return _ok(self._cancel(self._batch(batch_id)))
        raise ApiError(404, f"Unknown request URL: {scope['method']} {scope['path']}.")

    # Files

    async def _body(self, receive: Receive) -> bytes:
        raw = await read_body_bounded(receive, self._files.room_bytes() + _MULTIPART_SLACK_BYTES)
        if raw is None:
            raise self._too_large()
        return raw

    def _too_large(self) -> ApiError:
        message = (
            f"The file does not fit in the file store: {self._files.room_bytes()} of its "
            f"{self._files.max_bytes} bytes are free. Delete files to make room."
        )
        return ApiError(413, message, "file", code="file_too_large")

    def _upload(self, content_type: str, raw: bytes) -> dict[str, Any]:
        try:
            upload = parse_upload(content_type, raw)
        except UploadError as exc:
            raise ApiError(400, exc.message, exc.param) from None
        if upload.purpose != "batch":
            message = (
                "The simulator stores Batch API files only: purpose must be 'batch', "
                f"got {upload.purpose!r}."
            )
            raise ApiError(400, message, "purpose")
        if len(upload.content) > self._files.room_bytes():
            raise self._too_large()
        self.stats.file_uploads += 1
        stored = self._files.add(upload.filename, "batch", upload.content, int(self._wall()))
        return stored.to_json()

    def _file(self, file_id: str) -> StoredFile:
        stored = self._files.get(file_id)
        if stored is None:
            raise ApiError(404, f"No such File object: {file_id}", "id")
        return stored

    def _list_files(self, query: dict[str, str]) -> dict[str, Any]:
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ApiError(400, f"Invalid 'order': {order!r}; expected 'asc' or 'desc'.", "order")
        files = self._files.listed(query.get("purpose"), newest_first=order == "desc")
        page, has_more = _page(files, lambda f: f.id, query, default_limit=10_000, max_limit=10_000)
        return _list_body([f.to_json() for f in page], has_more)

    # Batches

    def _create(self, request: dict[str, Any]) -> dict[str, Any]:
        """A new batch, shown as it is at its creation: validating (or cancelled only if
        its validation took no time at all)."""
        input_file_id = request.get("input_file_id")
        if not isinstance(input_file_id, str) or not input_file_id:
            raise ApiError(400, "Missing required parameter: 'input_file_id'.", "input_file_id")
        if request.get("endpoint") != ENDPOINT:
            message = f"Invalid 'endpoint': the simulator runs batches for {ENDPOINT} only."
            raise ApiError(400, message, "endpoint")
        window = request.get("completion_window")
        if window != "24h":
            raise ApiError(
                400,
                f"Invalid 'completion_window': {window!r}; expected '24h'.",
                "completion_window",
            )
        metadata = _metadata(request.get("metadata"))
        stored = self._files.get(input_file_id)
        if stored is None:
            raise ApiError(404, f"No such File object: {input_file_id}", "input_file_id")
        if stored.purpose != "batch":
            raise ApiError(400, "The input file must have purpose 'batch'.", "input_file_id")
        now_s = self._clock.now_s()
        batch = self._new_batch(stored, window, metadata, now_s)
        self._batches[batch.id] = batch
        self.stats.batch_creates += 1
        return self._view(batch, now_s)

    def _new_batch(
        self, stored: StoredFile, window: str, metadata: dict[str, str] | None, now_s: float
    ) -> Batch:
        cfg = self._config
        batch_id = f"batch_sim{len(self._batches) + 1:012d}"
        lines, errors = read_input(stored.content, cfg.batch)
        rows = [] if errors else plan_rows(
            lines, batch_id, cfg.seed, cfg.batch, cfg.models, cfg.default_max_tokens
        )  # fmt: skip
        batch = Batch(
            id=batch_id, input_file_id=stored.id, completion_window=window, metadata=metadata,
            created_at=int(self._wall()), created_sim_s=now_s, pace=cfg.batch, seed=cfg.seed,
            prompt_cache=cfg.prompt_cache, model=model_of(lines), rows=rows,
            errors=errors or None,
        )  # fmt: skip
        if batch.errors is None:
            batch.errors = self._queue_limit_errors(batch, now_s)
        return batch

    def _queue_limit_errors(self, batch: Batch, now_s: float) -> list[dict[str, Any]] | None:
        """OpenAI's enqueued-token limit: the prompt tokens of the model's unfinished
        batches, this one included, may not pass ``batch.enqueued_tokens``."""
        limit = self._config.batch.enqueued_tokens
        if not limit:
            return None
        queued = sum(
            other.prompt_tokens
            for other in self._batches.values()
            if other.model == batch.model
            and other.errors is None
            and other.phase(now_s).status in ACTIVE
        )
        wanted = batch.prompt_tokens
        if queued + wanted <= limit:
            return None
        message = (
            f"Enqueued token limit reached for {batch.model} in organization "
            f"{protocol.ORGANIZATION}. Limit: {limit:,} enqueued tokens ({queued:,} enqueued, "
            f"{wanted:,} in this batch). Please try submitting fewer tokens, or wait until "
            "some of your batches have completed."
        )
        return [batch_error("token_limit_exceeded", message)]

    def _batch(self, batch_id: str) -> Batch:
        batch = self._batches.get(batch_id)
        if batch is None:
            raise ApiError(404, f"No such Batch object: {batch_id}", "batch_id")
        return batch

    def _view(self, batch: Batch, now_s: float | None = None) -> dict[str, Any]:
        """The batch as it is now; an ended batch writes its files on first sight."""
        phase = batch.phase(self._clock.now_s() if now_s is None else now_s)
        if phase.status in ("completed", "expired", "cancelled") and not batch.ended:
            results = run_rows(batch, phase)
            created_at = int(self._wall())
            if results.output:
                name = f"{batch.id}_output.jsonl"
                batch.output_file_id = self._files.add(
                    name, "batch_output", results.output, created_at
                ).id
            if results.errors:
                name = f"{batch.id}_error.jsonl"
                batch.error_file_id = self._files.add(
                    name, "batch_output", results.errors, created_at
                ).id
            batch.usage = results.usage()
            batch.ended = True
            self.stats.requests += results.ran
            self.stats.requests_failed += results.failed
            self.stats.prompt_tokens += results.prompt_tokens
            self.stats.completion_tokens += results.completion_tokens
        return batch.to_json(phase)

    def _cancel(self, batch: Batch) -> dict[str, Any]:
        now_s = self._clock.now_s()
        status = batch.phase(now_s).status
        if status in ("validating", "in_progress"):
            batch.cancel_sim_s = now_s
        elif status not in ("cancelling", "cancelled"):  # a second cancel changes nothing
            raise ApiError(409, f"Cannot cancel a batch with status '{status}'.", "batch_id")
        return self._view(batch, now_s)

    def _list_batches(self, query: dict[str, str]) -> dict[str, Any]:
        newest_first = list(self._batches.values())[::-1]
        page, has_more = _page(newest_first, lambda b: b.id, query, default_limit=20, max_limit=100)
        return _list_body([self._view(batch) for batch in page], has_more)


def _call_name(method: str, parts: list[str]) -> str:
    """The name :data:`~bulkgen.simulator.config.BATCH_DELAYED_ANSWERS` gives a call."""
    match method, parts:
        case "POST", ["files"]:
            return "upload"
        case "POST", ["batches"]:
            return "create"
        case "GET", ["files", _, "content"]:
            return "content"
    return ""


def _ok(body: dict[str, Any]) -> tuple[int, bytes, bytes]:
    return 200, json.dumps(body).encode(), _JSON


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return ""


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


def _metadata(metadata: object) -> dict[str, str] | None:
    """OpenAI's metadata: up to 16 pairs, keys up to 64 characters, values up to 512."""
    if metadata is None:
        return None
    if (
        not isinstance(metadata, dict)
        or len(metadata) > _METADATA_MAX_PAIRS
        or not all(
            isinstance(key, str) and len(key) <= _METADATA_KEY_CHARS
            and isinstance(value, str) and len(value) <= _METADATA_VALUE_CHARS
            for key, value in metadata.items()
        )
    ):  # fmt: skip
        message = (
            "Invalid 'metadata': at most 16 pairs of strings, keys up to 64 characters, "
            "values up to 512."
        )
        raise ApiError(400, message, "metadata")
    return dict(metadata)


def _page(
    items: Sequence[_T],
    ident: Callable[[_T], str],
    query: dict[str, str],
    *,
    default_limit: int,
    max_limit: int,
) -> tuple[Sequence[_T], bool]:
    """One page of a cursor list: the items after the ``after`` id, at most ``limit``."""
    raw_limit = query.get("limit", str(default_limit))
    try:
        limit = int(raw_limit)
    except ValueError:
        limit = 0
    if not 1 <= limit <= max_limit:
        raise ApiError(400, f"Invalid 'limit': {raw_limit!r}; expected 1 to {max_limit}.", "limit")
    start = 0
    after = query.get("after")
    if after is not None:
        ids = [ident(item) for item in items]
        if after not in ids:
            raise ApiError(400, f"Invalid 'after': no object {after!r} in this list.", "after")
        start = ids.index(after) + 1
    page = items[start : start + limit]
    return page, start + limit < len(items)


def _list_body(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
