"""Submitting: bad input is refused whole with the row and field, every size limit has its
own clear error, uploads go through the CLI's intake, and a retried submit creates one
batch. Nothing refused ever leaves a row behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from bulkgen.accounts import create_account
from bulkgen.api import ApiSettings

from .conftest import Api, open_api

pytestmark = pytest.mark.postgres


async def _refused(api: Api, body: Any, status: int = 422, **kwargs: Any) -> dict[str, Any]:
    response = await api.client.post("/v1/batches", json=body, headers=api.acme, **kwargs)
    assert response.status_code == status, response.text
    assert await api.count("SELECT count(*) FROM batches") == 0
    assert await api.count("SELECT count(*) FROM jobs") == 0
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"kind", "message", "row", "field"} and error["message"]
    return error


@pytest.mark.parametrize(
    ("items", "row", "field"),
    [
        (["fine", "   "], 2, "keyword"),
        (["fine", "ok", 42.5], 3, None),
        (["fine", {"audience": "cooks"}], 2, "keyword"),
        ([{"keyword": "a", "target_words": "many"}], 1, "target_words"),
        ([{"keyword": "a", "temperature": 3}], 1, "temperature"),
        (["x" * 501], 1, "keyword"),
        ([], None, None),
    ],
)
async def test_a_bad_item_is_named_by_row_and_field(
    api: Api, items: list[Any], row: int | None, field: str | None
) -> None:
    error = await _refused(api, {"items": items})
    assert (error["kind"], error["row"], error["field"]) == ("invalid_input", row, field)


@pytest.mark.parametrize(
    ("body", "kind", "field"),
    [
        ({"items": ["a"], "options": {"tone": ""}}, "invalid_options", "options.tone"),
        ({"items": ["a"], "options": {"colour": "red"}}, "invalid_options", "options.colour"),
        ({"items": ["a"], "options": {"max_tokens": 0}}, "invalid_options", "options.max_tokens"),
        ({"items": ["a"], "template": "{% if %}"}, "invalid_options", "template"),
        (
            {"items": ["a"], "template": "x", "options": {"template": "y"}},
            "invalid_options",
            "template",
        ),
        ({"items": ["a"], "budget_usd": "-1"}, "invalid_request", "budget_usd"),
        ({"items": ["a"], "budget_usd": "1.0000001"}, "invalid_request", "budget_usd"),
        ({"items": ["a"], "priority": 1}, "invalid_request", "priority"),
        ({"items": "a"}, "invalid_request", "items"),
        ({"items": ["a"], "mode": "cheap"}, "invalid_request", "mode"),
        ({"items": ["a"], "deadline_h": 6}, "invalid_request", "deadline_h"),
        ({"items": ["a"], "fallback_online": True}, "invalid_request", "fallback_online"),
        ({"items": ["a"], "mode": "economy", "deadline_h": 0}, "invalid_request", "deadline_h"),
        ({"items": ["a"], "mode": "economy", "deadline_h": 6}, "invalid_request", "deadline_h"),
        ({"options": {}}, "invalid_request", "items"),
        ([1, 2], "invalid_request", None),
    ],
)
async def test_bad_options_and_fields_are_named(
    api: Api, body: Any, kind: str, field: str | None
) -> None:
    error = await _refused(api, body)
    assert (error["kind"], error["field"]) == (kind, field)


async def test_a_body_that_is_not_json_or_an_upload(api: Api) -> None:
    broken = await api.client.post(
        "/v1/batches",
        content=b'{"items": [',
        headers={**api.acme, "Content-Type": "application/json"},
    )
    assert broken.status_code == 422 and broken.json()["error"]["kind"] == "invalid_request"
    text = await api.client.post(
        "/v1/batches", content=b"alpha\nbeta", headers={**api.acme, "Content-Type": "text/plain"}
    )
    assert text.status_code == 415
    assert text.json()["error"]["kind"] == "unsupported_media_type"
    assert await api.count("SELECT count(*) FROM jobs") == 0


# ---------------------------------------------------------------- size limits (LIMITS)


async def test_more_items_than_the_limit(api: Api) -> None:
    error = await _refused(api, {"items": [f"k{i}" for i in range(51)]})
    assert (error["kind"], error["field"]) == ("too_many_items", "items")
    assert "51" in error["message"] and "50" in error["message"]
    assert (await api.submit([f"k{i}" for i in range(50)]))["total"] == 50


async def test_an_item_larger_than_the_limit(api: Api) -> None:
    items = ["small", {"keyword": "big", "notes": "n" * 2_000}]
    error = await _refused(api, {"items": items})
    assert (error["kind"], error["row"]) == ("item_too_large", 2)


async def test_a_template_larger_than_the_limit(api: Api) -> None:
    error = await _refused(api, {"items": ["a"], "template": "Write about {{ keyword }}." * 30})
    assert (error["kind"], error["field"]) == ("template_too_large", "template")
    ok = await api.submit(["a"], template="Write about {{ keyword }}.")
    assert ok["total"] == 1


async def test_a_body_larger_than_the_limit_is_413(api: Api) -> None:
    body = {"items": ["k" * 400] * 700}  # about 290 kB, over the 0.25 MB limit
    error = await _refused(api, body, status=413)
    assert error["kind"] == "body_too_large" and "0.25 MB" in error["message"]


async def test_a_chunked_body_larger_than_the_limit_is_413(api: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"items": ['
        for _ in range(700):
            yield b'"' + b"k" * 400 + b'",'
        yield b'"end"]}'

    response = await api.client.post(
        "/v1/batches", content=chunks(), headers={**api.acme, "Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert response.status_code == 413 and response.json()["error"]["kind"] == "body_too_large"
    assert await api.count("SELECT count(*) FROM jobs") == 0


async def test_the_default_limit_is_10000_items(database_url: str) -> None:
    services, client = await open_api(database_url, ApiSettings())
    try:
        headers = {"Authorization": f"Bearer {await create_account(services.store, 'big')}"}
        over = await client.post(
            "/v1/batches", json={"items": [f"k{i}" for i in range(10_001)]}, headers=headers
        )
        assert over.status_code == 422 and over.json()["error"]["kind"] == "too_many_items"
        full = await client.post(
            "/v1/batches", json={"items": [f"k{i}" for i in range(10_000)]}, headers=headers
        )
        assert full.status_code == 201 and full.json()["total"] == 10_000
        assert await services.store.pool.fetchval("SELECT count(*) FROM jobs") == 10_000
    finally:
        await client.aclose()
        await services.aclose()


# ---------------------------------------------------------------- uploads


async def test_a_csv_upload_goes_through_the_cli_intake(api: Api) -> None:
    csv_text = "keyword,audience,tone\nalpha,cooks,\nbeta,divers,dry\n"
    response = await api.client.post(
        "/v1/batches",
        files={"file": ("keywords.csv", csv_text.encode(), "text/csv")},
        data={"options": '{"tone": "friendly"}', "budget_usd": "3"},
        headers=api.acme,
    )
    assert response.status_code == 201, response.text
    assert response.json()["total"] == 2
    rows = await api.services.store.pool.fetch("SELECT input FROM jobs ORDER BY id")
    assert [r["input"]["keyword"] for r in rows] == ["alpha", "beta"]
    assert rows[1]["input"]["overrides"] == {"tone": "dry"}
    assert await api.count("SELECT count(*) FROM batches WHERE budget_usd = 3") == 1


async def test_an_economy_batch_by_json_and_by_upload(api: Api) -> None:
    body = {"items": ["alpha", "beta"], "mode": "economy", "deadline_h": 6, "fallback_online": True}
    by_json = await api.client.post("/v1/batches", json=body, headers=api.acme)
    assert by_json.status_code == 201, by_json.text
    by_form = await api.client.post(
        "/v1/batches",
        files={"file": ("k.csv", b"keyword\ngamma\n", "text/csv")},
        data={"mode": "economy", "fallback_online": "true"},
        headers=api.acme,
    )
    assert by_form.status_code == 201, by_form.text
    rows = await api.services.store.pool.fetch(
        "SELECT b.mode, b.fallback_online, b.deadline_at - b.created_at AS window,"
        " array_agg(DISTINCT j.status) AS statuses"
        " FROM batches b JOIN jobs j ON j.batch_id = b.id GROUP BY b.id ORDER BY b.created_at"
    )
    assert [(r["mode"], r["fallback_online"], r["statuses"]) for r in rows] == [
        ("economy", True, ["batched"]),
        ("economy", True, ["batched"]),
    ]
    assert [r["window"].total_seconds() for r in rows] == [6 * 3600, 24 * 3600]
    detail = await api.client.get(by_json.json()["url"], headers=api.acme)
    assert detail.json()["mode"] == "economy" and detail.json()["counts"]["batched"] == 2
    refused = await api.client.post(
        "/v1/batches",
        files={"file": ("k.csv", b"keyword\ndelta\n", "text/csv")},
        data={"deadline_h": "6"},
        headers=api.acme,
    )
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "deadline_h"


async def test_a_jsonl_upload_and_its_errors(api: Api) -> None:
    good = b'{"keyword": "one"}\n\n{"keyword": "two", "audience": "pilots"}\n'
    response = await api.client.post(
        "/v1/batches",
        files={"file": ("k.jsonl", good, "application/octet-stream")},
        headers=api.acme,
    )
    assert response.status_code == 201 and response.json()["total"] == 2
    bad = b'{"keyword": "one"}\n{"keyword": ""}\n'
    refused = await api.client.post(
        "/v1/batches", files={"file": ("k.jsonl", bad)}, headers=api.acme
    )
    assert refused.status_code == 422
    assert (refused.json()["error"]["row"], refused.json()["error"]["field"]) == (2, "keyword")
    for files, data, field in [
        ({"file": ("k.xlsx", b"x")}, {}, "file"),
        ({"other": ("k.csv", b"keyword\na\n")}, {}, "other"),
        ({"file": ("k.csv", b"keyword\na\n")}, {"options": "[1]"}, "options"),
        ({"file": ("k.csv", b"keyword\na\n")}, {"budget_usd": "free"}, "budget_usd"),
    ]:
        refused = await api.client.post("/v1/batches", files=files, data=data, headers=api.acme)
        assert refused.status_code == 422, (files, data)
        assert refused.json()["error"]["field"] == field
    assert await api.count("SELECT count(*) FROM batches") == 1


# ---------------------------------------------------------------- idempotency


async def _post(
    api: Api, body: dict[str, Any], key: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await api.client.post(
        "/v1/batches", json=body, headers={**(headers or api.acme), "Idempotency-Key": key}
    )


async def test_a_retried_submit_creates_one_batch(api: Api) -> None:
    body = {"items": ["a", "b"], "options": {"tone": "dry"}}
    first = await _post(api, body, "order-17")
    again = await _post(api, {"options": {"tone": "dry"}, "items": ["a", "b"]}, "order-17")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert (first.json()["replayed"], again.json()["replayed"]) == (False, True)
    assert again.headers["location"] == f"/v1/batches/{first.json()['id']}"
    assert await api.count("SELECT count(*) FROM batches") == 1
    assert await api.count("SELECT count(*) FROM jobs") == 2


async def test_the_same_key_with_another_body_is_a_conflict(api: Api) -> None:
    await _post(api, {"items": ["a"]}, "k1")
    reused = await _post(api, {"items": ["b"]}, "k1")
    assert reused.status_code == 409
    assert reused.json()["error"]["kind"] == "idempotency_key_reused"
    assert await api.count("SELECT count(*) FROM batches") == 1


async def test_keys_belong_to_their_account(api: Api) -> None:
    mine = await _post(api, {"items": ["a"]}, "shared-key")
    theirs = await _post(api, {"items": ["a"]}, "shared-key", headers=api.rival)
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]


async def test_concurrent_duplicates_create_one_batch(api: Api) -> None:
    body = {"items": [f"k{i}" for i in range(40)]}
    responses = await asyncio.gather(*[_post(api, body, "burst") for _ in range(6)])
    assert {r.status_code for r in responses} <= {200, 201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert await api.count("SELECT count(*) FROM batches") == 1
    assert await api.count("SELECT count(*) FROM jobs") == 40


async def test_a_refused_request_does_not_use_up_its_key(api: Api) -> None:
    refused = await _post(api, {"items": ["  "]}, "k2")
    assert refused.status_code == 422
    accepted = await _post(api, {"items": ["fixed"]}, "k2")
    assert accepted.status_code == 201


async def test_an_overlong_idempotency_key_is_refused(api: Api) -> None:
    response = await _post(api, {"items": ["a"]}, "k" * 256)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "Idempotency-Key"
