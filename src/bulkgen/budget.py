"""Spending caps per batch: reserve the worst case before a call, reconcile after it.

A batch may carry ``budget_usd``. Before a provider call the pipeline reserves the most the
call can cost (the prompt estimate plus ``max_tokens``, at the model's price); after it, the
reservation is replaced by what the provider reported. Because every call in flight holds
its worst case, the recorded spend can only pass the cap by what the prompt estimate
under-counted - never by more than one request's cost.

Where the ledger lives:

- **Redis** when there is one: a hash per batch (``spent``, ``reserved``, integer nano-USD,
  key :func:`ledger_key`) changed only by Lua scripts, so the check and the add are one
  atomic step for the whole fleet. The key carries a TTL refreshed on every reservation;
  once it lapses the next worker seeds it again from the database.
- **In-process** otherwise, with exactly the same rules (:func:`admit`).

Seeding: the first reservation for a batch finds no ledger (``unseeded``); the worker then
reads the batch's cost so far from the database - one statement per batch per worker, never
per job - and retries with it. A restarted fleet therefore continues from what was spent.
The read that fetches a batch's cap brings its spend too, and seeds the ledger in the same
reservation. Jobs of one batch that ask at the same moment share one read (single-flight),
so a worker starting many jobs of a new batch at once takes one connection for it, not one
per job; a read is shared only while it runs, and one that failed is read again.

Decisions (:func:`admit`): the call fits if ``spent + reserved + amount <= cap``. If it does
not fit but would without the calls in flight, it **waits** for them to settle (their real
cost is usually far below their worst case); if it cannot fit even then, the job ends
``cancelled`` with ``budget_exceeded``. The wait is bounded by ``wait_s``: a reservation
leaked by a worker that died mid-call must not hold the batch forever.

Redis failing mid-batch degrades to the in-process ledger, seeded afresh from the database:
jobs keep running, and each process keeps the cap on its own (the fleet may then overspend
by the calls other processes have in flight). ``budget.degraded`` counts it.

Tokens of a call whose answer was rejected (empty, truncated) were billed: they are
reconciled as spent. A call that got no answer (timeout, 5xx, connection error) releases
its reservation, since we cannot see a bill for it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, Protocol

from bulkgen.accounting import BudgetSeed
from bulkgen.errors import BudgetContended, BudgetExceeded
from bulkgen.metrics import Metrics
from bulkgen.metrics import metrics as default_metrics
from bulkgen.models import Usage
from bulkgen.pricing import PriceTable, default_price_table
from bulkgen.redis_client import RedisClient
from bulkgen.redis_guard import BYPASSED, RedisGuard

__all__ = [
    "KEY_PREFIX",
    "BudgetLedger",
    "BudgetSeed",
    "LedgerBackend",
    "MemoryLedger",
    "RedisLedger",
    "Reservation",
    "admit",
    "ledger_key",
    "to_nusd",
]

logger = logging.getLogger(__name__)

KEY_PREFIX = "bulkgen:budget:"
LEDGER_TTL_S = 7 * 24 * 3600
REDIS_TIMEOUT_MS = 500
# Calls in flight per process. Past the Redis pool's size a call waits for a connection, and
# that wait runs inside the guard's timeout: a burst of reservations would time out and
# needlessly degrade the ledger. Waiting here costs no timeout and leaves connections free
# for the cache and the limiter.
REDIS_MAX_CALLS = 32
_MAX_BATCHES_KNOWN = 10_000
_NUSD_PER_USD = Decimal(1_000_000_000)
# Lua numbers are doubles: beyond 2**53 nano-USD (about 9 million USD) integers lose
# precision, so larger caps are clamped there (no batch gets near it).
_MAX_NUSD = 2**53 - 1

Decision = Literal["ok", "wait", "exceeded"]
Answer = Literal["ok", "wait", "exceeded", "unseeded"]
Book = Literal["redis", "local"]  # where a reservation was made, and so must be settled
_CODES: dict[int, Answer] = {1: "ok", 0: "wait", -1: "exceeded", -2: "unseeded"}


def ledger_key(batch_id: uuid.UUID) -> str:
    """``bulkgen:budget:{<batch id>}``: the batch id is the Redis Cluster hash tag, so each
    batch's ledger lives on one master and different batches spread over all of them (a
    fleet-wide tag would put every reservation of every batch on one node)."""
    return f"{KEY_PREFIX}{{{batch_id}}}"


def to_nusd(amount_usd: Decimal) -> int:
    """USD to whole nano-USD, rounded up: the ledger may over-count, never under-count."""
    return min(_MAX_NUSD, math.ceil(amount_usd * _NUSD_PER_USD))


def admit(spent_nusd: int, reserved_nusd: int, amount_nusd: int, cap_nusd: int) -> Decision:
    """The one admission rule, mirrored by the Lua script. Pure.

    ``exceeded`` only when even a batch with nothing in flight could not afford the call:
    settling only ever adds to ``spent``, so waiting could not help.
    """
    if spent_nusd + reserved_nusd + amount_nusd <= cap_nusd:
        return "ok"
    if spent_nusd + amount_nusd <= cap_nusd and reserved_nusd > 0:
        return "wait"
    return "exceeded"


# KEYS[1] ledger; ARGV amount, cap, seed ('' = none), ttl_ms. 1 ok, 0 wait, -1 exceeded,
# -2 unseeded (the caller reads the database and calls again with a seed).
_RESERVE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
    if ARGV[3] == '' then return -2 end
    redis.call('HSET', KEYS[1], 'spent', ARGV[3], 'reserved', 0)
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent'))
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved'))
local amount = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
if spent + reserved + amount <= cap then
    redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[1])
    return 1
end
if spent + amount <= cap and reserved > 0 then return 0 end
return -1
"""

# KEYS[1] ledger; ARGV reserved, actual. A lapsed ledger is left alone: the next seed reads
# the database, which already holds this call's outcome or will once it is written.
_SETTLE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local left = redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(ARGV[1]))
if left < 0 then redis.call('HSET', KEYS[1], 'reserved', 0) end
redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2])
return 1
"""


class LedgerBackend(Protocol):
    async def reserve(
        self, batch_id: uuid.UUID, amount_nusd: int, cap_nusd: int, seed_nusd: int | None
    ) -> tuple[Answer, Book]: ...

    async def settle(
        self, batch_id: uuid.UUID, reserved_nusd: int, actual_nusd: int, book: Book
    ) -> None: ...


class MemoryLedger:
    """One process's ledger: the same rules as Redis, for a worker without Redis."""

    def __init__(self) -> None:
        self._books: dict[uuid.UUID, list[int]] = {}  # batch -> [spent, reserved]

    async def reserve(
        self, batch_id: uuid.UUID, amount_nusd: int, cap_nusd: int, seed_nusd: int | None
    ) -> tuple[Answer, Book]:
        book = self._books.get(batch_id)
        if book is None:
            if seed_nusd is None:
                return "unseeded", "local"
            book = self._books[batch_id] = [seed_nusd, 0]
        decision = admit(book[0], book[1], amount_nusd, cap_nusd)
        if decision == "ok":
            book[1] += amount_nusd
        return decision, "local"

    async def settle(
        self, batch_id: uuid.UUID, reserved_nusd: int, actual_nusd: int, book: Book = "local"
    ) -> None:
        entry = self._books.get(batch_id)  # one book only: ``book`` is always "local"
        if entry is not None:
            entry[0] += actual_nusd
            entry[1] = max(0, entry[1] - reserved_nusd)

    def spent_nusd(self, batch_id: uuid.UUID) -> int | None:
        book = self._books.get(batch_id)
        return None if book is None else book[0]

    def forget(self, batch_id: uuid.UUID) -> None:
        self._books.pop(batch_id, None)


class RedisLedger:
    """The fleet's ledger in Redis; an unreachable Redis falls back to a process ledger.

    A reservation is settled where it was made (``book`` on :class:`Reservation`), so
    a Redis outage never leaves a reservation counted twice or not released.
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        ttl_s: int = LEDGER_TTL_S,
        guard: RedisGuard | None = None,
        metrics: Metrics = default_metrics,
        max_calls: int = REDIS_MAX_CALLS,
    ) -> None:
        self.redis = redis
        self.fallback = MemoryLedger()
        self._calls = asyncio.Semaphore(max_calls)
        self._ttl_ms = ttl_s * 1000
        self._guard = guard or RedisGuard(
            timeout_ms=REDIS_TIMEOUT_MS, metrics=metrics, metric="budget.redis_bypassed"
        )
        self._metrics = metrics
        self._degraded: set[uuid.UUID] = set()

    async def reserve(
        self, batch_id: uuid.UUID, amount_nusd: int, cap_nusd: int, seed_nusd: int | None
    ) -> tuple[Answer, Book]:
        seed = "" if seed_nusd is None else str(seed_nusd)
        args = (str(amount_nusd), str(cap_nusd), seed, str(self._ttl_ms))
        name = ledger_key(batch_id)
        async with self._calls:
            code = await self._guard.call(
                "budget_reserve", lambda: self.redis.eval(_RESERVE_LUA, 1, name, *args)
            )
        if code is BYPASSED:
            return await self._reserve_locally(batch_id, amount_nusd, cap_nusd, seed_nusd)
        if batch_id in self._degraded:
            self._degraded.discard(batch_id)
            logger.info("budget.recovered", extra={"batch_id": str(batch_id)})
        return _CODES[int(code)], "redis"

    async def _reserve_locally(
        self, batch_id: uuid.UUID, amount_nusd: int, cap_nusd: int, seed_nusd: int | None
    ) -> tuple[Answer, Book]:
        """Keep the cap per process while Redis is away, seeded afresh for each outage."""
        self._metrics.inc("budget.degraded")
        if batch_id not in self._degraded:
            self._degraded.add(batch_id)
            self.fallback.forget(batch_id)
            logger.warning("budget.degraded", extra={"batch_id": str(batch_id)})
        return await self.fallback.reserve(batch_id, amount_nusd, cap_nusd, seed_nusd)

    async def settle(
        self, batch_id: uuid.UUID, reserved_nusd: int, actual_nusd: int, book: Book
    ) -> None:
        if book == "local":
            await self.fallback.settle(batch_id, reserved_nusd, actual_nusd)
            return
        name = ledger_key(batch_id)
        args = (str(reserved_nusd), str(actual_nusd))
        async with self._calls:
            # Forced past a back-off: a skipped settle would hold budget until the key expires.
            await self._guard.call(
                "budget_settle", lambda: self.redis.eval(_SETTLE_LUA, 1, name, *args), force=True
            )

    async def spent_nusd(self, batch_id: uuid.UUID) -> int | None:
        """The fleet's recorded spend for a batch (tests and tools), None when unseeded."""
        value = await self.redis.hget(ledger_key(batch_id), "spent")
        return None if value is None else int(value)


BudgetLoader = Callable[[uuid.UUID], Awaitable[BudgetSeed]]


@dataclass(slots=True)
class Reservation:
    """One call's hold on a batch's budget, released by :meth:`BudgetLedger.settle`."""

    batch_id: uuid.UUID
    amount_nusd: int
    book: Book
    settled: bool = False


class BudgetLedger:
    """What the pipeline calls around a provider call: ``reserve`` before, ``settle`` after.

    Caps are read from the database once per batch per worker (a cap never changes after
    submit); batches without a cap cost nothing here, not even a Redis call.
    """

    def __init__(
        self,
        backend: LedgerBackend,
        load: BudgetLoader,
        *,
        prices: PriceTable | None = None,
        wait_s: float,
        poll_s: float = 0.02,
        max_poll_s: float = 0.25,
        metrics: Metrics = default_metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self._load = load
        self.prices = prices or default_price_table()
        self._wait_s = wait_s
        self._poll_s = poll_s
        self._max_poll_s = max_poll_s
        self._metrics = metrics
        self._clock = clock
        self._caps: dict[uuid.UUID, int | None] = {}
        self._reading: dict[uuid.UUID, asyncio.Future[BudgetSeed]] = {}
        self._settled: dict[uuid.UUID, asyncio.Event] = {}

    async def reserve(
        self, batch_id: uuid.UUID, model: str, prompt_tokens: int, max_tokens: int
    ) -> Reservation | None:
        """Hold the call's worst case, or raise :class:`BudgetExceeded`; None: no cap."""
        cap_nusd, fresh = await self._cap(batch_id)
        if cap_nusd is None:
            return None
        worst = self.prices.worst_case_cost_usd(model, prompt_tokens, max_tokens)
        amount = to_nusd(worst)
        deadline = self._clock() + self._wait_s
        delay_s = self._poll_s
        seed_nusd = None if fresh is None else to_nusd(fresh.spent_usd)
        while True:
            decision, book = await self._reserve_once(batch_id, amount, cap_nusd, seed_nusd)
            seed_nusd = None  # a seed is good only fresh: after a wait, read again if needed
            if decision == "ok":
                self._metrics.inc("budget.reserved")
                return Reservation(batch_id, amount, book)
            if decision == "exceeded":
                self._metrics.inc("budget.exceeded")
                raise BudgetExceeded(
                    f"batch {batch_id}: a call of up to {worst:.6f} USD would pass the cap"
                )
            if self._clock() >= deadline:
                self._metrics.inc("budget.contended")
                raise BudgetContended(
                    f"batch {batch_id}: the rest of the cap is held by calls in flight"
                )
            self._metrics.inc("budget.waited")
            await self._wait_for_settle(batch_id, min(delay_s, deadline - self._clock()))
            delay_s = min(delay_s * 1.5, self._max_poll_s)

    async def settle(
        self, reservation: Reservation | None, model: str, usage: Usage | None
    ) -> None:
        """Replace the worst case by the real cost (0 when no answer came back). Idempotent."""
        if reservation is None or reservation.settled:
            return
        reservation.settled = True
        actual = 0 if usage is None else to_nusd(self.prices.cost_usd(model, usage))
        await self.backend.settle(
            reservation.batch_id, reservation.amount_nusd, actual, reservation.book
        )
        event = self._settled.pop(reservation.batch_id, None)
        if event is not None:
            event.set()

    async def _cap(self, batch_id: uuid.UUID) -> tuple[int | None, BudgetSeed | None]:
        """The batch's cap, and the seed when this call had to read it (then fresh enough to
        seed the ledger with)."""
        if batch_id in self._caps:
            return self._caps[batch_id], None
        seed = await self._read(batch_id)
        if batch_id not in self._caps:  # callers sharing one read store it once
            self._remember_cap(batch_id, None if seed.cap_usd is None else to_nusd(seed.cap_usd))
        return self._caps[batch_id], seed

    def note_uncapped(self, batch_id: uuid.UUID) -> None:
        """The batch has no cap, as a read of its row for another purpose (the worker's
        batch plan) just said: its first job then needs no read of its own here."""
        if batch_id not in self._caps:
            self._remember_cap(batch_id, None)

    def _remember_cap(self, batch_id: uuid.UUID, cap_nusd: int | None) -> None:
        if len(self._caps) >= _MAX_BATCHES_KNOWN:  # a long-lived worker sees many
            del self._caps[next(iter(self._caps))]
        self._caps[batch_id] = cap_nusd

    async def _read(self, batch_id: uuid.UUID) -> BudgetSeed:
        """One database read for every caller asking about a batch while it runs. The read
        is shared only in flight, never kept: spend moves on, and a failed read must not
        stand for the next caller, who reads again."""
        reading = self._reading.get(batch_id)
        if reading is None or reading.done():
            reading = self._reading[batch_id] = asyncio.ensure_future(self._load(batch_id))
            reading.add_done_callback(lambda done: self._forget_read(batch_id, done))
        # Shielded: a cancelled caller must not cancel the read the others wait for.
        return await asyncio.shield(reading)

    def _forget_read(self, batch_id: uuid.UUID, reading: asyncio.Future[BudgetSeed]) -> None:
        if self._reading.get(batch_id) is reading:
            del self._reading[batch_id]

    async def _reserve_once(
        self, batch_id: uuid.UUID, amount: int, cap: int, seed_nusd: int | None
    ) -> tuple[Decision, Book]:
        answer, book = await self.backend.reserve(batch_id, amount, cap, seed_nusd)
        if answer == "unseeded":
            seed = await self._read(batch_id)
            spent = to_nusd(seed.spent_usd)
            answer, book = await self.backend.reserve(batch_id, amount, cap, spent)
        if answer == "unseeded":  # a backend must accept a seed; treat a bug as "no room"
            return "exceeded", book
        return answer, book

    async def _wait_for_settle(self, batch_id: uuid.UUID, timeout_s: float) -> None:
        """Until a call of this batch settles here, or ``timeout_s`` (others may settle)."""
        event = self._settled.setdefault(batch_id, asyncio.Event())
        try:
            async with asyncio.timeout(max(0.0, timeout_s)):
                await event.wait()
        except TimeoutError:
            pass
