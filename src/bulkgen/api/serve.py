"""``bulkgen serve``: the API under uvicorn and, by default, a worker in the same process.

The one-machine install: one process, one event loop, one database pool shared by the API
and the worker. ``--no-worker`` serves the API only, for a fleet where ``bulkgen worker``
processes run beside it. SIGINT/SIGTERM stop both: the server stops accepting and finishes
its responses, the worker claims nothing more, gives its jobs the grace period and
returns the rest to the queue. If either one fails, the other is stopped too and the
error is raised: a server whose worker died must not look healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Generator
from dataclasses import dataclass

import uvicorn

from bulkgen.accounts import bootstrap_key
from bulkgen.api.app import create_app
from bulkgen.api.settings import ApiSettings
from bulkgen.errors import ConfigError
from bulkgen.service import Services, services
from bulkgen.settings import Settings
from bulkgen.simulator.server import bind_socket

__all__ = ["FIRST_ACCOUNT", "ServeOptions", "serve_api"]

logger = logging.getLogger(__name__)

FIRST_ACCOUNT = "default"
_GRACEFUL_SHUTDOWN_S = 10

Announce = Callable[[str, str | None], None]  # (base URL, first key or None)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: this module decides how to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass(frozen=True)
class ServeOptions:
    """Where to listen, and whether (and how wide) to run a worker beside the API."""

    host: str = "127.0.0.1"
    port: int = 8000
    worker: bool = True
    concurrency: int | None = None  # None: the settings' (auto by default)


def _listen(host: str, port: int) -> socket.socket:
    try:
        return bind_socket(host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def _base_url(sock: socket.socket, host: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{sock.getsockname()[1]}"


async def serve_api(
    settings: Settings, api_settings: ApiSettings, options: ServeOptions, announce: Announce
) -> None:
    """Run until SIGINT/SIGTERM; ``announce`` is called once the server accepts requests."""
    async with services(settings, need_provider=options.worker) as svc:
        first_key = await bootstrap_key(svc.store, FIRST_ACCOUNT)
        sock = _listen(options.host, options.port)
        try:
            await _run(svc, api_settings, options, sock, announce, first_key)
        finally:
            sock.close()


async def _run(
    svc: Services,
    api_settings: ApiSettings,
    options: ServeOptions,
    sock: socket.socket,
    announce: Announce,
    first_key: str | None,
) -> None:
    config = uvicorn.Config(
        create_app(svc, api_settings),
        lifespan="off",
        log_config=None,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
    )
    server = _Server(config)
    worker = svc.worker(concurrency=options.concurrency) if options.worker else None
    tasks = {asyncio.create_task(server.serve(sockets=[sock]), name="bulkgen-api")}
    if worker is not None:
        tasks.add(asyncio.create_task(worker.run(), name="bulkgen-worker"))

    def stop() -> None:
        if server.should_exit:
            server.force_exit = True  # a second signal: do not wait for open connections
        server.should_exit = True
        if worker is not None:
            worker.stop()

    with _signals(stop):
        try:
            await _started(server, tasks)
            announce(_base_url(sock, options.host), first_key)
            logger.info("api.started", extra={"worker": worker is not None})
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop()  # whichever ended first (or a failed start), the other follows
            results = await asyncio.gather(*tasks, return_exceptions=True)
    logger.info("api.stopped")
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _started(server: uvicorn.Server, tasks: set[asyncio.Task[None]]) -> None:
    while not server.started:
        ended = [t for t in tasks if t.done()]
        if ended:
            await ended[0]  # raises what stopped it
            raise ConfigError("the API server stopped while starting")
        await asyncio.sleep(0.01)


@contextlib.contextmanager
def _signals(stop: Callable[[], None]) -> Generator[None, None, None]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
