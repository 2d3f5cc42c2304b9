"""Batch API jobs: the input file's validation, the state machine, the result files.

A batch's state is a pure function of the batch clock: every request that looks at a batch
computes where it is from the simulated time elapsed since its creation (``phase``), and
nothing runs in the background. That is the simplest way, and the deterministic one: with a
given seed and input, what a batch holds when it completes, expires or is cancelled depends
only on simulated time, never on when a client happened to poll or on how loaded the
machine is; there is also no task to start, stop or leak. The time line of a batch created
at simulated time t0, with the pace of the config it was created under:

    validating   [t0, v)                      v = t0 + validating_s
    failed       at v                         if the input was refused at creation
    in_progress  [v, done)                    row i (in processing order) ends at
                                              v + (i + 1) / requests_per_s
    finalizing   [done, done + finalizing_s)  then completed, if done <= t0 + window_s
    expired      at t0 + window_s             otherwise, with the rows ended by then
    cancelling   [c, c + finalizing_s)        then cancelled, if cancelled at c before the
                                              end: the rows ended by c are kept

Rows run in a shuffled order (seeded), so the output file is not in input order, as
OpenAI's is not. Each row gets what the chat endpoint would answer the same request
(:func:`completion.answer`, same seed): a row the endpoint would refuse (400, unknown
model 404) or a server fault drawn for it (``batch.faults``) goes to the error file with
its HTTP status and OpenAI's error body in ``response``, ``error`` null, counted as
failed; rows a batch never ran (expired, cancelled) go to the error file with
``response`` null and ``error`` ``{code: batch_expired | batch_cancelled, message}``, and
are not counted as failed (OpenAI counts them in neither). Every ``custom_id`` is thus in
exactly one of the two files. Timestamps are on the batch's simulated clock, anchored at
the wall-clock second of its creation: ``expires_at`` is ``created_at`` + 24 h.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bulkgen.simulator import completion, protocol
from bulkgen.simulator.config import BatchConfig
from bulkgen.simulator.faults import FaultPicker
from bulkgen.simulator.prompt_cache import PromptCache
from bulkgen.simulator.protocol import ChatCall, InvalidRequest
from bulkgen.simulator.tokens import count_tokens

ENDPOINT = "/v1/chat/completions"
MAX_LISTED_ERRORS = 100  # a file with a million bad lines fails with this many named
ACTIVE = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
TERMINAL = frozenset({"completed", "expired", "cancelled", "failed"})
_EPSILON = 1e-9
_MOMENTS = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)
_UNRUN = {
    "expired": (
        "batch_expired",
        "This request could not be executed before the completion window expired.",
    ),
    "cancelled": ("batch_cancelled", "This request was not executed: the batch was cancelled."),
}


class BatchClock:
    """Simulated seconds for batches: ``scale`` times the wall clock, 0 pauses it.

    A change of scale takes effect from now on; the simulated time already passed stays,
    so no batch jumps back or forward when a test speeds the clock up.
    """

    def __init__(self, clock: Callable[[], float], scale: float) -> None:
        self._clock = clock
        self._scale = scale
        self._base_wall_s = clock()
        self._base_sim_s = 0.0

    def now_s(self) -> float:
        return self._base_sim_s + (self._clock() - self._base_wall_s) * self._scale

    def set_scale(self, scale: float) -> None:
        self._base_sim_s = self.now_s()
        self._base_wall_s = self._clock()
        self._scale = scale


@dataclass(frozen=True)
class InputLine:
    line: int
    custom_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Row:
    """One request of a batch, ready to run: its call, or the refusal the endpoint gives."""

    custom_id: str
    call: ChatCall | None
    refusal: tuple[int, dict[str, Any]] | None
    fault: str | None

    @property
    def fails(self) -> bool:
        return self.refusal is not None or self.fault in protocol.SERVER_FAULTS


def batch_error(
    code: str, message: str, line: int | None = None, param: str | None = None
) -> dict[str, Any]:
    """One entry of a batch's ``errors.data`` (OpenAI's ``BatchError``)."""
    return {"code": code, "message": message, "param": param, "line": line}


def read_input(content: bytes, config: BatchConfig) -> tuple[list[InputLine], list[dict[str, Any]]]:
    """The requests of an input file, or the errors that fail the batch at validation."""
    if len(content) > config.max_input_bytes:
        message = (
            f"The input file has {len(content)} bytes; a batch input file may have at most "
            f"{config.max_input_bytes} bytes."
        )
        return [], [batch_error("file_too_large", message)]
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return [], [batch_error("invalid_file_format", "The input file is not UTF-8 text.")]
    lines: list[InputLine] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.split("\n"), 1):
        if raw.strip() and len(errors) < MAX_LISTED_ERRORS:
            line, error = _read_line(number, raw, seen)
            if error is not None:
                errors.append(error)
            elif line is not None:
                lines.append(line)
                seen.add(line.custom_id)
    if not lines and not errors:
        errors.append(batch_error("empty_file", "The input file has no requests."))
    if len(lines) > config.max_requests:
        message = (
            f"The input file has {len(lines)} requests; a batch may have at most "
            f"{config.max_requests}."
        )
        errors.append(batch_error("too_many_requests", message))
    errors.extend(_model_errors(lines))
    return lines, errors[:MAX_LISTED_ERRORS]


def _read_line(
    number: int, raw: str, seen: set[str]
) -> tuple[InputLine | None, dict[str, Any] | None]:
    try:
        request = json.loads(raw)
    except ValueError:
        request = None
    if not isinstance(request, dict):
        message = f"Line {number} is not a JSON object."
        return None, batch_error("invalid_json_line", message, number)
    custom_id = request.get("custom_id")
    problem: tuple[str, str, str] | None = None
    if not isinstance(custom_id, str) or not custom_id:
        problem = ("missing_custom_id", "custom_id", "A request needs a non-empty custom_id.")
    elif custom_id in seen:
        problem = (
            "duplicate_custom_id",
            "custom_id",
            f"The custom_id {custom_id!r} is used more than once in the file.",
        )
    elif request.get("method") != "POST":
        problem = ("invalid_method", "method", "The method of a batch request must be POST.")
    elif request.get("url") != ENDPOINT:
        message = f"The url of every request must be the batch's endpoint, {ENDPOINT}."
        problem = ("invalid_url", "url", message)
    elif not isinstance(request.get("body"), dict):
        problem = ("invalid_request", "body", "A request needs a JSON object as its body.")
    if problem is not None:
        code, param, message = problem
        return None, batch_error(code, f"Line {number}: {message}", number, param)
    return InputLine(number, str(custom_id), request["body"]), None


def _model_errors(lines: list[InputLine]) -> list[dict[str, Any]]:
    """OpenAI runs one model per batch: a request naming another model fails the batch."""
    first: str | None = None
    for line in lines:
        model = line.body.get("model")
        if isinstance(model, str):
            if first is None:
                first = model
            elif model != first:
                message = (
                    f"Line {line.line}: the model {model!r} differs from {first!r}; "
                    "all requests of a batch must use the same model."
                )
                return [batch_error("mismatched_model", message, line.line, "body.model")]
    return []


def model_of(lines: Iterable[InputLine]) -> str | None:
    for line in lines:
        model = line.body.get("model")
        if isinstance(model, str):
            return model
    return None


def plan_rows(
    lines: list[InputLine],
    batch_id: str,
    seed: int,
    config: BatchConfig,
    models: tuple[str, ...],
    default_max_tokens: int,
) -> list[Row]:
    """The rows in the order they will run (a seeded shuffle), each with its fault drawn."""
    order = list(range(len(lines)))
    random.Random(f"batch-order:{seed}:{batch_id}").shuffle(order)
    faults = FaultPicker(f"{seed}:{batch_id}", config.faults)
    rows = []
    for index in order:
        line = lines[index]
        call, refusal = _call_of(line.body, models, default_max_tokens)
        fault = faults.pick() if call is not None else None
        rows.append(Row(line.custom_id, call, refusal, fault))
    return rows


def _call_of(
    body: dict[str, Any], models: tuple[str, ...], default_max_tokens: int
) -> tuple[ChatCall | None, tuple[int, dict[str, Any]] | None]:
    """The chat call of a row, or the refusal the chat endpoint would answer it with."""
    try:
        call = protocol.chat_call_of(body, default_max_tokens)
    except InvalidRequest as exc:
        return None, (
            400,
            protocol.error_object(exc.message, "invalid_request_error", None, exc.param),
        )
    if call.model not in models:
        message = f"The model `{call.model}` does not exist or you do not have access to it."
        return None, (
            404,
            protocol.error_object(message, "invalid_request_error", "model_not_found"),
        )
    return call, None


@dataclass
class Phase:
    """Where a batch is at one moment: its status, the rows ended, when each step began."""

    status: str
    rows_done: int
    moments_s: dict[str, float] = field(default_factory=dict)


@dataclass
class Batch:
    """One batch: what was asked, its rows in running order, and its result files once
    it ended."""

    id: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: int
    created_sim_s: float
    pace: BatchConfig
    seed: int
    prompt_cache: bool
    model: str | None
    rows: list[Row]
    errors: list[dict[str, Any]] | None
    cancel_sim_s: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    usage: dict[str, Any] | None = None
    ended: bool = False
    failed_before: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.failed_before = [0]
        for row in self.rows:
            self.failed_before.append(self.failed_before[-1] + row.fails)

    @property
    def prompt_tokens(self) -> int:
        """The batch's enqueued tokens: what counts against the per-model queue limit."""
        return sum(row.call.prompt_tokens for row in self.rows if row.call is not None)

    def _validated_s(self) -> float:
        return self.created_sim_s + self.pace.validating_s

    def row_end_s(self, index: int) -> float:
        return self._validated_s() + (index + 1) / self.pace.requests_per_s

    def _rows_done_by(self, at_s: float) -> int:
        ran_s = at_s - self._validated_s()
        if ran_s <= 0:
            return 0
        return min(len(self.rows), math.floor(ran_s * self.pace.requests_per_s + _EPSILON))

    def phase(self, now_s: float) -> Phase:
        """The batch's state at simulated time ``now_s`` (see the module's time line)."""
        validated_s = self._validated_s()
        finalizing_s = self.pace.finalizing_s
        cancel_s = self.cancel_sim_s
        if cancel_s is not None and cancel_s < validated_s:
            return _cancel_phase(cancel_s, finalizing_s, 0, now_s, {})
        if now_s < validated_s:
            return Phase("validating", 0)
        if self.errors:
            return Phase("failed", 0, {"failed_at": validated_s})
        moments = {"in_progress_at": validated_s}
        if cancel_s is not None:
            return _cancel_phase(
                cancel_s, finalizing_s, self._rows_done_by(cancel_s), now_s, moments
            )
        done_s = validated_s + len(self.rows) / self.pace.requests_per_s
        expires_s = self.created_sim_s + self.pace.window_s
        if done_s > expires_s:
            if now_s < expires_s:
                return Phase("in_progress", self._rows_done_by(now_s), moments)
            moments["expired_at"] = expires_s
            return Phase("expired", self._rows_done_by(expires_s), moments)
        if now_s < done_s:
            return Phase("in_progress", self._rows_done_by(now_s), moments)
        moments["finalizing_at"] = done_s
        if now_s < done_s + finalizing_s:
            return Phase("finalizing", len(self.rows), moments)
        moments["completed_at"] = done_s + finalizing_s
        return Phase("completed", len(self.rows), moments)

    def counts(self, phase: Phase) -> dict[str, int]:
        """``request_counts``: nothing while validating or refused, then the rows ended."""
        if phase.status in ("validating", "failed"):
            return {"total": 0, "completed": 0, "failed": 0}
        failed = self.failed_before[phase.rows_done]
        return {"total": len(self.rows), "completed": phase.rows_done - failed, "failed": failed}

    def epoch_s(self, sim_s: float) -> int:
        """A simulated moment as a Unix time on the batch's own clock."""
        return self.created_at + math.floor(sim_s - self.created_sim_s + _EPSILON)

    def to_json(self, phase: Phase) -> dict[str, Any]:
        """OpenAI's ``Batch`` object at ``phase``."""
        body: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "endpoint": ENDPOINT,
            "model": self.model,
            "errors": None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": phase.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.epoch_s(self.created_sim_s + self.pace.window_s),
        }
        for name in _MOMENTS:
            moment = phase.moments_s.get(name)
            body[name] = None if moment is None else self.epoch_s(moment)
        if phase.status == "failed" and self.errors:
            body["errors"] = {"object": "list", "data": self.errors}
        body["request_counts"] = self.counts(phase)
        body["metadata"] = self.metadata
        body["usage"] = self.usage
        return body


def _cancel_phase(
    cancel_s: float, finalizing_s: float, rows_done: int, now_s: float, moments: dict[str, float]
) -> Phase:
    moments["cancelling_at"] = cancel_s
    if now_s < cancel_s + finalizing_s:
        return Phase("cancelling", rows_done, moments)
    moments["cancelled_at"] = cancel_s + finalizing_s
    return Phase("cancelled", rows_done, moments)


@dataclass
class Results:
    """A finished batch's files (JSON Lines) and what running its rows cost."""

    output: bytes
    errors: bytes
    ran: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0

    def usage(self) -> dict[str, Any]:
        """OpenAI's ``BatchUsage``."""
        return {
            "input_tokens": self.prompt_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": self.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def run_rows(batch: Batch, phase: Phase) -> Results:
    """Answer the rows ``phase`` says ended, and list the rows that never ran."""
    output: list[bytes] = []
    errors: list[bytes] = []
    results = Results(b"", b"")
    cache = PromptCache() if batch.prompt_cache else None
    for index, row in enumerate(batch.rows[: phase.rows_done]):
        status, body = _answer(batch, index, row, cache, results)
        request_id = _request_id(batch.id, row.custom_id)
        response = {"status_code": status, "request_id": request_id, "body": body}
        line = _line(batch, index, row.custom_id, response, None)
        (output if status == 200 else errors).append(line)
    unrun = _UNRUN.get(phase.status)
    if unrun is not None:
        code, message = unrun
        for index in range(phase.rows_done, len(batch.rows)):
            custom_id = batch.rows[index].custom_id
            errors.append(_line(batch, index, custom_id, None, {"code": code, "message": message}))
    results.output = b"".join(output)
    results.errors = b"".join(errors)
    return results


def _answer(
    batch: Batch, index: int, row: Row, cache: PromptCache | None, results: Results
) -> tuple[int, dict[str, Any]]:
    """What the chat endpoint would answer this row: a refusal, a server fault or a
    completion with its usage."""
    results.ran += 1
    if row.refusal is not None:
        results.failed += 1
        return row.refusal
    call = row.call
    assert call is not None  # a row has a call or a refusal
    if row.fault in protocol.SERVER_FAULTS:
        results.failed += 1
        message = protocol.SERVER_FAULTS[row.fault]
        return int(row.fault), protocol.error_object(message, "server_error", None)
    content, finish_reason = completion.answer(batch.seed, call, row.fault)
    tokens = count_tokens(content)
    cached = 0 if cache is None else min(call.prompt_tokens, cache.serve(call.model, call.prompt))
    results.prompt_tokens += call.prompt_tokens
    results.cached_tokens += cached
    results.completion_tokens += tokens
    ident = f"chatcmpl-{batch.id.removeprefix('batch_')}{index:06d}"
    created_s = batch.epoch_s(batch.row_end_s(index))
    return 200, protocol.completion_object(
        ident, created_s, call, content, finish_reason, tokens, cached
    )


def _line(
    batch: Batch,
    index: int,
    custom_id: str,
    response: dict[str, Any] | None,
    error: dict[str, str] | None,
) -> bytes:
    ident = f"batch_req_{batch.id.removeprefix('batch_')}{index:06d}"
    line = {"id": ident, "custom_id": custom_id, "response": response, "error": error}
    return json.dumps(line).encode() + b"\n"


def _request_id(batch_id: str, custom_id: str) -> str:
    return "req_" + hashlib.blake2b(f"{batch_id}|{custom_id}".encode(), digest_size=16).hexdigest()
