"""A job whose template cannot render its row fails once as invalid input, and a slow
template never holds the event loop (fake provider, no services)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from bulkgen.cache import MemoryCache, SingleFlight
from bulkgen.db.store import ClaimedJob, DoneRow, FailedRow
from bulkgen.limits import build_governor
from bulkgen.metrics import Metrics
from bulkgen.models import ChatRequest, Completion, Usage
from bulkgen.options import validate_options
from bulkgen.pipeline import BatchPlan, Pipeline, PipelineConfig
from bulkgen.prompts import PromptTemplate
from bulkgen.renderer import RenderLimits, TemplateRenderer
from bulkgen.retry import RetryPolicy
from bulkgen.settings import Settings

# Each range is within the sandbox's cap; together 1e10 steps when the row says so.
TEMPLATE = (
    '{% if slow == "yes" %}{% for i in range(100000) %}{% for j in range(100000) %}'
    "{% endfor %}{% endfor %}{% endif %}"
    '{% if unsafe == "yes" %}{{ keyword.__class__.__mro__ }}{% endif %}'
    "Write about {{ keyword }}."
)


class Provider:
    base_url = "http://provider.test/v1"
    api_key_id = "k"

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, request: ChatRequest) -> Completion:
        self.calls += 1
        return Completion("# T\n\n" + "word " * 50, Usage(10, 60), "stop", request.model)

    async def aclose(self) -> None:
        return None


@pytest.fixture
async def pipeline() -> AsyncIterator[Pipeline]:
    settings = Settings(database_url="postgresql://unused/x", redis_url=None, rpm=100_000)
    metrics = Metrics()
    renderer = TemplateRenderer(RenderLimits(timeout_s=1.0, max_chars=500_000))
    try:
        yield Pipeline(
            provider=Provider(),
            governor=await build_governor(settings, None, metrics=metrics),
            singleflight=SingleFlight(MemoryCache(3600, metrics=metrics), None, metrics=metrics),
            retry=RetryPolicy.from_settings(settings),
            config=PipelineConfig(min_words=10),
            metrics=metrics,
            renderer=renderer,
        )
    finally:
        await renderer.aclose()


PLAN = BatchPlan(
    1, validate_options({"template": TEMPLATE}, Settings()), PromptTemplate.from_text(TEMPLATE)
)


def _job(variables: dict[str, str]) -> ClaimedJob:
    row = {"keyword": "tea", "variables": {"slow": "no", "unsafe": "no", **variables}}
    return ClaimedJob(7, uuid.uuid4(), 1, row, 0, 0, False)


async def test_a_row_that_stalls_the_template_fails_once_without_holding_the_loop(
    pipeline: Pipeline,
) -> None:
    ticks = 0

    async def heartbeat_like() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(heartbeat_like())
    try:
        outcome = await pipeline.run(_job({"slow": "yes"}), PLAN)
    finally:
        ticker.cancel()
    assert isinstance(outcome, FailedRow)
    assert (outcome.status, outcome.error_kind, outcome.burnt) == ("failed", "invalid_input", 1)
    assert "took longer than 1 s" in outcome.error_message
    assert ticks >= 5  # rendered on the loop, the ticker would not have run at all
    assert isinstance(await pipeline.run(_job({"slow": "no"}), PLAN), DoneRow)


async def test_a_sandbox_violation_is_invalid_input_not_internal(pipeline: Pipeline) -> None:
    outcome = await pipeline.run(_job({"unsafe": "yes"}), PLAN)
    assert isinstance(outcome, FailedRow)
    assert (outcome.status, outcome.error_kind, outcome.burnt) == ("failed", "invalid_input", 1)
    assert "unsafe" in outcome.error_message
    assert pipeline.provider.calls == 0  # type: ignore[attr-defined]
