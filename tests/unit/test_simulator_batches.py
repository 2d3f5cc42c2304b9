"""Pure parts of the simulator's Batch API: the time line, the clock, input validation,
the batch settings and their command-line form."""

from __future__ import annotations

import json
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from bulkgen.simulator.batches import Batch, BatchClock, Row, plan_rows, read_input, run_rows
from bulkgen.simulator.cli import simulate
from bulkgen.simulator.config import BatchConfig, ConfigError, SimConfig, apply_changes
from bulkgen.simulator.protocol import ChatCall
from bulkgen.simulator.server import config_to_args

PACE = BatchConfig(requests_per_s=2.0, validating_s=10.0, finalizing_s=5.0, window_s=100.0)


def _batch(
    rows: int, pace: BatchConfig = PACE, errors: list[dict[str, Any]] | None = None
) -> Batch:
    call = ChatCall(model="gpt-4o", prompt="p", last_user="p", max_tokens=50, prompt_tokens=8)
    return Batch(
        id="batch_t", input_file_id="file-t", completion_window="24h", metadata=None,
        created_at=1_000_000, created_sim_s=50.0, pace=pace, seed=0, prompt_cache=False,
        model="gpt-4o", rows=[Row(f"r{i}", call, None, None) for i in range(rows)],
        errors=errors,
    )  # fmt: skip


def test_a_batch_validates_runs_its_rows_finalizes_and_completes_on_time() -> None:
    batch = _batch(10)  # validated at 60, rows end every 0.5 s until 65, completed at 70
    assert batch.phase(59.9).status == "validating"
    assert batch.counts(batch.phase(59.9)) == {"total": 0, "completed": 0, "failed": 0}
    running = batch.phase(62.0)
    assert (running.status, running.rows_done) == ("in_progress", 4)
    assert batch.counts(running) == {"total": 10, "completed": 4, "failed": 0}
    assert batch.phase(66.0).status == "finalizing"
    completed = batch.phase(70.0)
    assert (completed.status, completed.rows_done) == ("completed", 10)
    assert completed.moments_s == {
        "in_progress_at": 60.0,
        "finalizing_at": 65.0,
        "completed_at": 70.0,
    }
    body = batch.to_json(completed)
    assert (body["created_at"], body["in_progress_at"], body["completed_at"]) == (
        1_000_000,
        1_000_010,
        1_000_020,
    )
    assert body["expires_at"] == 1_000_100 and body["expired_at"] is None


def test_a_batch_that_cannot_finish_in_its_window_expires_with_the_rows_ended_by_then() -> None:
    batch = _batch(500)  # 250 s of rows in a 100 s window: 90 s of running, 180 rows
    assert batch.phase(149.0).status == "in_progress"
    expired = batch.phase(150.0)
    assert (expired.status, expired.rows_done) == ("expired", 180)
    assert batch.phase(10_000.0).rows_done == 180
    results = run_rows(batch, expired)
    errors = [json.loads(line) for line in results.errors.splitlines()]
    assert len(results.output.splitlines()) == 180 and len(errors) == 320
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}


def test_a_cancel_keeps_the_rows_ended_before_it_and_a_failed_input_never_runs() -> None:
    batch = _batch(10)
    batch.cancel_sim_s = 61.0
    assert batch.phase(61.0).status == "cancelling"
    cancelled = batch.phase(66.0)
    assert (cancelled.status, cancelled.rows_done) == ("cancelled", 2)
    assert cancelled.moments_s["cancelled_at"] == 66.0
    refused = _batch(10, errors=[{"code": "too_many_requests"}])
    assert refused.phase(59.0).status == "validating"
    failed = refused.phase(60.0)
    assert (failed.status, failed.moments_s) == ("failed", {"failed_at": 60.0})


def test_the_batch_clock_keeps_the_time_passed_when_its_scale_changes() -> None:
    now = [100.0]
    clock = BatchClock(lambda: now[0], scale=10.0)
    now[0] = 101.0
    assert clock.now_s() == pytest.approx(10.0)
    clock.set_scale(0.0)
    now[0] = 500.0
    assert clock.now_s() == pytest.approx(10.0)  # paused
    clock.set_scale(2.0)
    now[0] = 501.0
    assert clock.now_s() == pytest.approx(12.0)


def _line(custom_id: object, **changes: Any) -> bytes:
    request = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        **changes,
    }
    return json.dumps(request).encode()


@pytest.mark.parametrize(
    ("line", "code", "param"),
    [
        (_line(""), "missing_custom_id", "custom_id"),
        (_line(7), "missing_custom_id", "custom_id"),
        (_line("a", method="GET"), "invalid_method", "method"),
        (_line("a", url="/v1/chat/completions/"), "invalid_url", "url"),
        (_line("a", body="hello"), "invalid_request", "body"),
        (b"[1, 2]", "invalid_json_line", None),
    ],
)
def test_input_lines_are_checked_and_named(line: bytes, code: str, param: str | None) -> None:
    lines, errors = read_input(_line("first") + b"\n" + line, BatchConfig())
    assert [line.custom_id for line in lines] == ["first"]
    assert errors == [{"code": code, "message": errors[0]["message"], "param": param, "line": 2}]


def test_rows_run_in_a_seeded_order_and_refused_bodies_are_answered_as_the_endpoint_would() -> None:
    content = b"\n".join(
        [_line(f"r{i}") for i in range(30)] + [_line("bad", body={"model": "gpt-4o"})]
    )
    lines, errors = read_input(content, BatchConfig())
    assert errors == []
    order = [row.custom_id for row in plan_rows(lines, "b1", 3, BatchConfig(), ("gpt-4o",), 64)]
    assert order == [
        row.custom_id for row in plan_rows(lines, "b1", 3, BatchConfig(), ("gpt-4o",), 64)
    ]
    assert order != [
        row.custom_id for row in plan_rows(lines, "b1", 4, BatchConfig(), ("gpt-4o",), 64)
    ]
    assert sorted(order) == sorted(line.custom_id for line in lines)
    refused = [
        row for row in plan_rows(lines, "b1", 3, BatchConfig(), ("gpt-4o",), 64) if row.fails
    ]
    assert [(row.custom_id, row.refusal and row.refusal[0]) for row in refused] == [("bad", 400)]
    unknown = plan_rows(lines[:1], "b2", 3, BatchConfig(), ("gpt-4o-mini",), 64)
    assert unknown[0].refusal is not None and unknown[0].refusal[0] == 404


def test_batch_settings_are_validated_and_changed_field_by_field() -> None:
    config = apply_changes(SimConfig(), {"batch": {"time_scale": 500, "faults": {"503": 0.1}}})
    assert (config.batch.time_scale, config.batch.requests_per_s) == (500, 50.0)
    assert config.to_json()["batch"]["faults"] == {"503": 0.1}
    assert apply_changes(config, {"batch": {"faults": {}}}).batch.faults == {}
    for bad in (
        {"batch": {"speed": 1}},
        {"batch": {"time_scale": -1}},
        {"batch": {"requests_per_s": 0}},
        {"batch": {"max_requests": 0}},
        {"batch": {"enqueued_tokens": 1.5}},
        {"batch": {"faults": {"hang": 0.1}}},
        {"batch": {"faults": {"503": 2}}},
        {"batch": 5},
    ):
        with pytest.raises(ConfigError):
            apply_changes(config, bad)


def test_the_command_line_rebuilds_the_batch_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[SimConfig] = []
    monkeypatch.setattr(
        "bulkgen.simulator.cli.serve", lambda config, *_args, **_kw: served.append(config)
    )
    batch = BatchConfig(
        time_scale=3600.0, requests_per_s=7.5, validating_s=0.0, finalizing_s=3.0,
        window_s=600.0, max_requests=99, max_input_bytes=12_345, enqueued_tokens=None,
        files_max_bytes=65_536, faults={"502": 0.25, "empty": 0.5},
        answer_delay_s={"create": 30.0, "content": 0.5},
    )  # fmt: skip
    config = SimConfig(batch=batch, faults={})
    app = typer.Typer()
    app.command()(simulate)
    result = CliRunner().invoke(app, config_to_args(config))
    assert result.exit_code == 0, result.output
    assert served[0].batch == batch
    refused = CliRunner().invoke(app, ["--batch-fault-rate=hang=0.1"])
    assert refused.exit_code == 2 and "batch fault" in refused.output
    bad_delays = (("poll=1", "unknown call 'poll'"), ("create=-1", ">= 0"), ("create", "CALL="))
    for bad, said in bad_delays:
        refused = CliRunner().invoke(app, [f"--batch-answer-delay={bad}"])
        assert refused.exit_code == 2 and said in refused.output, refused.output
