"""Probing a server's capacity: the grow and cut rules on a fake clock, the breaker beside
a full server, and the governor acting on overload answers."""

from __future__ import annotations

import logging

import pytest

from bulkgen.errors import ProviderOverloaded, ProviderUnavailable
from bulkgen.limits import BreakerState, CircuitBreaker, LimitKey, PolicyConfig, RatePolicy
from bulkgen.limits.adaptive import AdaptiveConfig, AdaptiveLimit, Change, LimitChange
from bulkgen.limits.headers import RateLimitSnapshot
from bulkgen.metrics import Metrics

from ..limits_support import grow_to
from .test_limits_governor import FakeTime, completion, make
from .test_limits_policy import state_of

KEY = LimitKey("http://127.0.0.1:9/v1", "k1", "gpt-test")
RTT_S = 0.5


class Server:
    """A server that takes ``capacity`` requests at once, and a client at ``limit`` of them:
    one round trip sends ``limit`` requests; those above the capacity are overloaded, and
    come back first (a full server refuses at once, answers take the round trip)."""

    def __init__(self, limit: AdaptiveLimit, capacity: int) -> None:
        self.limit, self.capacity = limit, capacity
        self.now_s = 0.0
        self.ok = self.overloaded = 0
        self.changes: list[LimitChange] = []

    def round_trip(self) -> None:
        sent = self.limit.value()
        self.now_s += RTT_S
        for index in range(sent):
            if index < sent - self.capacity:
                self.overloaded += 1
                change = self.limit.on_overload(self.now_s - RTT_S)
            else:
                self.ok += 1
                change = self.limit.on_success(RTT_S, self.now_s)
            if change is not None:
                self.changes.append(change)

    def run(self, round_trips: int) -> list[int]:
        seen = []
        for _ in range(round_trips):
            self.round_trip()
            seen.append(self.limit.value())
        return seen


def test_slow_start_doubles_each_round_trip_until_the_first_overload() -> None:
    server = Server(AdaptiveLimit(AdaptiveConfig()), capacity=1000)
    assert server.limit.value() == 1
    assert server.run(5) == [2, 4, 8, 16, 32]
    assert server.overloaded == 0 and not server.limit.engaged
    grown = [c.limit for c in server.changes if c.change is Change.GROWN]
    assert grown == [2, 4, 8, 16, 32]  # one line each time it doubles, not per answer


def test_the_limit_settles_at_the_capacity_with_few_overloads() -> None:
    server = Server(AdaptiveLimit(AdaptiveConfig()), capacity=8)
    seen = server.run(200)
    assert server.limit.engaged
    settled = seen[20:]
    assert min(settled) >= 6 and max(settled) <= 9
    # Requests answered vs what the server could have answered, and the overload share.
    assert server.ok / (200 * 8) > 0.9
    assert server.overloaded / (server.ok + server.overloaded) < 0.03


def test_one_cut_per_round_trip_however_many_overloads_arrive() -> None:
    limit = AdaptiveLimit(AdaptiveConfig(backoff=0.75))
    for _ in range(15):
        limit.on_success(RTT_S, 0.0)
    assert limit.value() == 16
    cut = limit.on_overload(1.0)
    assert cut == LimitChange(Change.CUT, 8, "overload")  # the end of slow start: halved
    assert [limit.on_overload(1.0 + t) for t in (0.0, 0.1, 0.4)] == [None, None, None]
    assert limit.value() == 8
    assert limit.on_overload(1.0 + 2 * RTT_S) == LimitChange(Change.CUT, 6, "overload")
    assert limit.overloads == 5


def test_a_cut_in_the_round_trip_right_after_another_halves_the_limit() -> None:
    limit = AdaptiveLimit(AdaptiveConfig(backoff=0.75))
    for _ in range(31):
        limit.on_success(RTT_S, 0.0)
    limit.on_overload(1.0)  # 32 -> 16, the end of slow start
    assert limit.on_overload(1.0 + 2 * RTT_S) == LimitChange(Change.CUT, 12, "overload")
    assert limit.on_overload(1.0 + 3 * RTT_S) == LimitChange(Change.CUT, 6, "overload")


def test_the_limit_never_goes_under_one_nor_over_the_ceiling() -> None:
    limit = AdaptiveLimit(AdaptiveConfig(ceiling=10))
    for second in range(20):
        limit.on_overload(float(second))
    assert limit.value() == 1
    for _ in range(1000):
        limit.on_success(RTT_S, 100.0)
    assert limit.value() == 10


@pytest.mark.parametrize("settled_round_trips", range(60, 80))
def test_the_limit_follows_a_server_that_grows_and_shrinks(settled_round_trips: int) -> None:
    """Whenever in its probing cycle the server changes (just after a cut, or just before
    the next probe), the limit follows it within a few seconds at 0.5 s a round trip."""
    server = Server(AdaptiveLimit(AdaptiveConfig()), capacity=8)
    server.run(settled_round_trips)
    server.capacity = 32
    grown = server.run(30)
    assert max(grown) >= 30
    assert next(i for i, v in enumerate(grown) if v >= 28) < 12  # under 6 s
    server.capacity = 8
    shrunk = server.run(30)
    assert next(i for i, v in enumerate(shrunk) if v <= 9) < 4  # under 2 s
    assert max(shrunk[4:]) <= 10


def test_the_level_of_the_last_cut_is_forgotten_after_healthy_round_trips() -> None:
    limit = AdaptiveLimit(AdaptiveConfig())
    for _ in range(15):
        limit.on_success(RTT_S, 0.0)
    limit.on_overload(0.0)  # 16 -> 8, cut at 16
    now_s = 0.0
    while limit.value() < 16:  # congestion avoidance, then slowly up to the cut level
        now_s += RTT_S / limit.value()
        limit.on_success(RTT_S, now_s)
    for _ in range(40):  # two and a half round trips at the level that was too much
        now_s += RTT_S / 16
        limit.on_success(RTT_S, now_s)
    # Healthy there for two round trips: the server grew, slow start again (creeping
    # toward 17 at 1/8 request a round trip, the limit would still be 16).
    assert limit.value() >= 20


def test_a_limit_less_than_half_used_does_not_grow() -> None:
    limit = AdaptiveLimit(AdaptiveConfig())
    for _ in range(15):
        limit.on_success(RTT_S, 0.0, used=1.0)
    assert limit.value() == 16
    for second in range(100):  # a client that never has more than 7 requests to send
        assert limit.on_success(RTT_S, float(second), used=7 / 16) is None
    assert limit.value() == 16 and limit.adjustment is None  # nothing to share either
    limit.on_success(RTT_S, 100.0, used=8 / 16)
    assert limit.value() == 17


def test_latency_well_above_normal_is_an_overload_signal() -> None:
    limit = AdaptiveLimit(AdaptiveConfig())
    now_s = 0.0
    for _ in range(100):
        now_s += 0.1
        limit.on_success(1.0, now_s)  # 1 s is normal for this server
    high = limit.value()
    changes = []
    for _ in range(15):
        now_s += 1.0
        changes.append(limit.on_success(5.0, now_s))  # it queues: answers five times slower
    cuts = [c for c in changes if c is not None and c.change is Change.CUT]
    assert cuts and cuts[0].reason == "latency"
    assert limit.value() < high


def test_answers_of_different_lengths_are_not_congestion() -> None:
    limit = AdaptiveLimit(AdaptiveConfig())
    for i in range(300):
        change = limit.on_success([0.2, 3.0, 1.0, 6.0][i % 4], float(i))
        assert change is None or change.change is Change.GROWN
    assert limit.value() == 256


def test_known_rates_stay_in_charge_until_the_server_says_it_is_full() -> None:
    policy = RatePolicy(PolicyConfig(target_share=1.0))
    policy.learn(RateLimitSnapshot(limit_rpm=600))
    policy.on_success(4.0, 0.0)
    assert policy.concurrency_limit() == 52  # 10/s * 4 s * 1.3, the probe does not bind
    for second in range(6):
        policy.on_overloaded(float(second * 10))
    assert policy.concurrency_limit() == policy.adaptive.value() < 52


def test_slow_answers_alone_never_cap_known_rates() -> None:
    policy = RatePolicy(PolicyConfig(target_share=1.0))
    policy.learn(RateLimitSnapshot(limit_rpm=600))
    changes = [policy.on_success(1.0, i * 0.1) for i in range(100)]
    changes += [policy.on_success(5.0, 10.0 + i) for i in range(15)]
    assert any(c is not None and c.reason == "latency" for c in changes)  # it did see them
    assert not policy.adaptive.engaged
    assert policy.concurrency_limit() > policy.adaptive.value()


def test_without_rates_the_probed_limit_is_the_concurrency() -> None:
    policy = RatePolicy(PolicyConfig(max_concurrency=20))
    for _ in range(3):
        policy.on_success(0.5, 0.0)
    assert policy.concurrency_limit() == 4
    for _ in range(100):
        policy.on_success(0.5, 0.0)
    assert policy.concurrency_limit() == 20  # a user-set cap still wins


# The breaker: a full server is not down, a server that answers nothing is.


def test_breaker_stays_closed_on_a_partially_overloaded_server() -> None:
    time = FakeTime()
    breaker = CircuitBreaker(3, 30.0, time.clock)
    for _ in range(100):  # many overloads in a row, but answers keep coming between them
        breaker.record_success(probe=False)
        for _ in range(20):
            time.now_s += 1.0
            breaker.record_overload(probe=False)
        assert breaker.state is BreakerState.CLOSED


def test_breaker_opens_when_every_request_is_overloaded() -> None:
    time = FakeTime()
    breaker = CircuitBreaker(3, 30.0, time.clock)
    breaker.record_success(probe=False)
    for _ in range(29):
        time.now_s += 1.0
        breaker.record_overload(probe=False)
    assert breaker.state is BreakerState.CLOSED  # not yet quiet for a whole cooldown
    time.now_s += 1.0
    breaker.record_overload(probe=False)
    assert state_of(breaker) is BreakerState.OPEN
    fresh = CircuitBreaker(3, 30.0, time.clock)  # nothing ever succeeded
    for _ in range(3):
        fresh.record_overload(probe=False)
    assert fresh.state is BreakerState.OPEN


def test_an_overloaded_probe_reopens_the_breaker() -> None:
    time = FakeTime()
    breaker = CircuitBreaker(1, 10.0, time.clock)
    breaker.record_failure(probe=False)
    time.now_s += 10.0
    assert breaker.enter() == (True, 0.0)
    breaker.record_overload(probe=True)
    assert breaker.state is BreakerState.OPEN


# The governor: overload answers cut the requests in flight, with a log line.


async def test_governor_cuts_concurrency_on_overload_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, metrics = FakeTime(), Metrics()
    gov = await make(fake, metrics, breaker_failures=3)
    with caplog.at_level(logging.INFO, logger="bulkgen.limits.governor"):
        grown = await grow_to(gov, KEY, completion(10), 16)
        with pytest.raises(ProviderOverloaded):
            async with gov.slot(KEY, 10):
                raise ProviderOverloaded("503 overloaded", status_code=503)
    assert gov.concurrency_limit(KEY) == grown // 2  # the first slow start ends halved
    assert metrics.total("limiter.overloaded") == 1
    labels = {"provider": KEY.base_url, "key": KEY.api_key_id, "model": KEY.model}
    assert metrics.gauge("limiter.concurrency_limit", **labels) == grown // 2
    events = [(r.getMessage(), getattr(r, "limit", None)) for r in caplog.records]
    assert ("limiter.concurrency_cut", grown // 2) in events
    assert [e for e in events if e[0] == "limiter.concurrency_grown"]
    assert gov.allows_claim(KEY)  # one overload after successes: the server is not down


async def test_governor_breaker_opens_on_a_full_outage_not_on_a_full_server() -> None:
    fake, metrics = FakeTime(), Metrics()
    gov = await make(fake, metrics, breaker_failures=3, breaker_cooldown_s=30.0)
    async with gov.slot(KEY, 10) as slot:
        await slot.record(completion(10))
    for _ in range(10):  # overloads, but the last success is recent: a full server
        with pytest.raises(ProviderOverloaded):
            async with gov.slot(KEY, 10):
                raise ProviderOverloaded("429", status_code=429)
    assert gov.allows_claim(KEY)
    fake.now_s += 30.0
    for _ in range(3):  # nothing succeeded for a whole cooldown: down
        with pytest.raises(ProviderOverloaded):
            async with gov.slot(KEY, 10):
                raise ProviderOverloaded("429", status_code=429)
    assert not gov.allows_claim(KEY)
    gov2 = await make(FakeTime(), Metrics(), breaker_failures=3)
    for _ in range(3):  # plain 5xx still open it as before
        with pytest.raises(ProviderUnavailable):
            async with gov2.slot(KEY, 10):
                raise ProviderUnavailable("500", status_code=500)
    assert not gov2.allows_claim(KEY)
