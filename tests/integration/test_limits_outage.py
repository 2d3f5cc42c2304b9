"""A provider outage opens the circuit breaker; the batch survives it and completes.

Real PostgreSQL, the simulator over real HTTP in this event loop. What the breaker
promises, and what this test holds it to:

- every 503 costs the job that received it one attempt (the retry policy treats 5xx as a
  failed attempt): exactly one ``server_error`` retry per 503 the simulator sent, and
  no attempt is spent on anything but a real answer from the provider;
- while the circuit is open, jobs are not sent: the only requests the provider sees are
  the half-open probes, at most one per cooldown; claimed jobs wait at admission and
  unclaimed ones stay ``queued`` with their attempts intact;
- once the outage ends, the next probe closes the circuit and every job ends ``done``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest

from bulkgen.limits import BreakerState, LimitKey
from bulkgen.service import Services
from bulkgen.simulator import SimConfig, running_simulator
from bulkgen.simulator.control import sim_configure, sim_stats

from .pipeline_support import make_settings, start, statuses, submit

pytestmark = pytest.mark.postgres

JOBS = 40
COOLDOWN_S = 0.3
OUTAGE_S = 1.2


async def _until(predicate: Callable[[], Awaitable[bool]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def _outage(svc: Services, sim: str, key: LimitKey, batch_id: uuid.UUID) -> tuple[int, float]:
    """Fail every request until the breaker opens, hold the outage, end it.

    Returns the requests the provider saw while the circuit was open, and for how long.
    """

    async def some_done() -> bool:
        return (await statuses(svc, batch_id)).get("done", 0) >= 5

    await _until(some_done, 60.0)
    await sim_configure(sim, {"faults": {"503": 1.0}})

    async def breaker_open() -> bool:
        return svc.governor.breaker_state(key) is not BreakerState.CLOSED

    await _until(breaker_open, 60.0)
    opened_s = time.monotonic()
    before = (await sim_stats(sim))["requests"]
    await asyncio.sleep(OUTAGE_S)
    during = (await sim_stats(sim))["requests"] - before
    open_s = time.monotonic() - opened_s
    await sim_configure(sim, {"faults": {}})
    return during, open_s


async def test_outage_opens_the_breaker_and_the_batch_completes_after_it(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bulkgen.limits.governor")
    config = SimConfig(rpm=None, tpm=None, ttft_ms=30.0, seed=4)
    async with running_simulator(config) as base_url:
        settings = make_settings(
            database_url,
            base_url,
            concurrency=4,
            max_attempts=10,
            breaker_failures=3,
            breaker_cooldown_s=COOLDOWN_S,
        )
        svc = await start(settings)
        try:
            batch_id = await submit(svc, JOBS, max_tokens=200, target_words=100)
            key = LimitKey(svc.provider.base_url, svc.provider.api_key_id, "gpt-4o")
            worker = asyncio.create_task(svc.worker(burst=True).run())
            during, open_s = await _outage(svc, base_url, key, batch_id)
            await asyncio.wait_for(worker, 30.0)
            stats = await sim_stats(base_url)
            rows = await svc.store.pool.fetch("SELECT status, attempts FROM jobs")
        finally:
            await svc.aclose()
    assert {r["status"] for r in rows} == {"done"} and len(rows) == JOBS
    failed_503 = stats["faults"].get("503", 0)
    assert failed_503 >= settings.breaker_failures  # the outage was real and opened it
    server_errors = svc.metrics.counters.get(("jobs.retried", (("error_kind", "server_error"),)))
    assert server_errors == failed_503  # each 503 burnt one attempt of the job it hit
    retried = svc.metrics.total("jobs.retried")  # 503s plus output-validation retries
    assert sum(r["attempts"] for r in rows) == JOBS + retried
    assert max(r["attempts"] for r in rows) < settings.max_attempts
    # Open: only probes reach the provider, at most one per cooldown (plus the one due now).
    # ``open_s`` is timed around both reads of the simulator's count, so it can only be
    # longer than the window counted; requests already sent when the circuit opened (one
    # per other slot) may still be counted in it on a busy machine.
    assert settings.concurrency is not None
    in_flight = settings.concurrency - 1
    assert during <= math.ceil(open_s / COOLDOWN_S) + 1 + in_flight, (during, open_s)
    assert svc.governor.breaker_state(key) is BreakerState.CLOSED
    # An operator sees the outage: the breaker opening, probing and closing, in that order.
    events = [r.getMessage() for r in caplog.records if r.getMessage().startswith("breaker.")]
    assert "breaker.opened" in events and "breaker.closed" in events, events
    first_open, last_close = (
        events.index("breaker.opened"),
        max(i for i, event in enumerate(events) if event == "breaker.closed"),
    )
    assert "breaker.probing" in events[first_open:last_close], events
