"""The Redis client: one server, or a Redis Cluster when ``BULKGEN_REDIS_CLUSTER=true``.

``REDIS_URL`` names the server, or any one node of the cluster (the client discovers the
others from it). Both clients answer the same commands, so the cache, single-flight, the
budget ledger and both rate limiters take a :data:`RedisClient` and never ask which one it
is. What makes them run unchanged on a cluster is in their key names: every key one Lua
script, ``MULTI`` or multi-key command touches carries the same hash tag (``{...}``), so
it lands in one slot; the tags are per limit, per batch, per cache key or per account,
never one for the whole fleet, so the keys still spread over every master.

Connection limits differ: the single-server pool holds ``max_connections`` and makes a
caller wait (up to 2 s) for a free connection, while the cluster client holds
``max_connections`` per node and refuses a call past it at once, which the caller's
:class:`~bulkgen.redis_guard.RedisGuard` turns into a bypass like any other Redis error.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

__all__ = ["RedisClient", "cluster_url_problem", "discover", "open_redis"]

logger = logging.getLogger("bulkgen.redis")

RedisClient = Redis | RedisCluster

_TIMEOUT_S = 2.0


def cluster_url_problem(url: str) -> str | None:
    """Why ``url`` cannot reach a Redis Cluster, or None. A cluster has only database 0
    and no Unix sockets; saying so at start-up beats a driver error at the first call."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return "a Redis Cluster URL must start with redis:// or rediss://"
    database = parts.path.strip("/")
    if database not in ("", "0"):
        return f"a Redis Cluster has only database 0, the URL names database {database!r}"
    return None


def open_redis(url: str, *, cluster: bool, max_connections: int) -> RedisClient:
    """A client for ``url``; it connects on its first command, so a Redis that is down at
    start-up is one more outage to bypass, not a reason not to start."""
    if cluster:
        problem = cluster_url_problem(url)
        if problem is not None:
            raise ValueError(problem)
        return RedisCluster.from_url(
            url,
            max_connections=max_connections,
            socket_timeout=_TIMEOUT_S,
            socket_connect_timeout=_TIMEOUT_S,
        )
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=_TIMEOUT_S,
        socket_timeout=_TIMEOUT_S,
        socket_connect_timeout=_TIMEOUT_S,
    )
    return Redis.from_pool(pool)  # the client owns (and closes) the pool


async def discover(client: RedisClient) -> None:
    """Learn a cluster's nodes and slots now, before the first burst of commands.

    redis-py's cluster client otherwise does it on its first command, and many first
    commands at once race in it: with redis-py 8.1 a connection can be closed under
    another call, which then fails with an ``AttributeError`` that no Redis error handler
    catches. A cluster unreachable now is logged and left to the first command, as
    without this step; a single-server client needs nothing.
    """
    if not isinstance(client, RedisCluster):
        return
    try:
        await client.initialize()
    except (RedisError, OSError, TimeoutError) as exc:
        logger.warning("redis.cluster_unreachable", extra={"error": repr(exc)})
