"""A busy worker claims the next jobs in the transaction that writes its outcomes."""

from __future__ import annotations

import pytest

from bulkgen.simulator import SimConfig, running_simulator

from .pipeline_support import make_settings, start, statuses, submit

pytestmark = pytest.mark.postgres


async def test_jobs_are_claimed_with_the_outcomes_that_free_their_slots(
    database_url: str,
) -> None:
    sim = SimConfig(rpm=None, tpm=None, ttft_ms=0, tokens_per_s=0, seed=7)
    async with running_simulator(sim) as base_url:
        svc = await start(make_settings(database_url, base_url, concurrency=4))
        try:
            batch_id = await submit(svc, 40, max_tokens=800, target_words=100)
            await svc.worker(burst=True).run()
            assert await statuses(svc, batch_id) == {"done": 40}
            claims = await svc.store.pool.fetch("SELECT claims FROM jobs")
        finally:
            await svc.aclose()
    assert {r["claims"] for r in claims} == {1}  # never claimed twice, never lost
    # The first flush frees slots while 36 jobs wait: it claims some of them itself.
    assert svc.metrics.total("db.claims_with_outcomes") >= 1
    assert svc.metrics.total("db.claim_statements") > svc.metrics.total("db.claims_with_outcomes")
