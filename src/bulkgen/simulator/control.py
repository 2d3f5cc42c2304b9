"""A client for the simulator's control endpoints, for the demo, benchmarks and tests.

``base_url`` is the OpenAI base URL the simulator was started with (``.../v1``); the
control endpoints live beside it, at the server's root.
"""

from __future__ import annotations

from typing import Any

import httpx


def _root(base_url: str) -> str:
    return base_url.rstrip("/").removesuffix("/v1")


async def _call(base_url: str, method: str, path: str, body: object = None) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.request(method, _root(base_url) + path, json=body)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data


async def sim_stats(base_url: str) -> dict[str, Any]:
    """``GET /_sim/stats``: requests, 429s by kind, faults, tokens, per-second counts, and
    under ``batch`` the Files and Batch API counters."""
    return await _call(base_url, "GET", "/_sim/stats")


async def sim_configure(base_url: str, changes: dict[str, Any]) -> dict[str, Any]:
    """``POST /_sim/config``: change limits or faults while it runs; returns the config."""
    return await _call(base_url, "POST", "/_sim/config", changes)
