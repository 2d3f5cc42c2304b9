"""Pure parts of the simulator: buckets, durations, fault draws, config, tokens, articles."""

from __future__ import annotations

import random

import pytest
import typer
from typer.testing import CliRunner

from bulkgen import simulator
from bulkgen.simulator.article import keyword_of, write_article
from bulkgen.simulator.cli import simulate
from bulkgen.simulator.config import ConfigError, SimConfig, apply_changes, parse_fault_rate
from bulkgen.simulator.faults import FaultPicker
from bulkgen.simulator.ratelimit import ModelLimiter, TokenBucket, go_duration
from bulkgen.simulator.server import config_to_args
from bulkgen.simulator.tokens import count_tokens, prompt_tokens


def test_public_surface_is_pinned() -> None:
    assert simulator.__all__ == [
        "FAULT_KINDS",
        "BatchConfig",
        "ConfigError",
        "SimConfig",
        "SimulatorApp",
        "SimulatorProcess",
        "count_tokens",
        "running_simulator",
    ]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.012, "12ms"),
        (0.0121, "13ms"),
        (1.0, "1s"),
        (90.5, "1m30.5s"),
        (360.0, "6m0s"),
        (3723.25, "1h2m3.25s"),
    ],
)
def test_go_duration_matches_openai_header_format(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_bucket_refills_continuously_and_caps_at_capacity() -> None:
    bucket = TokenBucket.per_minute(600, burst_s=1.0, now_s=0.0)
    assert bucket.capacity == pytest.approx(10.0)
    bucket.content = 0.0
    bucket.refill(0.25)
    assert bucket.remaining() == 2
    assert bucket.reset_s() == pytest.approx(0.75)
    bucket.refill(100.0)
    assert bucket.content == pytest.approx(10.0)


def test_limiter_refuses_without_charging_and_reports_the_wait() -> None:
    limiter = ModelLimiter(rpm=60, tpm=None, burst_s=2.0, now_s=0.0)
    assert limiter.admit(10, 0.0).admitted
    assert limiter.admit(10, 0.0).requests is not None
    refused = limiter.admit(10, 0.0)
    assert not refused.admitted and refused.refused_by == "requests"
    assert refused.retry_after_s == pytest.approx(1.0)
    assert refused.tokens is None  # unlimited dimension: nothing to report
    assert not limiter.admit(10, 0.99).admitted
    assert limiter.admit(10, 1.0).admitted


def test_token_limit_admits_a_request_larger_than_the_bucket_when_full() -> None:
    limiter = ModelLimiter(rpm=None, tpm=6000, burst_s=1.0, now_s=0.0)  # 100-token bucket
    first = limiter.admit(1500, 0.0)
    assert first.admitted and first.tokens is not None and first.tokens.remaining == 0
    refused = limiter.admit(1500, 1.0)
    assert refused.refused_by == "tokens"
    assert refused.retry_after_s == pytest.approx(14.0)  # -1300 at t=1, needs 100, +100/s
    assert not limiter.admit(1500, 14.9).admitted
    assert limiter.admit(1500, 15.0).admitted


def test_fault_draws_are_seeded_and_follow_the_rates() -> None:
    rates = {"503": 0.2, "empty": 0.1}
    first = [FaultPicker(7, rates).pick() for _ in range(1)]
    picker_a, picker_b = FaultPicker(7, rates), FaultPicker(7, rates)
    seq_a = [picker_a.pick() for _ in range(2000)]
    assert seq_a == [picker_b.pick() for _ in range(2000)]
    other = FaultPicker(8, rates)
    assert seq_a != [other.pick() for _ in range(2000)]
    assert first[0] == seq_a[0]
    assert 0.17 < seq_a.count("503") / 2000 < 0.23
    assert 0.07 < seq_a.count("empty") / 2000 < 0.13
    assert all(FaultPicker(1, {"hang": 1.0}).pick() == "hang" for _ in range(50))


def test_config_validation_names_the_bad_field() -> None:
    with pytest.raises(ConfigError, match="unknown fault kind 'boom'"):
        SimConfig(faults={"boom": 0.1})
    with pytest.raises(ConfigError, match="between 0 and 1"):
        parse_fault_rate("503=1.5")
    with pytest.raises(ConfigError, match="KIND=RATE"):
        parse_fault_rate("503")
    with pytest.raises(ConfigError, match="burst_s"):
        SimConfig(burst_s=0.5)
    with pytest.raises(ConfigError, match="unknown config field"):
        apply_changes(SimConfig(), {"rpn": 5})
    assert parse_fault_rate("reset=0.25") == ("reset", 0.25)


def test_config_changes_replace_faults_as_a_whole() -> None:
    config = apply_changes(SimConfig(), {"faults": {"503": 1.0}, "rpm": 1000})
    assert config.faults == {"503": 1.0} and config.rpm == 1000
    assert apply_changes(config, {"faults": {}}).faults == {}
    assert SimConfig(api_key="secret").to_json()["api_key"] == "***"


def test_token_approximation_is_four_chars_per_token() -> None:
    assert [count_tokens(""), count_tokens("abcd"), count_tokens("abcde")] == [0, 1, 2]
    assert prompt_tokens(["abcd", ""]) == 3 + (1 + 4) + (0 + 4)


def test_article_is_deterministic_markdown_within_its_target() -> None:
    text = write_article("keyword: trail running", 400, random.Random("x"))
    assert text == write_article("keyword: trail running", 400, random.Random("x"))
    assert text.startswith("# ") and "\n\n## " in text
    assert "trail running" in text.lower()
    assert count_tokens(text) <= 400
    assert keyword_of("Write an article about: Best Budget Laptops.\n") == "Best Budget Laptops"


def test_overload_settings_are_validated_and_survive_the_command_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for bad in ({"max_inflight": -1}, {"max_inflight": 2.5}, {"overload_status": 500}):
        with pytest.raises(ConfigError):
            apply_changes(SimConfig(), bad)
    changed = apply_changes(SimConfig(), {"max_inflight": 8, "overload_status": 429})
    assert (changed.max_inflight, changed.overload_status) == (8, 429)
    served: list[SimConfig] = []
    monkeypatch.setattr(
        "bulkgen.simulator.cli.serve", lambda config, *_args, **_kw: served.append(config)
    )
    app = typer.Typer()
    app.command()(simulate)
    for config in (changed, SimConfig()):
        result = CliRunner().invoke(app, config_to_args(config))
        assert result.exit_code == 0, result.output
        assert (served[-1].max_inflight, served[-1].overload_status) == (
            config.max_inflight,
            config.overload_status,
        )
    refused = CliRunner().invoke(app, ["--overload-status=500"])
    assert refused.exit_code == 2 and "overload_status" in refused.output
