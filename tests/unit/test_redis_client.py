"""Choosing the Redis client: one server by default, a cluster client on request, and a
cluster URL that cannot work refused at start-up, naming the variable."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from bulkgen.redis_client import open_redis
from bulkgen.settings import Settings


def test_cluster_is_off_by_default() -> None:
    assert Settings(redis_url="redis://127.0.0.1:6379/3").redis_cluster is False


def test_cluster_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://10.0.0.7:7000")
    monkeypatch.setenv("BULKGEN_REDIS_CLUSTER", "true")
    settings = Settings()
    assert (settings.redis_url, settings.redis_cluster) == ("redis://10.0.0.7:7000", True)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (None, "needs REDIS_URL"),
        ("redis://127.0.0.1:7000/5", "only database 0"),
        ("unix:///run/redis.sock", "must start with redis:// or rediss://"),
    ],
)
def test_a_cluster_url_that_cannot_work_is_refused(url: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(redis_url=url, redis_cluster=True)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:7000", "rediss://u:p@h:7000/0"])
def test_cluster_urls_with_database_0_are_accepted(url: str) -> None:
    assert Settings(redis_url=url, redis_cluster=True).redis_cluster


async def test_open_redis_builds_the_client_asked_for() -> None:
    """No connection is made here: both clients connect on their first command."""
    single = open_redis("redis://127.0.0.1:1/2", cluster=False, max_connections=8)
    cluster = open_redis("redis://127.0.0.1:1", cluster=True, max_connections=8)
    try:
        assert isinstance(single, Redis) and not isinstance(single, RedisCluster)
        assert isinstance(cluster, RedisCluster)
    finally:
        await single.aclose()
        await cluster.aclose()
