"""Simulator configuration: one frozen object, validated when built or changed.

The simulator is changed while it runs (``POST /_sim/config``) so a test can start and end
an outage; every change goes through :func:`apply_changes`, which validates the whole new
object before it replaces the old one, so a bad change never leaves a half-applied config.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FAULT_KINDS: tuple[str, ...] = (
    "insufficient_quota",
    "500",
    "502",
    "503",
    "hang",
    "reset",
    "empty",
    "whitespace",
    "truncate",
    "malformed",
    "429",
    "echo_auth",
)
"""Fault kinds in the order their rates are stacked on one random draw per request.

``echo_auth`` is a careless gateway: a 401 whose message quotes the request's
``Authorization`` header and the key in OpenAI's masked form."""

DEFAULT_MODELS: tuple[str, ...] = ("gpt-4o", "gpt-4o-mini", "gpt-4.1-mini")

OVERLOAD_STATUSES: tuple[int, ...] = (503, 429)
"""How a full server answers (``overload_status``): a self-hosted inference server's 503
"overloaded", or a gateway's bare 429; neither with rate-limit headers nor a wait hint."""

BATCH_FAULT_KINDS: tuple[str, ...] = ("500", "502", "503", "empty", "whitespace", "truncate")
"""The faults a batch row can get: a server error (the row goes to the error file) or
faulty content (an ordinary answer in the output file). Connection faults, 429s and
gateway faults belong to a live HTTP call and have no meaning for a row."""


BATCH_DELAYED_ANSWERS: tuple[str, ...] = ("upload", "create", "content")
"""Batch API calls whose answer can be held back after the call took effect: a client that
dies meanwhile leaves a file uploaded, a batch created or a download served that it never
heard of, as a client killed at that moment against a real provider does."""


class ConfigError(ValueError):
    """A simulator setting is out of range or unknown; the message names it."""


@dataclass(frozen=True)
class BatchConfig:
    """The Batch API's pace and limits, in the batch clock's simulated seconds.

    The batch clock runs ``time_scale`` times faster than the wall clock (0 pauses it, so a
    test can hold a batch where it is), apart from the chat clock, so a "24 hour" batch can
    run in seconds while the chat limits stay as they are. A batch spends ``validating_s``
    validating, runs ``requests_per_s`` rows a second, spends ``finalizing_s`` writing its
    files, and expires ``window_s`` after its creation (OpenAI's 24h). A batch takes the
    pace of the config it was created under; only ``time_scale`` acts on running batches.
    """

    time_scale: float = 1.0
    requests_per_s: float = 50.0
    validating_s: float = 2.0
    finalizing_s: float = 2.0
    window_s: float = 86_400.0
    max_requests: int = 50_000  # rows in one input file
    max_input_bytes: int = 200 * 1024 * 1024  # one input file
    enqueued_tokens: int | None = 2_000_000  # prompt tokens of unfinished batches, per model
    files_max_bytes: int = 1024 * 1024 * 1024  # everything the file store holds
    faults: Mapping[str, float] = field(default_factory=dict)  # BATCH_FAULT_KINDS -> rate
    # BATCH_DELAYED_ANSWERS -> wall seconds the answer waits once the call took effect.
    answer_delay_s: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "faults", dict(self.faults))
        object.__setattr__(self, "answer_delay_s", dict(self.answer_delay_s))
        _validate_batch(self)


@dataclass(frozen=True)
class SimConfig:
    """Everything the simulator does, in simulated time unless said otherwise.

    ``time_scale`` k > 1 runs the simulated clock k times faster than the wall clock:
    latencies are divided by k and buckets refill k times faster, while every header is
    given in wall-clock time. ``rpm``/``tpm`` of ``None`` or 0 mean unlimited. ``burst_s`` is
    how many seconds' worth of the per-minute limit a bucket holds (1 s to 60 s).
    ``batch`` paces and bounds the Batch API, on its own clock (:class:`BatchConfig`).
    ``max_inflight`` N > 0 caps the chat requests served at once, as a self-hosted server
    does: the request arriving while N are in flight is answered ``overload_status`` at once.
    """

    rpm: int | None = 500
    tpm: int | None = 30_000
    burst_s: float = 1.0
    ttft_ms: float = 0.0
    tokens_per_s: float = 0.0
    jitter: float = 0.0
    time_scale: float = 1.0
    faults: Mapping[str, float] = field(default_factory=dict)
    seed: int = 0
    api_key: str | None = None
    models: tuple[str, ...] = DEFAULT_MODELS
    default_max_tokens: int = 1024
    hang_s: float = 3600.0
    fault_retry_after_ms: float = 200.0  # the wait a "429" fault asks for (wall clock)
    prompt_cache: bool = True  # report repeated prompt prefixes as cached, as OpenAI does
    max_inflight: int | None = None  # chat requests served at once; None or 0: unlimited
    overload_status: int = 503  # the answer above max_inflight: 503 or 429
    batch: BatchConfig = field(default_factory=BatchConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "faults", dict(self.faults))
        object.__setattr__(self, "models", tuple(self.models))
        _validate(self)

    def to_json(self) -> dict[str, Any]:
        """The config as ``GET /_sim/config`` shows it (the API key is never echoed)."""
        data = dataclasses.asdict(self)
        data["models"] = list(self.models)
        data["faults"] = dict(self.faults)
        data["api_key"] = None if self.api_key is None else "***"
        data["batch"]["faults"] = dict(self.batch.faults)
        data["batch"]["answer_delay_s"] = dict(self.batch.answer_delay_s)
        return data


def _validate(config: SimConfig) -> None:
    """Reject settings that would make the simulator misbehave instead of failing later."""
    for name in ("rpm", "tpm"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ConfigError(f"{name} must be a non-negative integer or null, got {value!r}")
    if not 1.0 <= config.burst_s <= 60.0:
        raise ConfigError(f"burst_s must be between 1 and 60, got {config.burst_s!r}")
    for name in ("ttft_ms", "tokens_per_s", "hang_s"):
        value = getattr(config, name)
        if not _finite_at_least(value, 0.0):
            raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    if not _finite_at_least(config.jitter, 0.0) or config.jitter > 1.0:
        raise ConfigError(f"jitter must be between 0 and 1, got {config.jitter!r}")
    if not _finite_at_least(config.time_scale, 0.0) or config.time_scale == 0:
        raise ConfigError(f"time_scale must be a finite number > 0, got {config.time_scale!r}")
    if not isinstance(config.default_max_tokens, int) or config.default_max_tokens < 1:
        raise ConfigError("default_max_tokens must be a positive integer")
    for kind, rate in config.faults.items():
        check_fault(kind, rate)
    if not all(isinstance(m, str) and m for m in config.models):
        raise ConfigError("models must be non-empty strings")
    if not isinstance(config.batch, BatchConfig):
        raise ConfigError("batch must be a BatchConfig")
    inflight = config.max_inflight
    if inflight is not None and (
        isinstance(inflight, bool) or not isinstance(inflight, int) or inflight < 0
    ):
        raise ConfigError(f"max_inflight must be an integer >= 0 or null, got {inflight!r}")
    if config.overload_status not in OVERLOAD_STATUSES or isinstance(config.overload_status, bool):
        raise ConfigError(f"overload_status must be 503 or 429, got {config.overload_status!r}")
    if not isinstance(config.prompt_cache, bool):
        raise ConfigError(f"prompt_cache must be true or false, got {config.prompt_cache!r}")


def _validate_batch(config: BatchConfig) -> None:
    for name in ("time_scale", "validating_s", "finalizing_s"):
        value = getattr(config, name)
        if not _finite_at_least(value, 0.0):
            raise ConfigError(f"batch.{name} must be a finite number >= 0, got {value!r}")
    for name in ("requests_per_s", "window_s"):
        value = getattr(config, name)
        if not _finite_at_least(value, 0.0) or value == 0:
            raise ConfigError(f"batch.{name} must be a finite number > 0, got {value!r}")
    for name in ("max_requests", "max_input_bytes", "files_max_bytes"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"batch.{name} must be a positive integer, got {value!r}")
    tokens = config.enqueued_tokens
    if tokens is not None and (
        isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0
    ):
        raise ConfigError(f"batch.enqueued_tokens must be an integer >= 0 or null, got {tokens!r}")
    for kind, rate in config.faults.items():
        if kind not in BATCH_FAULT_KINDS:
            known = ", ".join(BATCH_FAULT_KINDS)
            raise ConfigError(f"unknown batch fault kind {kind!r}; known kinds: {known}")
        check_fault(kind, rate)
    for call, delay_s in config.answer_delay_s.items():
        if call not in BATCH_DELAYED_ANSWERS:
            known = ", ".join(BATCH_DELAYED_ANSWERS)
            raise ConfigError(f"batch.answer_delay_s: unknown call {call!r}; known: {known}")
        if not _finite_at_least(delay_s, 0.0):
            raise ConfigError(
                f"batch.answer_delay_s.{call} must be a finite number >= 0, got {delay_s!r}"
            )


def _finite_at_least(value: object, low: float) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= low
    )


def check_fault(kind: object, rate: object) -> None:
    """Raise :class:`ConfigError` unless ``kind`` is known and ``rate`` is within 0..1."""
    if kind not in FAULT_KINDS:
        known = ", ".join(FAULT_KINDS)
        raise ConfigError(f"unknown fault kind {kind!r}; known kinds: {known}")
    if not _finite_at_least(rate, 0.0) or float(rate) > 1.0:  # type: ignore[arg-type]
        raise ConfigError(f"fault rate for {kind!r} must be between 0 and 1, got {rate!r}")


def parse_fault_rate(text: str) -> tuple[str, float]:
    """Parse one ``KIND=RATE`` option, e.g. ``503=0.02``, with a message a user can act on."""
    kind, sep, raw_rate = text.partition("=")
    if not sep:
        raise ConfigError(f"expected KIND=RATE (e.g. 503=0.02), got {text!r}")
    try:
        rate = float(raw_rate)
    except ValueError:
        raise ConfigError(f"fault rate in {text!r} is not a number") from None
    check_fault(kind.strip(), rate)
    return kind.strip(), rate


def parse_answer_delay(text: str) -> tuple[str, float]:
    """Parse one ``CALL=SECONDS`` option, e.g. ``create=30``; the config checks the call."""
    call, sep, raw_delay = text.partition("=")
    if not sep:
        raise ConfigError(f"expected CALL=SECONDS (e.g. create=30), got {text!r}")
    try:
        return call.strip(), float(raw_delay)
    except ValueError:
        raise ConfigError(f"answer delay in {text!r} is not a number") from None


def apply_changes(config: SimConfig, changes: Mapping[str, Any]) -> SimConfig:
    """Return a new config with ``changes`` applied; ``faults`` is replaced as a whole.

    Replacing (not merging) ``faults`` lets ``{"faults": {}}`` end every outage at once.
    ``batch`` is merged field by field (``{"batch": {"time_scale": 100}}``), its own
    ``faults`` again replaced as a whole.
    """
    names = {f.name for f in dataclasses.fields(SimConfig)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
    updates = dict(changes)
    if "models" in updates:
        models = updates["models"]
        if not isinstance(models, list | tuple):
            raise ConfigError("models must be a list of strings")
        updates["models"] = tuple(models)
    if "faults" in updates and not isinstance(updates["faults"], Mapping):
        raise ConfigError("faults must be an object of kind -> rate")
    if "batch" in updates:
        updates["batch"] = _batch_changed(config.batch, updates["batch"])
    try:
        return dataclasses.replace(config, **updates)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


def _batch_changed(batch: BatchConfig, changes: object) -> BatchConfig:
    if isinstance(changes, BatchConfig):
        return changes
    if not isinstance(changes, Mapping):
        raise ConfigError("batch must be an object of setting -> value")
    names = {f.name for f in dataclasses.fields(BatchConfig)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ConfigError(f"unknown batch config field(s): {', '.join(unknown)}")
    for name in ("faults", "answer_delay_s"):
        if name in changes and not isinstance(changes[name], Mapping):
            raise ConfigError(f"batch.{name} must be an object of name -> number")
    try:
        return dataclasses.replace(batch, **changes)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
