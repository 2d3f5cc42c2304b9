"""Idempotency keys of submits: (account, key) -> the batch its first request created.

The key is claimed inside the batch's own transaction, before any job row is written, so
two concurrent requests with one key cannot both create a batch: the second waits on the
key's primary key until the first commits, then finds its row (or, if the first rolled
back, claims the key itself).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asyncpg.pool import PoolConnectionProxy

from bulkgen.db import queries as q
from bulkgen.db.pool import translate_errors
from bulkgen.errors import Conflict, StorageError

if TYPE_CHECKING:  # the store imports this module to claim keys in its own transaction
    from bulkgen.db.store import Store

__all__ = [
    "IdempotencyKey",
    "StoredKey",
    "check_replay",
    "idempotency_key_claim",
    "idempotency_key_get",
]


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """What a client sent: its key, and a digest of the request the key stands for."""

    key: str
    request_hash: str


@dataclass(frozen=True, slots=True)
class StoredKey:
    batch_id: uuid.UUID
    request_hash: str


def _reused(key: str) -> Conflict:
    return Conflict(
        f"Idempotency-Key {key!r} was already used for a different request",
        kind="idempotency_key_reused",
    )


async def idempotency_key_get(store: Store, account_id: int, key: str) -> StoredKey | None:
    async with translate_errors("reading the idempotency key"):
        row = await store.pool.fetchrow(q.IDEMPOTENCY_KEY_GET, account_id, key)
    return None if row is None else StoredKey(row["batch_id"], row["request_hash"])


async def idempotency_key_claim(
    conn: PoolConnectionProxy[Any], account_id: int, claim: IdempotencyKey, batch_id: uuid.UUID
) -> uuid.UUID | None:
    """Claim the key for ``batch_id`` (None: go on and write the batch), or return the batch
    an identical earlier request created. A different request under the same key raises
    :class:`Conflict`. Must run inside the transaction that writes the batch."""
    claimed = await conn.fetchval(
        q.IDEMPOTENCY_KEY_CLAIM, account_id, claim.key, claim.request_hash, batch_id
    )
    if claimed is not None:
        return None
    row = await conn.fetchrow(q.IDEMPOTENCY_KEY_GET, account_id, claim.key)
    if row is None:  # its batch was pruned in between: the client may simply try again
        raise StorageError("the idempotency key vanished while it was being claimed")
    if row["request_hash"] != claim.request_hash:
        raise _reused(claim.key)
    existing: uuid.UUID = row["batch_id"]
    return existing


def check_replay(stored: StoredKey, claim: IdempotencyKey) -> uuid.UUID:
    """The batch of an earlier identical request; a different request raises Conflict."""
    if stored.request_hash != claim.request_hash:
        raise _reused(claim.key)
    return stored.batch_id
