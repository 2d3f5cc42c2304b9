"""The per-account API rate: 429 with ``Retry-After`` past the burst, per account, shared
by every API process through Redis, and still serving when Redis is away.

The rate is 0.01 request a second, so the budget refills once in 100 s: nothing a test
does depends on how fast the machine runs it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from bulkgen.accounts import create_account
from bulkgen.api import ApiSettings
from bulkgen.service import Services

from .conftest import LIMITS, bearer, open_api

pytestmark = pytest.mark.postgres

BURST = 3
SLOW = LIMITS.model_copy(update={"rate_per_s": 0.01, "burst": BURST})
CLOSED_PORT_REDIS = "redis://127.0.0.1:1/0"


class Apps:
    """API processes over one database, and two accounts' keys."""

    def __init__(self) -> None:
        self.opened: list[tuple[Services, httpx.AsyncClient]] = []
        self.acme: dict[str, str] = {}
        self.rival: dict[str, str] = {}

    async def open(
        self, database_url: str, redis_url: str | None, limits: ApiSettings = SLOW
    ) -> httpx.AsyncClient:
        services, client = await open_api(database_url, limits, redis_url=redis_url)
        self.opened.append((services, client))
        if not self.acme:
            self.acme = bearer(await create_account(services.store, "acme"))
            self.rival = bearer(await create_account(services.store, "rival"))
        return client

    async def aclose(self) -> None:
        for services, client in self.opened:
            await client.aclose()
            await services.aclose()


@pytest.fixture
async def apps() -> AsyncIterator[Apps]:
    opened = Apps()
    try:
        yield opened
    finally:
        await opened.aclose()


async def statuses(client: httpx.AsyncClient, headers: dict[str, str], n: int) -> list[int]:
    return [(await client.get("/v1/batches", headers=headers)).status_code for _ in range(n)]


async def test_past_the_burst_the_account_gets_429_with_retry_after(
    apps: Apps, database_url: str
) -> None:
    client = await apps.open(database_url, None)
    assert await statuses(client, apps.acme, BURST) == [200] * BURST
    refused = await client.get("/v1/batches", headers=apps.acme)
    assert refused.status_code == 429
    assert refused.json()["error"]["kind"] == "rate_limited"
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 100  # one request's worth at 0.01/s, rounded up
    assert await statuses(client, apps.acme, 2) == [429, 429]  # refusals cost nothing new
    assert int((await client.get("/v1/batches", headers=apps.acme)).headers["Retry-After"]) <= (
        retry_after
    )


async def test_another_account_is_not_affected(apps: Apps, database_url: str) -> None:
    client = await apps.open(database_url, None)
    assert await statuses(client, apps.acme, BURST + 2) == [200] * BURST + [429, 429]
    assert await statuses(client, apps.rival, BURST) == [200] * BURST


async def test_no_key_is_401_not_a_charge_on_anyones_budget(apps: Apps, database_url: str) -> None:
    client = await apps.open(database_url, None)
    for _ in range(BURST + 2):
        assert (await client.get("/v1/batches")).status_code == 401
    assert await statuses(client, apps.acme, BURST) == [200] * BURST


async def test_health_and_metrics_are_not_limited(apps: Apps, database_url: str) -> None:
    client = await apps.open(database_url, None)
    assert await statuses(client, apps.acme, BURST + 1) == [200] * BURST + [429]
    for path in ("/healthz", "/readyz", "/metrics"):
        for _ in range(BURST + 1):
            assert (await client.get(path, headers=apps.acme)).status_code == 200, path
    metrics = (await client.get("/metrics")).text
    assert "bulkgen_api_rate_limited_total 1.0" in metrics


@pytest.mark.redis
async def test_two_api_processes_share_one_accounts_budget_through_redis(
    apps: Apps, database_url: str, redis_url: str
) -> None:
    first = await apps.open(database_url, redis_url)
    second = await apps.open(database_url, redis_url)
    assert await statuses(first, apps.acme, BURST) == [200] * BURST
    refused = await second.get("/v1/batches", headers=apps.acme)
    assert refused.status_code == 429
    assert refused.json()["error"]["kind"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    assert await statuses(first, apps.acme, 1) == [429]
    assert await statuses(second, apps.rival, BURST) == [200] * BURST
    assert await statuses(first, apps.rival, 1) == [429]


async def test_with_redis_unreachable_requests_are_served_with_per_process_limits(
    apps: Apps, database_url: str
) -> None:
    first = await apps.open(database_url, CLOSED_PORT_REDIS)
    second = await apps.open(database_url, CLOSED_PORT_REDIS)
    assert await statuses(first, apps.acme, BURST) == [200] * BURST
    assert await statuses(first, apps.acme, 1) == [429]  # still limited, by this process
    assert await statuses(second, apps.acme, BURST) == [200] * BURST  # its own budget
    services = apps.opened[0][0]
    assert services.metrics.total("api.rate_limit_redis_fallback") >= 1
