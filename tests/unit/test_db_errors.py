"""Driver errors become StorageError at the one boundary, so callers that handle a database
outage (the worker's claim, heartbeat and status writer) see every way the driver fails."""

import asyncpg
import pytest

from bulkgen.db.pool import translate_errors
from bulkgen.errors import StorageError


async def test_a_connection_left_mid_protocol_is_a_transient_storage_error() -> None:
    # What asyncpg raises on a pooled connection a server shutdown left mid-protocol.
    with pytest.raises(StorageError) as caught:
        async with translate_errors("claiming jobs"):
            raise asyncpg.InternalClientError(
                "cannot switch to state 15; another operation (2) is in progress"
            )
    assert caught.value.transient
    assert "claiming jobs failed" in str(caught.value)


async def test_a_refused_value_is_not_transient() -> None:
    with pytest.raises(StorageError) as caught:
        async with translate_errors("finishing jobs"):
            raise asyncpg.CheckViolationError("new row violates check constraint")
    assert not caught.value.transient
