"""Accounts and the digests of their API keys. The keys themselves never reach this module:
callers hash them first (:mod:`bulkgen.accounts`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bulkgen.db import queries as q
from bulkgen.db.pool import translate_errors
from bulkgen.db.store import Store

__all__ = [
    "AccountRow",
    "KeyOwner",
    "account_by_key_hash",
    "account_create",
    "account_key_bootstrap",
    "account_key_set",
    "account_quota_set",
    "account_weight_set",
    "accounts_list",
]


@dataclass(frozen=True, slots=True)
class AccountRow:
    id: int
    name: str
    concurrency_quota: int
    claim_weight: int
    created_at: datetime
    has_key: bool
    batches: int


@dataclass(frozen=True, slots=True)
class KeyOwner:
    """The account a key digest belongs to, with the digest as stored."""

    id: int
    name: str
    api_key_hash: str


async def account_create(store: Store, name: str, key_hash: str, quota: int) -> int | None:
    """The new account's id, or None when the name is already taken."""
    async with translate_errors("creating the account"):
        row = await store.pool.fetchrow(q.ACCOUNT_CREATE, name, key_hash, quota)
    return None if row is None else int(row["id"])


async def account_by_key_hash(store: Store, key_hash: str) -> KeyOwner | None:
    async with translate_errors("checking the API key"):
        row = await store.pool.fetchrow(q.ACCOUNT_BY_KEY_HASH, key_hash)
    return None if row is None else KeyOwner(**dict(row))


async def account_key_set(store: Store, name: str, key_hash: str | None) -> bool:
    """Replace (or, with None, remove) an account's key; False when there is no such account."""
    async with translate_errors("changing the API key"):
        found = await store.pool.fetchval(q.ACCOUNT_KEY_SET, name, key_hash)
    return found is not None


async def account_quota_set(store: Store, name: str, quota: int) -> bool:
    async with translate_errors("setting the concurrency quota"):
        found = await store.pool.fetchval(q.ACCOUNT_QUOTA_SET, name, quota)
    return found is not None


async def account_weight_set(store: Store, name: str, weight: int) -> bool:
    async with translate_errors("setting the claim weight"):
        found = await store.pool.fetchval(q.ACCOUNT_WEIGHT_SET, name, weight)
    return found is not None


async def accounts_list(store: Store) -> list[AccountRow]:
    async with translate_errors("listing accounts"):
        rows = await store.pool.fetch(q.ACCOUNTS_LIST)
    return [AccountRow(**dict(r)) for r in rows]


async def account_key_bootstrap(store: Store, name: str, key_hash: str) -> bool:
    """Give ``name`` this key if no account has any key yet; True when it did."""
    async with translate_errors("creating the first API key"):
        found = await store.pool.fetchval(q.ACCOUNT_KEY_BOOTSTRAP, name, key_hash)
    return found is not None
