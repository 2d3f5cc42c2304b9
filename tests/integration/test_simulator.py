"""The simulator as the official openai SDK sees it, over real HTTP (no retries)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from bulkgen.simulator import SimConfig, count_tokens, running_simulator

MESSAGES: list[Any] = [
    {"role": "system", "content": "You write SEO articles."},
    {"role": "user", "content": "Write an article. Keyword: cast iron skillet care"},
]


def _client(base_url: str, *, api_key: str = "sk-test", timeout_s: float = 5.0) -> Any:
    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout_s)


async def _create(base_url: str, **kwargs: Any) -> Any:
    async with _client(base_url) as client:
        return await client.chat.completions.create(
            model=kwargs.pop("model", "gpt-4o"), messages=kwargs.pop("messages", MESSAGES),
            **kwargs,
        )  # fmt: skip


@pytest.fixture
async def sim_url() -> AsyncIterator[str]:
    async with running_simulator(SimConfig(rpm=None, tpm=None, seed=3)) as base_url:
        yield base_url


async def test_completion_has_consistent_usage_and_an_article(sim_url: str) -> None:
    completion = await _create(sim_url, max_tokens=600)
    content = completion.choices[0].message.content
    usage = completion.usage
    assert completion.choices[0].finish_reason == "stop"
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens == count_tokens(content)
    assert 0.5 * 600 * 0.8 <= usage.completion_tokens < 600
    assert content.startswith("# ") and "\n## " in content
    assert "cast iron skillet care" in content
    assert usage.prompt_tokens > 0


async def test_tiny_max_tokens_stops_for_length(sim_url: str) -> None:
    completion = await _create(sim_url, max_tokens=12)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 12


async def test_models_endpoint_lists_the_configured_models(sim_url: str) -> None:
    async with _client(sim_url) as client:
        models = [model.id async for model in client.models.list()]
    assert "gpt-4o" in models


async def test_rate_limit_429_parses_like_openai() -> None:
    # A one-request bucket refilled every 10 s: the second call is refused however slowly
    # a busy machine gets to it.
    config = SimConfig(rpm=6, tpm=None, burst_s=10.0)
    async with running_simulator(config) as base_url:
        await _create(base_url, max_tokens=50)
        with pytest.raises(openai.RateLimitError) as info:
            await _create(base_url, max_tokens=50)
    error = info.value
    headers = error.response.headers
    assert error.status_code == 429 and error.code == "rate_limit_exceeded"
    assert isinstance(error.body, dict) and error.body["type"] == "requests"
    assert error.body["param"] is None
    assert (
        "Rate limit reached for gpt-4o in organization org-sim on requests per min (RPM)"
        in (error.body["message"])
    )
    assert "Limit 6, Used 6, Requested 1" in error.body["message"]
    retry_after_ms = int(headers["retry-after-ms"])
    assert 0 < retry_after_ms <= 10_000
    assert headers["retry-after"] == str(math.ceil(retry_after_ms / 1000))  # whole seconds, up
    assert headers["x-ratelimit-limit-requests"] == "6"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")


async def test_token_limit_429_names_tokens_and_the_request_cost() -> None:
    config = SimConfig(rpm=None, tpm=600, burst_s=1.0)  # a 10-token bucket
    async with running_simulator(config) as base_url:
        await _create(base_url, max_tokens=50)
        with pytest.raises(openai.RateLimitError) as info:
            await _create(base_url, max_tokens=50)
    assert isinstance(info.value.body, dict) and info.value.body["type"] == "tokens"
    assert "tokens per min (TPM): Limit 600" in info.value.body["message"]
    assert "x-ratelimit-remaining-tokens" in info.value.response.headers
    assert int(info.value.response.headers["retry-after"]) >= 1


async def test_insufficient_quota_is_a_429_with_its_own_code() -> None:
    async with running_simulator(SimConfig(faults={"insufficient_quota": 1.0})) as base_url:
        with pytest.raises(openai.RateLimitError) as info:
            await _create(base_url)
    assert info.value.code == "insufficient_quota"
    assert isinstance(info.value.body, dict) and info.value.body["type"] == "insufficient_quota"
    assert "retry-after" not in info.value.response.headers


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_faults_raise_internal_server_error(status: int) -> None:
    async with running_simulator(SimConfig(faults={str(status): 1.0})) as base_url:
        with pytest.raises(openai.InternalServerError) as info:
            await _create(base_url)
    assert info.value.status_code == status
    assert isinstance(info.value.body, dict) and info.value.body["type"] == "server_error"


async def test_hang_ends_in_a_client_timeout() -> None:
    async with (
        running_simulator(SimConfig(faults={"hang": 1.0})) as base_url,
        _client(base_url, timeout_s=0.3) as client,
    ):
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)


async def test_reset_is_a_connection_error_and_a_real_tcp_reset() -> None:
    config = SimConfig(rpm=None, tpm=None, faults={"reset": 1.0})
    async with running_simulator(config) as base_url:
        with pytest.raises(openai.APIConnectionError) as info:
            await _create(base_url)
        assert not isinstance(info.value, openai.APITimeoutError)
        port = httpx.URL(base_url).port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = json.dumps({"model": "gpt-4o", "messages": MESSAGES}).encode()
        head = f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}"
        writer.write(head.encode() + b"\r\ncontent-type: application/json\r\n\r\n" + body)
        try:
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(), 5.0)
        finally:
            writer.close()


@pytest.mark.parametrize(("kind", "expected"), [("empty", ""), ("whitespace", " \n\n \n")])
async def test_empty_and_whitespace_content_arrive_as_a_normal_200(
    kind: str, expected: str
) -> None:
    async with running_simulator(SimConfig(faults={kind: 1.0})) as base_url:
        completion = await _create(base_url)
    assert completion.choices[0].message.content == expected
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == count_tokens(expected)


async def test_truncate_gives_a_short_text_with_finish_reason_length() -> None:
    async with running_simulator(SimConfig(faults={"truncate": 1.0})) as base_url:
        completion = await _create(base_url, max_tokens=1000)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens <= 150
    assert completion.choices[0].message.content.startswith("# ")


async def test_malformed_body_makes_the_sdk_raise_a_json_error() -> None:
    """The SDK does not wrap a broken 200 body: it surfaces json's own decode error."""
    async with running_simulator(SimConfig(faults={"malformed": 1.0})) as base_url:
        with pytest.raises(json.JSONDecodeError):
            await _create(base_url)


async def test_wrong_api_key_is_401_and_right_key_passes() -> None:
    async with running_simulator(SimConfig(api_key="sk-right")) as base_url:
        async with _client(base_url, api_key="sk-wrong") as client:
            with pytest.raises(openai.AuthenticationError) as info:
                await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        async with _client(base_url, api_key="sk-right") as client:
            ok = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert info.value.code == "invalid_api_key"
    assert ok.choices[0].message.content


@pytest.mark.parametrize(
    "body",
    [
        {"messages": MESSAGES},
        {"model": "gpt-4o"},
        {"model": "gpt-4o", "messages": "hello"},
        {"model": "gpt-4o", "messages": [{"role": "user", "content": 5}]},
        {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": "many"},
    ],
)
async def test_invalid_requests_are_400(sim_url: str, body: dict[str, Any]) -> None:
    async with _client(sim_url) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.post("/chat/completions", body=body, cast_to=httpx.Response)
    assert isinstance(info.value.body, dict)
    assert info.value.body["type"] == "invalid_request_error"


async def test_unknown_model_is_404_model_not_found(sim_url: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await _create(sim_url, model="gpt-0")
    assert info.value.code == "model_not_found"


async def _run_sequence(seed: int) -> list[tuple[str, str]]:
    """Ten requests against a faulty simulator, each reduced to (outcome, content)."""
    config = SimConfig(rpm=None, tpm=None, seed=seed, faults={"503": 0.3, "empty": 0.2})
    outcomes: list[tuple[str, str]] = []
    async with running_simulator(config) as base_url:
        for index in range(10):
            messages = [{"role": "user", "content": f"Keyword: topic {index}"}]
            try:
                completion = await _create(base_url, messages=messages, max_tokens=200)
                outcomes.append(("ok", completion.choices[0].message.content))
            except openai.InternalServerError as exc:
                outcomes.append((str(exc.status_code), ""))
    return outcomes


async def test_same_seed_same_contents_and_faults_other_seed_differs() -> None:
    first = await _run_sequence(seed=11)
    assert first == await _run_sequence(seed=11)
    assert first != await _run_sequence(seed=12)
    assert {outcome for outcome, _ in first} >= {"ok"}


async def test_live_config_starts_and_ends_an_outage_and_stats_count_it(sim_url: str) -> None:
    root = sim_url.removesuffix("/v1")
    async with httpx.AsyncClient(base_url=root) as http:
        changed = await http.post("/_sim/config", json={"faults": {"503": 1.0}})
        assert changed.status_code == 200 and changed.json()["faults"] == {"503": 1.0}
        with pytest.raises(openai.InternalServerError):
            await _create(sim_url)
        await http.post("/_sim/config", json={"faults": {}})
        await _create(sim_url, max_tokens=100)
        bad = await http.post("/_sim/config", json={"faults": {"nope": 1}})
        assert bad.status_code == 400 and "unknown fault kind" in bad.json()["error"]["message"]
        stats = (await http.get("/_sim/stats")).json()
        assert (stats["requests"], stats["ok"], stats["faults"]) == (2, 1, {"503": 1})
        assert sum(second["requests"] for second in stats["per_second"]) == 2
        assert stats["completion_tokens"] > 0
        await http.post("/_sim/reset-stats")
        assert (await http.get("/_sim/stats")).json()["requests"] == 0
        assert (await http.get("/_sim/config")).json()["faults"] == {}
