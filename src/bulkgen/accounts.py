"""Accounts and their API keys: the rules the CLI and the API share.

**Keys** are ``bgk_`` followed by 43 characters of URL-safe base64: 32 bytes (256 bits)
from :mod:`secrets`. The prefix makes a leaked key recognisable to secret scanners and to
people; the rest is what makes it unguessable. A key is shown once, when it is made, and
only its SHA-256 digest is stored (``accounts.api_key_hash``).

**Why a fast hash.** Slow password hashes (bcrypt, scrypt, Argon2) make guessing a
*low-entropy* secret expensive. A 256-bit random key cannot be guessed at any speed, so a
slow hash would buy nothing and cost CPU time on every request. A deterministic digest can
also be looked up through the column's unique index, so authenticating is one indexed read,
not a loop over accounts.

**Constant time.** The database finds the row by digest; how long that takes depends only
on the digest of the key presented, which the caller already knows and which says nothing
about any stored key (SHA-256 is preimage resistant). The one comparison of secrets in
Python, presented digest against stored digest, uses :func:`hmac.compare_digest`.

Rotating or revoking takes effect with the statement's commit: every request looks its key
up afresh, nothing caches it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from bulkgen.db.accounts import (
    AccountRow,
    account_by_key_hash,
    account_create,
    account_key_bootstrap,
    account_key_set,
    account_quota_set,
    account_weight_set,
    accounts_list,
)
from bulkgen.db.store import Store
from bulkgen.errors import ConfigError

__all__ = [
    "DEFAULT_QUOTA",
    "KEY_PREFIX",
    "Caller",
    "authenticate",
    "bootstrap_key",
    "check_name",
    "check_quota",
    "check_weight",
    "create_account",
    "hash_api_key",
    "list_accounts",
    "new_api_key",
    "revoke_key",
    "rotate_key",
    "set_quota",
    "set_weight",
]

KEY_PREFIX = "bgk_"
_KEY_BYTES = 32
_MAX_KEY_CHARS = 128  # anything longer is not one of ours: refused before hashing
DEFAULT_QUOTA = 100  # the schema's default for accounts.concurrency_quota
MAX_QUOTA = 100_000
MAX_WEIGHT = 100  # the schema's bound for accounts.claim_weight
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, slots=True)
class Caller:
    """The account a request was authenticated as."""

    id: int
    name: str


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(_KEY_BYTES)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    """The schema's rule for account names, said before the database refuses it."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"account name {name!r} is not valid: use 1-64 letters, digits, '.', '_' or '-'"
        )
    return name


def check_quota(quota: int) -> int:
    if isinstance(quota, bool) or not 1 <= quota <= MAX_QUOTA:
        raise ConfigError(f"concurrency quota must be between 1 and {MAX_QUOTA:,}, not {quota}")
    return quota


def check_weight(weight: int) -> int:
    if isinstance(weight, bool) or not 1 <= weight <= MAX_WEIGHT:
        raise ConfigError(f"claim weight must be between 1 and {MAX_WEIGHT}, not {weight}")
    return weight


def _unknown(name: str) -> ConfigError:
    return ConfigError(f"no account named {name!r} (see `bulkgen accounts list`)")


async def create_account(store: Store, name: str, *, quota: int = DEFAULT_QUOTA) -> str:
    """Create an account with a key; returns the key, the only time it is ever seen."""
    check_name(name)
    check_quota(quota)
    key = new_api_key()
    if await account_create(store, name, hash_api_key(key), quota) is None:
        raise ConfigError(
            f"an account named {name!r} already exists; "
            f"`bulkgen accounts rotate-key {name}` gives it a new key"
        )
    return key


async def rotate_key(store: Store, name: str) -> str:
    """A new key for the account; the old one stops working with this call."""
    key = new_api_key()
    if not await account_key_set(store, check_name(name), hash_api_key(key)):
        raise _unknown(name)
    return key


async def revoke_key(store: Store, name: str) -> None:
    """Remove the account's key: no key works for it until a rotate gives it a new one."""
    if not await account_key_set(store, check_name(name), None):
        raise _unknown(name)


async def set_quota(store: Store, name: str, quota: int) -> None:
    """Jobs the account may have running at once, across the fleet (the claim honours it)."""
    check_quota(quota)
    if not await account_quota_set(store, check_name(name), quota):
        raise _unknown(name)


async def set_weight(store: Store, name: str, weight: int) -> None:
    """The account's weight in the fair claim: waiting beside others, it is offered a share
    of each claim in proportion to its weight (every account weighs 1 by default)."""
    check_weight(weight)
    if not await account_weight_set(store, check_name(name), weight):
        raise _unknown(name)


async def list_accounts(store: Store) -> list[AccountRow]:
    return await accounts_list(store)


async def bootstrap_key(store: Store, name: str = "default") -> str | None:
    """On a fresh install, a key for ``name`` so the API can be used at once.

    Returns the key when one was made, None when some account already has a key (so
    restarting a server never invalidates or re-prints anything).
    """
    key = new_api_key()
    return key if await account_key_bootstrap(store, name, hash_api_key(key)) else None


async def authenticate(store: Store, key: str) -> Caller | None:
    """The account whose current key this is, or None (unknown, rotated or revoked)."""
    if not key.startswith(KEY_PREFIX) or len(key) > _MAX_KEY_CHARS:
        return None
    digest = hash_api_key(key)
    owner = await account_by_key_hash(store, digest)
    if owner is None or not hmac.compare_digest(owner.api_key_hash, digest):
        return None
    return Caller(id=owner.id, name=owner.name)
