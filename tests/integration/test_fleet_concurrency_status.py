"""What ``bulkgen status`` shows of the workers' concurrency limit: the one the fleet shares
in Redis, or "unknown" with the reason when it cannot be seen from another process."""

from __future__ import annotations

import pytest

from bulkgen.limits import LimitKey, api_key_id, build_governor
from bulkgen.metrics import Metrics
from bulkgen.models import Completion, Usage
from bulkgen.service import open_services
from bulkgen.settings import Settings
from tests.limits_support import grow_to

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

BASE_URL = "http://127.0.0.1:9/v1"
MODEL = "gpt-status"


def settings(database_url: str, redis_url: str | None) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        openai_base_url=BASE_URL,
        openai_api_key="sk-status",
    )


async def test_the_fleets_probed_limit_is_shown(database_url: str, redis_url: str) -> None:
    svc = await open_services(settings(database_url, redis_url), need_provider=False)
    try:
        before = await svc.fleet_concurrency(MODEL)
        assert before.limit is None and "not probed" in before.note
        assert svc.redis is not None
        worker = await build_governor(Settings(), svc.redis, metrics=Metrics())
        key = LimitKey(BASE_URL, api_key_id("sk-status"), MODEL)
        answer = Completion("x", Usage(5, 5), "stop", MODEL, latency_s=0.5)
        grown = await grow_to(worker, key, answer, 5)  # a server announcing no limits
        shown = await svc.fleet_concurrency(MODEL)
        assert shown.limit == grown >= 5
        assert "probed by the fleet" in shown.note
        other = await svc.fleet_concurrency("another-model")
        assert other.limit is None
    finally:
        await svc.aclose()


async def test_without_redis_or_with_the_built_in_simulator_the_limit_is_unknown(
    database_url: str,
) -> None:
    svc = await open_services(settings(database_url, None), need_provider=False)
    try:
        alone = await svc.fleet_concurrency(MODEL)
        assert alone.limit is None and "without Redis" in alone.note
    finally:
        await svc.aclose()
    simulated = Settings(database_url=database_url)
    svc = await open_services(simulated, need_provider=False)
    try:
        own = await svc.fleet_concurrency(MODEL)
        assert own.limit is None and "simulator" in own.note
    finally:
        await svc.aclose()
