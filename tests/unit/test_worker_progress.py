"""The worker's progress figures, from plain snapshots (no worker, no clock)."""

from __future__ import annotations

import dataclasses
import io
import logging
from typing import Any

import pytest
from rich.console import Console
from rich.file_proxy import FileProxy

from bulkgen.db.store import DoneRow, FailedRow, RetryRow
from bulkgen.models import JobStatus
from bulkgen.worker import WorkerTally
from bulkgen.worker_progress import ProgressSnapshot, RateWindow, _logs_through


def snap(at_s: float, done: int = 0, **counts: Any) -> ProgressSnapshot:
    base = ProgressSnapshot(at_s, done, 0, 0, 0, 0, 0, None)
    return dataclasses.replace(base, **counts)


def done_row(job_id: int, *, cached: bool) -> DoneRow:
    return DoneRow(job_id, "text", "<p>text</p>", "t", 1, "stop", "gpt-4o", cached, 1, 1, None)


def test_the_tally_counts_each_kind_of_outcome() -> None:
    tally = WorkerTally()
    for outcome in (
        done_row(1, cached=False),
        done_row(2, cached=True),
        RetryRow(3, 1.0, 1, 0, False, "server_error", "503"),
        FailedRow(4, JobStatus.FAILED, 1, "quota", "no money"),
        FailedRow(5, JobStatus.CANCELLED, 0, "budget_exceeded", "cap"),
    ):
        tally.count(outcome)
    assert (tally.done, tally.cached, tally.retried) == (2, 1, 1)
    assert (tally.failed, tally.cancelled, tally.finished) == (1, 1, 4)


def test_rate_is_jobs_finished_per_minute_between_snapshots() -> None:
    later = snap(40.0, done=18, failed=2)
    assert later.per_min_since(snap(10.0, done=5)) == pytest.approx(30.0)
    assert later.per_min_since(later) == 0.0


def test_the_rate_window_forgets_what_is_older_than_the_window() -> None:
    window = RateWindow(window_s=30.0)
    assert window.add(snap(0.0)) == 0.0
    assert window.add(snap(10.0, done=100)) == pytest.approx(600.0)
    window.add(snap(20.0, done=120))
    # At 45 s the rate covers the last 30 s at least: from 10 s, the newest snapshot that is
    # a whole window old (0 s is forgotten; from 20 s it would be 36/min).
    assert window.add(snap(45.0, done=135)) == pytest.approx(60.0)


def test_eta_needs_a_known_backlog_and_a_rate() -> None:
    assert snap(0.0, left=120).eta_s(60.0) == pytest.approx(120.0)
    assert snap(0.0, left=None).eta_s(60.0) is None
    assert snap(0.0, left=120).eta_s(0.0) is None


def test_an_idle_worker_has_no_news_but_a_busy_or_changed_one_has() -> None:
    idle = snap(10.0, done=5, left=0)
    assert idle.idle_since(snap(0.0, done=5, left=0))
    assert not idle.idle_since(snap(0.0, done=4, left=1))  # finished one since
    assert not snap(10.0, done=5, in_flight=1, left=1).idle_since(idle)
    assert not snap(10.0, done=5, left=3).idle_since(idle)  # work queued, none taken yet
    assert not snap(10.0, done=5, retried=1, left=0).idle_since(idle)


def test_log_fields_and_live_text_say_the_same_counts() -> None:
    now = snap(60.0, done=120, cached=20, failed=3, retried=7, in_flight=12, left=80)
    assert now.fields(123.456) == {
        "done": 120,
        "cached": 20,
        "failed": 3,
        "cancelled": 0,
        "retried": 7,
        "in_flight": 12,
        "left": 80,
        "per_min": 123.5,
    }
    assert now.counts_text() == (
        "done 120 (20 cached) · failed 3 · retried 7 · in flight 12 · left 80"
    )
    assert now.pace_text(60.0) == "60/min · eta 0:01:20"
    assert now.pace_text(95.0, final=True) == "95/min on average"
    assert snap(0.0, left=0).pace_text(0.0) == "waiting for jobs"
    assert snap(0.0).fields(0.0)["left"] == "?" and "left ?" in snap(0.0).counts_text()


def test_log_lines_go_through_the_console_while_the_live_display_is_up() -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True)
    handler = logging.StreamHandler(screen)
    other = logging.StreamHandler(io.StringIO())  # another stream: left alone
    root = logging.getLogger()
    root.addHandler(handler)
    root.addHandler(other)
    try:
        with _logs_through(console):
            assert isinstance(handler.stream, FileProxy)
            assert handler.stream.rich_proxied_file is screen
            assert not isinstance(other.stream, FileProxy)
            logging.getLogger("bulkgen.test").warning("through.the.console")
        assert handler.stream is screen
    finally:
        root.removeHandler(handler)
        root.removeHandler(other)
    assert "through.the.console" in screen.getvalue()
