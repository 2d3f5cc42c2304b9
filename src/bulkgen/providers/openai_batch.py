"""OpenAI's Batch API over the official ``openai`` SDK: input files, batches, results.

The Batch API answers chat requests within a day at half the price. A batch is a JSONL
input file of requests, each named by a ``custom_id`` (here: the job's id), uploaded with
``purpose=batch``; the batch runs it and, once ended, leaves an output file (answers) and an
error file (rows that failed or never ran). This module holds the pieces a dispatcher
needs, and no policy:

- :func:`build_input_files` (pure): requests -> JSONL files within a provider's
  :class:`BatchLimits` (requests and bytes per file), one model per file as OpenAI requires;
- :class:`OpenAIBatchClient`: upload, create with metadata, find batches by metadata (a
  worker that died between creating a batch and recording its id finds it again instead of
  creating a second one), retrieve, wait, cancel, download the results;
- :func:`parse_results` (pure): output and error files -> one typed result per
  ``custom_id``, in whatever order the provider wrote them.

Every SDK error becomes a :mod:`bulkgen.errors` type through the same table as online calls
(:func:`~bulkgen.providers.openai_compat.translate_error`), and the SDK never retries: the
caller decides. A row's own error is translated by that table too, from its HTTP status and
error body, so a failed row is retried or failed by the same rules as an online call.

Two shapes of error line exist: a row that ran and failed has ``response: {status_code,
body: {error}}`` and ``error: null`` (:class:`RowFailed`); a row that never ran (the batch
expired or was cancelled first) has ``response: null`` and ``error: {code, message}``
(:class:`RowNotRun`: nothing billed, to be sent again).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import openai
from openai.types import Batch as SdkBatch

from bulkgen.errors import InputError, InvalidOutput, ProviderError
from bulkgen.models import ChatRequest, Completion
from bulkgen.providers.openai_compat import (
    OpenAIClient,
    parse_completion_body,
    translate_status,
)

__all__ = [
    "ENDED",
    "ENDPOINT",
    "BatchLimits",
    "BatchStatus",
    "InputFile",
    "OpenAIBatchClient",
    "ProviderBatch",
    "RowAnswered",
    "RowFailed",
    "RowNotRun",
    "RowResult",
    "build_input_files",
    "parse_results",
    "request_line",
]

ENDPOINT = "/v1/chat/completions"
LIST_PAGE_MAX = 100  # the most batches one list call returns

BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
ENDED: frozenset[str] = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """What one input file may hold: OpenAI's 50,000 requests and 200 MB by default."""

    max_requests: int = 50_000
    max_bytes: int = 200 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_requests < 1 or self.max_bytes < 1:
            raise ValueError(f"batch limits must be positive: {self}")


@dataclass(frozen=True, slots=True)
class InputFile:
    """One JSONL input file: its bytes and the ``custom_id`` of each line, in order."""

    model: str
    custom_ids: tuple[str, ...]
    content: bytes


def request_line(custom_id: str, request: ChatRequest) -> bytes:
    """The request exactly as an online call sends it (see ``OpenAICompatProvider``)."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": request.as_messages(),
        "max_tokens": request.max_tokens,
        **dict(request.extra),
    }
    if request.temperature is not None:
        body["temperature"] = request.temperature
    line = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}
    return json.dumps(line, ensure_ascii=False).encode() + b"\n"


def build_input_files(
    requests: Iterable[tuple[str, ChatRequest]], limits: BatchLimits
) -> list[InputFile]:
    """``(custom_id, request)`` pairs -> as few input files as the limits allow.

    Requests are grouped by model (a batch runs one model), keeping their order within a
    model, and a file is closed when the next line would pass either limit. A request that
    alone is larger than ``limits.max_bytes`` cannot be sent in any batch: InputError naming
    it. A ``custom_id`` seen twice is a caller's bug (the provider would refuse the file).
    """
    by_model: dict[str, list[tuple[str, bytes]]] = {}
    seen: set[str] = set()
    for custom_id, request in requests:
        if custom_id in seen:
            raise ValueError(f"custom_id {custom_id!r} appears twice")
        seen.add(custom_id)
        line = request_line(custom_id, request)
        if len(line) > limits.max_bytes:
            raise InputError(
                f"request {custom_id} takes {len(line):,} bytes, more than the "
                f"{limits.max_bytes:,} a batch input file may hold"
            )
        by_model.setdefault(request.model, []).append((custom_id, line))
    return [file for model, lines in by_model.items() for file in _split(model, lines, limits)]


def _split(model: str, lines: list[tuple[str, bytes]], limits: BatchLimits) -> list[InputFile]:
    files: list[InputFile] = []
    ids: list[str] = []
    chunks: list[bytes] = []
    size = 0
    for custom_id, line in lines:
        if ids and (len(ids) == limits.max_requests or size + len(line) > limits.max_bytes):
            files.append(InputFile(model, tuple(ids), b"".join(chunks)))
            ids, chunks, size = [], [], 0
        ids.append(custom_id)
        chunks.append(line)
        size += len(line)
    if ids:
        files.append(InputFile(model, tuple(ids), b"".join(chunks)))
    return files


@dataclass(frozen=True, slots=True)
class ProviderBatch:
    """A provider batch as last seen: what a dispatcher records and polls on."""

    id: str
    status: BatchStatus
    input_file_id: str
    output_file_id: str | None
    error_file_id: str | None
    created_at: int  # epoch seconds
    expires_at: int | None
    metadata: Mapping[str, str]
    total: int
    completed: int
    failed: int
    errors: tuple[str, ...]  # why a batch failed validation: "code: message", one each

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    @classmethod
    def from_sdk(cls, batch: SdkBatch) -> ProviderBatch:
        counts = batch.request_counts
        errors = batch.errors.data if batch.errors is not None and batch.errors.data else []
        return cls(
            id=batch.id,
            status=batch.status,
            input_file_id=batch.input_file_id,
            output_file_id=batch.output_file_id,
            error_file_id=batch.error_file_id,
            created_at=batch.created_at,
            expires_at=batch.expires_at,
            metadata=dict(batch.metadata or {}),
            total=counts.total if counts is not None else 0,
            completed=counts.completed if counts is not None else 0,
            failed=counts.failed if counts is not None else 0,
            errors=tuple(f"{e.code}: {e.message}" for e in errors),
        )


@dataclass(frozen=True, slots=True)
class RowAnswered:
    """The provider answered the row: validating the content is the pipeline's job."""

    custom_id: str
    completion: Completion


@dataclass(frozen=True, slots=True)
class RowFailed:
    """The row ran and failed; ``error`` is typed as an online call's would be."""

    custom_id: str
    error: ProviderError


@dataclass(frozen=True, slots=True)
class RowNotRun:
    """The batch ended before running the row (``batch_expired``, ``batch_cancelled``)."""

    custom_id: str
    code: str
    message: str


RowResult = RowAnswered | RowFailed | RowNotRun


def _malformed(where: str, why: str) -> InvalidOutput:
    return InvalidOutput(f"batch results {where}: {why}", reason="malformed")


def _parse_line(
    where: str, raw: bytes, model: str, *, now_s: float, secrets: Sequence[str]
) -> RowResult:
    try:
        line = json.loads(raw)
    except ValueError as exc:
        raise _malformed(where, f"not JSON ({exc})") from None
    custom_id = line.get("custom_id") if isinstance(line, dict) else None
    if not isinstance(custom_id, str) or not custom_id:
        raise _malformed(where, "no custom_id")
    response, error = line.get("response"), line.get("error")
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        status = response["status_code"]
        body = response.get("body")
        if not 200 <= status < 300:  # the same table as an online call's error answer
            error = translate_status(status, body, now_s=now_s, secrets=secrets)
            return RowFailed(custom_id, error)
        try:
            content, usage, finish, answered_by = parse_completion_body(
                json.dumps(body).encode(), request_model=model, status_code=status, headers={}
            )
        except InvalidOutput as exc:
            return RowFailed(custom_id, exc)
        return RowAnswered(custom_id, Completion(content, usage, finish, answered_by))
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        return RowNotRun(
            custom_id,
            code if isinstance(code, str) and code else "unknown",
            message if isinstance(message, str) else "",
        )
    raise _malformed(where, f"row {custom_id!r} has neither a response nor an error")


def parse_results(
    *files: bytes, model: str = "", now_s: float = 0.0, secrets: Sequence[str] = ()
) -> dict[str, RowResult]:
    """Output and error files -> one result per ``custom_id``.

    A line that cannot be read (not JSON, no ``custom_id``, neither response nor error)
    makes the whole download :class:`InvalidOutput` (``malformed``): a partial read must
    not pass for a batch's complete results. A ``custom_id`` twice is the same: answers are
    never guessed between. ``model`` names the answer when its body does not.
    """
    results: dict[str, RowResult] = {}
    for file_number, content in enumerate(files, 1):
        for line_number, raw in enumerate(content.splitlines(), 1):
            if not raw.strip():
                continue
            where = f"file {file_number}, line {line_number}"
            result = _parse_line(where, raw, model, now_s=now_s, secrets=secrets)
            if result.custom_id in results:
                raise _malformed(where, f"custom_id {result.custom_id!r} answered twice")
            results[result.custom_id] = result
    return results


class OpenAIBatchClient(OpenAIClient):
    """The Files and Batch APIs of one OpenAI-compatible server and key.

    Each method is one logical call (``find`` pages through the list); none retries, and
    every failure comes out as a :class:`~bulkgen.errors.ProviderError` subclass. A handful
    of calls per batch, so a small connection pool.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float,
        connect_timeout_s: float = 10.0,
        max_connections: int = 10,
        http_client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            max_connections=max_connections,
            http_client=http_client,
            clock=clock,
        )

    async def upload(self, file: InputFile, *, filename: str = "bulkgen.jsonl") -> str:
        """Upload one input file; its id."""
        try:
            uploaded = await self._client.files.create(
                file=(filename, file.content), purpose="batch"
            )
        except openai.OpenAIError as exc:
            raise self._translated(exc) from exc
        return uploaded.id

    async def create(self, input_file_id: str, *, metadata: Mapping[str, str]) -> ProviderBatch:
        """Start a batch on an uploaded file. ``metadata`` (up to 16 string pairs) is what
        :meth:`find` looks for: record the intent under it before calling this."""
        try:
            batch = await self._client.batches.create(
                input_file_id=input_file_id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata=dict(metadata),
            )
        except openai.OpenAIError as exc:
            raise self._translated(exc) from exc
        return ProviderBatch.from_sdk(batch)

    async def retrieve(self, batch_id: str) -> ProviderBatch:
        try:
            return ProviderBatch.from_sdk(await self._client.batches.retrieve(batch_id))
        except openai.OpenAIError as exc:
            raise self._translated(exc) from exc

    async def cancel(self, batch_id: str) -> ProviderBatch:
        """Ask the batch to stop; it ends ``cancelled`` keeping the rows it finished.

        Idempotent: a batch that already ended (the provider answers 409) is returned as
        it is, so a cancel repeated after a crash, or racing the batch's own end, is no
        error."""
        try:
            return ProviderBatch.from_sdk(await self._client.batches.cancel(batch_id))
        except openai.ConflictError as exc:
            batch = await self.retrieve(batch_id)
            if batch.ended:
                return batch
            raise self._translated(exc) from exc
        except openai.OpenAIError as exc:
            raise self._translated(exc) from exc

    async def find(
        self,
        metadata: Mapping[str, str],
        *,
        created_since: int | None = None,
        page_size: int = LIST_PAGE_MAX,
    ) -> list[ProviderBatch]:
        """Every batch whose metadata holds all of ``metadata``, newest first.

        The list is newest first, so paging stops at the first batch created before
        ``created_since`` (epoch seconds; give the time the intent was recorded, less a
        margin for clock skew) instead of reading the account's whole history.
        """
        wanted = dict(metadata)
        found: list[ProviderBatch] = []
        after: str | None = None
        while True:
            try:
                if after is None:
                    page = await self._client.batches.list(limit=page_size)
                else:
                    page = await self._client.batches.list(limit=page_size, after=after)
            except openai.OpenAIError as exc:
                raise self._translated(exc) from exc
            for sdk_batch in page.data:
                batch = ProviderBatch.from_sdk(sdk_batch)
                if created_since is not None and batch.created_at < created_since:
                    return found
                if all(batch.metadata.get(k) == v for k, v in wanted.items()):
                    found.append(batch)
            if not page.has_more or not page.data:
                return found
            after = page.data[-1].id

    async def wait(
        self,
        batch_id: str,
        *,
        poll_s: float,
        max_poll_s: float | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> ProviderBatch:
        """Poll until the batch has ended, the interval doubling up to ``max_poll_s``
        (default: ``poll_s``, a fixed pace). Errors are raised, not retried."""
        interval_s = poll_s
        ceiling_s = poll_s if max_poll_s is None else max_poll_s
        while True:
            batch = await self.retrieve(batch_id)
            if batch.ended:
                return batch
            await sleep(interval_s)
            interval_s = min(interval_s * 2, ceiling_s)

    async def download(self, file_id: str) -> bytes:
        try:
            response = await self._client.files.content(file_id)
        except openai.OpenAIError as exc:
            raise self._translated(exc) from exc
        return response.content

    async def results(self, batch: ProviderBatch, *, model: str = "") -> dict[str, RowResult]:
        """An ended batch's rows, from its output and error files (either may be absent)."""
        files = [
            await self.download(file_id)
            for file_id in (batch.output_file_id, batch.error_file_id)
            if file_id is not None
        ]
        return parse_results(*files, model=model, now_s=self._clock(), secrets=self._secrets)
