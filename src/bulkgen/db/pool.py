"""The one bounded connection pool of a process.

Every process owns exactly one ``asyncpg`` pool whose ``max_size`` (``BULKGEN_DB_POOL_MAX``)
is a hard cap: callers wait for a free connection instead of opening one, so a batch of any
size uses at most that many connections per process. Driver errors become
:class:`StorageError` here, marked transient or not by their SQLSTATE class.

A connection goes back to the pool without asyncpg's reset query (``RESET ALL``, ``UNLISTEN
*``, advisory locks released...): that query is a round trip and a transaction of its own
on every release, half of all the transactions a worker makes. asyncpg still rolls back a
transaction left open, which costs nothing when there is none. So the rule is: code that
gives a session state of its own (LISTEN, a session advisory lock, ``SET``) undoes it
before the connection goes back, or closes the connection (``terminate()``), so that no
other caller ever gets a connection carrying it. ``worker._listen`` and ``migrate`` do.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from bulkgen.errors import StorageError

# InternalClientError is not a bug of ours to surface: after a server shutdown asyncpg can
# leave a pooled connection mid-protocol, and the next statement on it (or the reset when it
# goes back to the pool) raises it; the pool then drops that connection. Left untranslated
# it escaped every ``except StorageError`` and killed the worker.
DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


async def _init_connection(conn: asyncpg.Connection[Any]) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _release_as_is(conn: asyncpg.Connection[Any]) -> None:
    """The pool's reset: nothing to undo beyond what asyncpg already did (see the module
    docstring); replaces the default reset query that every release would send."""


async def create_pool(
    dsn: str, *, max_size: int, min_size: int, command_timeout_s: float
) -> asyncpg.Pool[Any]:
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min(min_size, max_size),
            max_size=max_size,
            command_timeout=command_timeout_s,
            init=_init_connection,
            reset=_release_as_is,
            # JIT compiles for queries the planner guesses are big; the claim's LIMIT per
            # account is only known at run time, so it would pay ~15-200 ms of compiling for
            # ~2 ms of work. Short OLTP statements never gain from it.
            server_settings={"application_name": "bulkgen", "jit": "off"},
        )
    except DRIVER_ERRORS as exc:
        raise StorageError(f"cannot connect to PostgreSQL: {exc}") from exc
    return pool


# SQLSTATE classes worth retrying: connection exception, transaction rollback (deadlock,
# serialization), insufficient resources, operator intervention (shutdown, cancel).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57")


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        return sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES
    return True  # OSError, timeouts, a closed connection


@contextlib.asynccontextmanager
async def translate_errors(action: str) -> AsyncIterator[None]:
    """Turn driver errors into StorageError naming what was being done."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise StorageError(f"{action} failed: {exc}", transient=is_transient(exc)) from exc
