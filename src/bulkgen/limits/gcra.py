"""GCRA arithmetic, pure: the one definition of "smooth" that both backends implement.

A budget is a theoretical arrival time (TAT): the instant at which everything admitted so
far would have been paid for at exactly the limit. A request of ``cost`` units at
``interval_s`` per unit is admitted when, after adding it, the TAT is at most
``max(burst_s, cost * interval_s)`` ahead of now. So an idle budget lets through at most
``burst_s`` worth of work at once (providers enforce minute limits over ~1 s windows), a
single request larger than the burst still runs when the budget is idle, and the long-run
rate is exactly the limit. The Redis script (``redis_backend.py``) is a transcription.
"""

from __future__ import annotations

from dataclasses import dataclass

_EPS_S = 1e-9


def gcra_wait_s(
    tat_s: float, now_s: float, cost: float, interval_s: float, burst_s: float
) -> float:
    """How long until ``cost`` fits; 0.0 means it fits now."""
    if interval_s <= 0 or cost <= 0:
        return 0.0
    new_tat_s = max(tat_s, now_s) + cost * interval_s
    allowance_s = max(burst_s, cost * interval_s)
    wait_s = new_tat_s - now_s - allowance_s
    return wait_s if wait_s > _EPS_S else 0.0


@dataclass(slots=True)
class Gcra:
    """One budget's state; the clock is passed in, never read."""

    tat_s: float = float("-inf")

    def wait_s(self, now_s: float, cost: float, interval_s: float, burst_s: float) -> float:
        return gcra_wait_s(self.tat_s, now_s, cost, interval_s, burst_s)

    def charge(self, now_s: float, cost: float, interval_s: float) -> None:
        """Spend ``cost`` units; used on admission and when usage exceeded the reservation."""
        if interval_s > 0 and cost > 0:
            self.tat_s = max(self.tat_s, now_s) + cost * interval_s

    def refund(self, now_s: float, cost: float, interval_s: float) -> None:
        """Give back unused units, never below "idle": a refund cannot bank future burst."""
        if interval_s > 0 and cost > 0 and self.tat_s > now_s:
            self.tat_s = max(now_s, self.tat_s - cost * interval_s)
