"""The API in-process (httpx over ASGI) against a real PostgreSQL database of its own.

The app's services need no provider: a batch is drained by a separate worker with its own
services (as ``bulkgen serve --no-worker`` beside ``bulkgen worker`` would), against the
simulator over real HTTP.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from bulkgen.accounts import create_account
from bulkgen.api import ApiSettings, create_app
from bulkgen.metrics import Metrics
from bulkgen.service import Services, open_services
from bulkgen.settings import Settings
from bulkgen.simulator import SimConfig, running_simulator

from ..integration.pipeline_support import make_settings

pytestmark = pytest.mark.postgres

LIMITS = ApiSettings(
    max_body_mb=0.25,
    max_items=50,
    max_item_chars=2_000,
    max_template_chars=500,
    rate_per_s=1_000,  # the rate limit has tests of its own; others must not meet it
    burst=1_000,
)
QUICK_SIM = SimConfig(rpm=None, tpm=None, ttft_ms=5, tokens_per_s=0, seed=3)


@dataclass
class Api:
    client: httpx.AsyncClient
    services: Services
    acme: dict[str, str]  # Authorization headers of two accounts
    rival: dict[str, str]
    acme_key: str

    async def submit(self, items: list[Any], **body: Any) -> dict[str, Any]:
        response = await self.client.post(
            "/v1/batches", json={"items": items, **body}, headers=self.acme
        )
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    async def count(self, sql: str, *args: object) -> int:
        value: int = await self.services.store.pool.fetchval(sql, *args)
        return value


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def open_api(
    database_url: str, limits: ApiSettings = LIMITS, **overrides: Any
) -> tuple[Services, httpx.AsyncClient]:
    settings = Settings(**{"database_url": database_url, "redis_url": None, **overrides})
    services = await open_services(settings, need_provider=False, metrics=Metrics())
    transport = httpx.ASGITransport(app=create_app(services, limits))
    return services, httpx.AsyncClient(transport=transport, base_url="http://api.test")


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    services, client = await open_api(database_url)
    try:
        acme_key = await create_account(services.store, "acme")
        rival_key = await create_account(services.store, "rival")
        yield Api(client, services, bearer(acme_key), bearer(rival_key), acme_key)
    finally:
        await client.aclose()
        await services.aclose()


async def drain(database_url: str, sim: SimConfig = QUICK_SIM, **overrides: Any) -> None:
    """Run a burst worker with services of its own until nothing is left to do."""
    async with running_simulator(sim) as base_url:
        worker_services = await open_services(
            make_settings(database_url, base_url, **overrides), metrics=Metrics()
        )
        try:
            await worker_services.worker(burst=True).run()
        finally:
            await worker_services.aclose()


def batch_uuid(created: dict[str, Any]) -> uuid.UUID:
    return uuid.UUID(created["id"])
