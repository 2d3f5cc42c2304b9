"""Shared set-up for end-to-end pipeline tests: real PostgreSQL, the simulator over HTTP."""

from __future__ import annotations

import uuid
from typing import Any

from bulkgen.intake import JobInput
from bulkgen.metrics import Metrics
from bulkgen.service import Services, open_services
from bulkgen.settings import Settings

FAST: dict[str, Any] = {
    "redis_url": None,
    "backoff_base_s": 0.01,
    "backoff_cap_s": 0.05,
    "rate_limit_max_wait_s": 0.5,
    "heartbeat_s": 0.3,
    "lease_s": 1.5,
    "poll_s": 0.2,
    "shutdown_grace_s": 5.0,
    "provider_timeout_s": 10.0,
    "breaker_cooldown_s": 0.05,
}


def make_settings(database_url: str, base_url: str, **overrides: Any) -> Settings:
    values = {
        **FAST,
        "database_url": database_url,
        "openai_base_url": base_url,
        "openai_api_key": "sk-test",
        **overrides,
    }
    return Settings(**values)


async def start(settings: Settings) -> Services:
    return await open_services(settings, metrics=Metrics())


async def submit(svc: Services, n: int, account: str = "acme", **options: Any) -> uuid.UUID:
    rows = [JobInput(f"keyword {i}", {}, {}) for i in range(n)]
    return await svc.submit(rows, svc.batch_options(**options), account=account)


async def statuses(svc: Services, batch_id: uuid.UUID) -> dict[str, int]:
    return {c.status: c.jobs for c in await svc.store.batch_counts(batch_id)}
