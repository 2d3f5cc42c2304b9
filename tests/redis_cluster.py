"""A throwaway three-master Redis Cluster on loopback ports, for the test session, and
the few client calls that differ between one server and a cluster.

Started from the ``redis-server`` and ``redis-cli`` on the PATH, in a temporary folder,
with persistence off; stopped (and the folder removed) by :meth:`LocalCluster.stop`. No
replicas: the tests need slots spread over several masters, not failover.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from bulkgen.redis_client import RedisClient, discover

MASTERS = 3
BUS_PORT_OFFSET = 10_000  # Redis Cluster's node-to-node bus listens on port + 10000
START_TIMEOUT_S = 60.0

RedisConnect = Callable[[], Awaitable[RedisClient]]


async def connect(url: str, *, cluster: bool) -> RedisClient:
    """A plain client (no bounded pool: tests open as many connections as they need),
    ready as the services make theirs (:func:`bulkgen.redis_client.discover`)."""
    client = RedisCluster.from_url(url) if cluster else aioredis.Redis.from_url(url)
    await discover(client)
    return client


async def all_keys(client: RedisClient, pattern: str) -> list[str]:
    """``KEYS`` over the whole keyspace: a cluster client sends it to one node unless told
    to ask every master."""
    if isinstance(client, RedisCluster):
        found = await client.keys(pattern, target_nodes=RedisCluster.PRIMARIES)
    else:
        found = await client.keys(pattern)
    return [k.decode() if isinstance(k, bytes) else str(k) for k in found]


class ClusterStartError(RuntimeError):
    """The cluster could not be started; the message says which step failed and why."""


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """Ports free now whose bus port (port + 10000) is free too. Another process may take
    one before the server binds it: the start then fails with the server's own message."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        bus_port = port + BUS_PORT_OFFSET
        if bus_port < 65_536 and port not in ports and _port_is_free(bus_port):
            ports.append(port)
    return ports


@dataclass
class LocalCluster:
    folder: Path
    ports: list[int]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Any node's URL: the client discovers the others from it."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def start_cluster() -> LocalCluster:
    """Start, join and wait for ``cluster_state:ok``; on any failure stop what was started."""
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            raise ClusterStartError(f"{tool} is not on the PATH")
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="bulkgen-cluster-")), _free_ports(MASTERS))
    try:
        for port in cluster.ports:
            cluster.processes.append(_start_node(cluster.folder, port))
        for port, process in zip(cluster.ports, cluster.processes, strict=True):
            _wait_for(port, "PING", "PONG", process)
        _create(cluster.ports)
        for port in cluster.ports:
            _wait_for(port, "CLUSTER INFO", "cluster_state:ok")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _start_node(folder: Path, port: int) -> subprocess.Popen[bytes]:
    node = folder / str(port)
    node.mkdir()
    log = (node / "redis.log").open("wb")
    with log:
        return subprocess.Popen(
            [
                "redis-server",
                "--bind", "127.0.0.1",
                "--port", str(port),
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(node / "nodes.conf"),
                "--cluster-node-timeout", "5000",
                "--dir", str(node),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def _cli(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _create(ports: list[int]) -> None:
    nodes = [f"127.0.0.1:{port}" for port in ports]
    done = subprocess.run(
        ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise ClusterStartError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")


def _wait_for(
    port: int, command: str, expected: str, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ClusterStartError(f"redis-server on port {port} exited ({process.returncode})")
        done = _cli(port, *command.split())
        last = done.stdout + done.stderr
        if expected in last:
            return
        time.sleep(0.1)
    raise ClusterStartError(f"node {port}: no {expected!r} after {START_TIMEOUT_S} s: {last!r}")
