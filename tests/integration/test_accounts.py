"""Accounts and keys against a real PostgreSQL: every rule and refusal, the first key of a
fresh install, and a quota the claim honours."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from bulkgen import accounts
from bulkgen.db.pool import create_pool
from bulkgen.db.store import Store
from bulkgen.errors import ConfigError

pytestmark = pytest.mark.postgres


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    pool = await create_pool(database_url, max_size=4, min_size=1, command_timeout_s=60.0)
    try:
        yield Store(pool)
    finally:
        await pool.close()


async def test_a_key_authenticates_its_account_until_rotated_or_revoked(store: Store) -> None:
    key = await accounts.create_account(store, "acme", quota=7)
    caller = await accounts.authenticate(store, key)
    assert caller is not None and caller.name == "acme"
    new_key = await accounts.rotate_key(store, "acme")
    assert await accounts.authenticate(store, key) is None
    assert await accounts.authenticate(store, new_key) == caller
    await accounts.revoke_key(store, "acme")
    assert await accounts.authenticate(store, new_key) is None
    (row,) = await accounts.list_accounts(store)
    assert (row.name, row.concurrency_quota, row.has_key, row.batches) == ("acme", 7, False, 0)


@pytest.mark.parametrize(
    ("name", "quota", "message"),
    [
        ("bad name", 1, "not valid"),
        ("x" * 65, 1, "not valid"),
        ("", 1, "not valid"),
        ("fine", 0, "between 1 and 100,000"),
        ("fine", 100_001, "between 1 and 100,000"),
    ],
)
async def test_bad_names_and_quotas_are_refused(
    store: Store, name: str, quota: int, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        await accounts.create_account(store, name, quota=quota)
    assert await accounts.list_accounts(store) == []


async def test_a_taken_name_and_unknown_accounts_are_clear_errors(store: Store) -> None:
    await accounts.create_account(store, "acme")
    with pytest.raises(ConfigError, match=r"already exists.*rotate-key acme"):
        await accounts.create_account(store, "acme")
    with pytest.raises(ConfigError, match="no account named 'ghost'"):
        await accounts.rotate_key(store, "ghost")
    with pytest.raises(ConfigError, match="no account named 'ghost'"):
        await accounts.revoke_key(store, "ghost")
    with pytest.raises(ConfigError, match="no account named 'ghost'"):
        await accounts.set_quota(store, "ghost", 3)
    with pytest.raises(ConfigError, match="between 1"):
        await accounts.set_quota(store, "acme", 0)


async def test_the_first_key_is_made_once(store: Store) -> None:
    await store.account_ensure("default")  # e.g. made by `bulkgen submit`, without a key
    first = await accounts.bootstrap_key(store)
    assert first is not None
    assert await accounts.bootstrap_key(store) is None  # a restart hands out nothing
    caller = await accounts.authenticate(store, first)
    assert caller is not None and caller.name == "default"


async def test_no_first_key_once_any_account_has_one(store: Store) -> None:
    await accounts.create_account(store, "acme")
    assert await accounts.bootstrap_key(store) is None
    assert [a.name for a in await accounts.list_accounts(store)] == ["acme"]


async def test_the_claim_honours_a_quota_set_later(store: Store) -> None:
    await accounts.create_account(store, "acme")
    await accounts.set_quota(store, "acme", 2)
    account_id = await store.account_ensure("acme")
    await store.batch_create(
        account=account_id,
        options={},
        template="t",
        template_version="v",
        inputs=[{"keyword": f"k{i}"} for i in range(5)],
    )
    claimed = await store.jobs_claim(uuid.uuid4(), 10)
    assert len(claimed) == 2


async def test_a_weight_is_set_checked_and_listed(store: Store) -> None:
    await accounts.create_account(store, "acme")
    (row,) = await accounts.list_accounts(store)
    assert row.claim_weight == 1
    await accounts.set_weight(store, "acme", 4)
    (row,) = await accounts.list_accounts(store)
    assert row.claim_weight == 4
    for bad in (0, 101, True):
        with pytest.raises(ConfigError, match="claim weight must be between 1 and 100"):
            await accounts.set_weight(store, "acme", bad)
    with pytest.raises(ConfigError, match="no account named 'ghost'"):
        await accounts.set_weight(store, "ghost", 2)
