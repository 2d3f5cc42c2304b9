"""``bulkgen.Client`` against a real ``bulkgen serve --no-worker`` and a separate
``bulkgen worker --burst`` process, over the simulator: the README's client example as
written, and the event stream compared with the jobs' rows."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bulkgen import ApiError, Client, InputError
from bulkgen.simulator import SimConfig, SimulatorProcess

from .test_api_cli import _serve
from .test_cli import _bulkgen, _env

pytestmark = pytest.mark.postgres

# Slow enough that a batch is seen in progress, never relied upon: no timing is asserted.
SLOW_SIM = SimConfig(rpm=None, tpm=None, ttft_ms=150, tokens_per_s=0, seed=6)
README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_client_example() -> str:
    text = README.read_text()
    section = text[text.index("### Python client") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "no python block under '### Python client'"
    return match.group(1)


class Stack:
    def __init__(self, base_url: str, key: str, worker_env: dict[str, str]) -> None:
        self.base_url = base_url
        self.key = key
        self.worker_env = worker_env

    async def run_worker(self) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bulkgen.cli",
            "worker",
            "--burst",
            "--concurrency",
            "2",
            env=self.worker_env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=180)
        assert process.returncode == 0, stderr.decode()


@pytest.fixture
async def stack(database_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    env = _env(database_url)
    created = _bulkgen("accounts", "create", "acme", env=env)
    assert created.returncode == 0, created.stderr
    with SimulatorProcess(SLOW_SIM) as simulator:
        worker_env = _env(database_url, OPENAI_BASE_URL=simulator.base_url, OPENAI_API_KEY="sk-x")
        async for serving in _serve(env, tmp_path / "serve.log", "--no-worker"):
            yield Stack(serving.base_url, created.stdout.strip(), worker_env)
            assert await serving.stop() == 0


async def _until_submitted(stack: Stack) -> str:
    headers = {"Authorization": f"Bearer {stack.key}"}
    async with httpx.AsyncClient(base_url=stack.base_url, headers=headers) as client:
        for _ in range(600):
            page = (await client.get("/v1/batches")).json()
            if page["items"]:
                batch_id: str = page["items"][0]["id"]
                return batch_id
            await asyncio.sleep(0.1)
    raise AssertionError("the README example submitted nothing")


async def test_readme_client_example_runs_as_written(stack: Stack) -> None:
    example = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _readme_client_example(),
        env={**os.environ, "BULKGEN_URL": stack.base_url, "BULKGEN_KEY": stack.key},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await _until_submitted(stack)
    await stack.run_worker()
    stdout, stderr = await asyncio.wait_for(example.communicate(), timeout=120)
    assert example.returncode == 0, stderr.decode()
    lines = stdout.decode().splitlines()
    events = [line for line in lines if line.startswith(("progress ", "end "))]
    assert events[-1] == "end 2/2" and all(e.startswith("progress ") for e in events[:-1])
    articles = lines[len(events) :]
    assert len(articles) == 2 and all(a.startswith("done ") and len(a) > 5 for a in articles)


async def _collect(client: Client, batch_id: str) -> list[dict[str, Any]]:
    return [event async for event in client.events(batch_id)]


async def test_events_follow_a_batch_to_its_end(stack: Stack) -> None:
    async with Client(stack.base_url, stack.key) as client:
        batch = await client.submit([f"topic {i}" for i in range(8)], idempotency_key="e2e-1")
        again = await client.submit([f"topic {i}" for i in range(8)], idempotency_key="e2e-1")
        assert again["id"] == batch["id"] and again["replayed"] is True
        listening = asyncio.create_task(_collect(client, batch["id"]))
        await stack.run_worker()
        events = await asyncio.wait_for(listening, timeout=120)

        assert [e["event"] for e in events[:-1]] == ["progress"] * (len(events) - 1)
        assert events[-1]["event"] == "end" and len(events) >= 2
        done = [e["done"] for e in events]
        assert done == sorted(done) and done[-1] == 8
        rows = [job async for page in client.jobs(batch["id"], page_size=3) for job in page]
        assert len(rows) == 8
        by_status = Counter(job["status"] for job in rows)
        assert {s: n for s, n in events[-1]["counts"].items() if n} == dict(by_status)
        assert events[-1]["status"] == "done"

        results = [row async for row in client.results(batch["id"])]
        assert [row["status"] for row in results] == ["done"] * 8
        detail = await client.get(batch["id"])
        assert detail["finished"] is True and detail["counts"]["done"] == 8
        assert (await client.retry(batch["id"]))["requeued"] == 0
        assert (await client.cancel(batch["id"]))["cancelled"] == 0


async def test_client_raises_the_project_s_errors(stack: Stack) -> None:
    async with Client(stack.base_url, stack.key) as client:
        with pytest.raises(InputError) as refused:
            await client.submit(["fine", "   "])
        assert refused.value.row == 2 and refused.value.field == "keyword"
        with pytest.raises(ApiError) as missing:
            await client.get("00000000-0000-4000-8000-000000000000")
        assert (missing.value.status, missing.value.kind) == (404, "not_found")
        with pytest.raises(ApiError) as no_events:
            await _collect(client, "00000000-0000-4000-8000-000000000000")
        assert no_events.value.status == 404
        batch = await client.submit(["left alone"])
        assert (await client.cancel(batch["id"]))["cancelled"] == 1
        with pytest.raises(ApiError) as conflict:
            await client.retry(batch["id"])
        assert conflict.value.status == 409 and conflict.value.kind
    async with Client(stack.base_url, "bgk_wrong") as stranger:
        with pytest.raises(ApiError) as unauthorized:
            await stranger.get("00000000-0000-4000-8000-000000000000")
        assert (unauthorized.value.status, unauthorized.value.kind) == (401, "unauthorized")
    async with Client("http://127.0.0.1:9", stack.key) as nowhere:
        with pytest.raises(ApiError) as unreachable:
            await nowhere.get("00000000-0000-4000-8000-000000000000")
        assert unreachable.value.status is None
