"""A TCP proxy between workers and PostgreSQL that can lose the answer of a committed
statement: a claim, or the write of finished jobs.

It reads just enough of the PostgreSQL wire protocol to follow one statement: a ``Parse``
whose query text carries the statement's marker names a prepared statement; a ``Bind`` of
that statement means one is on its way. From then on the proxy watches for the
``ReadyForQuery`` that says the transaction is over (status idle): an implicit transaction
ends at ``Sync``, an explicit one at ``COMMIT``, and PostgreSQL has committed by the time
it says so. That last answer is held back and, when armed and the transaction returned
rows, never delivered: the proxy drops both sides of the connection instead. The change is in
the database and the worker never learns it. That is the ambiguous failure
of a real network, made to happen on demand.

Workers must connect with ``sslmode=disable`` so every byte the server sends is a typed
protocol message.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

# Text only one statement of bulkgen.db.queries contains: the claim (``JOBS_CLAIM``) and
# the write of done jobs with their results (``JOBS_FINISH_DONE``).
CLAIM_MARKER = b"claims = j.claims + 1"
FINISH_DONE_MARKER = b"INSERT INTO results"
_SSL_REQUEST = 80877103
_GSS_REQUEST = 80877104


@dataclass
class _Link:
    """One client connection and its server connection, with the protocol state of both."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    marked_statements: set[bytes] = field(default_factory=set)
    pending: bool = False  # a marked statement's reply is on its way
    started: bool = False  # the untyped startup message has gone by
    from_client: bytearray = field(default_factory=bytearray)
    from_server: bytearray = field(default_factory=bytearray)
    held: bytearray = field(default_factory=bytearray)
    held_rows: int = 0
    in_transaction: bool = False  # the marked statement ran in a transaction still open


class AnswerDroppingProxy:
    """Listens on a free loopback port and forwards to PostgreSQL on ``upstream_port``;
    when armed, loses the answer of the statement whose text carries ``marker``."""

    def __init__(self, upstream_port: int, marker: bytes) -> None:
        self.upstream_port = upstream_port
        self.marker = marker
        self.port = 0
        self.armed = 0
        self.dropped: list[int] = []  # rows in each answer that was dropped
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}?sslmode=disable"

    def arm(self, times: int = 1) -> None:
        """Drop the next ``times`` answers that carry at least one row."""
        self.armed += times

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            s_reader, s_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            c_writer.transport.abort()
            self._tasks.discard(task)
            return
        link = _Link(c_writer, s_writer)
        pumps = [
            asyncio.create_task(self._pump_client(link, c_reader)),
            asyncio.create_task(self._pump_server(link, s_reader)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            c_writer.transport.abort()
            s_writer.transport.abort()
            self._tasks.discard(task)

    async def _pump_client(self, link: _Link, reader: asyncio.StreamReader) -> None:
        while chunk := await reader.read(65536):
            link.from_client += chunk
            self._read_client_messages(link)
            link.server.write(chunk)  # after reading it: a Bind marks the statement first
            await link.server.drain()

    def _read_client_messages(self, link: _Link) -> None:
        buf = link.from_client
        while True:
            if not link.started:  # SSLRequest / StartupMessage: length, then a code
                if len(buf) < 8:
                    return
                length = int.from_bytes(buf[0:4], "big")
                if len(buf) < length:
                    return
                code = int.from_bytes(buf[4:8], "big")
                link.started = code not in (_SSL_REQUEST, _GSS_REQUEST)
                del buf[:length]
                continue
            if len(buf) < 5:
                return
            length = int.from_bytes(buf[1:5], "big")
            if len(buf) < 1 + length:
                return
            kind, body = bytes(buf[0:1]), bytes(buf[5 : 1 + length])
            del buf[: 1 + length]
            if kind == b"P":  # Parse: statement name, query text, ...
                name, _, rest = body.partition(b"\0")
                query = rest.partition(b"\0")[0]
                if self.marker in query:
                    link.marked_statements.add(name)
                else:
                    link.marked_statements.discard(name)
            elif kind == b"B":  # Bind: portal name, statement name, ...
                statement = body.split(b"\0", 2)[1]
                if statement in link.marked_statements:
                    link.pending = True

    async def _pump_server(self, link: _Link, reader: asyncio.StreamReader) -> None:
        while chunk := await reader.read(65536):
            link.from_server += chunk
            if not await self._read_server_messages(link):
                return  # dropped on purpose

    async def _read_server_messages(self, link: _Link) -> bool:
        """Forward whole messages; hold a marked statement's answer until ReadyForQuery.
        False once the connection was dropped."""
        buf = link.from_server
        out = bytearray()
        while len(buf) >= 5:
            length = int.from_bytes(buf[1:5], "big")
            if len(buf) < 1 + length:
                break
            message = bytes(buf[: 1 + length])
            del buf[: 1 + length]
            if not link.pending:
                out += message
                continue
            link.held_rows += message[0:1] == b"D"
            if link.in_transaction and message[0:1] != b"Z":
                # Answers within the transaction go on as they come: the client may wait
                # for one that no ReadyForQuery follows (asyncpg prepares a statement with
                # Flush, not Sync). Only the transaction's end is held.
                out += message
                continue
            link.held += message
            if message[0:1] != b"Z":
                continue
            if message[5:6] != b"I":  # still in a transaction: its COMMIT is yet to come
                out += link.held
                link.held.clear()
                link.in_transaction = True
                continue
            if self.armed and link.held_rows:
                self.armed -= 1
                self.dropped.append(link.held_rows)
                link.client.transport.abort()
                link.server.transport.abort()
                return False
            out += link.held
            link.held.clear()
            link.held_rows, link.pending, link.in_transaction = 0, False, False
        if out:
            link.client.write(bytes(out))
            await link.client.drain()
        return True
