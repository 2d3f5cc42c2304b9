"""A batch's results as JSON Lines or CSV, one row at a time, so any size streams.

JSONL carries every field as stored. CSV flattens a row for spreadsheets, and a cell a
spreadsheet would run as a formula (text starting with ``=``, ``+``, ``-``, ``@``, a tab
or a carriage return: the OWASP list) gets a leading apostrophe, so an article or keyword
written by someone hostile cannot execute in the reader's spreadsheet. The cost is an
apostrophe in front of, say, a keyword like ``-5 tips``; the JSONL keeps the exact text.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Any

__all__ = ["CSV_COLUMNS", "csv_lines", "jsonl_line", "neutralize_cell"]

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
