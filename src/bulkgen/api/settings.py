"""The API's own limits, read from the environment once (``BULKGEN_API_*``), then frozen.

They protect the server from what a tenant may send; the defaults fit the product's
largest batch (10,000 keywords) with room to spare.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from bulkgen.api.rate_limit import AccountRate
from bulkgen.prompts import MAX_TEMPLATE_CHARS

__all__ = ["ApiSettings"]


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BULKGEN_API_", frozen=True, extra="ignore")

    # Whole request body, JSON or upload: larger ones get 413 before anything is parsed.
    max_body_mb: float = Field(default=16.0, gt=0, le=1024)
    # Items (rows) of one batch.
    max_items: int = Field(default=10_000, ge=1, le=10_000)
    # Text of one item: keyword, variable names and values together.
    max_item_chars: int = Field(default=20_000, ge=1)
    # A batch's prompt template, in characters.
    max_template_chars: int = Field(default=20_000, ge=1, le=MAX_TEMPLATE_CHARS)
    # Requests per second one account may make in the long run, over every API process
    # (through Redis when there is one), and how many at once after a quiet spell.
    rate_per_s: float = Field(default=20.0, gt=0, le=1_000_000)
    burst: int = Field(default=40, ge=1, le=1_000_000)
    # Progress streams (``/events``): how often each one reads the batch's counts (one
    # statement per poll), and how long a quiet stream waits before a keep-alive comment.
    events_interval_s: float = Field(default=1.0, ge=0.05, le=60)
    events_keepalive_s: float = Field(default=15.0, gt=0, le=300)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def account_rate(self) -> AccountRate:
        return AccountRate(rate_per_s=self.rate_per_s, burst=self.burst)
