"""What a budget belongs to, and every Redis key name the limiter uses (one place).

All keys share the ``bulkgen:limit:`` prefix and a hash-tag around the budget's identity,
so one admission script only ever touches keys in one Redis Cluster slot.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

PREFIX = "bulkgen:limit:"


@dataclass(frozen=True, slots=True)
class LimitKey:
    """One provider budget: an endpoint, an API key (as a short hash, never the secret), a model."""

    base_url: str
    api_key_id: str
    model: str

    def ident(self) -> str:
        """A short stable digest, so URLs and model names never need escaping in key names."""
        raw = f"{self.base_url}\x00{self.api_key_id}\x00{self.model}".encode()
        return hashlib.sha256(raw).hexdigest()[:24]


def api_key_id(secret: str) -> str:
    """A short, stable, non-reversible id of an API key (sha256 hex, first 12 characters).

    Rate-limit buckets, cache scopes and logs are keyed on this id, so the secret itself
    never leaves the provider object: not into Redis, not into a log line.
    """
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """The names of one budget's Redis keys."""

    requests_tat: str  # GCRA theoretical arrival time for requests, server ms
    tokens_tat: str  # GCRA theoretical arrival time for tokens, server ms
    pause_until: str  # fleet-wide pause after a 429, server ms
    leases: str  # ZSET holder id -> lease expiry, server ms
    learned: str  # HASH rpm/tpm learned from headers
    concurrency: str  # HASH the probed concurrency limit the fleet shares (adaptive.py)


def redis_keys(key: LimitKey) -> RedisKeys:
    base = f"{PREFIX}{{{key.ident()}}}:"
    return RedisKeys(
        requests_tat=base + "req_tat",
        tokens_tat=base + "tok_tat",
        pause_until=base + "pause_until",
        leases=base + "leases",
        learned=base + "learned",
        concurrency=base + "concurrency",
    )
