"""Accounts, retry and ``bulkgen serve`` as a user runs them: real processes, real
PostgreSQL, the simulator; keys made by the CLI are used against the API."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from bulkgen.accounts import hash_api_key
from bulkgen.simulator import SimConfig, SimulatorProcess

from .test_cli import _bulkgen, _env

pytestmark = pytest.mark.postgres

QUICK_SIM = SimConfig(rpm=None, tpm=None, ttft_ms=5, tokens_per_s=0, seed=4)


def _accounts(database_url: str) -> list[dict[str, Any]]:
    listed = _bulkgen("accounts", "list", "--json", env=_env(database_url))
    assert listed.returncode == 0, listed.stderr
    rows: list[dict[str, Any]] = json.loads(listed.stdout.strip().splitlines()[-1])
    return rows


async def _stored_hash(database_url: str, name: str) -> str | None:
    conn = await asyncpg.connect(database_url)
    try:
        value: str | None = await conn.fetchval(
            "SELECT api_key_hash FROM accounts WHERE name = $1", name
        )
        return value
    finally:
        await conn.close()


async def test_accounts_commands_end_to_end(database_url: str) -> None:
    env = _env(database_url)
    created = _bulkgen("accounts", "create", "acme", "--concurrency-quota", "7", env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("bgk_") and len(key.splitlines()) == 1
    assert "shown only this once" in created.stderr
    assert await _stored_hash(database_url, "acme") == hash_api_key(key)

    for args, message in [
        (("accounts", "create", "acme"), "already exists"),
        (("accounts", "create", "bad name!"), "not valid"),
        (("accounts", "set-quota", "acme", "0"), "between 1 and"),
        (("accounts", "set-weight", "acme", "101"), "claim weight must be between 1 and 100"),
        (("accounts", "set-weight", "ghost", "2"), "no account named 'ghost'"),
        (("accounts", "rotate-key", "ghost"), "no account named 'ghost'"),
    ]:
        refused = _bulkgen(*args, env=env)
        assert refused.returncode == 1, (args, refused.stderr)
        assert message in refused.stderr and "Traceback" not in refused.stderr, args

    (listed,) = _accounts(database_url)
    assert {k: v for k, v in listed.items() if k != "created_at"} == {
        "name": "acme",
        "concurrency_quota": 7,
        "claim_weight": 1,
        "has_key": True,
        "batches": 0,
    }
    assert _bulkgen("accounts", "set-quota", "acme", "3", env=env).returncode == 0
    assert _accounts(database_url)[0]["concurrency_quota"] == 3
    weighed = _bulkgen("accounts", "set-weight", "acme", "3", env=env)
    assert weighed.returncode == 0, weighed.stderr
    assert "now weighs 3" in weighed.stdout
    assert _accounts(database_url)[0]["claim_weight"] == 3

    rotated = _bulkgen("accounts", "rotate-key", "acme", env=env)
    assert rotated.returncode == 0, rotated.stderr
    new_key = rotated.stdout.strip()
    assert new_key.startswith("bgk_") and new_key != key
    assert await _stored_hash(database_url, "acme") == hash_api_key(new_key)

    revoked = _bulkgen("accounts", "revoke", "acme", env=env)
    assert revoked.returncode == 0, revoked.stderr
    assert await _stored_hash(database_url, "acme") is None
    assert _accounts(database_url)[0]["has_key"] is False


async def test_retry_command_requeues_failed_jobs(database_url: str, tmp_path: Path) -> None:
    keywords = tmp_path / "k.csv"
    keywords.write_text("keyword\nalpha\nbeta\ngamma\n")
    failing = SimConfig(rpm=None, tpm=None, faults={"insufficient_quota": 1.0}, seed=2)
    with SimulatorProcess(failing) as simulator:
        env = _env(database_url, OPENAI_BASE_URL=simulator.base_url, OPENAI_API_KEY="sk-x")
        submitted = _bulkgen("submit", str(keywords), env=env)
        assert submitted.returncode == 0, submitted.stderr
        batch_id = submitted.stdout.strip().splitlines()[-1]
        assert _bulkgen("worker", "--burst", env=env).returncode == 0
    retried = _bulkgen("retry", batch_id, env=env)
    assert retried.returncode == 0, retried.stderr
    assert "re-queued 3 failed jobs" in retried.stdout
    status = _bulkgen("status", batch_id, "--json", env=env)
    summary = json.loads(status.stdout.strip().splitlines()[-1])
    assert (summary["queued"], summary["failed"]) == (3, 0)
    missing = _bulkgen("retry", "00000000-0000-4000-8000-000000000000", env=env)
    assert missing.returncode == 1 and "no batch" in missing.stderr


class _Serving:
    """``bulkgen serve --port 0`` in a child process; its stderr (the log) goes to a file."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log
        self.base_url = ""
        self.first_key: str | None = None

    async def line(self) -> str:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), timeout=90)
        if not raw:
            raise AssertionError(f"serve exited early; log:\n{self.log.read_text()}")
        return raw.decode().strip()

    async def rest_of_stdout(self) -> str:
        assert self.process.stdout is not None
        return (await self.process.stdout.read()).decode()

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), timeout=60)


async def _serve(env: dict[str, str], log: Path, *args: str) -> AsyncIterator[_Serving]:
    with log.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bulkgen.cli",
            "serve",
            "--port",
            "0",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    serving = _Serving(process, log)
    try:
        first = await serving.line()
        assert first.startswith("bulkgen API on http://127.0.0.1:"), first
        serving.base_url = first.split()[3]
        yield serving
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _workers(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM workers")
        return count
    finally:
        await conn.close()


async def test_serve_runs_the_api_and_a_worker(database_url: str, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with SimulatorProcess(QUICK_SIM) as simulator:
        env = _env(database_url, OPENAI_BASE_URL=simulator.base_url, OPENAI_API_KEY="sk-x")
        async for serving in _serve(env, log):
            assert await serving.line() == "API key for account 'default' (shown only this once):"
            key = await serving.line()
            assert key.startswith("bgk_")
            headers = {"Authorization": f"Bearer {key}"}
            async with httpx.AsyncClient(base_url=serving.base_url, timeout=30) as client:
                assert (await client.get("/healthz")).json() == {"status": "ok"}
                created = await client.post(
                    "/v1/batches", json={"items": ["alpha", "beta", "gamma"]}, headers=headers
                )
                assert created.status_code == 201, created.text
                batch_url = created.json()["url"]
                detail = await _until_finished(client, batch_url, headers)
                assert detail["counts"]["done"] == 3
                results = await client.get(batch_url + "/results", headers=headers)
                lines = [json.loads(line) for line in results.text.splitlines()]
                assert [line["status"] for line in lines] == ["done"] * 3
            assert await serving.stop() == 0
            assert "API key" not in await serving.rest_of_stdout()
        assert await _workers(database_url) == 0  # the worker deregistered on the way out

        # A second start finds a key already made: it prints none, and the first key works.
        async for serving in _serve(env, log, "--no-worker"):
            async with httpx.AsyncClient(base_url=serving.base_url, timeout=30) as client:
                listed = await client.get("/v1/batches", headers=headers)
                assert listed.status_code == 200 and len(listed.json()["items"]) == 1
            assert await _workers(database_url) == 0  # --no-worker: the API only
            assert await serving.stop() == 0
            assert "API key" not in await serving.rest_of_stdout()
    text = log.read_text()
    assert "api.started" in text and "api.stopped" in text
    assert key not in text  # the key was printed once on stdout, never logged


async def _until_finished(
    client: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> dict[str, Any]:
    for _ in range(600):
        detail: dict[str, Any] = (await client.get(url, headers=headers)).json()
        if detail["finished"]:
            return detail
        await asyncio.sleep(0.1)
    raise AssertionError(f"batch did not finish: {detail}")
