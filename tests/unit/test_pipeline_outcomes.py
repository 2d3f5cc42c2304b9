"""Pipeline outcomes for budget and storage trouble, with a fake provider (no services)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from bulkgen import formatting
from bulkgen.accounting import BudgetSeed
from bulkgen.budget import BudgetLedger, MemoryLedger
from bulkgen.cache import MemoryCache, SingleFlight
from bulkgen.db.store import ClaimedJob, DoneRow, FailedRow, RetryRow
from bulkgen.errors import ProviderUnavailable, RateLimited, StorageError
from bulkgen.limits import build_governor
from bulkgen.metrics import Metrics
from bulkgen.models import ChatRequest, Completion, Usage
from bulkgen.options import validate_options
from bulkgen.pipeline import BatchPlan, Pipeline, PipelineConfig
from bulkgen.prompts import PromptTemplate
from bulkgen.renderer import RenderLimits, TemplateRenderer
from bulkgen.retry import RetryPolicy
from bulkgen.settings import Settings


class GatedProvider:
    """Answers once ``release`` is set; ``entered`` tells that a call is in flight."""

    base_url = "http://provider.test/v1"
    api_key_id = "k"

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0

    async def complete(self, request: ChatRequest) -> Completion:
        self.calls += 1
        self.entered.set()
        await self.release.wait()
        return Completion("# T\n\n" + "word " * 50, Usage(10, 60), "stop", request.model)

    async def aclose(self) -> None:
        return None


@pytest.fixture
async def renderer() -> AsyncIterator[TemplateRenderer]:
    """Started before the test: a job's first render would otherwise wait for a process to
    start, far longer than the moments these tests give one job to get ahead of another."""
    renderer = TemplateRenderer(RenderLimits(timeout_s=2.0, max_chars=500_000), processes=1)
    variables = {"keyword": "k", "tone": "plain", "language": "English", "target_words": 100}
    try:
        await renderer.render(PromptTemplate.default(), variables)
        yield renderer
    finally:
        await renderer.aclose()


async def _pipeline(
    load: object, provider: GatedProvider, renderer: TemplateRenderer, *, wait_s: float
) -> Pipeline:
    settings = Settings(database_url="postgresql://unused/x", redis_url=None, rpm=100_000)
    metrics = Metrics()
    return Pipeline(
        provider=provider,
        governor=await build_governor(settings, None, metrics=metrics),
        singleflight=SingleFlight(MemoryCache(3600, metrics=metrics), None, metrics=metrics),
        retry=RetryPolicy.from_settings(settings),
        config=PipelineConfig(min_words=10),
        metrics=metrics,
        renderer=renderer,
        budget=BudgetLedger(MemoryLedger(), load, wait_s=wait_s, metrics=metrics),  # type: ignore[arg-type]
    )


def _job(i: int, batch_id: uuid.UUID) -> ClaimedJob:
    return ClaimedJob(i, batch_id, 1, {"keyword": f"keyword {i}"}, 0, 0, False)


PLAN = BatchPlan(1, validate_options({"model": "gpt-4o"}, Settings()), PromptTemplate.default())


async def test_a_cap_held_by_a_call_in_flight_snoozes_instead_of_cancelling(
    renderer: TemplateRenderer,
) -> None:
    async def seed(batch_id: uuid.UUID) -> BudgetSeed:
        return BudgetSeed(Decimal("0.02"), Decimal(0))  # one worst case at a time

    provider = GatedProvider()
    pipeline = await _pipeline(seed, provider, renderer, wait_s=0.05)
    batch_id = uuid.uuid4()
    holder = asyncio.ensure_future(pipeline.run(_job(1, batch_id), PLAN))
    await provider.entered.wait()  # the first call holds the whole cap, in flight
    async with asyncio.timeout(10):  # a second call let through would wait for the gate
        outcome = await pipeline.run(_job(2, batch_id), PLAN)
    provider.release.set()
    held = await holder
    assert isinstance(outcome, RetryRow)  # snoozed: not cancelled while money was left
    assert (outcome.error_kind, outcome.burnt) == ("budget_wait", 0)
    assert outcome.rate_limited_ms > 0  # counted against the bounded wait, not attempts
    assert isinstance(held, DoneRow) and provider.calls == 1


async def test_budget_waits_are_bounded_like_rate_limit_waits(renderer: TemplateRenderer) -> None:
    async def seed(batch_id: uuid.UUID) -> BudgetSeed:
        return BudgetSeed(Decimal("0.02"), Decimal(0))  # one worst case at a time

    provider = GatedProvider()
    pipeline = await _pipeline(seed, provider, renderer, wait_s=0.05)
    batch_id = uuid.uuid4()
    # This job already waited out almost the whole allowance (600 s by default).
    tired = ClaimedJob(2, batch_id, 1, {"keyword": "k"}, 0, 598_000, False)
    holder = asyncio.ensure_future(pipeline.run(_job(1, batch_id), PLAN))
    await provider.entered.wait()  # the first call holds the budget
    async with asyncio.timeout(10):
        outcome = await pipeline.run(tired, PLAN)
    provider.release.set()
    await holder
    assert isinstance(outcome, FailedRow)
    assert (outcome.status, outcome.error_kind, outcome.burnt) == (
        "cancelled",
        "budget_exceeded",
        0,
    )


async def test_a_database_blip_is_a_retry_without_an_attempt(renderer: TemplateRenderer) -> None:
    async def down(batch_id: uuid.UUID) -> BudgetSeed:
        raise StorageError("reading the batch budget failed: connection refused")

    pipeline = await _pipeline(down, GatedProvider(), renderer, wait_s=1)
    outcome = await pipeline.run(_job(1, uuid.uuid4()), PLAN)
    assert isinstance(outcome, RetryRow)
    assert (outcome.error_kind, outcome.burnt) == ("storage", 0)


class ScriptedProvider(GatedProvider):
    """Raises the errors it is given, one per call, then answers."""

    def __init__(self, *errors: Exception) -> None:
        super().__init__()
        self.errors = list(errors)
        self.release.set()

    async def complete(self, request: ChatRequest) -> Completion:
        if self.errors:
            self.calls += 1
            raise self.errors.pop(0)
        return await super().complete(request)


async def test_each_outcome_carries_the_requests_it_sent_and_its_429s(
    renderer: TemplateRenderer,
) -> None:
    async def no_cap(batch_id: uuid.UUID) -> BudgetSeed:
        return BudgetSeed(None, Decimal(0))

    provider = ScriptedProvider(
        RateLimited("slow down", status_code=429), ProviderUnavailable("503", status_code=503)
    )
    pipeline = await _pipeline(no_cap, provider, renderer, wait_s=1)
    batch_id = uuid.uuid4()
    outcomes = [await pipeline.run(_job(1, batch_id), PLAN) for _ in range(4)]
    # A 429, a 503, an answer, then the same request again: the cache answers, nothing sent.
    assert [type(o).__name__ for o in outcomes] == ["RetryRow", "RetryRow", "DoneRow", "DoneRow"]
    assert [(o.calls, o.calls_429) for o in outcomes] == [(1, 1), (1, 0), (1, 0), (0, 0)]
    assert provider.calls == 3


async def test_an_answer_is_parsed_once_whether_fresh_or_cached(
    renderer: TemplateRenderer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation and formatting share one parse tree: a fresh answer is parsed by the gate
    in ``_paid`` only, a cached one by its second validation only; the row is what
    formatting the text on its own gives."""

    async def no_cap(batch_id: uuid.UUID) -> BudgetSeed:
        return BudgetSeed(None, Decimal(0))

    parses: list[str] = []
    real = formatting._MARKDOWN

    class Counted:
        """The runtime parser, counting the trees it builds (the parse the gate makes)."""

        def tree(self, source: str) -> Any:
            parses.append(source)
            return real.tree(source)

        def render(self, source: str) -> str:
            return real.render(source)

    monkeypatch.setattr(formatting, "_MARKDOWN", Counted())
    provider = ScriptedProvider()
    pipeline = await _pipeline(no_cap, provider, renderer, wait_s=1)
    batch_id = uuid.uuid4()
    fresh = await pipeline.run(_job(1, batch_id), PLAN)
    assert len(parses) == 1
    cached = await pipeline.run(_job(1, batch_id), PLAN)
    assert len(parses) == 2 and provider.calls == 1
    assert isinstance(fresh, DoneRow) and isinstance(cached, DoneRow) and cached.cached
    expected = formatting.format_article("# T\n\n" + "word " * 50, fallback_title="keyword 1")
    for row in (fresh, cached):
        assert (row.content, row.html, row.title, row.word_count) == (
            expected.markdown,
            expected.html,
            expected.title,
            expected.word_count,
        )


async def test_a_plan_without_a_cap_spares_the_budget_its_read(renderer: TemplateRenderer) -> None:
    reads: list[uuid.UUID] = []

    async def no_cap(batch_id: uuid.UUID) -> BudgetSeed:
        reads.append(batch_id)
        return BudgetSeed(None, Decimal(0))

    provider = GatedProvider()
    provider.release.set()
    pipeline = await _pipeline(no_cap, provider, renderer, wait_s=1)
    uncapped = replace(PLAN, capped=False)  # its batch row, read for the plan, had no cap
    assert isinstance(await pipeline.run(_job(1, uuid.uuid4()), uncapped), DoneRow)
    assert reads == []
    maybe_capped = uuid.uuid4()
    assert isinstance(await pipeline.run(_job(2, maybe_capped), PLAN), DoneRow)
    assert reads == [maybe_capped]  # a plan that may have a cap: the ledger reads it
