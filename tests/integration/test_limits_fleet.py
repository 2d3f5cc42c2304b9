"""Several OS processes sharing one budget through real Redis.

Run as a script, this file is the worker side: ``python test_limits_fleet.py MODE ...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import cast

import pytest
import redis.asyncio as aioredis

from bulkgen.errors import RateLimited
from bulkgen.limits import (
    GovernorConfig,
    LimitKey,
    PolicyConfig,
    RateGovernor,
    governor_config,
)
from bulkgen.limits.backend import LocalBackend
from bulkgen.limits.keys import redis_keys
from bulkgen.limits.redis_backend import RedisBackend
from bulkgen.metrics import Metrics
from bulkgen.models import Completion, Usage
from bulkgen.settings import Settings

pytestmark = pytest.mark.redis

KEY = LimitKey("http://127.0.0.1:9/v1", "fleet", "gpt-fleet")
HERE = Path(__file__).resolve()


def _completion() -> Completion:
    return Completion("x", Usage(5, 5), "stop", KEY.model, latency_s=0.01)


def _governor(client: aioredis.Redis, config: GovernorConfig, metrics: Metrics) -> RateGovernor:
    """A governor on Redis whose Redis calls wait out a busy machine instead of falling back
    to a process-local budget (which would make the fleet's counts meaningless)."""
    backend = RedisBackend(
        client, LocalBackend(time.monotonic), clock=time.monotonic, metrics=metrics, timeout_s=30
    )
    return RateGovernor(
        backend,
        config,
        clock=time.monotonic,
        wall_clock=time.time,
        sleep=asyncio.sleep,
        metrics=metrics,
    )


async def _hammer(redis_url: str, rpm: int, duration_s: float) -> dict[str, float]:
    """Once told to go, admit as fast as the shared budget allows, for ``duration_s`` or
    until told to stop (a second line on stdin)."""
    client = aioredis.Redis.from_url(redis_url)
    metrics = Metrics()
    gov = _governor(client, governor_config(Settings(rpm=rpm, tpm=100_000_000)), metrics)
    admitted = 0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    print("READY", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    until_s = time.monotonic() + duration_s

    async def watch() -> None:
        if (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "STOP":
            stop.set()

    async def run() -> None:
        nonlocal admitted
        while time.monotonic() < until_s and not stop.is_set():
            async with gov.slot(KEY, 10) as slot:
                admitted += 1
                await slot.record(_completion())

    watcher = asyncio.ensure_future(watch())
    await asyncio.gather(*(run() for _ in range(4)))
    await gov.aclose()
    await client.aclose()
    watcher.cancel()  # its read ends when the parent closes stdin
    return {"admitted": admitted, "fallbacks": metrics.total("limiter.redis_fallback")}


async def _hold(redis_url: str, lease_ttl_s: float) -> None:
    """Take the only concurrency lease and never give it back (until killed)."""
    client = aioredis.Redis.from_url(redis_url)
    config = dataclasses.replace(
        governor_config(Settings()),
        policy=PolicyConfig(rpm=60_000, max_concurrency=1),
        lease_ttl_s=lease_ttl_s,
    )
    gov = _governor(client, config, Metrics())
    async with gov.slot(KEY, 10):
        print("HELD", flush=True)
        await asyncio.sleep(3600)


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )


async def _ready(procs: list[asyncio.subprocess.Process], word: bytes) -> None:
    for proc in procs:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 60)).strip() == word


def _go(procs: list[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"GO\n")


async def _collect(procs: list[asyncio.subprocess.Process]) -> list[dict[str, float]]:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()  # ends the child's read of a stop line
    outs = await asyncio.gather(*(p.communicate() for p in procs))
    assert all(p.returncode == 0 for p in procs), [p.returncode for p in procs]
    reports: list[dict[str, float]] = [json.loads(out) for out, _ in outs]
    assert all(r["fallbacks"] == 0 for r in reports), reports  # every answer came from Redis
    return reports


async def _server_ms(client: aioredis.Redis) -> float:
    seconds, micros = await client.time()
    return seconds * 1000 + micros / 1000


async def test_three_processes_share_one_budget(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    """What GCRA guarantees, timed by Redis: from the first admission to the last, at most
    the rate times the time plus one burst. Three processes each budgeting alone would
    admit three times that."""
    rpm, duration_s = 1200, 4.0
    rate_per_s, burst_s = rpm / 60, governor_config(Settings()).burst_s
    procs = [await _spawn("hammer", redis_url, str(rpm), str(duration_s)) for _ in range(3)]
    await _ready(procs, b"READY")
    started_ms = await _server_ms(redis_client)  # before any admission
    _go(procs)
    reports = await _collect(procs)
    elapsed_s = (await _server_ms(redis_client) - started_ms) / 1000  # after the last one
    admitted = [int(r["admitted"]) for r in reports]
    assert all(n > 0 for n in admitted), admitted  # everyone took part
    assert sum(admitted) <= rate_per_s * (elapsed_s + burst_s) + 1, (admitted, elapsed_s)
    # And the fleet does use its budget: a shared limiter that over-charged or stalled
    # would fall far below this, even on a busy machine.
    assert sum(admitted) >= 0.5 * rate_per_s * duration_s, admitted


async def _tat_at(client: aioredis.Redis) -> tuple[float, float]:
    """(server time, the requests budget's TAT), read in one step."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.time()
        pipe.get(redis_keys(KEY).requests_tat)
        (seconds, micros), tat = await pipe.execute()
    return seconds * 1000 + micros / 1000, float(tat or 0)


async def _admitted_since(client: aioredis.Redis, tat_ms: float) -> float:
    """Server time once an admission moved the budget's TAT past ``tat_ms`` (bounded)."""
    for _ in range(1500):
        now_ms, tat = await _tat_at(client)
        if tat > tat_ms:
            return now_ms
        await asyncio.sleep(0.02)
    raise AssertionError("no admission within 30 s")


async def test_a_429_in_one_process_pauses_every_process(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    """While the fleet's pause holds, no process is admitted: the shared budget's TAT, which
    every admission moves forward, does not move. Each look reads the TAT and the server
    time in one step, so no client clock decides anything."""
    procs = [await _spawn("hammer", redis_url, "1200", "60") for _ in range(2)]
    await _ready(procs, b"READY")
    _go(procs)
    gov = _governor(redis_client, governor_config(Settings(rpm=1200, tpm=100_000_000)), Metrics())
    await _admitted_since(redis_client, (await _tat_at(redis_client))[1])  # they are running
    with pytest.raises(RateLimited):
        async with gov.slot(KEY, 10):
            raise RateLimited("429", status_code=429, retry_after_s=3.0)
    pause_until_ms = float(await redis_client.get(redis_keys(KEY).pause_until) or 0)
    _, tat_paused = await _tat_at(redis_client)  # everything admitted before the pause
    looks_inside = 0
    for _ in range(1500):
        now_ms, tat = await _tat_at(redis_client)
        if now_ms >= pause_until_ms:
            break
        looks_inside += 1
        # An expired TAT key reads 0; an admission would move it past tat_paused.
        assert tat <= tat_paused, "a process was admitted during the fleet's pause"
        await asyncio.sleep(0.02)
    resumed_ms = await _admitted_since(redis_client, tat_paused)  # work resumes after it
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"STOP\n")
    reports = await _collect(procs)
    await gov.aclose()
    assert looks_inside >= 2
    assert resumed_ms >= pause_until_ms
    assert all(r["admitted"] > 0 for r in reports)


async def test_a_crashed_holders_lease_expires(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    """The dead holder's lease blocks others until its expiry (server time), then frees."""
    lease_ttl_s = 3.0
    holder = await _spawn("hold", redis_url, str(lease_ttl_s))
    await _ready([holder], b"HELD")
    holder.send_signal(signal.SIGKILL)
    await holder.wait()
    leases = await redis_client.zrange(redis_keys(KEY).leases, 0, -1, withscores=True)
    [(_, expiry_ms)] = cast(list[tuple[bytes, float]], leases)
    config = dataclasses.replace(
        governor_config(Settings()),
        policy=PolicyConfig(rpm=60_000, max_concurrency=1),
        lease_ttl_s=lease_ttl_s,
    )
    gov = _governor(redis_client, config, Metrics())
    # The dead process still holds the only lease: a try times out, or - only on a machine
    # stalled past the expiry - is admitted after it. Either way, never before.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.3), gov.slot(KEY, 10):
            assert await _server_ms(redis_client) >= expiry_ms
    async with asyncio.timeout(30), gov.slot(KEY, 10):  # ...and once it expired, it is free
        got_ms = await _server_ms(redis_client)
    assert got_ms >= expiry_ms
    await gov.aclose()


def main() -> None:
    mode, redis_url, *rest = sys.argv[1:]
    if mode == "hammer":
        rpm, duration_s = int(rest[0]), float(rest[1])
        print(json.dumps(asyncio.run(_hammer(redis_url, rpm, duration_s))))
    elif mode == "hold":
        asyncio.run(_hold(redis_url, float(rest[0])))


if __name__ == "__main__":
    main()
