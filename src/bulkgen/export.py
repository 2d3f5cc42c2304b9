"""A batch's results written out, one row at a time, so a batch of any size streams.

Three forms, each written before the next row is read (exporting 10,000 articles holds one
page of rows in memory, not the batch):

- JSON Lines: every job with every field as stored (:func:`jsonl_line`);
- CSV for spreadsheets (:func:`csv_lines`): a row flattened, and a cell a spreadsheet would
  run as a formula (text starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
  return: the OWASP list) gets a leading apostrophe, so an article or keyword written by
  someone hostile cannot execute in the reader's spreadsheet. The cost is an apostrophe in
  front of, say, a keyword like ``-5 tips``; the JSONL keeps the exact text;
- a folder with one Markdown file per done article (:func:`write_results`).

Writing to files (:func:`write_results`, the CLI's ``results --out``) never follows a
symbolic link planted under a predictable name, and never replaces an existing JSONL file
unless asked to.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Protocol, TextIO

from bulkgen.errors import InputError
from bulkgen.models import JobStatus

__all__ = ["CSV_COLUMNS", "csv_lines", "jsonl_line", "neutralize_cell", "write_results"]

JSONL_SUFFIXES = (".jsonl", ".ndjson")

CSV_COLUMNS = (
    "id",
    "keyword",
    "status",
    "title",
    "word_count",
    "content",
    "html",
    "model",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "cached",
    "attempts",
    "error_kind",
    "error_message",
    "variables",
    "overrides",
)
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def jsonl_line(row: Mapping[str, Any]) -> str:
    """One result row (as ``Store.results_iter`` yields it) as a JSON line with its newline."""
    return json.dumps(row, default=str, ensure_ascii=False) + "\n"


def neutralize_cell(value: object) -> object:
    """Text a spreadsheet would evaluate gets a leading apostrophe; anything else is kept
    (booleans as ``true``/``false``, like the JSONL)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _csv_cells(row: Mapping[str, Any]) -> list[object]:
    given = row.get("input") or {}
    flat = {
        **row,
        "keyword": given.get("keyword"),
        "variables": json.dumps(given.get("variables") or {}, ensure_ascii=False),
        "overrides": json.dumps(given.get("overrides") or {}, ensure_ascii=False),
    }
    return [neutralize_cell(flat.get(column)) for column in CSV_COLUMNS]


def _csv_text(cells: list[object]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(cells)
    return buffer.getvalue()


async def csv_lines(rows: AsyncIterable[Mapping[str, Any]]) -> AsyncIterator[str]:
    """The header, then one CSV record per row, as each row arrives."""
    yield _csv_text(list(CSV_COLUMNS))
    async for row in rows:
        yield _csv_text(_csv_cells(row))


# Files.


def _open_new(path: Path, *, replace: bool) -> TextIO:
    """``path`` opened for writing without following a symbolic link at its last part
    (``O_NOFOLLOW``), so a link planted under a predictable name cannot redirect the write;
    an existing file is replaced only when ``replace`` is true."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if replace else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o644)
    except FileExistsError:
        raise InputError(f"{path} already exists; use --force to replace it") from None
    except OSError as exc:
        if path.is_symlink():
            raise InputError(f"{path} is a symbolic link; refusing to write through it") from None
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return os.fdopen(fd, "w", encoding="utf-8")


class _Sink(Protocol):
    def add(self, row: dict[str, Any]) -> bool: ...

    def close(self) -> None: ...


class _JsonlSink:
    """Every job, one JSON object per line; counts the done ones."""

    def __init__(self, out: Path, *, force: bool) -> None:
        if out.is_dir():
            raise InputError(f"{out} is a folder; name a .jsonl file, or drop the suffix")
        _make_folder(out.parent)
        self._fh = _open_new(out, replace=force)

    def add(self, row: dict[str, Any]) -> bool:
        self._fh.write(jsonl_line(row))
        return bool(row["status"] == JobStatus.DONE)

    def close(self) -> None:
        self._fh.close()


class _FolderSink:
    """One ``<job id>-<keyword slug>.md`` per done article; other jobs are skipped. A file
    of a previous export of the same article is replaced (its name holds the job id)."""

    def __init__(self, out: Path) -> None:
        _make_folder(out)
        self._out = out

    def add(self, row: dict[str, Any]) -> bool:
        if row["status"] != JobStatus.DONE:
            return False
        slug = re.sub(r"[^a-z0-9]+", "-", row["input"]["keyword"].lower()).strip("-")[:80]
        with _open_new(self._out / f"{row['id']}-{slug or 'article'}.md", replace=True) as fh:
            fh.write(row["content"])
        return True

    def close(self) -> None:
        return None


def _make_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the folder {folder}: {exc.strerror or exc}") from None


async def write_results(
    rows: AsyncIterable[dict[str, Any]], out: Path, *, force: bool = False
) -> int:
    """Write ``rows`` to ``out`` (a ``.jsonl``/``.ndjson`` file or a folder); returns the
    articles written. An existing JSONL file is replaced only with ``force``.

    The writes are small and blocking, on purpose: the export is the only work of the
    command that runs it, and each row is handed to the file before the next is read.
    """
    sink: _Sink = _JsonlSink(out, force=force) if out.suffix in JSONL_SUFFIXES else _FolderSink(out)
    written = 0
    try:
        async for row in rows:
            written += sink.add(row)
    finally:
        sink.close()
    return written
