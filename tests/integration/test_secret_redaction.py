"""A provider that echoes the API key: the key ends up nowhere. Real PostgreSQL, the
simulator's ``echo_auth`` fault over HTTP, the real CLI for the exports."""

from __future__ import annotations

import io
import logging
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bulkgen.logs import EventFormatter
from bulkgen.simulator import SimConfig, running_simulator

from .pipeline_support import make_settings, start, statuses, submit

pytestmark = pytest.mark.postgres


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """Every record at DEBUG, formatted as the CLI prints them but *without* the redacting
    filter: what is checked is that no key reaches a log record at all."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EventFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _cli(*args: str, database_url: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BULKGEN_", "OPENAI_"))}
    env.update(DATABASE_URL=database_url, COLUMNS="200")
    done = subprocess.run(
        [sys.executable, "-m", "bulkgen.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


async def _every_row(database_url: str, batch_id: uuid.UUID) -> str:
    settings = make_settings(database_url, "http://unused.test/v1")
    svc = await start(settings)
    try:
        texts = [
            await svc.store.pool.fetchval(f"SELECT coalesce(json_agg(t)::text, '') FROM {table} t")
            for table in ("batches", "jobs", "results")
        ]
    finally:
        await svc.aclose()
    return "\n".join(texts)


async def test_a_gateway_echoing_the_key_leaks_it_nowhere(
    database_url: str, tmp_path: Path, log_output: io.StringIO
) -> None:
    key = "sk-proj-" + secrets.token_urlsafe(36)
    forms = {"key": key, "masked": f"{key[:6]}...{key[-4:]}", "middle": key[10:30]}
    sim = SimConfig(rpm=None, tpm=None, api_key=key, faults={"echo_auth": 1.0}, seed=4)
    async with running_simulator(sim) as base_url:
        svc = await start(make_settings(database_url, base_url, openai_api_key=key))
        try:
            batch_id = await submit(svc, 4)
            await svc.worker(burst=True).run()
            assert await statuses(svc, batch_id) == {"failed": 4}
            jobs = await svc.store.pool.fetch(
                "SELECT attempts, error_kind, error_message FROM jobs"
            )
        finally:
            await svc.aclose()
    for job in jobs:
        assert (job["attempts"], job["error_kind"]) == (1, "rejected")
        # The gateway did quote the key (the test is not vacuous) and it was redacted.
        assert "Authorization: Bearer [redacted]" in job["error_message"]
        assert "Incorrect API key provided: [redacted]" in job["error_message"]

    export = tmp_path / "all.jsonl"
    _cli("results", str(batch_id), "--out", str(export), database_url=database_url)
    status = _cli("status", str(batch_id), database_url=database_url)
    places = {
        "log output": log_output.getvalue(),
        "database rows": await _every_row(database_url, batch_id),
        "results export": export.read_text(encoding="utf-8"),
        "status output": status,
    }
    assert "job.failed" in places["log output"] and "[redacted]" in places["results export"]
    leaks = [
        (place, form) for place, text in places.items() for form, s in forms.items() if s in text
    ]
    assert leaks == []
