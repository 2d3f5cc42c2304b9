"""Circuit breaker for one provider budget: a pure object with an injected clock.

Policy (chosen and kept simple): ``failure_threshold`` *consecutive* failures (5xx,
timeouts, connection errors) open the circuit; any success while closed resets the count.
Open means no new work is claimed. After ``cooldown_s`` the circuit is half-open: exactly
one probe request may run; its success closes the circuit, its failure re-opens it for
another cooldown. A probe that ends with neither verdict (invalid output, cancellation)
hands the probe back so the next request can try. Results of requests that were already
in flight when the circuit opened are ignored: they say nothing about the provider *now*.

Overload answers (a full server) are not failures of a server that is answering others:
``failure_threshold`` consecutive overloads open the circuit only when no request has
succeeded for ``cooldown_s`` either (or none ever did). A server that is merely full
keeps answering some requests and the circuit stays closed, while the concurrency limit
does its work; a server that overloads every request, however few, is down.
"""

from __future__ import annotations

import enum
from collections.abc import Callable


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, failure_threshold: int, cooldown_s: float, clock: Callable[[], float]):
        if failure_threshold < 1 or cooldown_s <= 0:
            raise ValueError("failure_threshold >= 1 and cooldown_s > 0 are required")
        self._threshold = failure_threshold
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._overloads = 0
        self._last_success_s: float | None = None
        self._opened_at_s: float | None = None
        self._probe_out = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at_s is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at_s >= self._cooldown_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allows_claim(self) -> bool:
        """True when closed, or when half-open and the one probe is not taken yet."""
        state = self.state
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and not self._probe_out
        )

    def enter(self) -> tuple[bool, float]:
        """Ask to send one request: ``(is_probe, 0.0)`` to go, ``(False, wait_s)`` to wait.

        Half-open hands out the single probe; everyone else waits until it has a verdict.
        """
        state = self.state
        if state is BreakerState.CLOSED:
            return False, 0.0
        if state is BreakerState.HALF_OPEN and not self._probe_out:
            self._probe_out = True
            return True, 0.0
        if state is BreakerState.OPEN:
            assert self._opened_at_s is not None
            return False, max(0.0, self._opened_at_s + self._cooldown_s - self._clock())
        return False, min(1.0, self._cooldown_s)

    def record_success(self, *, probe: bool) -> None:
        if probe:
            self._opened_at_s = None
            self._probe_out = False
        if self._opened_at_s is None:
            self._failures = 0
            self._overloads = 0
            self._last_success_s = self._clock()

    def record_overload(self, *, probe: bool) -> None:
        """A full server's answer: a failure only once nothing has succeeded for a while."""
        if probe:
            self.record_failure(probe=True)
            return
        if self._opened_at_s is not None:
            return
        self._overloads += 1
        last = self._last_success_s
        quiet = last is None or self._clock() - last >= self._cooldown_s
        if self._overloads >= self._threshold and quiet:
            self._opened_at_s = self._clock()
            self._overloads = 0

    def record_failure(self, *, probe: bool) -> None:
        if probe:
            self._opened_at_s = self._clock()
            self._probe_out = False
            return
        if self._opened_at_s is not None:
            return
        self._failures += 1
        if self._failures >= self._threshold:
            self._opened_at_s = self._clock()
            self._failures = 0

    def release_probe(self) -> None:
        """The probe ended without a verdict: let the next request probe instead."""
        self._probe_out = False
