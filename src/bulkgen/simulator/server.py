"""Running the simulator: in the current event loop, or in its own OS process.

In-process (:func:`running_simulator`) is for tests: cheap to start, one event loop.
Out-of-process (:class:`SimulatorProcess`) is for the demo and benchmarks, so the
simulator never shares a CPU core or the GIL with the client it is measured against.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Generator
from types import FrameType, TracebackType

import uvicorn

from bulkgen.simulator.app import SimulatorApp
from bulkgen.simulator.config import SimConfig

READY_PREFIX = "bulkgen-simulator listening on "
_GRACEFUL_SHUTDOWN_S = 2


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host (pytest, the caller)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before serving so port 0 gives a real, known port with no race.

    The protocol must be ``IPPROTO_TCP`` explicitly: asyncio only sets TCP_NODELAY on
    accepted sockets that say so, and without it every response waits ~40 ms for an ACK.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: SimulatorApp, *, fast_loop: bool) -> uvicorn.Config:
    """uvicorn settings tuned for throughput: httptools, no access log, no lifespan."""
    return uvicorn.Config(
        app,
        loop="uvloop" if fast_loop else "none",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
        timeout_keep_alive=30,
    )


def base_url_of(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


@contextlib.asynccontextmanager
async def running_simulator(
    config: SimConfig | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[str]:
    """Serve the simulator in this event loop on a free port; yield its ``/v1`` base URL.

    On exit the server is stopped and awaited, so no task or socket outlives the block.
    """
    app = SimulatorApp(config or SimConfig())
    sock = bind_socket(host, 0)
    server = _QuietServer(uvicorn_config(app, fast_loop=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                await task
                raise RuntimeError("simulator server stopped during startup")
            await asyncio.sleep(0.005)
        yield base_url_of(sock, host)
    finally:
        server.should_exit = True
        await task
        sock.close()


class _ManagedServer(uvicorn.Server):
    """A simulator run by a parent process (:class:`SimulatorProcess`) ignores SIGINT.

    Ctrl-C in a terminal reaches the whole process group; the parent (a worker, the demo)
    then finishes its calls in flight and stops its simulator with SIGTERM. A simulator that
    also stopped on the Ctrl-C would cut those calls off mid-answer.
    """

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGINT:
            super().handle_exit(sig, frame)


def serve(config: SimConfig, host: str, port: int, *, managed: bool = False) -> None:
    """Run the simulator until interrupted (the CLI's body); prints one ready line first.
    ``managed``: started by :class:`SimulatorProcess`, which stops it with SIGTERM."""
    sock = bind_socket(host, port)
    app = SimulatorApp(config)
    print(READY_PREFIX + base_url_of(sock, host), flush=True)
    server_class = _ManagedServer if managed else uvicorn.Server
    server_class(uvicorn_config(app, fast_loop=True)).run(sockets=[sock])


def config_to_args(config: SimConfig) -> list[str]:
    """CLI options that rebuild ``config`` in another process."""
    args = [
        f"--rpm={config.rpm or 0}",
        f"--tpm={config.tpm or 0}",
        f"--burst-s={config.burst_s}",
        f"--latency-ms={config.ttft_ms}",
        f"--tokens-per-s={config.tokens_per_s}",
        f"--jitter={config.jitter}",
        f"--time-scale={config.time_scale}",
        f"--seed={config.seed}",
        f"--default-max-tokens={config.default_max_tokens}",
        f"--hang-s={config.hang_s}",
        f"--fault-retry-after-ms={config.fault_retry_after_ms}",
        "--prompt-cache" if config.prompt_cache else "--no-prompt-cache",
        f"--max-inflight={config.max_inflight or 0}",
        f"--overload-status={config.overload_status}",
    ]
    batch = config.batch
    args += [
        f"--batch-time-scale={batch.time_scale}",
        f"--batch-requests-per-s={batch.requests_per_s}",
        f"--batch-validating-s={batch.validating_s}",
        f"--batch-finalizing-s={batch.finalizing_s}",
        f"--batch-window-s={batch.window_s}",
        f"--batch-max-requests={batch.max_requests}",
        f"--batch-max-input-bytes={batch.max_input_bytes}",
        f"--batch-enqueued-tokens={batch.enqueued_tokens or 0}",
        f"--batch-files-max-bytes={batch.files_max_bytes}",
    ]
    args += [f"--batch-fault-rate={kind}={rate}" for kind, rate in batch.faults.items()]
    args += [f"--batch-answer-delay={call}={s}" for call, s in batch.answer_delay_s.items()]
    faults = config.faults or {"503": 0.0}  # an explicit zero overrides the CLI default
    args += [f"--fault-rate={kind}={rate}" for kind, rate in faults.items()]
    args += [f"--model={model}" for model in config.models]
    if config.api_key is not None:
        args.append(f"--api-key={config.api_key}")
    return args


class SimulatorProcess:
    """The simulator in a child process (``python -m bulkgen.simulator``), for ``with``.

    Entering waits until the child answers ``GET /v1/models``; leaving terminates it and
    reaps it, so no process is left behind even when the body raised.
    """

    def __init__(
        self, config: SimConfig | None = None, host: str = "127.0.0.1", startup_s: float = 20.0
    ) -> None:
        self.config = config or SimConfig()
        self.host = host
        self.startup_s = startup_s
        self.base_url = ""
        self._process: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> str:
        command = [
            sys.executable,
            "-m",
            "bulkgen.simulator",
            f"--host={self.host}",
            "--port=0",
            "--managed",
        ]
        self._process = subprocess.Popen(
            command + config_to_args(self.config), stdout=subprocess.PIPE, text=True
        )
        try:
            self.base_url = self._read_ready_line()
            self._wait_answering()
        except BaseException:
            self.stop()
            raise
        return self.base_url

    def _read_ready_line(self) -> str:
        assert self._process is not None and self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line.startswith(READY_PREFIX):
            raise RuntimeError(f"simulator process did not start (said {line!r})")
        return line[len(READY_PREFIX) :].strip()

    def _wait_answering(self) -> None:
        headers = {"Authorization": f"Bearer {self.config.api_key or 'sim'}"}
        deadline = time.monotonic() + self.startup_s
        while True:
            try:
                request = urllib.request.Request(self.base_url + "/models", headers=headers)
                with urllib.request.urlopen(request, timeout=1.0):
                    return
            except OSError:
                if time.monotonic() > deadline or self._process_exited():
                    raise RuntimeError("simulator process is not answering") from None
                time.sleep(0.05)

    def _process_exited(self) -> bool:
        return self._process is None or self._process.poll() is not None

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> SimulatorProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> SimulatorProcess:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)
