"""Counters of what the simulator served, for tests and benchmarks.

Per-second counts of *accepted* requests and tokens (wall-clock epoch seconds) let a
benchmark compare the achieved rate with the limit; only the last hour is kept so a
long-running simulator does not grow without bound.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

_KEEP_SECONDS = 3600


class SimStats:
    """Mutable counters; one instance per running simulator."""

    def __init__(self) -> None:
        self.requests = 0
        self.ok = 0
        self.rate_limited: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.overloaded = 0  # answered 503/429 because max_inflight requests were in flight
        self.max_inflight_seen = 0  # the most chat requests served at once
        self.prompt_tokens = 0
        self.cached_tokens = 0  # of prompt_tokens, read from the prompt cache
        self.completion_tokens = 0
        self._per_second: dict[int, list[int]] = {}

    def accepted(self, epoch_s: float, cost_tokens: int) -> None:
        """Count a request the limiter admitted, in its wall-clock second."""
        second = int(epoch_s)
        slot = self._per_second.get(second)
        if slot is None:
            slot = self._per_second[second] = [0, 0]
            if len(self._per_second) > _KEEP_SECONDS:
                del self._per_second[min(self._per_second)]
        slot[0] += 1
        slot[1] += cost_tokens

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "rate_limited": {
                kind: self.rate_limited[kind]
                for kind in ("requests", "tokens", "insufficient_quota")
            },
            "faults": dict(self.faults),
            "overloaded": self.overloaded,
            "max_inflight_seen": self.max_inflight_seen,
            "errors": dict(self.errors),
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "completion_tokens": self.completion_tokens,
            "per_second": [
                {"t": second, "requests": slot[0], "tokens": slot[1]}
                for second, slot in sorted(self._per_second.items())
            ],
        }
