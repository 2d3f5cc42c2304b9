"""Plain, frozen data passed between layers. No I/O here."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class JobStatus(enum.StrEnum):
    """A job's status, as stored in ``jobs.status`` (the schema's CHECK allows these only).

    ``queued -> generating -> done``, or ``failed`` / ``cancelled``; a retry puts a job back
    to ``queued`` with a later ``run_after``. A job is ``generating`` exactly while a worker
    holds it (its ``lease_owner`` is set): formatting and validation happen inside that
    step, so ``done`` is written once, with its result.

    A job of an economy batch is ``batched`` instead of ``queued`` and ``generating``: it
    waits for a provider batch, then is held by one (its ``lease_owner`` is the provider
    batch's id) until that batch's answers are written (see :mod:`bulkgen.economy`).
    """

    QUEUED = "queued"
    GENERATING = "generating"
    BATCHED = "batched"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class BatchMode(enum.StrEnum):
    """How a batch's jobs are sent: one call each, or through the provider's Batch API."""

    ONLINE = "online"
    ECONOMY = "economy"


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one call was billed for. ``cache_read_tokens`` is the part of
    ``prompt_tokens`` the provider read from its own prompt cache (a prefix it saw
    recently, e.g. a long shared template), which it bills at a lower price; it has nothing
    to do with bulkgen's result cache."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One provider call: what is sent, and nothing about the job it serves."""

    model: str
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs
    max_tokens: int
    temperature: float | None = None
    extra: tuple[tuple[str, Any], ...] = ()  # further output-changing options, sorted by name

    def as_messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def prompt_chars(self) -> int:
        return sum(len(content) for _, content in self.messages)


@dataclass(frozen=True, slots=True)
class Completion:
    """A provider's answer: content, usage, finish reason and its rate-limit headers."""

    content: str
    usage: Usage
    finish_reason: str
    model: str
    headers: dict[str, str] = field(default_factory=dict)
    latency_s: float = 0.0
