"""Driving a rate governor as a busy client does, for the tests of the probed limit."""

from __future__ import annotations

import contextlib

from bulkgen.limits import LimitKey, RateGovernor
from bulkgen.models import Completion


async def full_round(gov: RateGovernor, key: LimitKey, answer: Completion) -> int:
    """As many requests in flight at once as the limit allows, then all answered (the last
    sent first); returns the limit after. A probed limit grows only when it is used, so a
    client sending one request at a time never grows it."""
    async with contextlib.AsyncExitStack() as stack:
        slots = [
            await stack.enter_async_context(gov.slot(key, 10))
            for _ in range(gov.concurrency_limit(key))
        ]
        for slot in reversed(slots):
            await slot.record(answer)
    return gov.concurrency_limit(key)


async def grow_to(gov: RateGovernor, key: LimitKey, answer: Completion, target: int) -> int:
    """Full rounds until the limit is at least ``target``; returns it."""
    while gov.concurrency_limit(key) < target:
        await full_round(gov, key, answer)
    return gov.concurrency_limit(key)
