"""Result export: JSONL as stored, CSV flattened with formula cells neutralised."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bulkgen.export import CSV_COLUMNS, csv_lines, jsonl_line, neutralize_cell


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"])
def test_formula_starts_get_an_apostrophe(text: str) -> None:
    assert neutralize_cell(text) == "'" + text


@pytest.mark.parametrize("value", ["plain", "a=b", " =x", "", 42, None])
def test_other_cells_are_kept(value: object) -> None:
    assert neutralize_cell(value) == value


def test_booleans_read_like_json() -> None:
    assert (neutralize_cell(True), neutralize_cell(False)) == ("true", "false")


ROW: dict[str, Any] = {
    "id": 7,
    "input": {"keyword": "=evil()", "variables": {"who": "@me"}, "overrides": {"tone": "dry"}},
    "status": "done",
    "attempts": 1,
    "error_kind": None,
    "error_message": None,
    "cached": False,
    "prompt_tokens": 10,
    "completion_tokens": 20,
    "content": "- a list\n- of things",
    "html": "<ul><li>a list</li></ul>",
    "title": 'Título, "quoted"',
    "word_count": 5,
    "finish_reason": "stop",
    "model": "gpt-4o",
}


async def _rows(*rows: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    for row in rows:
        yield row


async def test_csv_has_the_header_then_one_record_per_row() -> None:
    text = "".join([line async for line in csv_lines(_rows(ROW, {**ROW, "id": 8}))])
    records = list(csv.reader(io.StringIO(text, newline="")))
    assert records[0] == list(CSV_COLUMNS) and len(records) == 3
    first = dict(zip(CSV_COLUMNS, records[1], strict=True))
    assert first["keyword"] == "'=evil()"
    assert first["content"] == "'- a list\n- of things"  # newlines survive quoting
    assert first["title"] == 'Título, "quoted"'
    assert json.loads(first["variables"]) == {"who": "@me"}
    assert first["cached"] == "false" and first["error_kind"] == ""


def test_jsonl_keeps_the_exact_text() -> None:
    line = jsonl_line(ROW)
    assert line.endswith("\n") and json.loads(line) == ROW
