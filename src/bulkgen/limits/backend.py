"""The admission interface both backends implement, and the in-process backend.

One admission decides everything at once - fleet pause, concurrency lease, request rate,
token rate - so a request never holds a lease while waiting for rate, nor spends rate it
cannot use. The in-process backend is the whole limiter without Redis, and the Redis
backend's fallback when Redis is away.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from bulkgen.limits.adaptive import Adjustment, FleetLimit
from bulkgen.limits.gcra import Gcra
from bulkgen.limits.keys import LimitKey

LEASE_POLL_S = 0.02  # how soon to look again when every lease is taken


class Verdict(enum.StrEnum):
    ADMITTED = "admitted"
    WAIT = "wait"
    TOO_LARGE = "too_large"


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    """What one process asks for; limits are its own view, backends may know lower ones."""

    limit_rpm: int | None
    limit_tpm: int | None
    factor: float
    tokens: int
    lease_limit: int
    holder: str
    lease_ttl_s: float
    burst_s: float


@dataclass(frozen=True, slots=True)
class AdmissionResult:
    verdict: Verdict
    wait_s: float = 0.0
    reason: str = ""  # "pause" | "lease" | "rate" while waiting
    learned_rpm: int | None = None
    learned_tpm: int | None = None
    learned_depth_s: float | None = None
    pause_mark: float = 0.0  # identifies the fleet pause in force (its end), 0.0 if none
    limit_tpm: int | None = None
    local: bool = True  # which backend holds the lease
    fleet_limit: FleetLimit | None = None  # the probed concurrency the fleet shares, if any
    inflight: int = 0  # leases held once this one was granted (the fleet's, with Redis)


class LimitBackend(Protocol):
    async def acquire(self, key: LimitKey, request: AdmissionRequest) -> AdmissionResult: ...

    async def release(self, key: LimitKey, holder: str, *, local: bool) -> None: ...

    async def adjust_tokens(self, key: LimitKey, delta_tokens: int, tpm: float) -> None: ...

    async def pause(self, key: LimitKey, pause_s: float) -> float: ...

    async def publish_learned(
        self, key: LimitKey, rpm: int | None, tpm: int | None, depth_s: float | None
    ) -> None: ...

    async def share_concurrency(self, key: LimitKey, change: Adjustment) -> FleetLimit | None:
        """Apply a change of the probed limit to the fleet's; None: no fleet to share with."""
        ...

    async def aclose(self) -> None: ...


def _min_known(*values: int | None) -> int | None:
    known = [v for v in values if v]
    return min(known) if known else None


@dataclass
class _Budget:
    requests: Gcra = field(default_factory=Gcra)
    tokens: Gcra = field(default_factory=Gcra)
    pause_until_s: float = 0.0
    leases: dict[str, float] = field(default_factory=dict)  # holder -> expiry
    learned_rpm: int | None = None
    learned_tpm: int | None = None
    learned_depth_s: float | None = None


class LocalBackend:
    """Budgets kept in this process; the clock is injected (monotonic seconds)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._budgets: dict[LimitKey, _Budget] = {}

    def _budget(self, key: LimitKey) -> _Budget:
        budget = self._budgets.get(key)
        if budget is None:
            budget = self._budgets[key] = _Budget()
        return budget

    async def acquire(self, key: LimitKey, request: AdmissionRequest) -> AdmissionResult:
        return self.acquire_now(key, request)

    def acquire_now(self, key: LimitKey, request: AdmissionRequest) -> AdmissionResult:
        """Synchronous core, so a fallback cannot interleave with another admission."""
        now_s = self._clock()
        b = self._budget(key)
        rpm = _min_known(request.limit_rpm, b.learned_rpm)
        tpm = _min_known(request.limit_tpm, b.learned_tpm)
        base = AdmissionResult(
            Verdict.ADMITTED,
            learned_rpm=b.learned_rpm,
            learned_tpm=b.learned_tpm,
            learned_depth_s=b.learned_depth_s,
            limit_tpm=tpm,
        )
        if tpm is not None and request.tokens > tpm:
            return replace(base, verdict=Verdict.TOO_LARGE)
        if b.pause_until_s > now_s:
            mark = b.pause_until_s
            return replace(
                base, verdict=Verdict.WAIT, wait_s=mark - now_s, reason="pause", pause_mark=mark
            )
        for holder in [h for h, expiry in b.leases.items() if expiry <= now_s]:
            del b.leases[holder]
        if len(b.leases) >= request.lease_limit:
            return replace(base, verdict=Verdict.WAIT, wait_s=LEASE_POLL_S, reason="lease")
        req_interval_s = 60.0 / (rpm * request.factor) if rpm else 0.0
        tok_interval_s = 60.0 / (tpm * request.factor) if tpm else 0.0
        wait_s = max(
            b.requests.wait_s(now_s, 1, req_interval_s, request.burst_s),
            b.tokens.wait_s(now_s, request.tokens, tok_interval_s, request.burst_s),
        )
        if wait_s > 0:
            return replace(base, verdict=Verdict.WAIT, wait_s=wait_s, reason="rate")
        b.requests.charge(now_s, 1, req_interval_s)
        b.tokens.charge(now_s, request.tokens, tok_interval_s)
        b.leases[request.holder] = now_s + request.lease_ttl_s
        return replace(base, inflight=len(b.leases))

    async def release(self, key: LimitKey, holder: str, *, local: bool = True) -> None:
        self._budget(key).leases.pop(holder, None)

    async def adjust_tokens(self, key: LimitKey, delta_tokens: int, tpm: float) -> None:
        """Charge (positive) or refund (negative) tokens after the usage is known."""
        if tpm <= 0 or delta_tokens == 0:
            return
        gcra, now_s = self._budget(key).tokens, self._clock()
        if delta_tokens > 0:
            gcra.charge(now_s, delta_tokens, 60.0 / tpm)
        else:
            gcra.refund(now_s, -delta_tokens, 60.0 / tpm)

    async def pause(self, key: LimitKey, pause_s: float) -> float:
        b = self._budget(key)
        b.pause_until_s = max(b.pause_until_s, self._clock() + pause_s)
        return b.pause_until_s

    async def publish_learned(
        self, key: LimitKey, rpm: int | None, tpm: int | None, depth_s: float | None = None
    ) -> None:
        b = self._budget(key)
        b.learned_rpm = rpm or b.learned_rpm
        b.learned_tpm = tpm or b.learned_tpm
        b.learned_depth_s = depth_s or b.learned_depth_s

    async def share_concurrency(self, key: LimitKey, change: Adjustment) -> FleetLimit | None:
        return None  # one process: its own limit is the whole truth

    async def aclose(self) -> None:
        self._budgets.clear()
