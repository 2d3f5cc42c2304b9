"""Batch intake: CSV, JSONL or a Python list -> validated :class:`JobInput` rows.

A batch is accepted whole or not at all: the first bad row raises
:class:`~bulkgen.errors.InputError` naming the row and the field, before any job exists,
so a typo on row 7,412 never leaves a half-enqueued batch behind.

Conventions:

- ``row`` in errors is the **1-based data row** (header and blank lines not counted);
  for CSV and JSONL the message also gives the file's **line** number.
- CSV: comma-separated, UTF-8 (a BOM is fine), a header row with a ``keyword`` column
  (matched case-insensitively). Every other column becomes a template variable, except
  columns named like an option (``model``, ``tone``, ``language``, ``target_words``,
  ``max_tokens``, ``temperature``), which override that option for their row; an empty
  cell means "no override". Blank lines are skipped; a row with a different number of
  fields than the header is refused.
- JSONL: one JSON object per line with a ``keyword`` field; the same rules for the other
  fields (non-string values become their JSON text; ``null`` is "absent").
- Keywords are stripped of surrounding whitespace and must hold 1-500 characters.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bulkgen.errors import InputError
from bulkgen.options import OVERRIDABLE_OPTIONS, BatchOptions, check_option

__all__ = [
    "MAX_BATCH_ROWS",
    "MAX_KEYWORD_CHARS",
    "JobInput",
    "load_file",
    "parse_csv",
    "parse_jsonl",
    "parse_rows",
]

MAX_KEYWORD_CHARS = 500
MAX_BATCH_ROWS = 10_000


@dataclass(frozen=True)
class JobInput:
    """One accepted row: its keyword, its template variables and its option overrides."""

    keyword: str
    variables: dict[str, str]
    overrides: dict[str, Any]

    def options(self, base: BatchOptions) -> BatchOptions:
        """``base`` with this row's overrides applied (they were validated at intake)."""
        return base.model_copy(update=self.overrides) if self.overrides else base

    def template_variables(self, options: BatchOptions) -> dict[str, object]:
        """What a prompt template sees: the row's variables plus keyword and options."""
        return {
            **self.variables,
            "keyword": self.keyword,
            "tone": options.tone,
            "language": options.language,
            "target_words": options.target_words,
        }


# Rows.


def _at(line: int | None) -> str:
    return f" (line {line})" if line is not None else ""


def _keyword(value: object, row: int, line: int | None) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InputError(f"keyword must be text{_at(line)}", row=row, field="keyword")
    keyword = value.strip()
    if not keyword:
        raise InputError(f"keyword is empty{_at(line)}", row=row, field="keyword")
    if len(keyword) > MAX_KEYWORD_CHARS:
        raise InputError(
            f"keyword has {len(keyword)} characters, more than {MAX_KEYWORD_CHARS}{_at(line)}",
            row=row,
            field="keyword",
        )
    return keyword


def _variable(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _job(fields: Mapping[str, object], row: int, line: int | None = None) -> JobInput:
    """One row's fields -> JobInput; names are matched to keyword/options case-insensitively."""
    by_name: dict[str, str] = {}
    for name in fields:
        canonical = name.strip().lower()
        if canonical in ("keyword", *OVERRIDABLE_OPTIONS):
            if canonical in by_name:
                raise InputError(f"field given twice{_at(line)}", row=row, field=canonical)
            by_name[canonical] = name
    if "keyword" not in by_name:
        raise InputError(f"no keyword{_at(line)}", row=row, field="keyword")
    keyword = _keyword(fields[by_name.pop("keyword")], row, line)
    overrides: dict[str, Any] = {}
    for option, name in by_name.items():
        value = fields[name]
        if value is None or (isinstance(value, str) and not value.strip()):
            continue  # an empty cell: this row keeps the batch's option
        try:
            overrides[option] = check_option(option, value)
        except ValueError as exc:
            raise InputError(f"{exc}{_at(line)}", row=row, field=option) from exc
    special = set(by_name.values())
    variables = {
        name.strip(): _variable(value)
        for name, value in fields.items()
        if value is not None and name not in special and name.strip().lower() != "keyword"
    }
    return JobInput(keyword=keyword, variables=variables, overrides=overrides)


def _check_count(count: int, max_rows: int) -> None:
    if count > max_rows:
        raise InputError(f"too many rows: the limit is {max_rows} per batch", row=count)


def _check_not_empty(jobs: list[JobInput]) -> list[JobInput]:
    if not jobs:
        raise InputError("no rows: the batch is empty")
    return jobs


def _decode(data: str | bytes) -> str:
    """UTF-8 text without a BOM; invalid bytes are refused with their line number."""
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(f"not valid UTF-8 at line {line} (byte offset {exc.start})") from exc


def parse_rows(
    rows: Sequence[str | Mapping[str, object]], *, max_rows: int = MAX_BATCH_ROWS
) -> list[JobInput]:
    """A Python list: each item a keyword string or a mapping like a JSONL object."""
    _check_count(len(rows), max_rows)
    jobs: list[JobInput] = []
    for row, item in enumerate(rows, start=1):
        if isinstance(item, str):
            jobs.append(JobInput(_keyword(item, row, None), {}, {}))
        elif isinstance(item, Mapping):
            jobs.append(_job(item, row))
        else:
            raise InputError(f"must be a keyword or a mapping, not {type(item).__name__}", row=row)
    return _check_not_empty(jobs)


def parse_jsonl(data: str | bytes, *, max_rows: int = MAX_BATCH_ROWS) -> list[JobInput]:
    """One JSON object per line; blank lines are skipped and not counted as rows."""
    jobs: list[JobInput] = []
    # Split on "\n" only: JSON strings may hold U+2028 and friends, which splitlines() cuts.
    for line, text in enumerate(_decode(data).split("\n"), start=1):
        if not text.strip():
            continue
        row = len(jobs) + 1
        _check_count(row, max_rows)
        try:
            item: object = json.loads(text)
        except ValueError as exc:
            raise InputError(f"not valid JSON{_at(line)}: {exc}", row=row) from exc
        if not isinstance(item, dict):
            kind = type(item).__name__
            raise InputError(f"not a JSON object but {kind}{_at(line)}", row=row)
        jobs.append(_job(item, row, line))
    return _check_not_empty(jobs)


def _csv_records(text: str) -> Iterable[tuple[int, list[str]]]:
    """``(first line, fields)`` per CSV record; malformed CSV -> InputError with the line."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    previous_end = 0
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InputError(f"malformed CSV at line {reader.line_num}: {exc}") from exc
        start, previous_end = previous_end + 1, reader.line_num
        yield start, record


def _csv_header(records: Iterable[tuple[int, list[str]]]) -> list[str]:
    for _, record in records:
        if any(cell.strip() for cell in record):
            header = [cell.strip() for cell in record]
            break
    else:
        raise InputError("no rows: the CSV is empty (no header row)")
    for index, name in enumerate(header, start=1):
        if not name:
            raise InputError(f"column {index} of the header has no name")
        if header.count(name) > 1:
            raise InputError("column appears twice in the header", field=name)
    if "keyword" not in (name.lower() for name in header):
        raise InputError(f"no 'keyword' column; columns are {header}", field="keyword")
    return header


def parse_csv(data: str | bytes, *, max_rows: int = MAX_BATCH_ROWS) -> list[JobInput]:
    """CSV with a header row holding a ``keyword`` column (see the module docstring)."""
    records = iter(_csv_records(_decode(data)))
    header = _csv_header(records)
    jobs: list[JobInput] = []
    for line, record in records:
        if not any(cell.strip() for cell in record):
            continue  # blank line or an all-empty spreadsheet row
        row = len(jobs) + 1
        _check_count(row, max_rows)
        if len(record) != len(header):
            raise InputError(
                f"has {len(record)} fields but the header has {len(header)}{_at(line)}", row=row
            )
        jobs.append(_job(dict(zip(header, record, strict=True)), row, line))
    return _check_not_empty(jobs)


def load_file(path: Path, *, max_rows: int = MAX_BATCH_ROWS) -> list[JobInput]:
    """A batch file, by extension: ``.csv``, ``.jsonl`` or ``.ndjson``."""
    parsers = {".csv": parse_csv, ".jsonl": parse_jsonl, ".ndjson": parse_jsonl}
    parser = parsers.get(path.suffix.lower())
    if parser is None:
        raise InputError(
            f"{path.name}: unsupported file type {path.suffix!r}; use .csv, .jsonl or .ndjson"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return parser(data, max_rows=max_rows)
