"""The store against a real PostgreSQL: schema, enqueue, fair claim, fencing, refusals."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import pytest

from bulkgen.db.migrate import available_migrations, migrate
from bulkgen.db.pool import create_pool
from bulkgen.db.queries import JOBS_CLAIM
from bulkgen.db.store import DoneRow, FailedRow, RetryRow, Store
from bulkgen.errors import StorageError
from bulkgen.models import JobStatus

pytestmark = pytest.mark.postgres


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    pool = await create_pool(database_url, max_size=5, min_size=1, command_timeout_s=60.0)
    try:
        yield Store(pool)
    finally:
        await pool.close()


async def _batch(store: Store, account: str, n: int) -> uuid.UUID:
    account_id = await store.account_ensure(account)
    return await store.batch_create(
        account=account_id,
        options={"model": "gpt-4o"},
        template="t",
        template_version="v1",
        inputs=[{"keyword": f"{account} {i}"} for i in range(n)],
    )


def _done(job_id: int, content: str = "# Title\n\nbody words") -> DoneRow:
    return DoneRow(job_id, content, "<p>x</p>", "Title", 3, "stop", "gpt-4o", False, 10, 20, None)


async def test_schema_is_what_the_code_expects(store: Store) -> None:
    columns = await store.pool.fetch(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'public'"
    )
    have = {(r["table_name"], r["column_name"]) for r in columns}
    for table, column in [
        ("jobs", "status"),
        ("jobs", "lease_owner"),
        ("jobs", "run_after"),
        ("jobs", "attempts"),
        ("results", "content"),
        ("batches", "budget_usd"),
        ("accounts", "concurrency_quota"),
        ("workers", "heartbeat_at"),
    ]:
        assert (table, column) in have
    versions = await store.pool.fetch("SELECT version FROM schema_migrations ORDER BY version")
    assert [r["version"] for r in versions] == [v for v, _, _ in available_migrations()]
    fillfactor = await store.pool.fetchval("SELECT reloptions FROM pg_class WHERE relname = 'jobs'")
    assert "fillfactor=80" in fillfactor
    # Migrating again is a no-op.
    assert await migrate(store.pool) == []


async def test_enqueue_is_atomic_and_counted(store: Store) -> None:
    batch_id = await _batch(store, "acme", 300)
    counts = {c.status: c.jobs for c in await store.batch_counts(batch_id)}
    assert counts == {"queued": 300}
    batch = await store.batch_get(batch_id)
    assert batch is not None and batch.total == 300 and batch.account == "acme"


async def test_claim_is_fair_across_accounts(store: Store) -> None:
    await _batch(store, "big", 1000)
    await _batch(store, "small", 5)
    worker = uuid.uuid4()
    await store.worker_register(worker, "h", 1)
    claimed = await store.jobs_claim(worker, 10)
    by_account: dict[int, int] = {}
    for job in claimed:
        by_account[job.account_id] = by_account.get(job.account_id, 0) + 1
    assert len(claimed) == 10
    assert sorted(by_account.values()) == [5, 5]


async def test_two_claimers_never_share_a_job(store: Store) -> None:
    await _batch(store, "acme", 100)
    a, b = uuid.uuid4(), uuid.uuid4()
    first = await store.jobs_claim(a, 60)
    second = await store.jobs_claim(b, 60)
    ids_a = {j.id for j in first}
    ids_b = {j.id for j in second}
    assert not ids_a & ids_b
    assert len(ids_a | ids_b) == 100


async def test_done_without_result_is_refused(store: Store) -> None:
    await _batch(store, "acme", 1)
    job_id = await store.pool.fetchval("SELECT id FROM jobs")
    with pytest.raises(asyncpg.CheckViolationError, match="without a non-empty result"):
        await store.pool.execute("UPDATE jobs SET status = 'done' WHERE id = $1", job_id)
    with pytest.raises(asyncpg.CheckViolationError):
        await store.pool.execute(
            "INSERT INTO results (job_id, content, html, title, word_count, finish_reason, model)"
            " VALUES ($1, '  \n\t ', '', '', 1, 'stop', 'm')",
            job_id,
        )


async def test_finishing_is_fenced_on_the_owner(store: Store) -> None:
    await _batch(store, "acme", 2)
    owner, intruder = uuid.uuid4(), uuid.uuid4()
    jobs = await store.jobs_claim(owner, 2)
    assert await store.jobs_finish_done(intruder, [_done(jobs[0].id)]) == set()
    assert await store.jobs_finish_done(owner, [_done(jobs[0].id)]) == {jobs[0].id}
    # A second finish of the same job writes nothing (and no second result).
    assert await store.jobs_finish_done(owner, [_done(jobs[0].id)]) == set()
    assert await store.pool.fetchval("SELECT count(*) FROM results") == 1
    retry = RetryRow(jobs[1].id, 0.0, 1, 0, False, "server_error", "503")
    assert await store.jobs_finish_retry(owner, [retry]) == {jobs[1].id}
    again = await store.jobs_claim(owner, 2)
    assert [j.id for j in again] == [jobs[1].id] and again[0].attempts == 1
    failed = FailedRow(jobs[1].id, JobStatus.FAILED, 1, "server_error", "503 again")
    assert await store.jobs_finish_failed(owner, [failed]) == {jobs[1].id}
    row: Any = await store.pool.fetchrow("SELECT * FROM jobs WHERE id = $1", jobs[1].id)
    assert (row["status"], row["attempts"], row["error_kind"]) == ("failed", 2, "server_error")


async def test_stale_worker_jobs_are_rescued(store: Store) -> None:
    await _batch(store, "acme", 3)
    dead = uuid.uuid4()
    await store.worker_register(dead, "h", 1)
    await store.jobs_claim(dead, 3)
    await store.pool.execute("UPDATE workers SET heartbeat_at = now() - interval '1 hour'")
    assert await store.jobs_rescue(lease_s=30, max_attempts=5) == 3
    statuses = await store.pool.fetch("SELECT status, attempts, lease_owner FROM jobs")
    assert {(r["status"], r["attempts"], r["lease_owner"]) for r in statuses} == {
        ("queued", 1, None)
    }


async def test_cancel_stops_queued_jobs_at_once(store: Store) -> None:
    batch_id = await _batch(store, "acme", 10)
    await store.jobs_claim(uuid.uuid4(), 4)
    assert await store.batch_cancel(batch_id) == 6
    counts = {c.status: c.jobs for c in await store.batch_counts(batch_id)}
    assert counts == {"cancelled": 6, "generating": 4}


async def test_unreachable_database_is_a_storage_error() -> None:
    with pytest.raises(StorageError, match="cannot connect"):
        await create_pool(
            "postgresql://postgres@127.0.0.1:1/none", max_size=2, min_size=1, command_timeout_s=5.0
        )


async def test_prune_removes_only_old_finished_batches(store: Store) -> None:
    from bulkgen.db.store import prune_batches

    old_done = await _batch(store, "acme", 3)
    old_busy = await _batch(store, "acme", 2)
    recent = await _batch(store, "acme", 2)
    owner = uuid.uuid4()
    jobs = await store.jobs_claim(owner, 10)
    mine = [j for j in jobs if j.batch_id == old_done]
    assert await store.jobs_finish_done(owner, [_done(j.id) for j in mine])
    await store.pool.execute(
        "UPDATE batches SET created_at = now() - interval '40 days' WHERE id = ANY($1::uuid[])",
        [old_done, old_busy],
    )
    assert await prune_batches(store, older_than_days=30) == (1, 3)
    left = {r["id"] for r in await store.pool.fetch("SELECT id FROM batches")}
    assert left == {old_busy, recent}
    assert await store.pool.fetchval("SELECT count(*) FROM results") == 0


async def test_a_cancel_sticks_for_jobs_running_at_the_time(store: Store) -> None:
    batch_id = await _batch(store, "acme", 4)
    owner = uuid.uuid4()
    await store.worker_register(owner, "h", 1)
    a, b, c = await store.jobs_claim(owner, 3)
    assert await store.batch_cancel(batch_id) == 1
    # A retry, a release at shutdown and a rescue of a dead worker all end cancelled.
    assert await store.jobs_finish_retry(owner, [RetryRow(a.id, 0.0, 1, 0, False, "x", "503")])
    assert await store.jobs_release(owner, [b.id]) == 1
    await store.pool.execute("UPDATE workers SET heartbeat_at = now() - interval '1 hour'")
    assert await store.jobs_rescue(lease_s=30, max_attempts=5) == 1
    rows = await store.pool.fetch("SELECT status, error_kind FROM jobs")
    assert {(r["status"], r["error_kind"]) for r in rows} == {("cancelled", "cancelled")}
    assert await store.jobs_claim(owner, 4) == []
    del c


async def test_concurrent_claims_take_different_rows(store: Store) -> None:
    import asyncio

    await _batch(store, "acme", 1000)
    workers = [uuid.uuid4() for _ in range(4)]
    claims = await asyncio.gather(*(store.jobs_claim(w, 20) for w in workers))
    ids = [j.id for claim in claims for j in claim]
    assert len(ids) == len(set(ids))
    assert sum(len(c) for c in claims) >= 60  # nobody races for the same candidates


async def test_small_account_is_served_next_to_a_busy_one(store: Store) -> None:
    await _batch(store, "big", 500)
    owner = uuid.uuid4()
    running = list(await store.jobs_claim(owner, 20))
    await _batch(store, "small", 3)
    served = []
    for _ in range(3):  # steady state: one slot frees, one job is claimed
        finished = running.pop(0)
        await store.jobs_finish_done(owner, [_done(finished.id)])
        (job,) = await store.jobs_claim(owner, 1)
        running.append(job)
        served.append(job.account_id)
    small_id = await store.account_ensure("small")
    assert served == [small_id] * 3


async def test_claims_take_turns_when_accounts_outnumber_the_claim(store: Store) -> None:
    """Jobs that finish at once leave every account equally idle: the next claim must
    serve the accounts after the last one served, not the first ones again."""
    accounts = [f"acct{i:02}" for i in range(20)]
    for account in accounts:
        await _batch(store, account, 3)
    owner = uuid.uuid4()
    served: list[int] = []
    for _ in range(4):
        claimed = await store.jobs_claim(owner, 5)
        assert await store.jobs_finish_done(owner, [_done(j.id) for j in claimed])
        served += [j.account_id for j in claimed]
    assert len(served) == 20
    assert sorted(served) == sorted([await store.account_ensure(a) for a in accounts])
    # A fifth round starts over from the first account.
    again = await store.jobs_claim(owner, 5)
    assert {j.account_id for j in again} == set(served[:5])


async def test_the_claim_visits_about_its_size_in_accounts(store: Store) -> None:
    """Its index reads follow the claim, not the number of accounts waiting."""
    for i in range(300):
        await _batch(store, f"acct{i:03}", 1)
    async with store.pool.acquire() as conn:  # one backend: its own counters, flushed
        await conn.execute("SELECT pg_stat_reset()")
        claimed = await conn.fetch(JOBS_CLAIM, uuid.uuid4(), 5)
        await conn.execute("SELECT pg_stat_force_next_flush()")
        read = await conn.fetchval(
            "SELECT idx_tup_read FROM pg_stat_user_indexes WHERE indexrelname = 'jobs_claim_idx'"
        )
    assert len(claimed) == 5
    assert 0 < read < 100  # visiting every account reads over 300 entries


async def test_a_late_outcome_never_lands_on_a_newer_claim(store: Store) -> None:
    """Same worker, same job, claimed twice: the first claim's outcome is refused."""
    await _batch(store, "acme", 1)
    owner = uuid.uuid4()
    (first,) = await store.jobs_claim(owner, 1)
    retry = RetryRow(first.id, 0.0, 1, 0, True, "truncated", "cut", claim=first.claims)
    assert await store.jobs_finish_retry(owner, [retry]) == {first.id}
    (second,) = await store.jobs_claim(owner, 1)
    assert second.claims == first.claims + 1
    # The first claim's outcome arrives again (an ambiguous commit retried): refused.
    assert await store.jobs_finish_retry(owner, [retry]) == set()
    late = FailedRow(first.id, JobStatus.FAILED, 1, "server_error", "503", claim=first.claims)
    assert await store.jobs_finish_failed(owner, [late]) == set()
    stale_done = replace(_done(first.id), claim=first.claims)
    assert await store.jobs_finish_done(owner, [stale_done]) == set()
    fresh = replace(_done(second.id), claim=second.claims)
    assert await store.jobs_finish_done(owner, [fresh]) == {second.id}
    row = await store.pool.fetchrow("SELECT status, attempts FROM jobs")
    assert row is not None and (row["status"], row["attempts"]) == ("done", 2)


async def test_outcomes_and_the_next_claim_commit_in_one_transaction(store: Store) -> None:
    await _batch(store, "acme", 6)
    owner = uuid.uuid4()
    done, retried, failed = await store.jobs_claim(owner, 3)
    outcomes: list[DoneRow | RetryRow | FailedRow] = [
        _done(done.id),
        RetryRow(retried.id, 60.0, 1, 0, False, "server_error", "503"),
        FailedRow(failed.id, JobStatus.FAILED, 1, "rejected", "400"),
    ]
    written, claimed = await store.jobs_finish_and_claim(owner, outcomes, 2)
    assert written == {done.id, retried.id, failed.id}
    assert len(claimed) == 2 and {j.id for j in claimed}.isdisjoint(written)
    rows = await store.pool.fetch("SELECT id, status, xmin::text AS tx FROM jobs ORDER BY id")
    by_id = {r["id"]: r for r in rows}
    assert [by_id[j.id]["status"] for j in claimed] == ["generating", "generating"]
    assert (by_id[done.id]["status"], by_id[retried.id]["status"]) == ("done", "queued")
    # Every row written by the call carries the same transaction id: one transaction.
    assert len({by_id[i]["tx"] for i in [*written, *(j.id for j in claimed)]}) == 1


async def test_a_refused_outcome_undoes_the_claim_beside_it(store: Store) -> None:
    await _batch(store, "acme", 4)
    owner = uuid.uuid4()
    good, blank = await store.jobs_claim(owner, 2)
    outcomes = [_done(good.id), _done(blank.id, " \n\t ")]  # the database refuses blank text
    with pytest.raises(StorageError) as refused:
        await store.jobs_finish_and_claim(owner, outcomes, 2)
    assert not refused.value.transient  # the writer then writes row by row (its own test)
    statuses = await store.pool.fetch("SELECT status, count(*) AS n FROM jobs GROUP BY status")
    assert {r["status"]: r["n"] for r in statuses} == {"generating": 2, "queued": 2}
    assert await store.pool.fetchval("SELECT count(*) FROM results") == 0


async def test_accounts_share_a_claim_in_proportion_to_their_weights(store: Store) -> None:
    """Weight 3 beside weight 1: three jobs for every one, claim after claim, and the
    lighter account is never left out."""
    await _batch(store, "heavy", 60)
    await _batch(store, "light", 60)
    await store.pool.execute("UPDATE accounts SET claim_weight = 3 WHERE name = 'heavy'")
    heavy, light = await store.account_ensure("heavy"), await store.account_ensure("light")
    owner = uuid.uuid4()
    for _ in range(3):  # jobs keep running: each claim is weighed against what runs
        claimed = await store.jobs_claim(owner, 8)
        served = [j.account_id for j in claimed]
        assert (served.count(heavy), served.count(light)) == (6, 2)
    finished = await store.jobs_claim(owner, 0)
    assert finished == []
    # Once the jobs end, the next claim splits the same way.
    owned = sorted(await store.jobs_of_owner(owner))
    assert len(await store.jobs_finish_done(owner, [_done(i) for i in owned])) == 24
    served = [j.account_id for j in await store.jobs_claim(owner, 4)]
    assert (served.count(heavy), served.count(light)) == (3, 1)


async def test_a_weight_never_lifts_the_concurrency_quota(store: Store) -> None:
    await _batch(store, "heavy", 20)
    await _batch(store, "light", 20)
    await store.pool.execute(
        "UPDATE accounts SET claim_weight = 100, concurrency_quota = 2 WHERE name = 'heavy'"
    )
    heavy = await store.account_ensure("heavy")
    owner = uuid.uuid4()
    served = [j.account_id for j in await store.jobs_claim(owner, 10)]
    assert served.count(heavy) == 2
    # The claim came back short (light was offered its share only); the next one is light's.
    served = [j.account_id for j in await store.jobs_claim(owner, 10)]
    assert heavy not in served and len(served) == 10


async def test_results_are_compressed_with_lz4_where_the_server_has_it(store: Store) -> None:
    """pglz made compressing an article the largest part of the database's CPU per
    finished job (migration 0011). A server built without lz4 (the embedded one) keeps
    pglz and the migration still applies."""
    async with store.pool.acquire() as conn:
        try:
            async with conn.transaction():
                await conn.execute(
                    "CREATE TEMP TABLE lz4_probe (x text COMPRESSION lz4) ON COMMIT DROP"
                )
            expected = b"l"
        except asyncpg.FeatureNotSupportedError:
            expected = b"\x00"  # the server's default, pglz
        methods = await conn.fetch(
            "SELECT attname, attcompression FROM pg_attribute"
            " WHERE attrelid = 'results'::regclass AND attname IN ('content', 'html')"
        )
    assert {r["attname"]: r["attcompression"] for r in methods} == {
        "content": expected,
        "html": expected,
    }
