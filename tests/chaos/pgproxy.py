"""A TCP proxy between workers and PostgreSQL that can lose the answer of a committed claim.

It reads just enough of the PostgreSQL wire protocol to follow one thing: a ``Parse``
whose query text carries the claim statement's marker names a prepared statement; a
``Bind`` of that statement means a claim is on its way. The server's reply is then held
back, message by message, until its ``ReadyForQuery``: by then the implicit transaction
has committed (PostgreSQL commits at ``Sync``, before it says it is ready). When armed and
the reply carries rows, the proxy drops both sides of the connection instead of
forwarding it: the jobs are claimed in the database and the worker never learns which.
That is the ambiguous failure of a real network, made to happen on demand.

Workers must connect with ``sslmode=disable`` so every byte the server sends is a typed
protocol message.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

# Text only the claim statement (``JOBS_CLAIM`` in bulkgen.db.queries) contains.
CLAIM_MARKER = b"claims = j.claims + 1"
_SSL_REQUEST = 80877103
_GSS_REQUEST = 80877104


@dataclass
class _Link:
    """One client connection and its server connection, with the protocol state of both."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    claim_statements: set[bytes] = field(default_factory=set)
    claim_pending: bool = False
    started: bool = False  # the untyped startup message has gone by
    from_client: bytearray = field(default_factory=bytearray)
    from_server: bytearray = field(default_factory=bytearray)
    held: bytearray = field(default_factory=bytearray)
    held_rows: int = 0


class ClaimDroppingProxy:
    """Listens on a free loopback port and forwards to PostgreSQL on ``upstream_port``."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.armed = 0
        self.dropped_claims: list[int] = []  # rows in each claim answer that was dropped
        self.claims_seen = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}?sslmode=disable"

    def arm(self, times: int = 1) -> None:
        """Drop the next ``times`` claim answers that carry at least one job."""
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
            link.server.write(chunk)  # after reading it: a Bind marks the claim first
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
                if CLAIM_MARKER in query:
                    link.claim_statements.add(name)
                else:
                    link.claim_statements.discard(name)
            elif kind == b"B":  # Bind: portal name, statement name, ...
                statement = body.split(b"\0", 2)[1]
                if statement in link.claim_statements:
                    link.claim_pending = True
                    self.claims_seen += 1

    async def _pump_server(self, link: _Link, reader: asyncio.StreamReader) -> None:
        while chunk := await reader.read(65536):
            link.from_server += chunk
            if not await self._read_server_messages(link):
                return  # dropped on purpose

    async def _read_server_messages(self, link: _Link) -> bool:
        """Forward whole messages; hold a claim's answer until ReadyForQuery. False once
        the connection was dropped."""
        buf = link.from_server
        out = bytearray()
        while len(buf) >= 5:
            length = int.from_bytes(buf[1:5], "big")
            if len(buf) < 1 + length:
                break
            message = bytes(buf[: 1 + length])
            del buf[: 1 + length]
            if not link.claim_pending:
                out += message
                continue
            link.held += message
            link.held_rows += message[0:1] == b"D"
            if message[0:1] != b"Z":
                continue
            if self.armed and link.held_rows:
                self.armed -= 1
                self.dropped_claims.append(link.held_rows)
                link.client.transport.abort()
                link.server.transport.abort()
                return False
            out += link.held
            link.held.clear()
            link.held_rows, link.claim_pending = 0, False
        if out:
            link.client.write(bytes(out))
            await link.client.drain()
        return True
