"""The simulator in its own process, started the way the demo and benchmarks start it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import openai
import pytest
import uvicorn

from bulkgen.simulator import BatchConfig, SimConfig, SimulatorApp, SimulatorProcess
from bulkgen.simulator.server import _ManagedServer, uvicorn_config


async def test_simulator_process_serves_its_config_and_stops_on_exit() -> None:
    # A one-request bucket refilled every 10 s: the second call is refused however slowly
    # a busy machine gets to it.
    config = SimConfig(rpm=6, tpm=None, burst_s=10.0, api_key="sk-proc", faults={})
    async with SimulatorProcess(config) as sim:
        assert sim.base_url.startswith("http://127.0.0.1:")
        async with openai.AsyncOpenAI(
            base_url=sim.base_url, api_key="sk-proc", max_retries=0
        ) as client:
            completion = await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "Keyword: kites"}]
            )
            assert completion.choices[0].message.content
            with pytest.raises(openai.RateLimitError) as info:  # one-request bucket
                await client.chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "Keyword: kites"}]
                )
            assert info.value.response.headers["x-ratelimit-limit-requests"] == "6"
        pid = sim.pid
        assert pid is not None
    assert sim.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_cli_rejects_an_unknown_fault_kind_and_a_rate_out_of_range() -> None:
    for bad in ("explode=0.1", "503=1.5"):
        result = subprocess.run(
            [sys.executable, "-m", "bulkgen.simulator", "--port=0", f"--fault-rate={bad}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2
        assert "fault" in result.stderr and "listening" not in result.stdout


def test_a_managed_simulator_leaves_ctrl_c_to_its_parent() -> None:
    """Ctrl-C reaches the whole process group; the worker that started the simulator
    finishes its calls and then stops it with SIGTERM, so the simulator must not stop on
    SIGINT itself (and cut those calls off)."""
    app = SimulatorApp(SimConfig())
    managed = _ManagedServer(uvicorn_config(app, fast_loop=False))
    managed.handle_exit(signal.SIGINT, None)
    assert not managed.should_exit
    managed.handle_exit(signal.SIGTERM, None)
    assert managed.should_exit
    standalone = uvicorn.Server(uvicorn_config(app, fast_loop=False))
    standalone.handle_exit(signal.SIGINT, None)  # `bulkgen simulate` stops on Ctrl-C
    assert standalone.should_exit


async def test_a_simulator_process_runs_batches_at_the_pace_it_was_given() -> None:
    """The batch settings reach the child process through its command line."""
    batch = BatchConfig(time_scale=1000.0, validating_s=1.0, finalizing_s=1.0, max_requests=2)
    lines = [
        {
            "custom_id": f"r{index}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": "Keyword: kites"}],
            },
        }
        for index in range(3)
    ]
    content = "\n".join(json.dumps(line) for line in lines).encode()
    async with (
        SimulatorProcess(SimConfig(batch=batch, faults={})) as sim,
        openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-x", max_retries=0) as client,
    ):
        uploaded = await client.files.create(file=("in.jsonl", content), purpose="batch")
        created = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 60.0
        while (found := await client.batches.retrieve(created.id)).status == "validating":
            assert time.monotonic() < deadline, "batch stuck validating"
            await asyncio.sleep(0.01)
    assert found.status == "failed" and found.errors is not None and found.errors.data
    assert found.errors.data[0].code == "too_many_requests"
