"""What the cache stores (:class:`CachedResult`) and the one protocol every backend follows.

A hit carries its token counts, model and finish reason, so a job served from the cache
records the same usage as the call it replaces (and costs nothing new). Values are JSON;
an entry that cannot be decoded, or decodes to empty content, is treated as a miss, so a
corrupt entry can never make a job ``done`` without content.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

from bulkgen.models import Completion, Usage

_VALUE_VERSION = 1


@dataclass(frozen=True, slots=True)
class CachedResult:
    """A validated generation, as stored under its cache key."""

    content: str
    usage: Usage
    model: str
    finish_reason: str

    @classmethod
    def from_completion(cls, completion: Completion) -> CachedResult:
        return cls(
            content=completion.content,
            usage=completion.usage,
            model=completion.model,
            finish_reason=completion.finish_reason,
        )


class ResultCache(Protocol):
    """A cache that may forget, may be down, and never raises for either."""

    async def get(self, key: str) -> CachedResult | None: ...

    async def put(self, key: str, value: CachedResult) -> None: ...


def is_cacheable(value: CachedResult) -> bool:
    """Last line of defence: empty or whitespace-only content is never stored."""
    return bool(value.content.strip())


def encode(value: CachedResult) -> str:
    return json.dumps(
        {
            "v": _VALUE_VERSION,
            "content": value.content,
            "usage": {
                "prompt_tokens": value.usage.prompt_tokens,
                "completion_tokens": value.usage.completion_tokens,
                "cache_read_tokens": value.usage.cache_read_tokens,
            },
            "model": value.model,
            "finish_reason": value.finish_reason,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def decode(raw: str | bytes) -> CachedResult | None:
    """The stored value, or None when it is unreadable or unusable (counted as a miss)."""
    try:
        data = json.loads(raw)
        usage = data["usage"]
        value = CachedResult(
            content=str(data["content"]),
            usage=Usage(
                prompt_tokens=int(usage["prompt_tokens"]),
                completion_tokens=int(usage["completion_tokens"]),
                cache_read_tokens=int(usage.get("cache_read_tokens", 0)),  # absent: older entry
            ),
            model=str(data["model"]),
            finish_reason=str(data["finish_reason"]),
        )
    except (ValueError, TypeError, KeyError):
        return None
    if data.get("v") != _VALUE_VERSION or not is_cacheable(value):
        return None
    return value
