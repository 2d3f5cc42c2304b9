"""Every route of the API against a real PostgreSQL: what a client sees, and what the
database holds afterwards."""

from __future__ import annotations

import csv
import io
import json
import uuid
from typing import Any

import pytest

from bulkgen.batch_status import read_batch_status
from bulkgen.export import CSV_COLUMNS, neutralize_cell
from bulkgen.simulator import SimConfig

from .conftest import Api, batch_uuid, drain, open_api

pytestmark = pytest.mark.postgres

FAILING_SIM = SimConfig(rpm=None, tpm=None, faults={"insufficient_quota": 1.0}, seed=2)


async def test_submit_enqueues_every_item_with_its_options(api: Api) -> None:
    created = await api.submit(
        ["sourdough", {"keyword": "cold brew", "audience": "baristas", "tone": "playful"}],
        options={"tone": "friendly", "target_words": 300},
        budget_usd="2.50",
    )
    assert created["total"] == 2 and created["replayed"] is False
    assert created["url"] == f"/v1/batches/{created['id']}"
    record = await api.services.store.batch_get(batch_uuid(created))
    assert record is not None and record.account == "acme"
    assert record.options["tone"] == "friendly" and record.options["target_words"] == 300
    assert str(record.budget_usd) == "2.500000"
    inputs = await api.services.store.pool.fetch("SELECT input FROM jobs ORDER BY id")
    assert [i["input"]["keyword"] for i in inputs] == ["sourdough", "cold brew"]
    assert inputs[1]["input"]["variables"] == {"audience": "baristas"}
    assert inputs[1]["input"]["overrides"] == {"tone": "playful"}


async def test_a_batch_is_drained_by_a_worker_and_downloaded(api: Api, database_url: str) -> None:
    created = await api.submit([f"topic {i}" for i in range(6)], options={"max_tokens": 300})
    batch_id = created["id"]
    await drain(database_url)

    detail = (await api.client.get(f"/v1/batches/{batch_id}", headers=api.acme)).json()
    assert detail["finished"] is True and detail["counts"]["done"] == 6
    assert detail["completion_tokens"] > 0 and detail["usage"]["paid_jobs"] == 6
    record = await api.services.store.batch_get(uuid.UUID(batch_id))
    assert record is not None
    shared = await read_batch_status(api.services.store, record, api.services.prices)
    assert detail["usage"]["cost_usd"] == str(shared.usage.cost_usd) != "0"
    assert detail["completion_tokens"] == shared.completion_tokens

    jsonl = await api.client.get(f"/v1/batches/{batch_id}/results", headers=api.acme)
    assert jsonl.status_code == 200
    assert jsonl.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in jsonl.text.splitlines()]
    assert [line["input"]["keyword"] for line in lines] == [f"topic {i}" for i in range(6)]
    assert all(line["status"] == "done" and line["content"].strip() for line in lines)

    table = await api.client.get(f"/v1/batches/{batch_id}/results?format=csv", headers=api.acme)
    assert table.headers["content-type"].startswith("text/csv")
    assert f'filename="batch-{batch_id}.csv"' in table.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(table.text)))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [r["keyword"] for r in rows] == [f"topic {i}" for i in range(6)]
    assert [r["status"] for r in rows] == ["done"] * 6
    assert [r["content"] for r in rows] == [neutralize_cell(line["content"]) for line in lines]

    job = (await api.client.get(f"/v1/jobs/{lines[0]['id']}", headers=api.acme)).json()
    assert job["status"] == "done" and job["error"] is None
    assert job["article"]["content"] == lines[0]["content"]
    assert job["article"]["word_count"] > 0 and job["article"]["html"]


async def test_csv_cells_a_spreadsheet_would_run_are_neutralised(api: Api) -> None:
    keywords = ['=HYPERLINK("http://x")', "+1", "-2 tips", "@cmd", "plain"]
    created = await api.submit(keywords)
    response = await api.client.get(
        f"/v1/batches/{created['id']}/results", params={"format": "csv"}, headers=api.acme
    )
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["keyword"] for r in rows] == ["'" + k for k in keywords[:-1]] + ["plain"]
    jsonl = await api.client.get(f"/v1/batches/{created['id']}/results", headers=api.acme)
    exact = [json.loads(line)["input"]["keyword"] for line in jsonl.text.splitlines()]
    assert exact == keywords


async def test_job_shows_its_error_and_a_queued_job_no_article(api: Api, database_url: str) -> None:
    created = await api.submit(["will fail"])
    jobs = (await api.client.get(f"/v1/batches/{created['id']}/jobs", headers=api.acme)).json()
    job_id = jobs["items"][0]["id"]
    queued = (await api.client.get(f"/v1/jobs/{job_id}", headers=api.acme)).json()
    assert (queued["status"], queued["article"], queued["error"]) == ("queued", None, None)
    await drain(database_url, FAILING_SIM)
    failed = (await api.client.get(f"/v1/jobs/{job_id}", headers=api.acme)).json()
    assert failed["status"] == "failed" and failed["article"] is None
    assert failed["error"]["kind"] == "insufficient_quota" and failed["error"]["message"]


async def test_cancel_ends_queued_jobs_and_is_harmless_twice(api: Api) -> None:
    created = await api.submit(["a", "b", "c"])
    url = f"/v1/batches/{created['id']}/cancel"
    first = await api.client.post(url, headers=api.acme)
    assert first.status_code == 200 and first.json() == {"batch_id": created["id"], "cancelled": 3}
    again = await api.client.post(url, headers=api.acme)
    assert again.json()["cancelled"] == 0
    detail = (await api.client.get(f"/v1/batches/{created['id']}", headers=api.acme)).json()
    assert detail["counts"]["cancelled"] == 3 and detail["cancelled_at"] is not None
    assert detail["finished"] is True


async def test_retry_requeues_failed_jobs_only_with_fresh_attempts(
    api: Api, database_url: str
) -> None:
    failing = await api.submit(["x", "y", "z"])
    await drain(database_url, FAILING_SIM, max_attempts=2)
    cancelled_job = await api.submit(["w"])
    await api.client.post(f"/v1/batches/{cancelled_job['id']}/cancel", headers=api.acme)
    rows = await api.services.store.pool.fetch("SELECT status, attempts FROM jobs ORDER BY id")
    assert [r["status"] for r in rows] == ["failed"] * 3 + ["cancelled"]

    retried = await api.client.post(f"/v1/batches/{failing['id']}/retry", headers=api.acme)
    assert retried.status_code == 200 and retried.json()["requeued"] == 3
    rows = await api.services.store.pool.fetch("SELECT status, attempts FROM jobs ORDER BY id")
    assert [(r["status"], r["attempts"]) for r in rows] == [("queued", 0)] * 3 + [("cancelled", 0)]
    again = await api.client.post(f"/v1/batches/{failing['id']}/retry", headers=api.acme)
    assert again.json()["requeued"] == 0  # nothing failed any more

    await drain(database_url)
    detail = (await api.client.get(f"/v1/batches/{failing['id']}", headers=api.acme)).json()
    assert detail["counts"]["done"] == 3 and detail["counts"]["failed"] == 0


async def test_retry_of_a_cancelled_batch_is_a_conflict(api: Api, database_url: str) -> None:
    created = await api.submit(["x", "y"])
    await drain(database_url, FAILING_SIM, max_attempts=1)
    await api.client.post(f"/v1/batches/{created['id']}/cancel", headers=api.acme)
    response = await api.client.post(f"/v1/batches/{created['id']}/retry", headers=api.acme)
    assert response.status_code == 409
    assert response.json()["error"]["kind"] == "batch_cancelled"
    assert await api.count("SELECT count(*) FROM jobs WHERE status = 'failed'") == 2


async def test_batches_are_listed_newest_first_page_by_page(api: Api) -> None:
    ids = [(await api.submit([f"k{i}"]))["id"] for i in range(5)]
    await api.client.post("/v1/batches", json={"items": ["other"]}, headers=api.rival)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.client.get("/v1/batches", params=params, headers=api.acme)).json()
        pages += 1
        seen += [b["id"] for b in page["items"]]
        assert all(b["counts"]["queued"] == 1 and b["total"] == 1 for b in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids)) and pages == 3


async def test_jobs_are_paged_in_order_and_filtered_by_status(api: Api) -> None:
    created = await api.submit([f"k{i}" for i in range(7)])
    url = f"/v1/batches/{created['id']}/jobs"
    keywords: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await api.client.get(url, params=params, headers=api.acme)).json()
        keywords += [j["keyword"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert keywords == [f"k{i}" for i in range(7)]
    queued = (await api.client.get(url, params={"status": "queued"}, headers=api.acme)).json()
    done = (await api.client.get(url, params={"status": "done"}, headers=api.acme)).json()
    assert len(queued["items"]) == 7 and done["items"] == []
    bad = await api.client.get(url, params={"status": "sleeping"}, headers=api.acme)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "status"


@pytest.mark.parametrize("path", ["/v1/batches", "/v1/batches/{id}/jobs"])
@pytest.mark.parametrize("cursor", ["not-base64!", "e30", "eyJhZnRlciI6IC0xfQ", "WzFd"])
async def test_a_mangled_cursor_is_a_clear_422(api: Api, path: str, cursor: str) -> None:
    created = await api.submit(["a"])
    response = await api.client.get(
        path.format(id=created["id"]), params={"cursor": cursor}, headers=api.acme
    )
    assert response.status_code == 422
    assert response.json()["error"] == {
        "kind": "invalid_cursor",
        "message": "the cursor is not one this API gave out",
        "row": None,
        "field": "cursor",
    }


async def test_unknown_routes_and_methods_answer_in_the_error_shape(api: Api) -> None:
    missing = await api.client.get("/v1/nothing", headers=api.acme)
    assert missing.status_code == 404 and missing.json()["error"]["kind"] == "not_found"
    wrong = await api.client.delete("/v1/batches", headers=api.acme)
    assert wrong.status_code == 405 and wrong.json()["error"]["kind"] == "method_not_allowed"


async def test_health_and_readiness(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    ready = await api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"database": "ok", "redis": "not configured"}}
    await api.services.store.pool.close()
    down = await api.client.get("/readyz")
    assert down.status_code == 503
    assert down.json()["checks"]["database"] == "unavailable"
    assert (await api.client.get("/healthz")).status_code == 200  # the process still answers


@pytest.mark.redis
async def test_readiness_checks_redis_when_configured(database_url: str, redis_url: str) -> None:
    services, client = await open_api(database_url, redis_url=redis_url)
    try:
        ready = (await client.get("/readyz")).json()
        assert ready == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}
    finally:
        await client.aclose()
        await services.aclose()
    services, client = await open_api(database_url, redis_url="redis://127.0.0.1:1/0")
    try:
        down = await client.get("/readyz")
        assert down.status_code == 503
        assert down.json()["checks"] == {"database": "ok", "redis": "unavailable"}
    finally:
        await client.aclose()
        await services.aclose()
