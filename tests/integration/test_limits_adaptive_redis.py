"""The probed concurrency shared through Redis: the processes of a fleet probe one limit."""

from __future__ import annotations

import contextlib
import logging

import pytest

from bulkgen.errors import ProviderOverloaded
from bulkgen.limits import LimitKey, RateGovernor, build_governor
from bulkgen.limits.adaptive import AdaptiveConfig, AdaptiveLimit, Adjustment, FleetLimit
from bulkgen.limits.backend import LocalBackend
from bulkgen.limits.keys import redis_keys
from bulkgen.limits.redis_backend import CONCURRENCY_TTL_MS, RedisBackend
from bulkgen.metrics import Metrics
from bulkgen.models import Completion, Usage
from bulkgen.redis_client import RedisClient
from bulkgen.settings import Settings
from tests.limits_support import grow_to

pytestmark = [pytest.mark.redis, pytest.mark.redis_cluster]

KEY = LimitKey("http://127.0.0.1:9/v1", "adaptive", "gpt-adaptive")
LATENCY_S = 30.0  # one round trip: no cut of this test is ever past the fleet's hold-off


def completion() -> Completion:
    return Completion("x", Usage(5, 5), "stop", KEY.model, latency_s=LATENCY_S)


async def overload(gov: RateGovernor) -> None:
    with pytest.raises(ProviderOverloaded):
        async with gov.slot(KEY, 10):
            raise ProviderOverloaded("503 overloaded", status_code=503)


async def fleet(redis_client: RedisClient, size: int) -> list[RateGovernor]:
    return [await build_governor(Settings(), redis_client, metrics=Metrics()) for _ in range(size)]


async def test_every_process_grows_the_one_fleet_limit(redis_client: RedisClient) -> None:
    one, two, three = await fleet(redis_client, 3)
    grown = await grow_to(one, KEY, completion(), 9)
    async with two.slot(KEY, 10):  # admitted at the fleet's limit, not at its own first 1
        assert two.concurrency_limit(KEY) == grown
    # Three requests of each process in flight at once, then answered: the fleet's one
    # limit grows as one process's limit would with the same answers.
    lone = AdaptiveLimit(AdaptiveConfig())
    lone.adopt(one.policy(KEY).adaptive.state())
    async with contextlib.AsyncExitStack() as stack:
        slots = [
            await stack.enter_async_context(gov.slot(KEY, 10))
            for gov in (one, two, three)
            for _ in range(3)
        ]
        for slot in reversed(slots):
            lone.on_success(LATENCY_S, 0.0, used=slot.used)
            await slot.record(completion())
    stored = await redis_client.hgetall(redis_keys(KEY).concurrency)
    assert float(stored[b"limit"]) == pytest.approx(lone.state().limit)
    assert lone.value() > grown + 1  # the answers of more than one process grew it
    assert 0 < await redis_client.pttl(redis_keys(KEY).concurrency) <= CONCURRENCY_TTL_MS


async def test_overloads_seen_by_three_processes_cut_the_fleet_once(
    redis_client: RedisClient, caplog: pytest.LogCaptureFixture
) -> None:
    govs = await fleet(redis_client, 3)
    grown = await grow_to(govs[0], KEY, completion(), 16)
    with caplog.at_level(logging.WARNING, logger="bulkgen.limits.governor"):
        for gov in govs:  # one round trip of overloads, each process gets one
            await overload(gov)
    for gov in govs:
        async with gov.slot(KEY, 10):  # admission adopts the fleet's limit
            assert gov.concurrency_limit(KEY) == grown // 2  # halved once, not three times
    stored = await redis_client.hgetall(redis_keys(KEY).concurrency)
    assert int(stored[b"epoch"]) == 1
    assert float(stored[b"cut_at"]) == govs[0].policy(KEY).adaptive.state().cut_at
    assert int(stored[b"engaged"]) == 1
    assert any(r.getMessage() == "limiter.concurrency_cut" for r in caplog.records)


async def test_a_growth_step_from_before_the_fleets_last_cut_is_dropped(
    redis_client: RedisClient,
) -> None:
    backend = RedisBackend(redis_client, LocalBackend(_clock), clock=_clock, metrics=Metrics())
    cut = Adjustment(True, 0.5, 0, FleetLimit(5.0, 10.0, False, True, 1), LATENCY_S, 256)
    assert await backend.share_concurrency(KEY, cut) == FleetLimit(5.0, 10.0, False, True, 1)
    stale = Adjustment(False, 1.0, 0, FleetLimit(11.0, None, True, False, 0), LATENCY_S, 256)
    assert await backend.share_concurrency(KEY, stale) == FleetLimit(5.0, 10.0, False, True, 1)
    fresh = Adjustment(False, 0.2, 1, FleetLimit(5.2, 10.0, False, True, 1), LATENCY_S, 256)
    shared = await backend.share_concurrency(KEY, fresh)
    assert shared is not None and shared.limit == pytest.approx(5.2) and shared.epoch == 1


def _clock() -> float:
    return 0.0
