"""The Lua scripts decide exactly as the Python rules they transcribe, on real Redis.

Two pairs: GCRA admission (``LocalBackend`` in ``limits/backend.py`` and ``limits/gcra.py``
against ``ADMIT_LUA``/``ADJUST_LUA``/``PAUSE_LUA`` in ``limits/redis_backend.py``) and the
budget reservation (``admit``/``MemoryLedger`` against the ledger's Lua in ``budget.py``).
Each case runs the same steps through both, through the backends' own public methods, and
compares every answer.

The limiter's scripts read the clock with ``TIME``; here that one call is replaced by a
clock the test passes in, so both sides see the same instant and the comparison is exact,
whatever the load on the machine. Key lifetimes (``PX``) follow the real clock while the
test's clock jumps, so keys are made persistent after each step: a lifetime never decides
an admission, it only frees memory.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from bulkgen.budget import MemoryLedger, RedisLedger, admit, ledger_key
from bulkgen.limits import redis_backend
from bulkgen.limits.backend import AdmissionRequest, AdmissionResult, LocalBackend
from bulkgen.limits.keys import LimitKey, redis_keys
from bulkgen.limits.redis_backend import RedisBackend
from bulkgen.metrics import Metrics
from bulkgen.redis_client import RedisClient
from bulkgen.redis_guard import RedisGuard
from tests.redis_cluster import all_keys

pytestmark = [pytest.mark.redis, pytest.mark.redis_cluster]

KEY = LimitKey("http://127.0.0.1:9/v1", "parity", "gpt-parity")
EPOCH_S = 1_700_000_000  # the test clock reads EPOCH_S + t on both sides
CLOCK_CALL = "redis.call('TIME')"


class ManualClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return EPOCH_S + self.t

    def redis_args(self) -> list[int]:
        """``TIME``'s reply for the same instant: seconds and microseconds."""
        micros = round((EPOCH_S + self.t) * 1_000_000)
        return [micros // 1_000_000, micros % 1_000_000]


class ClockedScript:
    """A limiter script whose ``TIME`` is the test clock (passed as two extra ARGV)."""

    def __init__(self, client: RedisClient, source: str, clock: ManualClock) -> None:
        assert source.count(CLOCK_CALL) == 1, "the script reads the clock once"
        self._script = client.register_script(
            source.replace(CLOCK_CALL, "{ARGV[#ARGV - 1], ARGV[#ARGV]}")
        )
        self._clock = clock

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        return await self._script(keys=keys, args=[*args, *self._clock.redis_args()])


@dataclass
class Limits:
    rpm: int | None = None
    tpm: int | None = None
    factor: float = 1.0
    burst_s: float = 1.0
    lease_limit: int = 1000
    lease_ttl_s: float = 30.0


# Steps: ("admit", t, tokens, holder) | ("release", holder) | ("pause", t, pause_s)
#        | ("adjust", t, delta_tokens, tpm) | ("learn", rpm, tpm, depth_s)
Step = tuple[Any, ...]


@dataclass
class Case:
    name: str
    limits: Limits
    steps: list[Step] = field(default_factory=list)


BOTH_DIMENSIONS = [(0.0, 10), (0.0, 10), (0.0, 10), (0.1, 20), (0.6, 10), (0.6, 30), (2.0, 25)]


BOTH_DIMENSIONS = [(0.0, 10), (0.0, 10), (0.0, 10), (0.1, 20), (0.6, 10), (0.6, 30), (2.0, 25)]


def _burst_then_steady() -> list[Step]:
    steps: list[Step] = [("admit", 0.0, 1, f"a{i}") for i in range(12)]
    for i, t in enumerate((0.05, 0.1, 0.1999, 0.2, 0.25, 1.0, 1.0, 5.0, 5.0, 5.0)):
        steps.append(("admit", t, 1, f"b{i}"))
    return steps


GCRA_CASES = [
    Case("requests: a one-second burst, then the rate", Limits(rpm=600), _burst_then_steady()),
    Case("requests at a reduced factor", Limits(rpm=600, factor=0.8), _burst_then_steady()),
    Case(
        "tokens: the budget, and a request larger than the burst when idle",
        Limits(tpm=6000),
        [
            ("admit", 0.0, 50, "a"),
            ("admit", 0.0, 50, "b"),
            ("admit", 0.0, 50, "c"),
            ("admit", 0.3, 50, "d"),
            ("admit", 0.5, 50, "e"),
            ("admit", 10.0, 300, "big"),
            ("admit", 10.0, 10, "after-big"),
            ("admit", 13.0, 10, "later"),
        ],
    ),
    Case(
        "both dimensions: the tighter one decides",
        Limits(rpm=120, tpm=3000, burst_s=0.5),
        [("admit", t, tokens, f"h{i}") for i, (t, tokens) in enumerate(BOTH_DIMENSIONS)],
    ),
    Case(
        "too large for the limit, or for a lower learned one",
        Limits(rpm=600, tpm=1000),
        [
            ("admit", 0.0, 2000, "huge"),
            ("admit", 0.0, 900, "fits"),
            ("learn", None, 500, None),
            ("admit", 5.0, 600, "over-learned"),
            ("admit", 5.0, 400, "under-learned"),
        ],
    ),
    Case(
        "learned limits lower the configured ones",
        Limits(rpm=6000, tpm=1_000_000),
        [
            ("learn", 60, None, 0.25),
            ("admit", 0.0, 10, "a"),
            ("admit", 0.0, 10, "b"),
            ("admit", 0.5, 10, "c"),
            ("admit", 1.0, 10, "d"),
            ("learn", 600, 50_000, None),
            ("admit", 1.0, 10, "e"),
        ],
    ),
    Case(
        "a fleet pause holds everyone, is extended, never shortened",
        Limits(rpm=600),
        [
            ("admit", 0.0, 1, "a"),
            ("pause", 1.0, 2.0),
            ("admit", 1.5, 1, "b"),
            ("pause", 1.6, 0.5),
            ("admit", 2.5, 1, "c"),
            ("pause", 2.6, 1.0),
            ("admit", 3.2, 1, "d"),
            ("admit", 3.7, 1, "e"),
        ],
    ),
    Case(
        "concurrency leases: released, or expired when the holder died",
        Limits(rpm=6000, lease_limit=2, lease_ttl_s=5.0),
        [
            ("admit", 0.0, 1, "a"),
            ("admit", 0.0, 1, "b"),
            ("admit", 0.1, 1, "c"),
            ("release", "a"),
            ("admit", 0.2, 1, "c"),
            ("admit", 0.3, 1, "d"),
            ("admit", 5.25, 1, "d"),
            ("admit", 5.25, 1, "e"),
        ],
    ),
    Case(
        "token charges and refunds after the usage is known",
        Limits(tpm=6000),
        [
            ("admit", 0.0, 100, "a"),
            ("adjust", 0.0, 40, 6000),
            ("admit", 0.1, 10, "b"),
            ("adjust", 0.2, -120, 6000),
            ("admit", 0.2, 80, "c"),
            ("adjust", 5.0, -500, 6000),  # an idle budget banks no refund
            ("admit", 5.0, 100, "d"),
            ("admit", 5.0, 10, "e"),
        ],
    ),
]


@pytest.fixture
async def redis_backend_pair(
    redis_client: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[ManualClock, LocalBackend, RedisBackend]]:
    clock = ManualClock()
    local = LocalBackend(clock)
    shared = RedisBackend(
        redis_client, LocalBackend(clock), clock=time.monotonic, metrics=Metrics(), timeout_s=30
    )
    for attribute, source in (
        ("_admit", redis_backend.ADMIT_LUA),
        ("_adjust", redis_backend.ADJUST_LUA),
        ("_pause", redis_backend.PAUSE_LUA),
    ):
        monkeypatch.setattr(shared, attribute, ClockedScript(redis_client, source, clock))
    yield clock, local, shared
    await shared.aclose()


def _request(limits: Limits, tokens: int, holder: str) -> AdmissionRequest:
    return AdmissionRequest(
        limit_rpm=limits.rpm,
        limit_tpm=limits.tpm,
        factor=limits.factor,
        tokens=tokens,
        lease_limit=limits.lease_limit,
        holder=holder,
        lease_ttl_s=limits.lease_ttl_s,
        burst_s=limits.burst_s,
    )


def _comparable(result: AdmissionResult, *, mark_unit_s: float) -> tuple[Any, ...]:
    """Everything a caller reads, rounded to the script's microsecond resolution; the
    pause mark is server milliseconds in Redis and clock seconds in process."""
    return (
        result.verdict,
        round(result.wait_s, 5),
        result.reason,
        result.learned_rpm,
        result.learned_tpm,
        None if result.learned_depth_s is None else round(result.learned_depth_s, 5),
        round(result.pause_mark * mark_unit_s, 5),
        result.limit_tpm,
    )


async def _persist(client: RedisClient) -> None:
    for name in await all_keys(client, "bulkgen:limit:*"):
        await client.persist(name)


@pytest.mark.parametrize("case", GCRA_CASES, ids=[c.name for c in GCRA_CASES])
async def test_admission_in_lua_decides_as_the_python_rules(
    case: Case,
    redis_client: RedisClient,
    redis_backend_pair: tuple[ManualClock, LocalBackend, RedisBackend],
) -> None:
    clock, local, shared = redis_backend_pair
    admitted = 0
    for step in case.steps:
        kind, *args = step
        if kind == "admit":
            clock.t, tokens, holder = args
            request = _request(case.limits, tokens, holder)
            mine = local.acquire_now(KEY, request)
            theirs = await shared.acquire(KEY, request)
            assert not theirs.local, "the answer must come from the script, not a fallback"
            assert _comparable(theirs, mark_unit_s=1e-3) == _comparable(mine, mark_unit_s=1), step
            admitted += mine.verdict == "admitted"
        elif kind == "release":
            await local.release(KEY, args[0])
            await shared.release(KEY, args[0], local=False)
        elif kind == "pause":
            clock.t, pause_s = args
            assert await shared.pause(KEY, pause_s) / 1000 == pytest.approx(
                await local.pause(KEY, pause_s), abs=1e-5
            )
        elif kind == "adjust":
            clock.t, delta, tpm = args
            await local.adjust_tokens(KEY, delta, tpm)
            await shared.adjust_tokens(KEY, delta, tpm)
        else:
            rpm, tpm, depth_s = args
            await local.publish_learned(KEY, rpm, tpm, depth_s)
            await shared.publish_learned(KEY, rpm, tpm, depth_s)
        await _persist(redis_client)
    assert admitted, "every case admits something"


async def test_the_stored_budget_is_the_python_budget(
    redis_client: RedisClient,
    redis_backend_pair: tuple[ManualClock, LocalBackend, RedisBackend],
) -> None:
    """After admissions the theoretical arrival times in Redis are the ones GCRA computes."""
    clock, local, shared = redis_backend_pair
    limits = Limits(rpm=600, tpm=6000)
    requests_tat = tokens_tat = -math.inf
    verdicts = []
    for i, (t, tokens) in enumerate(((0.0, 100), (0.0, 200), (0.4, 50), (3.0, 10), (3.0, 90))):
        clock.t = t
        request = _request(limits, tokens, f"h{i}")
        mine = local.acquire_now(KEY, request)
        theirs = await shared.acquire(KEY, request)
        assert theirs.verdict == mine.verdict
        verdicts.append(mine.verdict)
        if mine.verdict == "admitted":  # TAT moves to max(TAT, now) + cost * interval
            requests_tat = max(requests_tat, EPOCH_S + t) + 60 / 600
            tokens_tat = max(tokens_tat, EPOCH_S + t) + tokens * 60 / 6000
    assert {"admitted", "wait"} <= set(verdicts)
    keys = redis_keys(KEY)
    assert float(await redis_client.get(keys.requests_tat) or 0) / 1000 == pytest.approx(
        requests_tat, abs=1e-5
    )
    assert float(await redis_client.get(keys.tokens_tat) or 0) / 1000 == pytest.approx(
        tokens_tat, abs=1e-5
    )


# ------------------------------------------------------------------ budget reservation

MAX = 2**53 - 1  # the largest amount the ledger stores exactly (Lua numbers are doubles)

# (spent, reserved, amount, cap)
RESERVE_CASES = [
    (0, 0, 10, 100),
    (0, 0, 100, 100),  # exactly the cap
    (0, 0, 101, 100),
    (50, 0, 50, 100),
    (50, 1, 50, 100),  # fits once the call in flight settles: wait
    (50, 40, 10, 100),
    (50, 41, 10, 100),
    (90, 5, 20, 100),  # could not fit even with nothing in flight
    (100, 0, 1, 100),
    (0, 100, 1, 100),
    (0, 100, 100, 100),
    (0, 0, 0, 0),
    (1, 0, 0, 0),
    (MAX - 1, 0, 1, MAX),
    (MAX - 1, 1, 1, MAX),
    (MAX, 0, 1, MAX),
    (MAX // 2, MAX // 2, 2, MAX),
]


@pytest.fixture
def ledger(redis_client: RedisClient) -> RedisLedger:
    return RedisLedger(redis_client, guard=RedisGuard(timeout_ms=30_000, metrics=Metrics()))


@pytest.mark.parametrize(("spent", "reserved", "amount", "cap"), RESERVE_CASES)
async def test_reserve_in_lua_decides_as_admit(
    redis_client: RedisClient,
    ledger: RedisLedger,
    spent: int,
    reserved: int,
    amount: int,
    cap: int,
) -> None:
    batch_id = uuid.uuid4()
    name = ledger_key(batch_id)
    await redis_client.hset(name, mapping={"spent": spent, "reserved": reserved})
    answer, book = await ledger.reserve(batch_id, amount, cap, None)
    assert book == "redis"
    expected = admit(spent, reserved, amount, cap)
    assert answer == expected
    stored = await redis_client.hgetall(name)
    held = reserved + (amount if expected == "ok" else 0)
    assert (int(stored[b"spent"]), int(stored[b"reserved"])) == (spent, held)


# A batch's life: (op, amount or reserved, actual or cap). Seeds come from the database in
# the real flow; here the first reserve of each side gets the same seed.
LEDGER_STEPS = [
    ("reserve", 40, 100),
    ("reserve", 40, 100),
    ("reserve", 40, 100),  # 80 held: wait
    ("settle", 40, 5),
    ("reserve", 40, 100),
    ("settle", 40, 0),  # no answer came back: released, nothing spent
    ("reserve", 60, 100),
    ("settle", 40, 40),
    ("settle", 60, 61),  # the estimate under-counted: spent passes what was held
    ("reserve", 1, 100),
    ("reserve", 100, 100),  # cannot fit even with nothing in flight
]


async def test_a_ledger_in_redis_follows_the_process_ledger(ledger: RedisLedger) -> None:
    batch_id = uuid.uuid4()
    memory = MemoryLedger()
    seed = 3
    assert await memory.reserve(batch_id, 1, 100, None) == ("unseeded", "local")
    assert (await ledger.reserve(batch_id, 1, 100, None))[0] == "unseeded"
    answers: list[str] = []
    for op, first, second in LEDGER_STEPS:
        if op == "reserve":
            mine, _ = await memory.reserve(batch_id, first, second, seed)
            theirs, book = await ledger.reserve(batch_id, first, second, seed)
            assert (theirs, book) == (mine, "redis"), (op, first, second)
            answers.append(mine)
        else:
            await memory.settle(batch_id, first, second)
            await ledger.settle(batch_id, first, second, "redis")
        assert await ledger.spent_nusd(batch_id) == memory.spent_nusd(batch_id)
    assert {"ok", "wait", "exceeded"} <= set(answers)
