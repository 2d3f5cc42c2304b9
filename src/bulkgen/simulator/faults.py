"""Which fault, if any, a request gets: one seeded draw per request.

The rates of :data:`FAULT_KINDS` are stacked in that fixed order on a single uniform draw,
so faults are mutually exclusive, a rate of 1.0 hits every request, and the same seed and
the same request sequence always give the same faults.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from bulkgen.simulator.config import FAULT_KINDS


class FaultPicker:
    """Draws the fault of each request from a private seeded RNG."""

    def __init__(self, seed: int | str, rates: Mapping[str, float]) -> None:
        self._rng = random.Random(f"faults:{seed}")
        self._rates = [(kind, float(rates.get(kind, 0.0))) for kind in FAULT_KINDS]
        self._active = any(rate > 0 for _, rate in self._rates)

    def pick(self) -> str | None:
        """The fault kind for the next request, or ``None`` for a normal answer."""
        if not self._active:
            return None
        draw = self._rng.random()
        edge = 0.0
        for kind, rate in self._rates:
            edge += rate
            if draw < edge:
                return kind
        return None
