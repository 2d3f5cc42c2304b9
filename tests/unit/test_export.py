"""Exporting results streams: each row is written before the next is read, none is kept."""

from __future__ import annotations

import json
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bulkgen.export import write_results


class Row(dict[str, Any]):
    """A result row that can be watched with a weak reference."""


def make_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "input": {"keyword": f"Green Tea #{i}"},
            "status": "done" if i % 3 else "failed",
            "content": f"# Article {i}\n\ntext" if i % 3 else None,
        }
        for i in range(1, n + 1)
    ]


class Watched:
    """Yields fresh rows and records, at each step, how many earlier rows are still alive."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.alive_before_next: list[int] = []

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        refs: list[weakref.ref[Row]] = []
        for data in self.rows:
            self.alive_before_next.append(sum(ref() is not None for ref in refs))
            row = Row(data)
            refs.append(weakref.ref(row))
            yield row
            del row


async def test_jsonl_holds_one_row_at_a_time(tmp_path: Path) -> None:
    rows = make_rows(50)
    source = Watched(rows)
    out = tmp_path / "nested" / "all.jsonl"
    written = await write_results(source, out)
    assert written == sum(r["status"] == "done" for r in rows)
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    # The exporter's loop variable still holds the row just written; nothing older.
    assert max(source.alive_before_next) <= 1


async def test_folder_writes_each_article_before_reading_the_next(tmp_path: Path) -> None:
    rows = make_rows(30)
    out = tmp_path / "articles"
    seen: list[int] = []

    async def source() -> AsyncIterator[dict[str, Any]]:
        for row in rows:
            seen.append(len(list(out.iterdir())) if out.exists() else 0)
            yield row

    written = await write_results(source(), out)
    done = [r for r in rows if r["status"] == "done"]
    assert written == len(done)
    files = sorted(out.iterdir())
    assert len(files) == len(done)
    assert (out / "1-green-tea-1.md").read_text() == "# Article 1\n\ntext"
    # Before row k is read, every done article among rows 1..k-1 is already a file.
    assert seen == [sum(r["status"] == "done" for r in rows[:k]) for k in range(len(rows))]
