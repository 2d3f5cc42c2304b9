"""The simulator's limiter over real HTTP on the real clock, judged by its own counters.

A hammering client cannot tell how fast it really went on a busy machine, so nothing here
is timed by the client: the simulator counts what it accepted in each wall-clock second
(``/_sim/stats``), and the test checks what a token bucket guarantees whatever the load -
never more than one bucket plus one second's refill in any second - and that it both
refused and refilled. The exact rate, on a clock the test controls, is in
``tests/unit/test_simulator_limits.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import openai

from bulkgen.simulator import SimConfig, running_simulator
from bulkgen.simulator.control import sim_stats

MESSAGES: list[Any] = [{"role": "user", "content": "Keyword: limits"}]
# 600 RPM on the wall clock: slow enough that even a busy machine's client asks for far more,
# so a limiter letting too much through shows in the counts.
RATE_PER_S = 10
BUCKET = 10  # one second's worth
RUN_S = 3.0
MAX_REQUESTS = 20_000  # a bound on the loop, whatever the clock does


async def _hammer(client: openai.AsyncOpenAI, until_s: float, workers: int) -> int:
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while time.monotonic() < until_s and sent < MAX_REQUESTS:
            sent += 1
            with contextlib.suppress(openai.RateLimitError):
                await client.chat.completions.create(
                    model="gpt-4o", messages=MESSAGES, max_tokens=16
                )

    await asyncio.gather(*(worker() for _ in range(workers)))
    return sent


async def test_no_wall_second_accepts_more_than_a_bucket_and_a_seconds_refill() -> None:
    config = SimConfig(rpm=600, tpm=None, burst_s=1.0)
    async with (
        running_simulator(config) as base_url,
        openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0) as client,
    ):
        sent = await _hammer(client, time.monotonic() + RUN_S, workers=16)
        stats = await sim_stats(base_url)
    per_second = {s["t"]: s["requests"] for s in stats["per_second"]}
    assert stats["requests"] == sent
    assert sum(per_second.values()) == stats["ok"]
    # The guarantee, second by second and over the whole run.
    assert max(per_second.values()) <= BUCKET + RATE_PER_S, per_second
    span_s = max(per_second) - min(per_second) + 1
    assert stats["ok"] <= BUCKET + RATE_PER_S * span_s, (stats["ok"], span_s)
    # And it is a limiter that both refuses and refills, not a wall or an open door.
    assert stats["rate_limited"]["requests"] > 0
    assert stats["ok"] > BUCKET
