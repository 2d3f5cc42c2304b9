"""The progress stream's logic over a scripted store and clock: which events it sends,
when it keeps the connection alive, how it measures the rate, and that it ends."""

from __future__ import annotations

import json
import uuid
from typing import Any, cast

from bulkgen.api.events import KEEP_ALIVE, ProgressSample, progress_events
from bulkgen.batch_status import counts_by_status
from bulkgen.db.store import StatusCount, Store


class ScriptedStore:
    """Answers ``batch_counts`` from a list of ``{status: jobs}``, one per poll."""

    def __init__(self, polls: list[dict[str, int]]) -> None:
        self.polls = polls
        self.calls = 0

    async def batch_counts(self, batch_id: uuid.UUID) -> list[StatusCount]:
        counts = self.polls[min(self.calls, len(self.polls) - 1)]
        self.calls += 1
        return [StatusCount(s, n, 0, 0, 0, 0) for s, n in counts.items()]


class StepClock:
    """Each reading is ``step_s`` later than the one before."""

    def __init__(self, step_s: float) -> None:
        self.now_s = 0.0
        self.step_s = step_s

    def __call__(self) -> float:
        self.now_s += self.step_s
        return self.now_s


async def _events(polls: list[dict[str, int]], *, step_s: float, keepalive_s: float) -> list[str]:
    store = ScriptedStore(polls)
    chunks = progress_events(
        cast(Store, store),
        uuid.uuid4(),
        10,
        interval_s=0,
        keepalive_s=keepalive_s,
        clock=StepClock(step_s),
    )
    return [chunk async for chunk in chunks]


def _parse(chunk: str) -> tuple[str, dict[str, Any]]:
    name_line, data_line = chunk.strip().split("\n")
    assert name_line.startswith("event: ") and data_line.startswith("data: ")
    return name_line[7:], json.loads(data_line[6:])


async def test_sends_changes_only_then_one_end_event() -> None:
    polls = [
        {"queued": 10},
        {"queued": 10},
        {"queued": 6, "generating": 2, "done": 2},
        {"queued": 6, "generating": 2, "done": 2},
        {"done": 9, "failed": 1},
    ]
    chunks = await _events(polls, step_s=1.0, keepalive_s=100)
    events = [_parse(c) for c in chunks]
    assert [name for name, _ in events] == ["progress", "progress", "progress", "end"]
    assert [data["done"] for _, data in events] == [0, 2, 10, 10]
    first, second, third, end = (data for _, data in events)
    assert first["rate_jobs_per_s"] is None and first["eta_s"] is None
    # 2 jobs finished between two polls 2 s apart (one poll without change in between).
    assert second["rate_jobs_per_s"] == 1.0 and second["eta_s"] == 8.0
    assert third["finished"] is True and third["counts"]["failed"] == 1
    assert end["status"] == "mixed" and end["counts"] == third["counts"]
    assert end["total"] == 10


async def test_quiet_stream_sends_keep_alive_comments() -> None:
    polls = [{"generating": 1}] * 9 + [{"done": 1}]
    chunks = await _events(polls, step_s=1.0, keepalive_s=2.5)
    assert chunks[0].startswith("event: progress")
    # 8 s without a change after the first event: a comment after 3 s, 6 s (>= 2.5 s each).
    assert chunks[1:3] == [KEEP_ALIVE, KEEP_ALIVE] and chunks.count(KEEP_ALIVE) == 2
    name, end = _parse(chunks[-1])
    assert name == "end" and end["status"] == "done"


async def test_a_finished_batch_gets_one_progress_and_the_end_at_once() -> None:
    chunks = await _events([{"cancelled": 10}], step_s=1.0, keepalive_s=100)
    names = [_parse(c)[0] for c in chunks]
    assert names == ["progress", "end"]
    assert _parse(chunks[1])[1]["status"] == "cancelled"


def test_rate_ignores_cancelled_jobs() -> None:
    before = ProgressSample(counts_by_status({"queued": 10}), at_s=0.0)
    after = ProgressSample(counts_by_status({"queued": 2, "done": 2, "cancelled": 6}), at_s=4.0)
    assert after.rate_since(before) == 0.5
    assert after.rate_since(None) is None
