"""Rate limits as a client sees them: the accepted rate and the headers agree.

The simulator app is driven in process (the SDK over httpx's ASGI transport, no server) on
a clock the test moves, so every count and header is exact however busy the machine is.
The same limiter over real HTTP and the real clock is covered in
``tests/integration/test_simulator_rate.py``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import httpx
import openai
import pytest

from bulkgen.simulator import SimConfig
from bulkgen.simulator.app import SimulatorApp

MESSAGES: list[Any] = [{"role": "user", "content": "Keyword: limits"}]


class ManualClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


class Sim:
    """One simulator app, its clock, and an SDK client bound to it."""

    def __init__(self, config: SimConfig) -> None:
        self.clock = ManualClock()
        self.app = SimulatorApp(config, clock=self.clock)
        transport = httpx.ASGITransport(app=self.app)
        self.http = httpx.AsyncClient(transport=transport, base_url="http://sim.test")
        # The SDK accepts an httpx.AsyncClient at run time; its annotation names its own
        # client type, hence the cast (as in the provider).
        self.client = openai.AsyncOpenAI(
            base_url="http://sim.test/v1",
            api_key="k",
            max_retries=0,
            http_client=cast(Any, self.http),
        )

    async def call(self) -> tuple[int, Mapping[str, str]]:
        """One request: (status, headers), never raising on a 429."""
        try:
            raw = await self.client.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=MESSAGES, max_tokens=16
            )
        except openai.RateLimitError as exc:
            return 429, exc.response.headers
        return raw.http_response.status_code, raw.headers

    async def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = (await self.http.get("/_sim/stats")).json()
        return data


@pytest.fixture
async def make_sim() -> AsyncIterator[Any]:
    sims: list[Sim] = []

    def make(config: SimConfig) -> Sim:
        sims.append(Sim(config))
        return sims[-1]

    yield make
    for sim in sims:
        await sim.client.close()
        await sim.http.aclose()


def _go_seconds(text: str) -> float:
    """Parse the ``x-ratelimit-reset-*`` durations the simulator sends (``12ms``, ``1m0.5s``)."""
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?([\d.]+)s", text)
    assert match, text
    hours, minutes, seconds = match.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds)


async def test_600_rpm_over_ten_simulated_seconds_accepts_exactly_the_limit(make_sim: Any) -> None:
    time_scale = 5.0  # 10 s of simulated time in 2 s of (test) wall time
    sim = make_sim(SimConfig(rpm=600, tpm=None, burst_s=1.0, time_scale=time_scale))
    burst = 0
    while (await sim.call())[0] == 200:  # the full bucket: one second's worth
        burst += 1
    assert burst == 10
    accepted = refused = 0
    # 2 s of wall time in 250 steps of 0.4 refilled requests each; two attempts per step
    # take everything the bucket offers.
    for _ in range(250):
        sim.clock.advance(0.008)
        for _ in range(2):
            status, headers = await sim.call()
            accepted += status == 200
            refused += status == 429
    # 10 simulated seconds at 10 requests per second, and not one more.
    assert accepted == 100
    assert refused == 500 - 100
    stats = await sim.stats()
    assert stats["ok"] == burst + accepted
    assert stats["rate_limited"]["requests"] == refused + 1  # and the one that ended the burst
    assert headers["x-ratelimit-limit-requests"] == str(600 * 5)  # per wall-clock minute


async def test_remaining_n_means_n_more_are_accepted_at_once(make_sim: Any) -> None:
    sim = make_sim(SimConfig(rpm=60, tpm=None, burst_s=10.0))  # 10 requests, one more per s
    status, headers = await sim.call()
    remaining = int(headers["x-ratelimit-remaining-requests"])
    assert (status, remaining) == (200, 9)
    results = [await sim.call() for _ in range(remaining)]
    assert [s for s, _ in results] == [200] * remaining
    assert results[-1][1]["x-ratelimit-remaining-requests"] == "0"
    status, headers = await sim.call()
    assert status == 429
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert int(headers["retry-after-ms"]) == 1000
    assert _go_seconds(headers["x-ratelimit-reset-requests"]) == 10


async def test_waiting_the_reset_header_refills_the_bucket_completely(make_sim: Any) -> None:
    sim = make_sim(SimConfig(rpm=600, tpm=None, burst_s=1.0, time_scale=10.0))
    status, headers = await sim.call()
    while status == 200:
        sim.clock.advance(0.003)  # drained while it refills, as a busy client would
        status, headers = await sim.call()
    assert headers["x-ratelimit-remaining-requests"] == "0"
    reset_s = _go_seconds(headers["x-ratelimit-reset-requests"])
    assert 0 < reset_s <= 0.1  # the whole bucket refills in 0.1 s of wall time
    sim.clock.advance(reset_s - 0.001)
    status, headers = await sim.call()
    assert headers["x-ratelimit-remaining-requests"] != "9"  # not quite full yet
    sim.clock.advance(reset_s)
    status, headers = await sim.call()
    assert status == 200
    assert headers["x-ratelimit-remaining-requests"] == "9"  # full bucket of 10, minus this one


async def test_retry_after_ms_is_enough_to_be_accepted_and_no_less(make_sim: Any) -> None:
    sim = make_sim(SimConfig(rpm=None, tpm=6000, burst_s=1.0, time_scale=4.0))  # 100 tokens
    status, headers = await sim.call()
    while status == 200:
        status, headers = await sim.call()
    retry_after_s = int(headers["retry-after-ms"]) / 1000
    sim.clock.advance(retry_after_s - 0.002)
    assert (await sim.call())[0] == 429
    sim.clock.advance(0.002)
    assert (await sim.call())[0] == 200
