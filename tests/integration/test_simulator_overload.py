"""``max_inflight``: a server that takes N requests at once and answers the rest 503
"overloaded" (or a bare 429) at once, without rate-limit headers or a wait hint."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import httpx
import openai

from bulkgen.simulator import SimConfig, running_simulator

MESSAGES: list[Any] = [{"role": "user", "content": "Write an article. Keyword: tea"}]


async def _until_inflight(http: httpx.AsyncClient, count: int) -> None:
    for _ in range(10_000):
        if (await http.get("/_sim/stats")).json()["inflight"] == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the simulator never had {count} requests in flight")


def _no_limit_headers(headers: Mapping[str, str]) -> bool:
    names = {name.lower() for name in headers}
    return not any(n.startswith(("x-ratelimit", "retry-after")) for n in names)


async def test_requests_above_the_cap_are_overloaded_without_headers() -> None:
    # Every admitted request hangs, so the first two stay in flight as long as the test needs.
    config = SimConfig(rpm=None, tpm=None, max_inflight=2, faults={"hang": 1.0}, hang_s=60.0)
    async with (
        running_simulator(config) as base_url,
        httpx.AsyncClient(base_url=base_url.removesuffix("/v1")) as http,
        openai.AsyncOpenAI(base_url=base_url, api_key="sk-x", max_retries=0) as client,
    ):

        async def create() -> Any:
            return await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

        hanging = [asyncio.create_task(create()) for _ in range(2)]
        try:
            await _until_inflight(http, 2)
            try:
                await create()
            except openai.InternalServerError as exc:
                assert exc.status_code == 503 and exc.code == "overloaded"
                assert _no_limit_headers(exc.response.headers)
            else:
                raise AssertionError("a third request was served while two were in flight")
            await http.post("/_sim/config", json={"overload_status": 429})
            try:
                await create()
            except openai.RateLimitError as exc:
                assert exc.status_code == 429 and exc.code is None
                assert _no_limit_headers(exc.response.headers)
            else:
                raise AssertionError("the bare 429 was not sent")
            await http.post("/_sim/config", json={"max_inflight": 0, "faults": {}})
            done = await create()
            assert done.choices[0].message.content
        finally:
            for task in hanging:
                task.cancel()
            await asyncio.gather(*hanging, return_exceptions=True)
        stats = (await http.get("/_sim/stats")).json()
    assert stats["overloaded"] == 2 and stats["max_inflight_seen"] == 3
    assert stats["requests"] == 5 and stats["ok"] == 1
