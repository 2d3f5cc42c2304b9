"""Writing a batch's results out, one row at a time.

Rows come from an async iterator (the store reads them page by page) and each is written
before the next is read, so exporting 10,000 articles holds one page in memory, not the
batch. Two forms: a ``.jsonl``/``.ndjson`` file with every job (done or not), or a folder
with one Markdown file per done article.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterable
from pathlib import Path
from typing import Any, Protocol, TextIO

__all__ = ["write_results"]

JSONL_SUFFIXES = (".jsonl", ".ndjson")


class _Sink(Protocol):
    def add(self, row: dict[str, Any]) -> bool: ...

    def close(self) -> None: ...


class _JsonlSink:
    """Every job, one JSON object per line; counts the done ones."""

    def __init__(self, out: Path) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        self._fh: TextIO = out.open("w", encoding="utf-8")

    def add(self, row: dict[str, Any]) -> bool:
        self._fh.write(json.dumps(row, default=str) + "\n")
        return bool(row["status"] == "done")

    def close(self) -> None:
        self._fh.close()


class _FolderSink:
    """One ``<job id>-<keyword slug>.md`` per done article; other jobs are skipped."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self._out = out

    def add(self, row: dict[str, Any]) -> bool:
        if row["status"] != "done":
            return False
        slug = re.sub(r"[^a-z0-9]+", "-", row["input"]["keyword"].lower()).strip("-")[:80]
        path = self._out / f"{row['id']}-{slug or 'article'}.md"
        path.write_text(row["content"], encoding="utf-8")
        return True

    def close(self) -> None:
        return None


async def write_results(rows: AsyncIterable[dict[str, Any]], out: Path) -> int:
    """Write ``rows`` to ``out`` (a JSONL file or a folder); returns the articles written.

    The writes are small and blocking, on purpose: the export is the only work of the
    command that runs it, and each row is handed to the file before the next is read.
    """
    sink: _Sink = _JsonlSink(out) if out.suffix in JSONL_SUFFIXES else _FolderSink(out)
    written = 0
    try:
        async for row in rows:
            written += sink.add(row)
    finally:
        sink.close()
    return written
