"""Every Redis key bulkgen builds is Redis Cluster safe, and the keys spread over the cluster.

A Lua script, a ``MULTI`` or a multi-key command may only touch keys of one hash slot on a
cluster: so all the keys one of them touches must hash to the same slot (their hash tag).
And the tags must differ between limits, batches, cache entries and accounts, or the
whole fleet's traffic would land on one master.
"""

from __future__ import annotations

import re
import uuid

import pytest
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from bulkgen.api.rate_limit import account_key
from bulkgen.budget import ledger_key
from bulkgen.cache import cache_key, cache_scope
from bulkgen.cache.keys import lock_key
from bulkgen.limits.keys import LimitKey, redis_keys
from bulkgen.models import ChatRequest

MASTERS = 3  # what the cluster in the integration tests has; slots split evenly
SAMPLES = 60


def slot(key: str) -> int:
    return key_slot(key.encode())


def tag(key: str) -> str:
    """The part Redis Cluster hashes: the first non-empty ``{...}``."""
    found = re.search(r"\{([^}]+)\}", key)
    assert found is not None, f"{key!r} has no hash tag"
    return found.group(1)


def masters_reached(keys: list[str]) -> int:
    """How many of ``MASTERS`` equal slot ranges these keys fall in."""
    share = REDIS_CLUSTER_HASH_SLOTS / MASTERS
    return len({int(slot(key) // share) for key in keys})


def limit_key(i: int) -> LimitKey:
    return LimitKey("https://api.openai.com/v1", f"key{i % 3}", f"model-{i}")


def cache_key_for(i: int) -> str:
    request = ChatRequest(
        model="gpt-4o", messages=(("user", f"Write about: {i}"),), max_tokens=800, temperature=0.7
    )
    return cache_key(
        scope=cache_scope("account", str(i % 5)),
        base_url="https://api.openai.com/v1",
        request=request,
        template_version="t1",
    )


@pytest.mark.parametrize("i", range(5))
def test_one_limits_keys_share_a_slot(i: int) -> None:
    """The admission script touches all six keys of a limit at once."""
    keys = redis_keys(limit_key(i))
    names = [
        keys.requests_tat,
        keys.tokens_tat,
        keys.pause_until,
        keys.leases,
        keys.learned,
        keys.concurrency,
    ]
    assert len(set(names)) == 6
    assert {tag(name) for name in names} == {limit_key(i).ident()}
    assert len({slot(name) for name in names}) == 1


@pytest.mark.parametrize("i", range(5))
def test_a_cache_entry_and_its_lock_share_a_slot(i: int) -> None:
    key = cache_key_for(i)
    assert lock_key(key) != key
    assert tag(lock_key(key)) == tag(key)
    assert slot(lock_key(key)) == slot(key)


def test_a_ledger_is_tagged_by_its_batch() -> None:
    batch_id = uuid.uuid4()
    assert tag(ledger_key(batch_id)) == str(batch_id)


def test_an_api_budget_is_tagged_by_its_account() -> None:
    assert tag(account_key(42)) == "42"


@pytest.mark.parametrize(
    ("what", "keys"),
    [
        ("limits", [redis_keys(limit_key(i)).requests_tat for i in range(SAMPLES)]),
        ("ledgers", [ledger_key(uuid.UUID(int=i * 7919 + 1)) for i in range(SAMPLES)]),
        ("cache entries", [cache_key_for(i) for i in range(SAMPLES)]),
        ("locks", [lock_key(cache_key_for(i)) for i in range(SAMPLES)]),
        ("API budgets", [account_key(i) for i in range(SAMPLES)]),
    ],
)
def test_keys_spread_over_every_master(what: str, keys: list[str]) -> None:
    """No fleet-wide tag: distinct limits, batches, entries and accounts reach all masters."""
    assert len(set(keys)) == SAMPLES
    assert masters_reached(keys) == MASTERS, what
