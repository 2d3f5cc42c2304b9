"""The provider's own HTTP client against real local sockets: one that never answers, and
one that refuses the connection. The SDK over a mock transport is in
``tests/unit/test_provider_openai_compat.py``."""

from __future__ import annotations

import asyncio
import socket

import pytest

from bulkgen.errors import ProviderConnectionError, ProviderTimeout
from bulkgen.models import ChatRequest
from bulkgen.providers import OpenAICompatProvider

REQUEST = ChatRequest(
    model="gpt-4o",
    messages=(("system", "be brief"), ("user", "write about tea")),
    max_tokens=123,
    temperature=0.5,
    extra=(("seed", 7),),
)


async def test_default_client_times_out_on_a_silent_local_server() -> None:
    """The SDK's own client path (no injected transport), against a socket that never answers."""
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    p = OpenAICompatProvider(
        f"http://127.0.0.1:{port}/v1", "k", timeout_s=0.3, connect_timeout_s=0.3
    )
    try:
        with pytest.raises(ProviderTimeout):
            await p.complete(REQUEST)
    finally:
        await p.aclose()
        release.set()
        server.close()
        await server.wait_closed()


async def test_default_client_refused_connection_is_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    p = OpenAICompatProvider(f"http://127.0.0.1:{port}/v1", "k", timeout_s=2.0)
    try:
        with pytest.raises(ProviderConnectionError):
            await p.complete(REQUEST)
    finally:
        await p.aclose()
