"""The Files API's store: uploaded batch inputs and the batches' output and error files.

In memory (the simulator is a test double) and bounded: everything stored, uploads and
results alike, counts against ``files_max_bytes``, and an upload that would pass it is
refused whole (HTTP 413), so a runaway client cannot grow the simulator without end.
Deleting a file gives its room back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from python_multipart.multipart import parse_options_header

FILE_TTL_S = 30 * 24 * 3600
"""Batch files expire 30 days after their creation (shown, not enforced)."""


class UploadError(Exception):
    """A ``POST /v1/files`` body that is not a usable upload; answered with HTTP 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class Upload:
    filename: str
    purpose: str
    content: bytes


@dataclass(frozen=True)
class StoredFile:
    id: str
    filename: str
    purpose: str
    created_at: int
    content: bytes

    def to_json(self) -> dict[str, Any]:
        """OpenAI's ``FileObject``."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "expires_at": self.created_at + FILE_TTL_S,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


class FileStore:
    """Files by id, in upload order, within ``max_bytes`` in all."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used_bytes = 0
        self._files: dict[str, StoredFile] = {}
        self._created = 0

    def room_bytes(self) -> int:
        return max(0, self.max_bytes - self.used_bytes)

    def add(self, filename: str, purpose: str, content: bytes, created_at: int) -> StoredFile:
        """Store a file; the caller checked the room (results are stored regardless)."""
        self._created += 1
        stored = StoredFile(f"file-sim{self._created:016d}", filename, purpose, created_at, content)
        self._files[stored.id] = stored
        self.used_bytes += len(content)
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        return self._files.get(file_id)

    def delete(self, file_id: str) -> bool:
        stored = self._files.pop(file_id, None)
        if stored is None:
            return False
        self.used_bytes -= len(stored.content)
        return True

    def listed(self, purpose: str | None, newest_first: bool) -> list[StoredFile]:
        files = [f for f in self._files.values() if purpose is None or f.purpose == purpose]
        return files[::-1] if newest_first else files


def parse_upload(content_type: str, body: bytes) -> Upload:
    """The ``file`` and ``purpose`` fields of a ``multipart/form-data`` upload, as the
    official SDK sends them."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UploadError("Expected a multipart/form-data body with a boundary.")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in body.split(b"--" + boundary)[1:]:
        if part.startswith(b"--"):
            break
        head, separator, data = part.partition(b"\r\n\r\n")
        if not separator:
            raise UploadError("A part of the multipart body has no header.")
        name, filename = _disposition(head)
        if name is not None:
            fields[name] = (filename, data.removesuffix(b"\r\n"))
    if "file" not in fields:
        raise UploadError("Missing required parameter: 'file'.", "file")
    if "purpose" not in fields:
        raise UploadError("Missing required parameter: 'purpose'.", "purpose")
    filename, content = fields["file"]
    purpose = fields["purpose"][1].decode("utf-8", "replace")
    return Upload(filename or "upload.jsonl", purpose, content)


def _disposition(head: bytes) -> tuple[str | None, str | None]:
    """The ``name`` and ``filename`` of a part's ``Content-Disposition``."""
    for line in head.decode("latin-1").split("\r\n"):  # bytes kept as they came
        header, _, value = line.partition(":")
        if header.strip().lower() == "content-disposition":
            _, options = parse_options_header(value.strip())
            name = options.get(b"name")
            filename = options.get(b"filename")
            return (
                None if name is None else name.decode("utf-8", "replace"),
                None if filename is None else filename.decode("utf-8", "replace"),
            )
    return None, None
