"""The provider protocol: one request in, one completion or one typed error out.

Everything above ``providers/`` (pipeline, worker, limiter) talks to this protocol only, so
a provider can be swapped (OpenAI, any OpenAI-compatible server, the simulator, a test fake)
without touching the retry, rate-limit or validation logic. Implementations must translate
their library's errors into :mod:`bulkgen.errors` at their own boundary.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from bulkgen.limits.keys import api_key_id  # one definition: the limiter keys on it too
from bulkgen.models import ChatRequest, Completion

__all__ = ["Provider", "api_key_id"]


@runtime_checkable
class Provider(Protocol):
    """What the pipeline needs from an LLM provider.

    ``complete`` returns a :class:`~bulkgen.models.Completion` (possibly with empty content:
    validating it is the pipeline's job) or raises a :class:`~bulkgen.errors.ProviderError`
    subclass; it never retries on its own, because retrying is a fleet-wide decision.
    """

    base_url: str
    api_key_id: str

    async def complete(self, request: ChatRequest) -> Completion: ...

    async def aclose(self) -> None: ...
