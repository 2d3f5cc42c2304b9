"""Error translation and response parsing of the OpenAI-compatible provider.

The real SDK runs over ``httpx.MockTransport``: what is tested is how the SDK's behaviour
is mapped onto bulkgen's error tree, not a fake of the SDK.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest

from bulkgen.errors import (
    InvalidOutput,
    ProviderConnectionError,
    ProviderError,
    ProviderOverloaded,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExhausted,
    RateLimited,
)
from bulkgen.models import ChatRequest, Completion
from bulkgen.providers import OpenAICompatProvider, Provider, api_key_id
from bulkgen.providers.openai_compat import parse_retry_after_s

Handler = Callable[[httpx.Request], httpx.Response]
NOW_S = 1_700_000_000.0
REQUEST = ChatRequest(
    model="gpt-4o",
    messages=(("system", "be brief"), ("user", "write about tea")),
    max_tokens=123,
    temperature=0.5,
    extra=(("seed", 7),),
)


def ok_body(content: object = "Tea is a drink.", **over: object) -> dict[str, object]:
    body: dict[str, object] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33},
    }
    body.update(over)
    return body


def provider(handler: Handler) -> OpenAICompatProvider:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpenAICompatProvider(
        "http://127.0.0.1:1/v1",
        "sk-secret-key",
        timeout_s=5.0,
        http_client=client,
        clock=lambda: NOW_S,
    )


async def call(handler: Handler, request: ChatRequest = REQUEST) -> Completion:
    p = provider(handler)
    try:
        return await p.complete(request)
    finally:
        await p.aclose()


async def call_error(handler: Handler) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await call(handler)
    return info.value


def error_response(status: int, code: str | None = None, **headers: str) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"error": {"message": "nope", "type": code or "error", "code": code}}
        return httpx.Response(status, json=body, headers=headers)

    return handler


async def test_success_sends_request_and_returns_completion() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        headers = {"X-RateLimit-Remaining-Requests": "499", "x-ratelimit-limit-tokens": "30000"}
        return httpx.Response(200, json=ok_body(), headers=headers)

    completion = await call(handler)
    (request,) = seen
    assert request.url.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-secret-key"
    sent = json.loads(request.content)
    assert sent["model"] == "gpt-4o"
    assert sent["max_tokens"] == 123
    assert sent["temperature"] == 0.5
    assert sent["seed"] == 7
    assert sent["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "write about tea"},
    ]
    assert completion.content == "Tea is a drink."
    assert completion.finish_reason == "stop"
    assert completion.model == "gpt-4o-2024-08-06"
    assert completion.usage.prompt_tokens == 11
    assert completion.usage.completion_tokens == 22
    assert completion.headers["x-ratelimit-remaining-requests"] == "499"
    assert completion.headers["x-ratelimit-limit-tokens"] == "30000"
    assert completion.latency_s >= 0


async def test_temperature_none_is_not_sent() -> None:
    seen: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json=ok_body())

    request = ChatRequest(model="o1-mini", messages=(("user", "hi"),), max_tokens=9)
    await call(handler, request)
    assert "temperature" not in seen[0]
    assert seen[0]["max_tokens"] == 9


async def test_null_content_becomes_empty_string_and_missing_fields_default() -> None:
    body = ok_body(content=None, usage=None)
    body.pop("model")
    completion = await call(lambda _: httpx.Response(200, json=body))
    assert completion.content == ""
    assert completion.usage.total_tokens == 0
    assert completion.model == "gpt-4o"


@pytest.mark.parametrize(
    ("details", "cached"),
    [
        ({"cached_tokens": 1024}, 1024),
        ({"cached_tokens": 0, "audio_tokens": 0}, 0),
        ({"cached_tokens": 99_999}, 2000),  # never more than the whole prompt
        ({"cached_tokens": -5}, 0),
        ({"cached_tokens": "many"}, 0),
        (None, 0),  # servers that do not report it
    ],
)
async def test_cached_prompt_tokens_are_read_from_the_usage_details(
    details: object, cached: int
) -> None:
    usage: dict[str, object] = {"prompt_tokens": 2000, "completion_tokens": 300}
    if details is not None:
        usage["prompt_tokens_details"] = details
    completion = await call(lambda _: httpx.Response(200, json=ok_body(usage=usage)))
    assert completion.usage.cache_read_tokens == cached
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2000, 300)


async def test_finish_reason_length_is_passed_through() -> None:
    body = ok_body()
    body["choices"][0]["finish_reason"] = "length"  # type: ignore[index]
    completion = await call(lambda _: httpx.Response(200, json=body))
    assert completion.finish_reason == "length"


@pytest.mark.parametrize(
    ("status", "code", "expected", "retryable"),
    [
        (429, "insufficient_quota", QuotaExhausted, False),
        # Without limit headers or a wait hint a 429 says the server is full (see below).
        (429, "rate_limit_exceeded", ProviderOverloaded, True),
        (429, None, ProviderOverloaded, True),
        (529, "overloaded_error", ProviderOverloaded, True),
        (400, "invalid_request_error", ProviderRejected, False),
        (401, "invalid_api_key", ProviderRejected, False),
        (403, None, ProviderRejected, False),
        (404, "model_not_found", ProviderRejected, False),
        (422, None, ProviderRejected, False),
        (408, None, ProviderUnavailable, True),
        (409, None, ProviderUnavailable, True),
        (500, None, ProviderUnavailable, True),
        (502, None, ProviderUnavailable, True),
        (503, None, ProviderUnavailable, True),
        (504, None, ProviderUnavailable, True),
        (520, None, ProviderUnavailable, True),
    ],
)
async def test_status_translation(
    status: int, code: str | None, expected: type[ProviderError], retryable: bool
) -> None:
    error = await call_error(error_response(status, code))
    assert type(error) is expected
    assert error.status_code == status
    assert error.retryable is retryable
    assert isinstance(error.__cause__, Exception)  # raised "from" the SDK error
    assert str(status) in str(error)


async def test_quota_detected_from_type_when_code_missing() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"error": {"message": "pay up", "type": "insufficient_quota", "code": None}}
        return httpx.Response(429, json=body)

    assert type(await call_error(handler)) is QuotaExhausted


async def test_error_without_json_body_still_translates() -> None:
    error = await call_error(lambda _: httpx.Response(502, text="<html>bad gateway</html>"))
    assert type(error) is ProviderUnavailable
    assert error.status_code == 502


async def test_error_carries_lower_cased_headers() -> None:
    handler = error_response(
        429, "rate_limit_exceeded", **{"X-RateLimit-Reset-Requests": "1s", "Retry-After": "2"}
    )
    error = await call_error(handler)
    assert error.headers["x-ratelimit-reset-requests"] == "1s"
    assert error.headers["retry-after"] == "2"
    assert error.retry_after_s == 2.0


async def test_retry_after_ms_is_preferred() -> None:
    handler = error_response(429, None, **{"retry-after-ms": "250", "retry-after": "9"})
    assert (await call_error(handler)).retry_after_s == pytest.approx(0.25)


async def test_retry_after_http_date_uses_injected_clock() -> None:
    when = datetime.fromtimestamp(NOW_S + 30, tz=UTC)
    handler = error_response(503, None, **{"retry-after": format_datetime(when, usegmt=True)})
    error = await call_error(handler)
    assert type(error) is ProviderUnavailable
    assert error.retry_after_s == pytest.approx(30.0)


async def test_no_retry_after_means_none() -> None:
    assert (await call_error(error_response(500))).retry_after_s is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": " 4 "}, 4.0),
        ({"retry-after": "-1"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after-ms": "1200"}, 1.2),
        ({"retry-after-ms": "junk", "retry-after": "5"}, 5.0),
        ({"retry-after-ms": "-5", "retry-after": "5"}, 5.0),
        ({"retry-after": "Tue, 14 Nov 2023 22:13:50 GMT"}, 30.0),  # NOW_S + 30
        ({"retry-after": "Tue, 14 Nov 2023 22:00:00 GMT"}, 0.0),  # in the past
    ],
)
def test_parse_retry_after_forms(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after_s(headers, now_s=NOW_S) == (
        None if expected is None else pytest.approx(expected)
    )


@pytest.mark.parametrize(
    "body",
    [
        b"not json{",
        b"[1, 2]",
        b"{}",
        b'{"choices": []}',
        b'{"choices": "x"}',
        b'{"choices": [{"finish_reason": "stop"}]}',
        b'{"choices": [{"message": {"content": 5}}]}',
    ],
)
async def test_malformed_body_is_invalid_output(body: bytes) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    error = await call_error(handler)
    assert isinstance(error, InvalidOutput)
    assert error.kind == "malformed"
    assert error.status_code == 200
    assert error.headers["content-type"] == "application/json"


async def test_non_json_content_type_is_malformed_too() -> None:
    error = await call_error(lambda _: httpx.Response(200, text="Here is your article"))
    assert isinstance(error, InvalidOutput)
    assert error.kind == "malformed"


async def test_timeout_is_provider_timeout() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    error = await call_error(handler)
    assert type(error) is ProviderTimeout
    assert error.retryable
    assert error.status_code is None


@pytest.mark.parametrize(
    "exc_type", [httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError]
)
async def test_connection_failures_are_connection_errors(exc_type: type[Exception]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type("reset by peer", request=request)  # type: ignore[call-arg]

    error = await call_error(handler)
    assert type(error) is ProviderConnectionError
    assert "reset by peer" in str(error)


async def test_provider_never_retries_itself() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(500, json={"error": {"message": "boom"}})

    await call_error(handler)
    assert len(calls) == 1


async def test_api_key_id_is_short_stable_and_not_the_secret() -> None:
    p = OpenAICompatProvider("http://127.0.0.1:1/v1", "sk-secret-key", timeout_s=3.0)
    assert isinstance(p, Provider)
    assert p.api_key_id == api_key_id("sk-secret-key")
    assert len(p.api_key_id) == 12
    assert int(p.api_key_id, 16) >= 0
    assert api_key_id("sk-other") != p.api_key_id
    assert "secret" not in repr(p)
    assert p.base_url == "http://127.0.0.1:1/v1"
    await p.aclose()


class _BrokenBody(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"choices": ['
        raise httpx.ReadError("reset mid-body")


async def test_connection_dropped_mid_body_is_connection_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=_BrokenBody())

    error = await call_error(handler)
    assert type(error) is ProviderConnectionError


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-ratelimit-limit-requests": "500"}, RateLimited),
        ({"X-RateLimit-Remaining-Tokens": "0"}, RateLimited),
        ({"x-ratelimit-api_key-remaining-requests": "0"}, RateLimited),
        ({"anthropic-ratelimit-requests-remaining": "0"}, RateLimited),
        ({"retry-after": "2"}, RateLimited),
        ({"retry-after-ms": "150"}, RateLimited),
        ({}, ProviderOverloaded),
        ({"server": "uvicorn"}, ProviderOverloaded),
    ],
)
async def test_a_429_is_a_rate_limit_only_when_it_says_so(
    headers: dict[str, str], expected: type[ProviderError]
) -> None:
    error = await call_error(error_response(429, "rate_limit_exceeded", **headers))
    assert type(error) is expected and error.retryable


@pytest.mark.parametrize(
    ("message", "code", "expected"),
    [
        ("The engine is currently overloaded, please try again later", None, ProviderOverloaded),
        ("busy", "overloaded", ProviderOverloaded),
        ("Service unavailable", None, ProviderUnavailable),
        ("nope", None, ProviderUnavailable),
    ],
)
async def test_a_503_is_an_overload_only_when_it_says_so(
    message: str, code: str | None, expected: type[ProviderError]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"error": {"message": message, "type": "server_error", "code": code}}
        return httpx.Response(503, json=body)

    error = await call_error(handler)
    assert type(error) is expected and error.status_code == 503
