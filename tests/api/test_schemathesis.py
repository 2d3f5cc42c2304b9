"""A property-based run over the live OpenAPI schema: whatever a client sends that the
schema allows (and much that it does not), the API answers without a 5xx and with a
response the schema documents (status code, content type and body).

The schema is read from the app itself, and each generated request goes through the app
in-process (httpx over ASGI) against a real PostgreSQL database, authenticated with a real
key. A batch that has run to the end is seeded first, and path ids point at it (or at one
of its jobs) half of the time, so the 200 answers are checked and not only the 404s.

Requests go through httpx on the one event loop that owns the asyncpg pool, rather than
schemathesis' own ASGI client (a Starlette TestClient runs the app on a loop of its own),
and each operation is a plain hypothesis test over ``as_strategy()`` (the lazy
``schemathesis.pytest.from_fixture`` loader does not run under pytest 9.2).

The run is bounded (a fixed number of examples per operation, derandomized) so it stays a
part of the ordinary suite.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation.case import Case

from bulkgen.accounts import create_account
from bulkgen.api import create_app
from bulkgen.metrics import Metrics
from bulkgen.service import open_services
from bulkgen.settings import Settings

from .conftest import LIMITS, bearer, drain
from .test_openapi import EXPECTED

pytestmark = pytest.mark.postgres

EXAMPLES_PER_OPERATION = 25
# The checks on one response; the stateful ones (which send requests of their own over
# the network) have no place in an in-process run.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@dataclass
class Live:
    """One event loop owns the app's services; every request of the run goes through it."""

    runner: asyncio.Runner
    client: httpx.AsyncClient
    spec: dict[str, Any]
    headers: dict[str, str]
    batch_id: str
    job_id: str
    statuses: dict[str, set[int]] = field(default_factory=dict)

    def send(self, case: Case[Any]) -> httpx.Response:
        kwargs = case.as_transport_kwargs(base_url="http://api.test", headers=self.headers)
        request = self.client.build_request(**_httpx_kwargs(kwargs))
        request.read()  # the checks read the request's body back, multipart uploads too
        response = self.runner.run(self.client.send(request))
        self.statuses.setdefault(case.operation.label, set()).add(response.status_code)
        return response


def _httpx_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The request as httpx takes it: schemathesis builds keyword arguments for requests."""
    allowed = {"method", "url", "headers", "params", "json", "data", "files"}
    out = {k: v for k, v in kwargs.items() if k in allowed and v is not None}
    if cookies := kwargs.get("cookies"):  # httpx deprecates per-request cookies
        jar = "; ".join(f"{name}={value}" for name, value in cookies.items())
        out["headers"] = {**out.get("headers", {}), "Cookie": jar}
    if isinstance(out.get("data"), bytes | str):
        out["content"] = out.pop("data")
    if "files" in out:
        out["files"] = [(name, _file_part(part)) for name, part in _pairs(out["files"])]
    return out


def _pairs(files: Any) -> list[tuple[str, Any]]:
    return list(files.items()) if isinstance(files, dict) else list(files)


def _file_part(part: Any) -> Any:
    """requests writes any value into a form; httpx reads only text, bytes or files."""
    if isinstance(part, tuple):
        return (part[0], _file_part(part[1]), *part[2:])
    return part if isinstance(part, bytes | str) else str(part).encode()


async def _seed(database_url: str) -> tuple[Any, httpx.AsyncClient, dict[str, Any], str]:
    services = await open_services(
        Settings(database_url=database_url, redis_url=None), need_provider=False, metrics=Metrics()
    )
    app = create_app(services, LIMITS)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test")
    key = await create_account(services.store, "acme")
    created = await client.post(
        "/v1/batches", json={"items": ["alpha", "beta", "gamma"]}, headers=bearer(key)
    )
    assert created.status_code == 201, created.text
    return services, client, app.openapi(), key


@pytest.fixture(scope="module")
def live(module_database_url: str) -> Iterator[Live]:
    with asyncio.Runner() as runner:
        services, client, spec, key = runner.run(_seed(module_database_url))
        try:
            runner.run(drain(module_database_url))
            headers = bearer(key)
            batch_id = runner.run(client.get("/v1/batches", headers=headers)).json()["items"][0]
            jobs = runner.run(client.get(f"/v1/batches/{batch_id['id']}/jobs", headers=headers))
            job_id = jobs.json()["items"][0]["id"]
            yield Live(runner, client, spec, headers, batch_id["id"], job_id)
        finally:
            runner.run(client.aclose())
            runner.run(services.aclose())


@pytest.mark.parametrize(
    ("method", "path"), sorted(EXPECTED), ids=[f"{m} {p}" for m, p in sorted(EXPECTED)]
)
def test_the_api_keeps_its_schema(method: str, path: str, live: Live) -> None:
    operation = schemathesis.openapi.from_dict(live.spec)[path][method.upper()]

    @given(case=operation.as_strategy(), real_ids=st.booleans())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def request_and_validate(case: Case[Any], real_ids: bool) -> None:
        if real_ids and case.path_parameters:
            ids = {"batch_id": live.batch_id, "job_id": live.job_id}
            case.path_parameters = {k: ids.get(k, v) for k, v in case.path_parameters.items()}
        response = live.send(case)
        assert response.status_code < 500, (case.method, case.formatted_path, response.text)
        case.validate_response(response, checks=CHECKS, headers=live.headers)

    request_and_validate()
    reached = live.statuses[operation.label] - {401, 404, 422}
    assert reached, f"{operation.label} only ever answered {live.statuses[operation.label]}"


def test_a_form_starlette_cannot_read_is_a_documented_422(live: Live) -> None:
    """Starlette refuses a form with more parts than allowed with a bare 400, which the
    schema does not document; the run above found it."""
    parts: list[tuple[str, tuple[str | None, bytes]]] = [("file", ("k.csv", b"keyword\nalpha\n"))]
    parts += [("options", (None, b"{}")) for _ in range(10)]  # more than the form takes
    response = live.runner.run(live.client.post("/v1/batches", files=parts, headers=live.headers))
    assert response.status_code == 422, response.text
    assert "unreadable multipart form" in response.json()["error"]["message"]
