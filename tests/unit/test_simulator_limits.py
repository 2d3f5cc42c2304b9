"""Rate limits as a hammering client sees them: the accepted rate and the headers agree."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import openai
import pytest

from bulkgen.simulator import SimConfig, running_simulator

MESSAGES: list[Any] = [{"role": "user", "content": "Keyword: limits"}]


def _go_seconds(text: str) -> float:
    """Parse the ``x-ratelimit-reset-*`` durations the simulator sends (``12ms``, ``1m0.5s``)."""
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?([\d.]+)s", text)
    assert match, text
    hours, minutes, seconds = match.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds)


async def _call(client: Any) -> tuple[int, Any]:
    """One request: (status, headers), never raising on a 429."""
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MESSAGES, max_tokens=16
        )
    except openai.RateLimitError as exc:
        return 429, exc.response.headers
    return raw.http_response.status_code, raw.headers


async def _hammer(client: Any, until_s: float, workers: int) -> int:
    """Send back-to-back requests from ``workers`` coroutines until ``until_s``; count 200s."""
    accepted = 0

    async def worker() -> None:
        nonlocal accepted
        while time.monotonic() < until_s:
            status, _ = await _call(client)
            if status == 200 and time.monotonic() <= until_s:
                accepted += 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    return accepted


async def test_600_rpm_over_ten_simulated_seconds_accepts_within_two_percent() -> None:
    time_scale = 5.0  # 10 s of simulated time in 2 s of wall time
    config = SimConfig(rpm=600, tpm=None, burst_s=1.0, time_scale=time_scale)
    async with (
        running_simulator(config) as base_url,
        openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0) as client,
    ):
        while (await _call(client))[0] == 200:  # drain the initial burst
            pass
        started_s = time.monotonic()
        accepted = await _hammer(client, started_s + 10.0 / time_scale, workers=24)
        elapsed_sim_s = (time.monotonic() - started_s) * time_scale
        _, headers = await _call(client)
    expected = 600 / 60 * elapsed_sim_s
    assert expected == pytest.approx(100, rel=0.05)
    assert accepted == pytest.approx(expected, rel=0.02)
    assert headers["x-ratelimit-limit-requests"] == str(600 * 5)  # per wall-clock minute


async def test_remaining_n_means_n_more_are_accepted_at_once() -> None:
    config = SimConfig(rpm=60, tpm=None, burst_s=10.0)  # 10 requests, one more per second
    async with (
        running_simulator(config) as base_url,
        openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0) as client,
    ):
        status, headers = await _call(client)
        remaining = int(headers["x-ratelimit-remaining-requests"])
        assert (status, remaining) == (200, 9)
        results = [await _call(client) for _ in range(remaining)]
        assert [s for s, _ in results] == [200] * remaining
        assert results[-1][1]["x-ratelimit-remaining-requests"] == "0"
        status, headers = await _call(client)
    assert status == 429
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 0 < int(headers["retry-after-ms"]) <= 1000
    assert _go_seconds(headers["x-ratelimit-reset-requests"]) == pytest.approx(10, abs=0.5)


async def test_waiting_the_reset_header_refills_the_bucket_completely() -> None:
    config = SimConfig(rpm=600, tpm=None, burst_s=1.0, time_scale=10.0)  # refills in 0.1 s wall
    async with (
        running_simulator(config) as base_url,
        openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0) as client,
    ):
        status, headers = await _call(client)
        while status == 200:
            status, headers = await _call(client)
        assert headers["x-ratelimit-remaining-requests"] == "0"
        reset_s = _go_seconds(headers["x-ratelimit-reset-requests"])
        assert 0 < reset_s <= 0.1
        await asyncio.sleep(reset_s)
        status, headers = await _call(client)
    assert status == 200
    assert headers["x-ratelimit-remaining-requests"] == "9"  # full bucket of 10, minus this one


async def test_retry_after_ms_is_enough_to_be_accepted() -> None:
    config = SimConfig(rpm=None, tpm=6000, burst_s=1.0, time_scale=4.0)  # 100-token bucket
    async with (
        running_simulator(config) as base_url,
        openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0) as client,
    ):
        status, headers = await _call(client)
        while status == 200:
            status, headers = await _call(client)
        await asyncio.sleep(int(headers["retry-after-ms"]) / 1000)
        status, _ = await _call(client)
    assert status == 200
