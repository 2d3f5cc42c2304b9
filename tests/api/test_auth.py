"""Keys and tenancy: no route answers without a current key, and no account ever sees
another's batch or job (404, exactly like a missing one)."""

from __future__ import annotations

import json
import logging
import re
import uuid

import pytest

from bulkgen.accounts import KEY_PREFIX, revoke_key, rotate_key

from .conftest import Api, bearer

pytestmark = pytest.mark.postgres

BATCH = "00000000-0000-4000-8000-000000000000"
ROUTES = [
    ("POST", "/v1/batches"),
    ("GET", "/v1/batches"),
    ("GET", f"/v1/batches/{BATCH}"),
    ("GET", f"/v1/batches/{BATCH}/jobs"),
    ("GET", f"/v1/batches/{BATCH}/results"),
    ("POST", f"/v1/batches/{BATCH}/cancel"),
    ("POST", f"/v1/batches/{BATCH}/retry"),
    ("GET", "/v1/jobs/1"),
]


async def _status_everywhere(api: Api, headers: dict[str, str]) -> set[tuple[int, str]]:
    seen = set()
    for method, path in ROUTES:
        body = {"items": ["x"]} if method == "POST" and path == "/v1/batches" else None
        response = await api.client.request(method, path, json=body, headers=headers)
        seen.add((response.status_code, response.json()["error"]["kind"]))
        assert response.headers["www-authenticate"] == "Bearer"
    return seen


async def test_no_key_is_401_on_every_route(api: Api) -> None:
    assert await _status_everywhere(api, {}) == {(401, "unauthorized")}
    assert await _status_everywhere(api, {"Authorization": "Basic YTpi"}) == {(401, "unauthorized")}


@pytest.mark.parametrize(
    "key", [KEY_PREFIX + "x" * 43, "sk-not-ours", KEY_PREFIX + "y" * 500, KEY_PREFIX]
)
async def test_a_wrong_key_is_401_on_every_route(api: Api, key: str) -> None:
    assert await _status_everywhere(api, bearer(key)) == {(401, "unauthorized")}
    assert await api.count("SELECT count(*) FROM batches") == 0


async def test_a_revoked_key_stops_working_at_once(api: Api) -> None:
    assert (await api.client.get("/v1/batches", headers=api.acme)).status_code == 200
    await revoke_key(api.services.store, "acme")
    assert await _status_everywhere(api, api.acme) == {(401, "unauthorized")}


async def test_a_rotated_key_replaces_the_old_one_at_once(api: Api) -> None:
    created = await api.submit(["kept"])
    new_key = await rotate_key(api.services.store, "acme")
    assert new_key != api.acme_key and new_key.startswith(KEY_PREFIX)
    assert await _status_everywhere(api, api.acme) == {(401, "unauthorized")}
    response = await api.client.get(f"/v1/batches/{created['id']}", headers=bearer(new_key))
    assert response.status_code == 200  # same account, same batches


async def test_keys_are_random_and_stored_only_as_digests(api: Api) -> None:
    stored = await api.services.store.pool.fetch("SELECT name, api_key_hash FROM accounts")
    digests = {r["name"]: r["api_key_hash"] for r in stored}
    assert set(digests) == {"acme", "rival"}
    assert all(re.fullmatch(r"[0-9a-f]{64}", d) for d in digests.values())
    assert api.acme_key not in digests.values()
    assert re.fullmatch(KEY_PREFIX + r"[A-Za-z0-9_-]{43}", api.acme_key)


def _shape(response_json: dict[str, object], thing_id: str) -> str:
    return json.dumps(response_json).replace(thing_id, "ID")


async def test_another_accounts_batch_and_job_answer_exactly_like_missing_ones(api: Api) -> None:
    created = await api.submit(["private", "secret"])
    owned = created["id"]
    job_id = await api.count("SELECT min(id) FROM jobs")
    missing = str(uuid.uuid4())
    routes = [
        ("GET", "/v1/batches/{}"),
        ("GET", "/v1/batches/{}/jobs"),
        ("GET", "/v1/batches/{}/results"),
        ("GET", "/v1/batches/{}/results?format=csv"),
        ("POST", "/v1/batches/{}/cancel"),
        ("POST", "/v1/batches/{}/retry"),
    ]
    for method, path in routes:
        theirs = await api.client.request(method, path.format(owned), headers=api.rival)
        absent = await api.client.request(method, path.format(missing), headers=api.rival)
        assert theirs.status_code == absent.status_code == 404, path
        assert _shape(theirs.json(), owned) == _shape(absent.json(), missing), path
    theirs = await api.client.get(f"/v1/jobs/{job_id}", headers=api.rival)
    absent = await api.client.get(f"/v1/jobs/{job_id + 1000}", headers=api.rival)
    assert theirs.status_code == absent.status_code == 404
    assert _shape(theirs.json(), str(job_id)) == _shape(absent.json(), str(job_id + 1000))
    listed = (await api.client.get("/v1/batches", headers=api.rival)).json()
    assert listed["items"] == []
    # The rival's cancel attempt changed nothing.
    assert await api.count("SELECT count(*) FROM jobs WHERE status = 'queued'") == 2
    mine = await api.client.get(f"/v1/batches/{owned}", headers=api.acme)
    assert mine.status_code == 200 and mine.json()["cancelled_at"] is None


async def test_keys_never_reach_the_logs(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await api.submit(["logged"])
    await api.client.get("/v1/batches", headers=api.acme)
    await api.client.get("/v1/batches", headers=bearer(KEY_PREFIX + "wrong-key-value"))
    await api.services.store.pool.close()  # errors get logged: still without the key
    failed = await api.client.get("/v1/batches", headers=api.acme)
    assert failed.status_code == 503 and failed.headers["retry-after"] == "1"
    assert caplog.records, "the test must have seen some log records"
    text = caplog.text + " ".join(str(vars(r)) for r in caplog.records)
    assert api.acme_key not in text and "wrong-key-value" not in text
