"""Batch options from the command line and the environment, as an operator sets them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bulkgen.db.pool import create_pool
from bulkgen.db.store import Store
from bulkgen.simulator import SimConfig, SimulatorProcess


def _bulkgen(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bulkgen.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("BULKGEN_", "REDIS_", "OPENAI_"))
    }
    env.update(COLUMNS="120", **extra)
    return env


async def _stored_options(database_url: str, batch_id: str) -> dict[str, Any]:
    pool = await create_pool(database_url, max_size=1, min_size=1, command_timeout_s=30.0)
    try:
        record = await Store(pool).batch_get(uuid.UUID(batch_id))
    finally:
        await pool.close()
    assert record is not None
    return record.options


async def _batch_count(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM batches")
    finally:
        await conn.close()
    return count


@pytest.mark.postgres
def test_fleet_model_and_max_tokens_come_from_the_environment(
    database_url: str, tmp_path: Path
) -> None:
    keywords = tmp_path / "k.csv"
    keywords.write_text("keyword\nalpha\nbeta\ngamma\n")
    with SimulatorProcess(SimConfig(rpm=None, tpm=None, seed=11)) as simulator:
        env = _env(
            DATABASE_URL=database_url,
            OPENAI_BASE_URL=simulator.base_url,
            OPENAI_API_KEY="sk-x",
            BULKGEN_MODEL="gpt-4.1-mini",
            BULKGEN_MAX_TOKENS="120",
        )
        submitted = _bulkgen("submit", str(keywords), env=env)
        assert submitted.returncode == 0, submitted.stderr
        batch_id = submitted.stdout.strip().splitlines()[-1]
        worked = _bulkgen("worker", "--burst", env=env)
        assert worked.returncode == 0, worked.stderr
    stored = asyncio.run(_stored_options(database_url, batch_id))
    assert (stored["model"], stored["max_tokens"]) == ("gpt-4.1-mini", 120)
    out = tmp_path / "all.jsonl"
    assert _bulkgen("results", batch_id, "--out", str(out), env=env).returncode == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["status"] for row in rows] == ["done"] * 3
    # What the provider was asked for: its answers name the model and fit in max_tokens
    # (with the built-in 1500 they would run to 750 tokens and more).
    assert {row["model"] for row in rows} == {"gpt-4.1-mini"}
    assert all(0 < row["completion_tokens"] <= 120 for row in rows)


@pytest.mark.postgres
def test_a_flag_out_of_bounds_names_the_flag_and_enqueues_nothing(
    database_url: str, tmp_path: Path
) -> None:
    keywords = tmp_path / "k.csv"
    keywords.write_text("keyword\nalpha\n")
    env = _env(DATABASE_URL=database_url, OPENAI_API_KEY="sk-x")
    for flag, value, why in [
        ("--target-words", "10", "between 50 and 20000"),
        ("--max-tokens", "500000", "between 16 and 200000"),
        ("--temperature", "hot", "must be a number"),
        ("--tone", " ", "must not be empty"),
    ]:
        result = _bulkgen("submit", str(keywords), flag, value, env=env)
        assert result.returncode == 2, (flag, result.stderr)
        assert flag in result.stderr and why in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    row_override = tmp_path / "rows.csv"
    row_override.write_text("keyword,target_words\nalpha,800\nbeta,10\n")
    result = _bulkgen("submit", str(row_override), env=env)
    assert result.returncode == 1
    assert "row 2, field 'target_words'" in result.stderr
    assert "between 50 and 20000" in result.stderr
    assert asyncio.run(_batch_count(database_url)) == 0


def test_version_and_help_speak_to_a_user() -> None:
    shown = _bulkgen("--version", env=_env())
    assert shown.returncode == 0
    assert shown.stdout.strip() == f"bulkgen {version('bulkgen')}"
    helped = _bulkgen("--help", env=_env())
    assert helped.returncode == 0
    text = " ".join(helped.stdout.split())
    assert "one article per keyword" in text
    assert "bulkgen demo" in text and "bulkgen submit" in text and "--version" in text
    assert "asyncio" not in text
