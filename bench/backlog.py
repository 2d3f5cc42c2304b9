"""A backlog of many accounts, written by PostgreSQL itself rather than through submit.

Shared by the benchmarks that need thousands of accounts (``scale.py``, ``fairness.py``):
submitting 5,000 batches one by one would take longer than the measurement. One real batch
is submitted through ``Services.submit`` first, so options, template and job input have
exactly the shape the worker expects; one ``INSERT ... SELECT generate_series`` then
copies it to every account, each job with its own keyword (the result cache never
answers), and the model batch is deleted.
"""

from __future__ import annotations

import uuid

import asyncpg

from bulkgen.intake import JobInput
from bulkgen.service import Services

FILL_TIMEOUT_S = 1800.0

FILL = """
WITH model AS (
    SELECT b.options, b.template, b.template_version, j.input
    FROM batches b JOIN jobs j ON j.batch_id = b.id WHERE b.id = $4
), a AS (
    INSERT INTO accounts (name) SELECT $3 || g FROM generate_series(1, $1::int) g RETURNING id
), b AS (
    INSERT INTO batches (id, account_id, options, template, template_version, total)
    SELECT gen_random_uuid(), a.id, m.options, m.template, m.template_version, $2::int
    FROM a, model m RETURNING id, account_id
)
INSERT INTO jobs (batch_id, account_id, input)
SELECT b.id, b.account_id,
       jsonb_set(m.input, '{keyword}', to_jsonb(format('keyword %s %s', b.account_id, g)))
FROM b, model m, generate_series(1, $2::int) g
ORDER BY b.account_id, g
"""

DROP_MODEL = """
WITH j AS (DELETE FROM jobs WHERE batch_id = $1)
DELETE FROM batches WHERE id = $1 RETURNING account_id
"""


async def model_batch(svc: Services) -> uuid.UUID:
    """One job submitted the ordinary way: the shape every filled job copies."""
    account = f"model-{uuid.uuid4().hex[:8]}"
    rows = [JobInput("model keyword", {}, {})]
    return await svc.submit(rows, svc.batch_options(), account=account)


async def fill(
    pool: asyncpg.Pool,  # type: ignore[type-arg]
    model: uuid.UUID,
    *,
    accounts: int,
    jobs_per_account: int,
    prefix: str,
) -> None:
    """``accounts`` new accounts named ``prefix<n>``, each with one batch of
    ``jobs_per_account`` queued jobs; the table analysed after."""
    await pool.execute(FILL, accounts, jobs_per_account, prefix, model, timeout=FILL_TIMEOUT_S)
    await pool.execute("VACUUM ANALYZE jobs", timeout=FILL_TIMEOUT_S)
    await pool.execute("ANALYZE accounts", timeout=FILL_TIMEOUT_S)


async def drop_model(pool: asyncpg.Pool, model: uuid.UUID) -> None:  # type: ignore[type-arg]
    account_id = await pool.fetchval(DROP_MODEL, model)
    await pool.execute("DELETE FROM accounts WHERE id = $1", account_id)
