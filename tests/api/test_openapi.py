"""The OpenAPI schema is the API's contract: every route is in it, with its response
models, its errors and an example of each body."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Api

pytestmark = pytest.mark.postgres

EXPECTED = {
    ("post", "/v1/batches"),
    ("get", "/v1/batches"),
    ("get", "/v1/batches/{batch_id}"),
    ("get", "/v1/batches/{batch_id}/jobs"),
    ("get", "/v1/batches/{batch_id}/results"),
    ("get", "/v1/batches/{batch_id}/events"),
    ("post", "/v1/batches/{batch_id}/cancel"),
    ("post", "/v1/batches/{batch_id}/retry"),
    ("get", "/v1/jobs/{job_id}"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
}


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    resolved: dict[str, Any] = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return resolved


async def test_every_route_is_documented_with_models_and_examples(api: Api) -> None:
    response = await api.client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    operations = {
        (method, path): op for path, item in spec["paths"].items() for method, op in item.items()
    }
    assert set(operations) == EXPECTED
    for (method, path), op in operations.items():
        success = op["responses"].get("201") or op["responses"]["200"]
        content = success["content"]
        for media in content.values():
            schema = _resolve(media["schema"], spec)
            assert "examples" in schema or "example" in media, (method, path)
        if path.startswith("/v1/"):
            assert op["security"] == [{"ApiKey": []}], (method, path)
            assert "401" in op["responses"] and "422" in op["responses"], (method, path)
            assert "429" in op["responses"], (method, path)
        if "{" in path:
            assert "404" in op["responses"], (method, path)
    body = operations[("post", "/v1/batches")]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert body["application/json"]["schema"]["examples"]
    error = spec["components"]["schemas"]["ErrorResponse"]
    assert error["examples"][0]["error"]["kind"] == "invalid_input"
