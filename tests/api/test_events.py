"""``GET /v1/batches/{id}/events`` in-process: scoping and auth like every batch route,
and a finished batch's stream, compared with the jobs' rows."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import uuid
from typing import Any

import httpx
import pytest
import uvicorn

from bulkgen.api import ApiSettings, create_app
from bulkgen.db.store import StatusCount
from bulkgen.simulator import SimConfig

from .conftest import Api, batch_uuid, drain

pytestmark = pytest.mark.postgres


def _events(body: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in body.strip().split("\n\n"):
        lines = [line for line in block.split("\n") if not line.startswith(":")]
        if not lines:
            continue
        name = next(line[7:] for line in lines if line.startswith("event: "))
        data = json.loads(next(line[6:] for line in lines if line.startswith("data: ")))
        events.append((name, data))
    return events


async def test_events_need_a_key_and_the_batch_s_account(api: Api) -> None:
    created = await api.submit(["alpha"])
    url = f"/v1/batches/{created['id']}/events"
    missing = await api.client.get(url)
    assert missing.status_code == 401 and missing.json()["error"]["kind"] == "unauthorized"
    other = await api.client.get(url, headers=api.rival)
    nowhere = await api.client.get(
        "/v1/batches/00000000-0000-4000-8000-000000000000/events", headers=api.acme
    )
    assert other.status_code == nowhere.status_code == 404
    assert other.json()["error"]["kind"] == nowhere.json()["error"]["kind"] == "not_found"


async def test_stream_of_a_finished_batch_matches_its_rows(api: Api, database_url: str) -> None:
    created = await api.submit(["alpha", "beta", "gamma"])
    await drain(database_url)
    response = await api.client.get(f"/v1/batches/{created['id']}/events", headers=api.acme)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(response.text)
    assert [name for name, _ in events] == ["progress", "end"]
    end = events[-1][1]
    done = await api.count(
        "SELECT count(*) FROM jobs WHERE batch_id = $1 AND status = 'done'", batch_uuid(created)
    )
    assert end["counts"]["done"] == done == 3
    assert (end["done"], end["total"], end["finished"], end["status"]) == (3, 3, True, "done")
    tokens, requests = await _usage(api, batch_uuid(created))
    assert (end["prompt_tokens"], end["completion_tokens"]) == tokens
    assert end["provider_requests"] == requests == 3  # the quick simulator never says 429
    assert (end["provider_429s"], end["provider_429_share"]) == (0, 0.0)


async def test_events_and_the_batch_carry_its_429_share(api: Api, database_url: str) -> None:
    created = await api.submit([f"keyword {i}" for i in range(20)])
    sim = SimConfig(
        rpm=None,
        tpm=None,
        ttft_ms=5,
        tokens_per_s=0,
        faults={"429": 0.4},
        seed=9,
        fault_retry_after_ms=10,
    )
    await drain(database_url, sim, rate_limit_max_wait_s=60.0)
    batch_id = batch_uuid(created)
    done = "SELECT count(*) FROM jobs WHERE batch_id = $1 AND status = 'done'"
    assert await api.count(done, batch_id) == 20
    sent, answered_429 = await _calls(api, batch_id)
    assert answered_429 > 0 and sent == 20 + answered_429  # each job: its 429s, then its answer
    end = _events(
        (await api.client.get(f"/v1/batches/{created['id']}/events", headers=api.acme)).text
    )[-1][1]
    detail = (await api.client.get(f"/v1/batches/{created['id']}", headers=api.acme)).json()
    for figures in (end, detail):
        assert (figures["provider_requests"], figures["provider_429s"]) == (sent, answered_429)
        assert figures["provider_429_share"] == round(answered_429 / sent, 4)


async def _usage(api: Api, batch_id: uuid.UUID) -> tuple[tuple[int, int], int]:
    row = await _sums(api, batch_id)
    return (row["p"], row["c"]), row["n"]


async def _calls(api: Api, batch_id: uuid.UUID) -> tuple[int, int]:
    row = await _sums(api, batch_id)
    return row["n"], row["r"]


async def _sums(api: Api, batch_id: uuid.UUID) -> dict[str, int]:
    row = await api.services.store.pool.fetchrow(
        "SELECT sum(prompt_tokens) AS p, sum(completion_tokens) AS c,"
        " sum(provider_calls) AS n, sum(provider_429s) AS r FROM jobs WHERE batch_id = $1",
        batch_id,
    )
    assert row is not None
    return dict(row)


async def test_stream_of_a_cancelled_batch_ends_cancelled(api: Api) -> None:
    created = await api.submit(["alpha", "beta"])
    cancel = await api.client.post(f"/v1/batches/{created['id']}/cancel", headers=api.acme)
    assert cancel.json()["cancelled"] == 2
    response = await api.client.get(f"/v1/batches/{created['id']}/events", headers=api.acme)
    (_, progress), (_, end) = _events(response.text)
    assert progress["counts"]["cancelled"] == 2 and end["status"] == "cancelled"


async def test_batch_detail_has_the_rate_of_recent_jobs_and_an_eta(
    api: Api, database_url: str
) -> None:
    created = await api.submit(["alpha", "beta", "gamma", "delta", "epsilon"])
    batch_id = batch_uuid(created)
    url = f"/v1/batches/{created['id']}"
    waiting = (await api.client.get(url, headers=api.acme)).json()
    assert (waiting["rate_jobs_per_s"], waiting["eta_s"]) == (None, None)
    await drain(database_url)
    # Known finish times: 20 s, 10 s and 0 s ago count; 2 minutes ago is outside the window,
    # and one job goes back to the queue, left to run at that rate.
    await api.services.store.pool.execute(
        """
        WITH ranked AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM jobs
                        WHERE batch_id = $1)
        UPDATE jobs j SET
            status = CASE WHEN r.n = 5 THEN 'queued' ELSE j.status END,
            finished_at = CASE r.n WHEN 1 THEN now() - interval '120 s'
                                   WHEN 2 THEN now() - interval '20 s'
                                   WHEN 3 THEN now() - interval '10 s'
                                   WHEN 4 THEN now() END
        FROM ranked r WHERE r.id = j.id
        """,
        batch_id,
    )
    detail = (await api.client.get(url, headers=api.acme)).json()
    assert detail["counts"]["queued"] == 1 and detail["finished"] is False
    # Three jobs ended over 20 s (plus the moments between the statements): 2 intervals.
    assert 0.05 < detail["rate_jobs_per_s"] <= 0.1
    assert abs(detail["eta_s"] - 1 / detail["rate_jobs_per_s"]) < 0.2  # both rounded


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def test_a_client_that_leaves_stops_the_polling(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = await api.submit(["alpha"])  # no worker: the batch stays queued
    polls = 0
    batch_counts = api.services.store.batch_counts

    async def counted(batch_id: uuid.UUID) -> list[StatusCount]:
        nonlocal polls
        polls += 1
        return await batch_counts(batch_id)

    monkeypatch.setattr(api.services.store, "batch_counts", counted)
    records = _Records()
    logger = logging.getLogger("bulkgen.api.events")
    logger.addHandler(records)
    level = logger.level
    logger.setLevel(logging.INFO)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app(api.services, ApiSettings(events_interval_s=0.05))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            url = f"/v1/batches/{created['id']}/events"
            async with client.stream("GET", url, headers=api.acme) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        break  # one progress event read; then the client goes away
        for _ in range(600):
            if "api.events.closed" in records.messages:
                break
            await asyncio.sleep(0.05)
        assert "api.events.closed" in records.messages
        polls_at_close = polls
        await asyncio.sleep(0.5)  # ten poll intervals: a loop still running would poll
        assert polls == polls_at_close >= 1
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
        server.should_exit = True
        await serving
