"""Hostile tenants: an account whose prompt template stalls rendering, and a provider (or
gateway) that echoes the API key in its error messages.

- The stalling template renders its first row at once, so it passes the up-front check at
  submit, then takes minutes on its other rows. Those rows fail once as ``invalid_input``;
  another account's jobs sharing the same workers are not rescued, not paid twice, and done.
- The echoing provider quotes the ``Authorization`` header in every 401. The key (whole,
  masked or a fragment of it) appears nowhere: not in the workers' output, the job rows,
  ``bulkgen status`` or ``bulkgen results``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from bulkgen.intake import JobInput
from bulkgen.metrics import Metrics
from bulkgen.service import open_services
from bulkgen.settings import Settings
from bulkgen.simulator import SimConfig, SimulatorProcess

from .checks import assert_sound
from .conftest import enqueue
from .harness import Fleet, PostgresServer

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(300)]

# Row "fine ..." renders at once; row "stall ..." loops 10^10 times (each range within the
# sandbox's cap), which would hold a render for many minutes.
STALLING = (
    "{% if keyword.startswith('stall') %}"
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    "{% endif %}Write about {{ keyword }} in {{ language }}."
)


async def _enqueue_hostile(database_url: str, fine: int, stalling: int) -> uuid.UUID:
    settings = Settings(database_url=database_url, redis_url=None)
    svc = await open_services(settings, need_provider=False, metrics=Metrics())
    try:
        rows = [JobInput(f"fine {i}", {}, {}) for i in range(fine)]
        rows += [JobInput(f"stall {i}", {}, {}) for i in range(stalling)]
        options = svc.batch_options(template=STALLING, max_tokens=600)
        return await svc.submit(rows, options, account="hostile")
    finally:
        await svc.aclose()


async def test_a_stalling_template_fails_its_rows_once_and_delays_no_one_else(
    postgres: PostgresServer, make_fleet: Callable[[str], Fleet]
) -> None:
    calm_jobs, fine, stalling = 60, 3, 3
    calm = await enqueue(postgres.url, calm_jobs, account="calm")
    hostile = await _enqueue_hostile(postgres.url, fine, stalling)
    sim = SimConfig(rpm=None, tpm=None, ttft_ms=100, tokens_per_s=0, jitter=0.3, seed=11)
    async with SimulatorProcess(sim) as simulator:
        fleet = make_fleet(simulator.base_url)
        for _ in range(2):
            fleet.spawn(BULKGEN_TEMPLATE_RENDER_TIMEOUT_S="1")
        rows = await assert_sound(
            postgres.url, fleet, expected_jobs=calm_jobs + fine + stalling, all_done=False
        )
    conn = await asyncpg.connect(postgres.url)
    try:
        jobs = await conn.fetch(
            "SELECT j.batch_id, j.status, j.attempts, j.error_kind, j.input->>'keyword' AS kw"
            " FROM jobs j"
        )
    finally:
        await conn.close()
    assert len(rows) == calm_jobs + fine + stalling
    calm_rows = [j for j in jobs if j["batch_id"] == calm]
    assert {j["status"] for j in calm_rows} == {"done"}
    assert {j["attempts"] for j in calm_rows} == {1}, "a calm job was rescued or paid twice"
    stalled = [j for j in jobs if j["batch_id"] == hostile and j["kw"].startswith("stall")]
    assert {(j["status"], j["error_kind"], j["attempts"]) for j in stalled} == {
        ("failed", "invalid_input", 1)
    }
    fine_rows = [j for j in jobs if j["batch_id"] == hostile and j["kw"].startswith("fine")]
    assert {j["status"] for j in fine_rows} == {"done"}
    for worker in fleet:
        assert "worker.rescued" not in worker.output(), f"{worker.name} rescued live jobs"


def _cli(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BULKGEN_", "OPENAI_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env["DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "bulkgen.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_a_provider_echoing_the_key_leaks_it_nowhere(
    postgres: PostgresServer, make_fleet: Callable[[str], Fleet], tmp_path: Path
) -> None:
    jobs = 12
    key = "sk-proj-" + secrets.token_urlsafe(36)
    forms = {"key": key, "masked": f"{key[:6]}...{key[-4:]}", "fragment": key[10:30]}
    batch_id = await enqueue(postgres.url, jobs)
    sim = SimConfig(rpm=None, tpm=None, api_key=key, faults={"echo_auth": 1.0}, seed=12)
    async with SimulatorProcess(sim) as simulator:
        fleet = make_fleet(simulator.base_url)
        for _ in range(2):
            fleet.spawn(OPENAI_API_KEY=key)
        rows = await assert_sound(postgres.url, fleet, expected_jobs=jobs, all_done=False)
    assert {(r.status, r.error_kind) for r in rows} == {("failed", "rejected")}
    conn = await asyncpg.connect(postgres.url)
    try:
        stored = "\n".join(
            str(dict(r)) for r in await conn.fetch("SELECT * FROM jobs")
        ) + "\n".join(str(dict(r)) for r in await conn.fetch("SELECT * FROM batches"))
    finally:
        await conn.close()
    export = tmp_path / "all.jsonl"
    results = _cli("results", str(batch_id), "--out", str(export), database_url=postgres.url)
    status = _cli("status", str(batch_id), database_url=postgres.url)
    assert results.returncode == 0 and status.returncode == 0, results.stderr + status.stderr
    places = {
        "worker output": "\n".join(worker.output() for worker in fleet),
        "rows": stored,
        "results export": export.read_text(),
        "status": status.stdout + status.stderr,
    }
    assert "[redacted]" in places["rows"], "the provider's message was not stored at all"
    for place, text in places.items():
        for form, secret in forms.items():
            assert secret not in text, f"the key ({form}) appears in the {place}"
