"""Opaque page cursors. A client passes back what it was given; what is inside (the last
row's sort key) may change without breaking anyone, and a mangled cursor is a clear 422."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Any

from bulkgen.api.errors import ApiError

__all__ = ["decode_batch_cursor", "decode_job_cursor", "encode_batch_cursor", "encode_job_cursor"]


def _encode(payload: dict[str, Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise _invalid() from exc
    if not isinstance(payload, dict):
        raise _invalid()
    return payload


def _invalid() -> ApiError:
    return ApiError(
        422, "invalid_cursor", "the cursor is not one this API gave out", field="cursor"
    )


def encode_batch_cursor(created_at: datetime, batch_id: uuid.UUID) -> str:
    return _encode({"t": created_at.isoformat(), "id": str(batch_id)})


def decode_batch_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    payload = _decode(cursor)
    try:
        created = datetime.fromisoformat(str(payload["t"]))
        batch_id = uuid.UUID(str(payload["id"]))
    except (KeyError, ValueError) as exc:
        raise _invalid() from exc
    if created.tzinfo is None:
        raise _invalid()
    return created, batch_id


_MAX_JOB_ID = 2**63 - 1


def encode_job_cursor(job_id: int) -> str:
    return _encode({"after": job_id})


def decode_job_cursor(cursor: str) -> int:
    after = _decode(cursor).get("after")
    if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= _MAX_JOB_ID:
        raise _invalid()
    return after
