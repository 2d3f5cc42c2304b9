"""Every statement in ``bulkgen.db.queries`` is planned against the migrated schema.

A statement the suite never runs (a rare error path, a maintenance query) would otherwise
rot silently when a column is renamed. The statements are found by reading the module, so
a new one is covered the moment it is written. Each is prepared (PostgreSQL infers its
parameter types from the schema), then ``EXPLAIN``-ed with a value of each inferred type:
planning resolves every table, column, function and cast, and executes nothing.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from bulkgen.db import queries
from bulkgen.db.pool import create_pool

pytestmark = pytest.mark.postgres

STATEMENTS = {
    name: sql
    for name, sql in sorted(vars(queries).items())
    if name.isupper() and not name.startswith("_") and isinstance(sql, str)
}

# One plausible value per scalar type a parameter may be inferred as.
SAMPLES: dict[str, object] = {
    "bool": False,
    "int2": 1,
    "int4": 1,
    "int8": 1,
    "float4": 0.5,
    "float8": 0.5,
    "numeric": Decimal("1.5"),
    "text": "x",
    "varchar": "x",
    "uuid": uuid.UUID(int=1),
    "jsonb": {"keyword": "x"},
    "json": {"keyword": "x"},
    "timestamptz": datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
    "interval": datetime.timedelta(seconds=1),
}


def sample(type_name: str) -> object:
    """A value of the parameter's inferred type (a one-element list for an array)."""
    if type_name.endswith("[]"):
        return [sample(type_name.removesuffix("[]"))]
    if type_name not in SAMPLES:
        pytest.fail(f"no sample value for parameter type {type_name!r}: add one to SAMPLES")
    return SAMPLES[type_name]


@pytest.fixture
async def pool(module_database_url: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    # The app's own pool, so parameters are encoded by the app's codecs (jsonb).
    pool = await create_pool(module_database_url, max_size=1, min_size=1, command_timeout_s=60.0)
    try:
        yield pool
    finally:
        await pool.close()


def test_the_module_is_read_whole() -> None:
    assert len(STATEMENTS) >= 20
    assert {"JOBS_CLAIM", "JOBS_FINISH_DONE", "BATCHES_PRUNE"} <= STATEMENTS.keys()


@pytest.mark.parametrize("name", list(STATEMENTS))
async def test_statement_plans_against_the_migrated_schema(
    pool: asyncpg.Pool[Any], name: str
) -> None:
    sql = STATEMENTS[name]
    async with pool.acquire() as conn:
        prepared = await conn.prepare(sql)
        args = [sample(p.name) for p in prepared.get_parameters()]
        plan = await conn.fetch("EXPLAIN " + sql, *args)
    assert plan, name
