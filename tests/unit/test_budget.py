"""The budget ledger's rules, without Redis or a database: reserve, wait, settle, seed."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import pytest

from bulkgen.accounting import BudgetSeed
from bulkgen.budget import BudgetLedger, MemoryLedger, admit, to_nusd
from bulkgen.errors import BudgetContended, BudgetExceeded, StorageError
from bulkgen.metrics import Metrics
from bulkgen.models import Usage
from bulkgen.pricing import ModelPrice, PriceTable

# 1 USD per 1M tokens both ways: a token costs 1,000 nano-USD.
PRICES = PriceTable({"m": ModelPrice(Decimal(1), Decimal(1))})
BATCH = uuid.uuid4()


class Loader:
    """A database stand-in that counts how often it is read."""

    def __init__(self, cap_usd: str | None, spent_usd: str = "0") -> None:
        self.seed = BudgetSeed(None if cap_usd is None else Decimal(cap_usd), Decimal(spent_usd))
        self.reads = 0

    async def __call__(self, batch_id: uuid.UUID) -> BudgetSeed:
        self.reads += 1
        return self.seed


class GatedLoader(Loader):
    """A read that stays in flight until ``gate`` opens; the first ``failures`` reads fail."""

    def __init__(self, cap_usd: str, failures: int = 0) -> None:
        super().__init__(cap_usd)
        self.gate = asyncio.Event()
        self.failures = failures

    async def __call__(self, batch_id: uuid.UUID) -> BudgetSeed:
        self.reads += 1
        await self.gate.wait()
        if self.reads <= self.failures:
            raise StorageError("reading the batch failed: connection lost", transient=True)
        return self.seed


async def _started(tasks: list[asyncio.Task[Any]]) -> None:
    """Every task has run up to its first real wait (here, the loader's gate)."""
    for _ in range(3):
        await asyncio.sleep(0)
    assert not any(t.done() for t in tasks)


class SteppingClock:
    """Each reading is ``step_s`` later than the one before."""

    def __init__(self, step_s: float) -> None:
        self.now_s = 0.0
        self.step_s = step_s

    def __call__(self) -> float:
        self.now_s += self.step_s
        return self.now_s


def ledger(loader: Loader, **kwargs: object) -> BudgetLedger:
    options = {"wait_s": 30.0, **kwargs}
    return BudgetLedger(MemoryLedger(), loader, prices=PRICES, metrics=Metrics(), **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spent", "reserved", "amount", "expected"),
    [
        (0, 0, 10, "ok"),
        (90, 0, 10, "ok"),  # exactly the cap fits
        (91, 0, 10, "exceeded"),
        (50, 45, 10, "wait"),  # fits once calls in flight settle below their worst case
        (95, 5, 10, "exceeded"),  # cannot fit even with nothing in flight
    ],
)
def test_admit(spent: int, reserved: int, amount: int, expected: str) -> None:
    assert admit(spent, reserved, amount, 100) == expected


def test_to_nusd_rounds_up() -> None:
    assert to_nusd(Decimal("0.000000001")) == 1
    assert to_nusd(Decimal("0.0000000011")) == 2
    assert to_nusd(Decimal("1.5")) == 1_500_000_000


async def test_no_cap_costs_nothing_and_reads_the_database_once() -> None:
    loader = Loader(None)
    budget = ledger(loader)
    for _ in range(5):
        assert await budget.reserve(BATCH, "m", 1_000_000, 1_000_000) is None
    assert loader.reads == 1


async def test_reserve_holds_the_worst_case_and_settle_keeps_the_real_cost() -> None:
    loader = Loader("0.01")  # 10,000 tokens
    budget = ledger(loader)
    backend = budget.backend
    assert isinstance(backend, MemoryLedger)
    held = await budget.reserve(BATCH, "m", 1_000, 4_000)  # worst case 5,000 tokens
    assert held is not None and held.amount_nusd == 5_000_000
    await budget.settle(held, "m", Usage(1_000, 1_500))
    await budget.settle(held, "m", Usage(1_000, 1_500))  # idempotent
    assert backend.spent_nusd(BATCH) == 2_500_000
    assert loader.reads == 1  # the cap and the seed in one read: once per batch, not per call


async def test_the_seed_counts_what_was_spent_before() -> None:
    budget = ledger(Loader("0.01", spent_usd="0.006"))
    with pytest.raises(BudgetExceeded):
        await budget.reserve(BATCH, "m", 1_000, 4_000)  # 6,000 + 5,000 > 10,000
    assert await budget.reserve(BATCH, "m", 1_000, 3_000) is not None


async def test_spend_never_passes_the_cap() -> None:
    budget = ledger(Loader("0.01"))
    spent = 0
    admitted = 0
    with pytest.raises(BudgetExceeded):
        for _ in range(100):
            held = await budget.reserve(BATCH, "m", 100, 900)
            admitted += 1
            await budget.settle(held, "m", Usage(100, 700))
            spent += 800
    assert admitted == 12  # 12 * 800 = 9,600; a 13th could cost up to 1,000 more
    assert spent <= 10_000


async def test_a_call_waits_for_calls_in_flight_then_fits() -> None:
    budget = ledger(Loader("0.01"), wait_s=5.0)
    first = await budget.reserve(BATCH, "m", 0, 6_000)
    waiter = asyncio.create_task(budget.reserve(BATCH, "m", 0, 6_000))
    await asyncio.sleep(0.05)
    assert not waiter.done()  # 6,000 held + 6,000 asked > 10,000: wait, not cancel
    await budget.settle(first, "m", Usage(0, 1_000))
    second = await asyncio.wait_for(waiter, 10)  # woken by the settle, not by the 5 s bound
    assert second is not None


async def test_a_call_that_got_no_answer_releases_its_reservation() -> None:
    budget = ledger(Loader("0.01"))
    for _ in range(10):
        held = await budget.reserve(BATCH, "m", 0, 10_000)
        await budget.settle(held, "m", None)
    assert isinstance(budget.backend, MemoryLedger)
    assert budget.backend.spent_nusd(BATCH) == 0


async def test_waiting_is_bounded() -> None:
    clock = SteppingClock(0.1)
    budget = ledger(Loader("0.01"), wait_s=1.0, poll_s=0.001, max_poll_s=0.001, clock=clock)
    await budget.reserve(BATCH, "m", 0, 6_000)  # never settled: a worker died mid-call
    # Not "exceeded": the money is only held, so the job waits and tries again later
    # (no attempt burnt) instead of being cancelled for good.
    with pytest.raises(BudgetContended):
        await budget.reserve(BATCH, "m", 0, 6_000)
    assert clock.now_s < 3.0  # gave up at the deadline, not later


async def test_jobs_of_a_new_batch_starting_together_share_one_read() -> None:
    loader = GatedLoader("1")
    budget = ledger(loader)
    first_uses = [asyncio.create_task(budget.reserve(BATCH, "m", 0, 1_000)) for _ in range(20)]
    await _started(first_uses)
    loader.gate.set()
    held = await asyncio.gather(*first_uses)
    assert all(h is not None for h in held)
    assert loader.reads == 1  # not 20 (nor 40: the same read seeded the ledger)
    # The ledger lapses (a Redis key expired): the jobs finding it unseeded together share
    # one read again.
    assert isinstance(budget.backend, MemoryLedger)
    budget.backend.forget(BATCH)
    loader.gate.clear()
    reseeds = [asyncio.create_task(budget.reserve(BATCH, "m", 0, 1_000)) for _ in range(10)]
    await _started(reseeds)
    loader.gate.set()
    await asyncio.gather(*reseeds)
    assert loader.reads == 2


async def test_a_failed_read_is_not_kept_and_the_next_caller_reads_again() -> None:
    loader = GatedLoader("1", failures=1)
    budget = ledger(loader)
    sharing = [asyncio.create_task(budget.reserve(BATCH, "m", 0, 1_000)) for _ in range(5)]
    await _started(sharing)
    loader.gate.set()
    results = await asyncio.gather(*sharing, return_exceptions=True)
    assert all(isinstance(r, StorageError) for r in results)  # all shared the one failure
    assert loader.reads == 1
    assert await budget.reserve(BATCH, "m", 0, 1_000) is not None
    assert loader.reads == 2


async def test_a_cancelled_caller_does_not_cancel_the_read_others_share() -> None:
    loader = GatedLoader("1")
    budget = ledger(loader)
    leaving, staying = (asyncio.create_task(budget.reserve(BATCH, "m", 0, 1_000)) for _ in "ab")
    await _started([leaving, staying])
    leaving.cancel()
    loader.gate.set()
    assert await staying is not None
    assert leaving.cancelled()
    assert loader.reads == 1


async def test_a_batch_known_to_have_no_cap_is_never_read() -> None:
    loader = Loader(None)
    budget = ledger(loader)
    budget.note_uncapped(BATCH)
    assert await budget.reserve(BATCH, "m", 1_000, 1_000) is None
    assert loader.reads == 0


async def test_a_cap_already_read_is_not_forgotten_by_a_note() -> None:
    loader = Loader("0.000001")  # 1,000 nano-USD: a 1,000-token call would pass it
    budget = ledger(loader)
    with pytest.raises(BudgetExceeded):
        await budget.reserve(BATCH, "m", 1_000, 1_000)
    budget.note_uncapped(BATCH)  # a stale note must not lift a cap already known
    with pytest.raises(BudgetExceeded):
        await budget.reserve(BATCH, "m", 1_000, 1_000)
