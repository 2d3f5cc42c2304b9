"""Several OS processes sharing one budget through real Redis.

Run as a script, this file is the worker side: ``python test_limits_fleet.py MODE ...``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bulkgen.errors import RateLimited
from bulkgen.limits import GovernorConfig, LimitKey, PolicyConfig, build_governor
from bulkgen.models import Completion, Usage
from bulkgen.settings import Settings

pytestmark = pytest.mark.redis

KEY = LimitKey("http://127.0.0.1:9/v1", "fleet", "gpt-fleet")
HERE = Path(__file__).resolve()


def _completion() -> Completion:
    return Completion("x", Usage(5, 5), "stop", KEY.model, latency_s=0.01)


async def _hammer(redis_url: str, rpm: int, start_at: float, duration_s: float) -> list[float]:
    """Admit as fast as the shared budget allows; the wall time of every admission."""
    client = aioredis.Redis.from_url(redis_url)
    gov = await build_governor(Settings(rpm=rpm, tpm=100_000_000), client)
    stamps: list[float] = []
    await asyncio.sleep(max(0.0, start_at - time.time()))

    async def loop() -> None:
        while time.time() < start_at + duration_s:
            async with gov.slot(KEY, 10) as slot:
                stamps.append(time.time())
                await slot.record(_completion())

    await asyncio.gather(*(loop() for _ in range(4)))
    await gov.aclose()
    await client.aclose()
    return stamps


async def _hold(redis_url: str, lease_ttl_s: float) -> None:
    """Take the only concurrency lease and never give it back (until killed)."""
    client = aioredis.Redis.from_url(redis_url)
    config = GovernorConfig(
        policy=PolicyConfig(rpm=60_000, max_concurrency=1), lease_ttl_s=lease_ttl_s
    )
    gov = await build_governor(Settings(), client, config=config)
    async with gov.slot(KEY, 10):
        print("HELD", flush=True)
        await asyncio.sleep(3600)


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE),
        *args,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )


async def _collect(procs: list[asyncio.subprocess.Process]) -> list[list[float]]:
    outs = await asyncio.gather(*(p.communicate() for p in procs))
    assert all(p.returncode == 0 for p in procs), [p.returncode for p in procs]
    return [json.loads(out) for out, _ in outs]


async def test_three_processes_share_one_budget_within_two_percent(redis_url: str) -> None:
    rpm, start_at, duration_s = 1200, time.time() + 1.5, 6.0
    procs = [
        await _spawn("hammer", redis_url, str(rpm), str(start_at), str(duration_s))
        for _ in range(3)
    ]
    per_process = await _collect(procs)
    stamps = sorted(s for stamps in per_process for s in stamps)
    assert all(len(s) > 20 for s in per_process)  # everyone got a share
    # Steady state, after the one-second burst allowance: 20 per second for 5 s.
    window = [s for s in stamps if start_at + 1.0 <= s < start_at + 6.0]
    print(f"admitted in the 5 s steady window: {len(window)} (limit 100)")
    assert abs(len(window) - 100) <= 2, len(window)
    # Whole run: never more than the rate plus one second of burst.
    in_run = [s for s in stamps if s < start_at + duration_s]
    assert len(in_run) <= rpm / 60 * duration_s + rpm / 60 + 2, len(in_run)


async def test_a_429_in_one_process_pauses_every_process(redis_url: str) -> None:
    start_at, duration_s = time.time() + 1.5, 4.0
    procs = [
        await _spawn("hammer", redis_url, "1200", str(start_at), str(duration_s)) for _ in range(2)
    ]
    client = aioredis.Redis.from_url(redis_url)
    gov = await build_governor(Settings(rpm=1200, tpm=100_000_000), client)
    await asyncio.sleep(max(0.0, start_at + 1.0 - time.time()))
    with pytest.raises(RateLimited):
        async with gov.slot(KEY, 10):
            raise RateLimited("429", status_code=429, retry_after_s=1.5)
    paused_at = time.time()
    per_process = await _collect(procs)
    await gov.aclose()
    await client.aclose()
    for stamps in per_process:
        assert any(s < paused_at for s in stamps)
        assert not [s for s in stamps if paused_at + 0.02 <= s < paused_at + 1.45]
        assert any(s >= paused_at + 1.45 for s in stamps)  # and work resumes after


async def test_a_crashed_holders_lease_expires(redis_url: str) -> None:
    lease_ttl_s = 1.5
    holder = await _spawn("hold", redis_url, str(lease_ttl_s))
    assert holder.stdout is not None
    assert (await asyncio.wait_for(holder.stdout.readline(), 10)).strip() == b"HELD"
    holder.send_signal(signal.SIGKILL)
    await holder.wait()
    killed_at = time.monotonic()
    client = aioredis.Redis.from_url(redis_url)
    config = GovernorConfig(
        policy=PolicyConfig(rpm=60_000, max_concurrency=1), lease_ttl_s=lease_ttl_s
    )
    gov = await build_governor(Settings(), client, config=config)
    with pytest.raises(TimeoutError):  # the dead process still holds the only lease...
        async with asyncio.timeout(0.3), gov.slot(KEY, 10):
            pass
    async with gov.slot(KEY, 10):  # ...until its TTL runs out
        waited_s = time.monotonic() - killed_at
    assert 0.3 <= waited_s <= lease_ttl_s + 1.0
    await gov.aclose()
    await client.aclose()


def main() -> None:
    mode, redis_url, *rest = sys.argv[1:]
    if mode == "hammer":
        rpm, start_at, duration_s = int(rest[0]), float(rest[1]), float(rest[2])
        print(json.dumps(asyncio.run(_hammer(redis_url, rpm, start_at, duration_s))))
    elif mode == "hold":
        asyncio.run(_hold(redis_url, float(rest[0])))


if __name__ == "__main__":
    main()
