"""A batch sharing a long template, priced with the provider's prompt cache: real
PostgreSQL, the simulator over HTTP (which bills repeated prefixes as cached, as OpenAI
does). What the provider reported cached is what the batch's cost counts, at the cheaper
price."""

from __future__ import annotations

from decimal import Decimal

import pytest

from bulkgen.models import Usage
from bulkgen.simulator import SimConfig, running_simulator
from bulkgen.simulator.control import sim_stats

from .pipeline_support import make_settings, start, submit

pytestmark = pytest.mark.postgres

QUICK_SIM = SimConfig(rpm=None, tpm=None, ttft_ms=2, tokens_per_s=0, seed=12)
STYLE_GUIDE = "Follow the house style guide: short sentences, plain words, concrete facts. " * 80
TEMPLATE = "{# system #}\n" + STYLE_GUIDE + "\n{# user #}\nWrite an article about {{ keyword }}."
JOBS = 12


async def test_cached_prompt_tokens_are_stored_and_priced_lower(database_url: str) -> None:
    async with running_simulator(QUICK_SIM) as base_url:
        svc = await start(make_settings(database_url, base_url, concurrency=1))
        try:
            batch_id = await submit(
                svc, JOBS, model="gpt-4o", template=TEMPLATE, max_tokens=300, target_words=120
            )
            await svc.worker(burst=True).run()
            usage = await svc.store.batch_usage(batch_id, svc.prices)
            stored = await svc.store.pool.fetch(
                "SELECT cache_read_tokens, prompt_tokens FROM jobs WHERE status = 'done'"
            )
        finally:
            await svc.aclose()
        stats = await sim_stats(base_url)
    assert len(stored) == JOBS and usage.paid_jobs == JOBS
    # One at a time: the first call meets an empty cache, every later one reads the shared
    # template from it.
    assert sorted(r["cache_read_tokens"] > 0 for r in stored) == [False] + [True] * (JOBS - 1)
    assert usage.cache_read_tokens == stats["cached_tokens"] > 0
    assert usage.prompt_tokens == stats["prompt_tokens"]
    uncached = svc.prices.cost_usd("gpt-4o", Usage(usage.prompt_tokens, usage.completion_tokens))
    saved_per_token = (Decimal("2.50") - Decimal("1.25")) / 1_000_000  # gpt-4o list prices
    assert usage.cost_usd == uncached - usage.cache_read_tokens * saved_per_token
