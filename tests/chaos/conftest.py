"""Fixtures of the chaos scenarios: private PostgreSQL and Redis processes, workers, and a
way to enqueue a batch. Nothing here touches the machine's own services."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from bulkgen.intake import JobInput
from bulkgen.metrics import Metrics
from bulkgen.service import open_services
from bulkgen.settings import Settings

from .harness import Fleet, PostgresServer, PostgresTemplate, RedisServer


@pytest.fixture(scope="session")
def pg_template() -> Iterator[PostgresTemplate]:
    template = PostgresTemplate()
    try:
        yield template
    finally:
        template.cleanup()


@pytest.fixture
async def postgres(pg_template: PostgresTemplate, tmp_path: Path) -> AsyncIterator[PostgresServer]:
    """A PostgreSQL server of this test's own, running."""
    server = pg_template.new_server(tmp_path)
    try:
        await server.start()
        yield server
    finally:
        server.kill_now()
        shutil.rmtree(server.data_dir, ignore_errors=True)


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A Redis server of this test's own, running."""
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(folder)
    try:
        await server.start()
        yield server
    finally:
        server.kill_now()


@pytest.fixture
def make_fleet(tmp_path: Path, postgres: PostgresServer) -> Iterator[Callable[[str], Fleet]]:
    """``make_fleet(base_url)``: workers against this test's database and that simulator;
    every worker still alive when the test ends is killed."""
    fleets: list[Fleet] = []

    def make(base_url: str) -> Fleet:
        fleet = Fleet(tmp_path, database_url=postgres.url, base_url=base_url)
        fleets.append(fleet)
        return fleet

    try:
        yield make
    finally:
        for fleet in fleets:
            fleet.kill_all()


async def enqueue(database_url: str, jobs: int, *, account: str = "chaos") -> uuid.UUID:
    """One batch of ``jobs`` distinct keywords (no two share a cache entry), migrating the
    schema on the way. ``max_tokens`` leaves the simulator's articles room enough that none
    is truncated (a truncated answer is retried, which would blur "each job paid once")."""
    settings = Settings(database_url=database_url, redis_url=None)
    svc = await open_services(settings, need_provider=False, metrics=Metrics())
    try:
        rows = [JobInput(f"{account} keyword {i}", {}, {}) for i in range(jobs)]
        return await svc.submit(rows, svc.batch_options(max_tokens=600), account=account)
    finally:
        await svc.aclose()
