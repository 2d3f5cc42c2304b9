"""A long-lived worker runs many batches without keeping every batch's plan."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bulkgen.service import worker_config
from bulkgen.simulator import SimConfig, running_simulator
from bulkgen.worker import Worker

from .pipeline_support import make_settings, start, statuses, submit

pytestmark = pytest.mark.postgres


async def test_worker_over_many_batches_keeps_a_bounded_plan_cache(database_url: str) -> None:
    sim = SimConfig(rpm=None, tpm=None, ttft_ms=0, tokens_per_s=0, seed=4)
    async with running_simulator(sim) as base_url:
        svc = await start(make_settings(database_url, base_url))
        try:
            batches = [
                await submit(svc, 2, account=f"a{i}", max_tokens=200, target_words=100)
                for i in range(6)
            ]
            config = replace(worker_config(svc.settings, burst=True), plan_cache_size=2)
            worker = Worker(svc.store, svc.pipeline(), config, metrics=svc.metrics)
            await worker.run()
            for batch_id in batches:
                assert await statuses(svc, batch_id) == {"done": 2}
        finally:
            await svc.aclose()
    assert 1 <= len(worker._plans) <= 2
