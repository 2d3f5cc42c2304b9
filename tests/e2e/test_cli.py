"""The command line as a user runs it: real processes, real PostgreSQL, the simulator."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from bulkgen.simulator import SimConfig, SimulatorProcess

pytestmark = pytest.mark.postgres


def _bulkgen(
    *args: str, env: dict[str, str], timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bulkgen.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def _env(database_url: str, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("BULKGEN_", "REDIS_", "OPENAI_"))
    }
    env.update(DATABASE_URL=database_url, COLUMNS="120", **extra)
    return env


def test_demo_json_counts_add_up(database_url: str) -> None:
    done = _bulkgen("demo", "--jobs", "50", "--json", env=_env(database_url))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["jobs"] == 50
    assert report["done"] + report["failed"] + report["cancelled"] == 50
    assert report["done"] >= 45 and report["empty_done"] == 0
    assert 1 <= report["peak_db_connections"] <= report["db_pool_max"]
    assert report["provider_requests"] >= report["done"]
    assert report["completion_tokens"] > 0
    limits = report["concurrency_limits"]  # what the worker admitted to at the end
    assert list(limits) == ["gpt-4o"]  # the fleet's default model
    assert min(limits.values()) >= 1


def test_submit_worker_status_results(database_url: str, tmp_path: Path) -> None:
    keywords = tmp_path / "k.csv"
    keywords.write_text("keyword,audience\nalpha,cooks\nbeta,divers\ngamma,pilots\n")
    sim = SimConfig(rpm=None, tpm=None, seed=9)
    with SimulatorProcess(sim) as simulator:
        env = _env(database_url, OPENAI_BASE_URL=simulator.base_url, OPENAI_API_KEY="sk-x")
        submitted = _bulkgen(
            "submit", str(keywords), "--account", "acme", "--tone", "playful", env=env
        )
        assert submitted.returncode == 0, submitted.stderr
        batch_id = submitted.stdout.strip().splitlines()[-1]
        worked = _bulkgen("worker", "--burst", env=env)
        assert worked.returncode == 0, worked.stderr
        assert "worker.summary done=3 " in worked.stderr  # not a terminal: log lines
    status = _bulkgen("status", batch_id, "--json", env=env)
    assert status.returncode == 0, status.stderr
    summary = json.loads(status.stdout.strip().splitlines()[-1])
    assert (summary["account"], summary["total"], summary["done"]) == ("acme", 3, 3)
    # No Redis: the workers' limits were each their own, gone with them.
    concurrency = summary["concurrency_limit"]
    assert concurrency["limit"] is None and "without Redis" in concurrency["note"]
    out = tmp_path / "articles"
    exported = _bulkgen("results", batch_id, "--out", str(out), env=env)
    assert exported.returncode == 0, exported.stderr
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 3 and any("alpha" in f for f in files)
    assert all((out / f).read_text().strip() for f in files)
    jsonl = tmp_path / "all.jsonl"
    assert _bulkgen("results", batch_id, "--out", str(jsonl), env=env).returncode == 0
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert {line["status"] for line in lines} == {"done"} and len(lines) == 3


def test_bad_input_is_a_clear_error_and_writes_nothing(database_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("keyword\nfine\n\n   \n" + "x" * 600 + "\n")
    result = _bulkgen("submit", str(bad), env=_env(database_url, OPENAI_API_KEY="sk-x"))
    assert result.returncode == 1
    assert "row" in result.stderr and "keyword" in result.stderr
    assert "Traceback" not in result.stderr
    missing = _bulkgen("status", "not-a-uuid", env=_env(database_url))
    assert missing.returncode == 2 and "not a batch id" in missing.stderr


def test_bad_settings_and_paths_are_clear_errors(database_url: str, tmp_path: Path) -> None:
    keywords = tmp_path / "k.csv"
    keywords.write_text("keyword\nalpha\n")
    missing = _bulkgen(
        "submit", str(keywords), "--template", str(tmp_path / "nope.j2"), env=_env(database_url)
    )
    assert missing.returncode == 1 and "cannot read the template" in missing.stderr
    no_batch = "00000000-0000-0000-0000-000000000000"
    bad_redis = _bulkgen("status", no_batch, env=_env(database_url, REDIS_URL="redis//oops"))
    assert bad_redis.returncode == 2 and "REDIS_URL" in bad_redis.stderr
    slow_heartbeat = _env(database_url, BULKGEN_HEARTBEAT_S="90", BULKGEN_LEASE_S="60")
    lease = _bulkgen("worker", "--burst", env=slow_heartbeat)
    assert lease.returncode == 2 and "BULKGEN_HEARTBEAT_S" in lease.stderr
    for result in (missing, bad_redis, lease):
        assert "Traceback" not in result.stderr


def test_cancel_ends_every_queued_job(database_url: str, tmp_path: Path) -> None:
    keywords = tmp_path / "k.csv"
    keywords.write_text("keyword\n" + "".join(f"topic {i}\n" for i in range(5)))
    env = _env(database_url, OPENAI_API_KEY="sk-x")
    submitted = _bulkgen("submit", str(keywords), env=env)
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip().splitlines()[-1]
    cancelled = _bulkgen("cancel", batch_id, env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelled 5 queued jobs" in cancelled.stdout
    status = _bulkgen("status", batch_id, "--json", env=env)
    summary = json.loads(status.stdout.strip().splitlines()[-1])
    assert (summary["cancelled"], summary["queued"]) == (5, 0)
    unknown = _bulkgen("cancel", "00000000-0000-0000-0000-000000000000", env=env)
    assert unknown.returncode == 1 and "no batch" in unknown.stderr


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:hunter2secret@db.internal:99999/app",
        "postgresql://app:hunter2secret@[::1/app",
        "postgresql://app:hunter2secret@db.internal:port/app",
    ],
)
def test_a_malformed_database_url_is_a_clear_error_without_its_password(
    database_url: str, url: str
) -> None:
    result = _bulkgen("status", "00000000-0000-0000-0000-000000000000", env=_env(url))
    assert result.returncode == 2, result.stderr
    assert "DATABASE_URL is malformed" in result.stderr
    assert "Traceback" not in result.stderr and "hunter2secret" not in result.stderr


def test_input_the_database_would_refuse_is_refused_at_submit(
    database_url: str, tmp_path: Path
) -> None:
    env = _env(database_url, OPENAI_API_KEY="sk-x")
    nul = tmp_path / "nul.jsonl"
    nul.write_text('{"keyword": "fine"}\n{"keyword": "also fine", "notes": "a\\u0000b"}\n')
    refused = _bulkgen("submit", str(nul), env=env)
    assert refused.returncode == 1 and "row 2" in refused.stderr and "notes" in refused.stderr
    keywords = tmp_path / "k.csv"
    keywords.write_text("keyword\nalpha\n")
    too_rich = _bulkgen("submit", str(keywords), "--budget-usd", "1e309", env=env)
    assert too_rich.returncode == 2 and "--budget-usd must be at most" in too_rich.stderr
    for result in (refused, too_rich):
        assert "Traceback" not in result.stderr
    status = _bulkgen("db", "prune", "--older-than-days", "0", env=env)
    assert status.returncode == 0 and "deleted 0 batches" in status.stdout  # nothing enqueued


async def _batches_in(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM batches")
    finally:
        await conn.close()
    return count


def test_dry_run_prints_the_estimate_and_enqueues_nothing(
    database_url: str, tmp_path: Path
) -> None:
    keywords = tmp_path / "k.csv"
    keywords.write_text("keyword,model,max_tokens\nalpha,,\nbeta,gpt-4o-mini,400\ngamma,,\n")
    env = _env(database_url, BULKGEN_MODEL="gpt-4o", BULKGEN_MAX_TOKENS="1500")
    shown = _bulkgen("submit", str(keywords), "--dry-run", "--budget-usd", "5", env=env)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "nothing enqueued" in out
    assert "jobs                          3  (model gpt-4o: 2, gpt-4o-mini: 1)" in out
    assert "answer tokens, worst case     3,400" in out  # 1,500 + 400 + 1,500
    assert "answer tokens, expected       2,534" in out  # 800 words ~ 1,067 tokens, or 400
    assert "online (this batch)" in out and "economy (Batch API)  " in out
    assert "even the worst case fits" in out
    economy = _bulkgen(
        "submit", str(keywords), "--dry-run", "--mode", "economy", "--budget-usd", "0.03", env=env
    )
    assert economy.returncode == 0, economy.stderr
    # $0.03 is below the online worst case and above the economy one: judged at its mode's.
    assert "economy (Batch API) (this batch)" in economy.stdout
    assert "even the worst case fits" in economy.stdout
    as_json = _bulkgen("submit", str(keywords), "--dry-run", "--json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    estimate = json.loads(as_json.stdout.strip().splitlines()[-1])
    assert (estimate["jobs"], estimate["enqueued"]) == (3, False)
    assert estimate["max_answer_tokens"] == 3400
    assert estimate["prompt_tokens"] > 3 * 100  # the default template is a long prompt
    online, batch = estimate["online_usd"], estimate["batch_usd"]
    assert Decimal(batch["worst_case"]) * 2 == Decimal(online["worst_case"])
    assert Decimal(online["expected"]) < Decimal(online["worst_case"])
    assert asyncio.run(_batches_in(database_url)) == 0
    # No database is opened at all: one nobody listens on makes no difference.
    nowhere = _env("postgresql://postgres@127.0.0.1:9/none", BULKGEN_MODEL="gpt-4o")
    offline = _bulkgen("submit", str(keywords), "--dry-run", "--json", env=nowhere)
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout.strip().splitlines()[-1])["jobs"] == 3


def test_dry_run_refuses_what_submit_refuses_and_names_any_row_that_cannot_render(
    database_url: str, tmp_path: Path
) -> None:
    env = _env(database_url)
    template = tmp_path / "t.j2"
    template.write_text("{{ keyword }} for {{ audience }}")
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"keyword": "a", "audience": "x"}\n{"keyword": "b"}\n')
    unrenderable = _bulkgen("submit", str(rows), "--template", str(template), "--dry-run", env=env)
    assert unrenderable.returncode == 1
    assert "row 2" in unrenderable.stderr and "'audience' is undefined" in unrenderable.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("keyword,target_words\nfine,800\nshort,10\n")
    refused = _bulkgen("submit", str(bad), "--dry-run", env=env)
    assert refused.returncode == 1 and "row 2, field 'target_words'" in refused.stderr
    good = tmp_path / "k.csv"
    good.write_text("keyword\nalpha\n")
    for flags, why in [
        (("--json",), "--json goes with --dry-run"),
        (("--wait", "--dry-run"), "--wait"),
    ]:
        wrong = _bulkgen("submit", str(good), *flags, env=env)
        assert wrong.returncode == 2 and why in wrong.stderr, wrong.stderr
    for result in (unrenderable, refused):
        assert "Traceback" not in result.stderr
    assert asyncio.run(_batches_in(database_url)) == 0


def test_an_economy_batch_from_the_command_line(database_url: str, tmp_path: Path) -> None:
    keywords = tmp_path / "k.csv"
    keywords.write_text("keyword\nalpha\nbeta\ngamma\n")
    env = _env(database_url, BULKGEN_ECONOMY_POLL_S="0.5", BULKGEN_ECONOMY_TICK_S="0.2")
    bad = _bulkgen("submit", str(keywords), "--mode", "economy", "--deadline", "3x", env=env)
    assert bad.returncode == 2 and "--deadline takes a duration such as 24h" in bad.stderr
    online_deadline = _bulkgen("submit", str(keywords), "--deadline", "2h", env=env)
    assert online_deadline.returncode == 2 and "go with --mode economy" in online_deadline.stderr
    no_fallback = _bulkgen(
        "submit", str(keywords), "--mode", "economy", "--deadline", "2h", env=env
    )
    assert no_fallback.returncode == 2 and "goes with --fallback-online" in no_fallback.stderr
    submitted = _bulkgen(
        "submit",
        str(keywords),
        "--mode",
        "economy",
        "--deadline",
        "90m",
        "--fallback-online",
        "--max-tokens",
        "600",
        env=env,
    )
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip().splitlines()[-1]
    worked = _bulkgen("worker", "--burst", env=env)
    assert worked.returncode == 0, worked.stderr
    assert "economy.submitted" in worked.stderr and "economy.processed" in worked.stderr
    status = _bulkgen("status", batch_id, "--json", env=env)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout.strip().splitlines()[-1])
    assert (report["mode"], report["done"], report["batched"]) == ("economy", 3, 0)
    assert Decimal(report["economy_saved_usd"]) == Decimal(report["cost_usd"]) > 0
    deadline = datetime.fromisoformat(report["deadline_at"])
    assert datetime.now(UTC) + timedelta(minutes=80) < deadline  # 90 minutes from submit
    table = _bulkgen("status", batch_id, env=env)
    assert "economy saved usd" in table.stdout and "economy" in table.stdout
