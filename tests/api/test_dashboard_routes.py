"""The dashboard's routes over HTTP: the session cookie, the origin check, the account
scope and the security headers (the browser test covers what a person sees)."""

from __future__ import annotations

import pytest

from .conftest import Api

pytestmark = pytest.mark.postgres

OWN_ORIGIN = {"Origin": "http://api.test"}


async def sign_in(api: Api, key: str) -> str:
    response = await api.client.post("/session", data={"key": key}, headers=OWN_ORIGIN)
    assert response.status_code == 303, response.text
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    api.client.cookies.clear()  # each request below names its session itself
    return response.cookies["bulkgen_session"]


def session(value: str, **headers: str) -> dict[str, str]:
    return {"Cookie": f"bulkgen_session={value}", **headers}


async def test_signed_out_visitors_get_the_form_with_a_content_security_policy(api: Api) -> None:
    response = await api.client.get("/")
    assert response.status_code == 200 and 'name="key"' in response.text
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert "'unsafe-inline'" not in response.headers["content-security-policy"]
    page = await api.client.get("/batches/0f8e7a52-6f3c-4c55-9d2e-2f4b8f0c1a77")
    assert (page.status_code, page.headers["location"]) == (303, "/")


async def test_a_wrong_key_sets_no_cookie_and_a_foreign_origin_cannot_sign_in(api: Api) -> None:
    wrong = await api.client.post("/session", data={"key": "bgk_wrong"}, headers=OWN_ORIGIN)
    assert wrong.status_code == 401 and "not valid" in wrong.text
    assert "set-cookie" not in wrong.headers
    foreign = await api.client.post(
        "/session", data={"key": api.acme_key}, headers={"Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403 and "set-cookie" not in foreign.headers


async def test_pages_are_scoped_to_the_session_account(api: Api) -> None:
    created = await api.submit(["alpha", "beta"])
    acme = await sign_in(api, api.acme_key)
    rival_key = api.rival["Authorization"].removeprefix("Bearer ")
    rival = await sign_in(api, rival_key)

    own = await api.client.get(f"/batches/{created['id']}", headers=session(acme))
    assert own.status_code == 200 and "of 2 jobs ended" in own.text
    listed = await api.client.get("/", headers=session(acme))
    assert created["id"] in listed.text
    figures = await api.client.get(f"/batches/{created['id']}/figures", headers=session(acme))
    assert figures.status_code == 200 and figures.headers["cache-control"] == "no-store"
    api_view = await api.client.get(f"/v1/batches/{created['id']}", headers=api.acme)
    assert figures.json() == api_view.json()  # the page's live figures are the API's
    assert (await api.client.get(f"/batches/{created['id']}/figures")).status_code == 401
    batch_paths = ("", "/events", "/figures")
    for path in (f"/batches/{created['id']}{tail}" for tail in batch_paths):
        other = await api.client.get(path, headers=session(rival))
        assert other.status_code == 404, path
    assert created["id"] not in (await api.client.get("/", headers=session(rival))).text


async def test_retry_needs_the_same_origin_and_the_api_ignores_the_cookie(api: Api) -> None:
    created = await api.submit(["alpha"])
    acme = await sign_in(api, api.acme_key)
    url = f"/batches/{created['id']}/retry"
    foreign = await api.client.post(url, headers=session(acme, Origin="https://evil.example"))
    assert foreign.status_code == 403
    no_origin = await api.client.post(url, headers=session(acme))
    assert no_origin.status_code == 403
    same = await api.client.post(url, headers=session(acme, **OWN_ORIGIN))
    assert same.status_code == 303 and same.headers["location"].endswith("?retried=0")
    api_with_cookie = await api.client.get(f"/v1/batches/{created['id']}", headers=session(acme))
    assert api_with_cookie.status_code == 401
