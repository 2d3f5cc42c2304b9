"""``POST /v1/batches``: a request body -> validated rows and options, or a precise error.

Two bodies are accepted: JSON (:class:`~bulkgen.api.schemas.BatchRequest`) and a
multipart upload of a CSV or JSONL file (fields ``file``, and optionally ``options`` as a
JSON object, ``template`` and ``budget_usd``). Either way the rows go through the same
intake code as ``bulkgen submit`` (:mod:`bulkgen.intake`), so a row the CLI refuses is
refused here with the same row and field.

Reading happens in two steps so that a retried request can be recognised before any
validation work: :func:`read_draft` parses the body and computes the digest its
Idempotency-Key is bound to; :func:`validate_draft` then applies the intake rules and the
API's size limits.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import PurePath
from typing import Any

from fastapi import Request
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from bulkgen.api.errors import ApiError
from bulkgen.api.schemas import BatchRequest, Budget
from bulkgen.api.settings import ApiSettings
from bulkgen.errors import ConfigError
from bulkgen.intake import JobInput, parse_csv, parse_jsonl, parse_rows
from bulkgen.models import BatchMode
from bulkgen.options import BatchOptions
from bulkgen.options import validate_options as intake_validate_options
from bulkgen.settings import Settings

__all__ = ["Draft", "read_draft", "validate_draft"]

_BUDGET = TypeAdapter(Budget)
_DELIVERY_FIELDS = ("mode", "deadline_h", "fallback_online")
_FORM_FIELDS = {"file", "options", "template", "budget_usd", *_DELIVERY_FIELDS}
_UPLOAD_TYPES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_UPLOAD_MEDIA = {"text/csv": "csv", "application/jsonl": "jsonl", "application/x-ndjson": "jsonl"}


@dataclass(frozen=True)
class Draft:
    """A parsed, not yet validated, submit request."""

    items: list[Any] | None  # JSON body
    upload: tuple[str, bytes] | None  # (csv | jsonl, file bytes) of a multipart body
    options: dict[str, Any]
    template: str | None
    budget_usd: Decimal | None
    request_hash: str  # what an Idempotency-Key is bound to
    mode: BatchMode = BatchMode.ONLINE
    deadline_h: float | None = None
    fallback_online: bool = False


def _invalid(message: str, *, field: str | None = None, row: int | None = None) -> ApiError:
    return ApiError(422, "invalid_request", message, field=field, row=row)


def _first_error(exc: ValidationError, prefix: str = "") -> ApiError:
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ())]
    field = prefix + ".".join(loc) if loc else (prefix.rstrip(".") or None)
    message = first.get("msg", "invalid value")
    return _invalid(f"{field}: {message}" if field else message, field=field)


def _digest(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _budget_text(budget: Decimal | None) -> str | None:
    return None if budget is None else format(budget.normalize(), "f")


async def read_draft(request: Request) -> Draft:
    """Parse the body by its content type; 415 for any other type."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        return _json_draft(await request.body())
    if content_type == "multipart/form-data":
        return await _upload_draft(request)
    raise ApiError(
        415,
        "unsupported_media_type",
        "send application/json, or multipart/form-data with a CSV or JSONL file",
        field="Content-Type",
    )


def _json_draft(body: bytes) -> Draft:
    try:
        parsed = BatchRequest.model_validate_json(body)
    except ValidationError as exc:
        raise _first_error(exc) from None
    payload = {
        "items": parsed.items,
        "options": parsed.options,
        "template": parsed.template,
        "budget_usd": _budget_text(parsed.budget_usd),
        **_delivery(parsed.mode, parsed.deadline_h, parsed.fallback_online),
    }
    return Draft(
        items=parsed.items,
        upload=None,
        options=parsed.options,
        template=parsed.template,
        budget_usd=parsed.budget_usd,
        request_hash=_digest(payload),
        mode=parsed.mode,
        deadline_h=parsed.deadline_h,
        fallback_online=parsed.fallback_online,
    )


def _delivery(mode: BatchMode, deadline_h: float | None, fallback: bool) -> dict[str, Any]:
    """How the batch is sent, as the request's digest holds it; economy's options are
    refused on an online batch rather than ignored."""
    if mode != BatchMode.ECONOMY and (deadline_h is not None or fallback):
        field = "deadline_h" if deadline_h is not None else "fallback_online"
        raise _invalid(f"{field} applies to economy batches only (mode: economy)", field=field)
    if deadline_h is not None and not fallback:
        raise _invalid(
            "deadline_h says when what is missing runs online: it needs fallback_online",
            field="deadline_h",
        )
    if mode == BatchMode.ONLINE:
        return {}  # the digest of an online request stays what it always was
    return {"mode": str(mode), "deadline_h": deadline_h, "fallback_online": fallback}


async def _read_form(request: Request) -> FormData:
    """The parsed form; Starlette's 400 for a malformed one (too many parts, a broken
    boundary) becomes the documented 422 that says what is wrong."""
    try:
        return await request.form(max_files=1, max_fields=len(_FORM_FIELDS))
    except HTTPException as exc:
        raise _invalid(f"unreadable multipart form: {exc.detail}") from None


async def _upload_draft(request: Request) -> Draft:
    form = await _read_form(request)
    try:
        unknown = sorted(set(form.keys()) - _FORM_FIELDS)
        if unknown:
            raise _invalid(f"unknown form field(s): {', '.join(unknown)}", field=unknown[0])
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise _invalid("the form needs a `file` part with the CSV or JSONL", field="file")
        kind = _upload_kind(upload)
        data = await upload.read()
        options = _form_options(form.get("options"))
        template = _form_text(form.get("template"), "template")
        budget_text = _form_text(form.get("budget_usd"), "budget_usd")
        delivery_fields = {
            name: text
            for name in _DELIVERY_FIELDS
            if (text := _form_text(form.get(name), name)) is not None
        }
    finally:
        await form.close()
    try:
        budget = None if budget_text is None else _BUDGET.validate_python(budget_text)
    except ValidationError as exc:
        raise _first_error(exc, "budget_usd") from None
    try:  # read as the JSON body's fields are, with their bounds and messages
        delivery = BatchRequest.model_validate({"items": [], **delivery_fields})
    except ValidationError as exc:
        raise _first_error(exc) from None
    payload = {
        "upload_sha256": hashlib.sha256(data).hexdigest(),
        "upload_kind": kind,
        "options": options,
        "template": template,
        "budget_usd": _budget_text(budget),
        **_delivery(delivery.mode, delivery.deadline_h, delivery.fallback_online),
    }
    return Draft(
        items=None,
        upload=(kind, data),
        options=options,
        template=template,
        budget_usd=budget,
        request_hash=_digest(payload),
        mode=delivery.mode,
        deadline_h=delivery.deadline_h,
        fallback_online=delivery.fallback_online,
    )


def _upload_kind(upload: UploadFile) -> str:
    suffix = PurePath(upload.filename or "").suffix.lower()
    media = (upload.content_type or "").split(";")[0].strip().lower()
    kind = _UPLOAD_TYPES.get(suffix) or _UPLOAD_MEDIA.get(media)
    if kind is None:
        raise _invalid(
            f"unsupported file {upload.filename!r}: name it .csv, .jsonl or .ndjson", field="file"
        )
    return kind


def _form_text(value: object, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(f"`{field}` must be a text field, not a file", field=field)
    return value


def _form_options(value: object) -> dict[str, Any]:
    text = _form_text(value, "options")
    if text is None or not text.strip():
        return {}
    try:
        options = json.loads(text)
    except ValueError:
        options = None
    if not isinstance(options, dict):
        raise _invalid("`options` must be a JSON object", field="options")
    return options


def validate_draft(
    draft: Draft, limits: ApiSettings, settings: Settings
) -> tuple[list[JobInput], BatchOptions]:
    """The intake rules (same as the CLI's) and the API's limits; the first failure raises."""
    rows = _rows(draft, limits)
    _check_item_sizes(rows, limits.max_item_chars)
    raw = dict(draft.options)
    if draft.template is not None:
        if raw.get("template") is not None:
            raise ApiError(
                422,
                "invalid_options",
                "the template is given twice: as `template` and as `options.template`",
                field="template",
            )
        raw["template"] = draft.template
    template = raw.get("template")
    if isinstance(template, str) and len(template) > limits.max_template_chars:
        raise ApiError(
            422,
            "template_too_large",
            f"the template has {len(template):,} characters; "
            f"the limit is {limits.max_template_chars:,}",
            field="template",
        )
    return rows, validate_options(raw, settings)


def _rows(draft: Draft, limits: ApiSettings) -> list[JobInput]:
    if draft.upload is not None:
        kind, data = draft.upload
        parser = parse_csv if kind == "csv" else parse_jsonl
        return parser(data, max_rows=limits.max_items)
    items = draft.items or []
    if len(items) > limits.max_items:
        raise ApiError(
            422,
            "too_many_items",
            f"the batch has {len(items):,} items; the limit is {limits.max_items:,} per batch",
            field="items",
        )
    return parse_rows(items, max_rows=limits.max_items)


def _item_chars(row: JobInput) -> int:
    return len(row.keyword) + sum(len(k) + len(v) for k, v in row.variables.items())


def _check_item_sizes(rows: list[JobInput], max_chars: int) -> None:
    for number, row in enumerate(rows, start=1):
        size = _item_chars(row)
        if size > max_chars:
            raise ApiError(
                422,
                "item_too_large",
                f"row {number} has {size:,} characters of keyword and variables; "
                f"the limit is {max_chars:,}",
                row=number,
            )


def validate_options(raw: dict[str, Any], settings: Settings) -> BatchOptions:
    """:func:`bulkgen.options.validate_options`, with the failing option named as the field.

    The intake's error names the option in its message only; trying each option alone
    finds which one it was, so the API can say so in ``field``.
    """
    try:
        return intake_validate_options(raw, settings)
    except ConfigError as exc:
        field = next((f"options.{name}" for name in raw if _fails_alone(name, raw, settings)), None)
        if field == "options.template":
            field = "template"
        raise ApiError(422, "invalid_options", str(exc), field=field) from exc


def _fails_alone(name: str, raw: dict[str, Any], settings: Settings) -> bool:
    try:
        intake_validate_options({name: raw[name]}, settings)
    except ConfigError:
        return True
    return False
