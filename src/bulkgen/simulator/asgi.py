"""ASGI plumbing shared by the simulator's routes: the message types, a JSON (or raw)
response, and reading a request body, optionally bounded.

No framework: the chat route must serve >1,000 requests a second on one core.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


async def respond(
    send: Send,
    status: int,
    body: bytes,
    headers: Headers | None = None,
    content_type: bytes = b"application/json",
) -> None:
    all_headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if headers:
        all_headers.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def read_body_bounded(receive: Receive, max_bytes: int) -> bytes | None:
    """The whole request body, or ``None`` if it is longer than ``max_bytes``.

    A body over the bound is still read to its end (and dropped as it comes), so the
    connection stays usable for the answer and the body is never held in memory.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= max_bytes:
            chunks.append(chunk)
        elif chunks:
            chunks.clear()
        if not message.get("more_body"):
            return b"".join(chunks) if size <= max_bytes else None
