"""What ``bulkgen worker`` shows while it runs: a live display in a terminal, log events
elsewhere. A real worker, real PostgreSQL, the simulator over HTTP."""

from __future__ import annotations

import io
import logging

import pytest
from rich.console import Console

from bulkgen.simulator import SimConfig, running_simulator
from bulkgen.worker_progress import worker_progress

from .pipeline_support import make_settings, start, submit

pytestmark = pytest.mark.postgres

QUICK_SIM = SimConfig(rpm=None, tpm=None, ttft_ms=5, tokens_per_s=0, seed=4)
JOBS = 20


async def _burst(database_url: str, console: Console, every_s: float = 10.0) -> None:
    async with running_simulator(QUICK_SIM) as base_url:
        svc = await start(make_settings(database_url, base_url))
        try:
            await submit(svc, JOBS, max_tokens=200, target_words=100)
            worker = svc.worker(burst=True)
            async with worker_progress(worker, svc.store, console, every_s=every_s):
                await worker.run()
        finally:
            await svc.aclose()


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    return [vars(r) for r in caplog.records if r.getMessage() == name]


async def test_without_a_terminal_it_logs_progress_and_a_summary(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    console = Console(file=io.StringIO(), force_terminal=False)
    with caplog.at_level(logging.INFO, logger="bulkgen.worker_progress"):
        await _burst(database_url, console, every_s=0.01)
    lines = _events(caplog, "worker.progress")
    assert lines, "no progress line while the batch ran"
    done = [int(str(line["done"])) for line in lines]
    assert done == sorted(done) and all(line["left"] != "?" for line in lines)
    (summary,) = _events(caplog, "worker.summary")
    assert (summary["done"], summary["failed"], summary["in_flight"], summary["left"]) == (
        JOBS,
        0,
        0,
        0,
    )
    assert console.file.getvalue() == ""  # type: ignore[attr-defined]


async def test_in_a_terminal_it_shows_a_live_display_with_logs_above(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=80)
    handler = logging.StreamHandler(screen)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        await _burst(database_url, console)
        logging.getLogger("bulkgen.test").warning("after.the.display")
    finally:
        root.removeHandler(handler)
    shown = screen.getvalue()
    assert f"{JOBS}/{JOBS}" in shown and f"done {JOBS}" in shown and "left 0" in shown
    assert "/min on average" in shown
    assert "worker.started" in shown and shown.rstrip().endswith("after.the.display")
    assert handler.stream is screen  # writes straight to its stream again afterwards
