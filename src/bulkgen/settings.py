"""Configuration, read from the environment once, at the edge, then passed down frozen.

The four service variables have their usual names, without a prefix (``DATABASE_URL``,
``REDIS_URL``, ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``); everything else is ``BULKGEN_*``
with its unit in the name.
Embedded defaults make a fresh machine work: no ``DATABASE_URL`` starts embedded
PostgreSQL, no ``REDIS_URL`` keeps cache and limiter in-process, no ``OPENAI_API_KEY``
uses the built-in simulator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bulkgen.options import MaxTokens, ModelName
from bulkgen.redis_client import cluster_url_problem


def _checked_url(name: str, url: str) -> str:
    """A service URL whose host and port can be read, so a typo (a port that is not a
    number or out of range, a broken IPv6 literal) is a settings error naming the
    variable, not a driver traceback later. The message never repeats the URL: it may
    hold a password."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reading it validates it
    except ValueError as exc:
        raise ValueError(f"{name} is malformed: {exc}") from None
    return url


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class Settings(BaseSettings):
    """Every knob bulkgen has. Construct with keyword arguments in tests."""

    model_config = SettingsConfigDict(
        env_prefix="BULKGEN_", frozen=True, extra="ignore", populate_by_name=True
    )

    # Services (usual names, no prefix).
    database_url: str | None = Field(default=None, validation_alias=_env("DATABASE_URL"))
    redis_url: str | None = Field(default=None, validation_alias=_env("REDIS_URL"))
    openai_api_key: SecretStr | None = Field(default=None, validation_alias=_env("OPENAI_API_KEY"))
    openai_base_url: str | None = Field(default=None, validation_alias=_env("OPENAI_BASE_URL"))

    # Database.
    data_dir: Path | None = None  # embedded PostgreSQL data folder; None -> user data dir
    db_pool_max: int = Field(default=20, ge=2, le=500)
    db_pool_min: int = Field(default=1, ge=0)
    db_command_timeout_s: float = Field(default=30.0, gt=0)

    # REDIS_URL names one node of a Redis Cluster, whose client finds the others.
    redis_cluster: bool = False
    redis_pool_max: int = Field(default=64, ge=2, le=10_000)  # per node on a cluster

    # Worker.
    # Jobs in flight per worker process. None = auto: follows the admitted rate and the
    # observed latency (Little's law, see limits/). A number is a hard cap that wins.
    concurrency: int | None = Field(default=None, ge=1, le=10_000)
    concurrency_auto_max: int = Field(default=1000, ge=1)
    lease_s: float = Field(default=60.0, gt=0)
    heartbeat_s: float = Field(default=10.0, gt=0)
    poll_s: float = Field(default=2.0, gt=0)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    # A fixed wait of each status flush for more outcomes to write with (see db/writer.py),
    # on top of the short wait for the worker's jobs still finishing: fewer statements per
    # job, each job's slot held that much longer. 0: no fixed wait.
    status_linger_ms: int = Field(default=0, ge=0, le=1000)

    # Generation.
    # The fleet's default model and answer length, for batches submitted without them
    # (typed and bounded as the batch options they become; see options.py).
    model: ModelName = "gpt-4o"
    max_tokens: MaxTokens = 1500
    max_attempts: int = Field(default=5, ge=1, le=100)
    min_words: int = Field(default=30, ge=0)
    provider_timeout_s: float = Field(default=120.0, gt=0)
    # Prompt templates come from accounts: one render may take this long (in a child
    # process, see bulkgen.renderer) and produce this many characters (~128k tokens).
    template_render_timeout_s: float = Field(default=2.0, gt=0, le=600)
    prompt_max_chars: int = Field(default=500_000, ge=1)

    # Retries.
    backoff_base_s: float = Field(default=1.0, ge=0)
    backoff_cap_s: float = Field(default=30.0, ge=0)
    rate_limit_max_wait_s: float = Field(default=600.0, ge=0)

    # Rate limits: None -> learned from the provider's headers ("auto").
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)

    # Circuit breaker.
    breaker_failures: int = Field(default=10, ge=1)
    breaker_cooldown_s: float = Field(default=30.0, gt=0)

    # Cache.
    cache_ttl_s: int = Field(default=3600, ge=0)
    cache_scope: Literal["account", "global"] = "account"
    cache_timeout_ms: int = Field(default=50, ge=1)
    cache_enabled: bool = True
    singleflight_wait_s: float = Field(default=30.0, ge=0)

    # Economy mode (the provider's Batch API; see bulkgen.economy).
    economy_deadline_h: float = Field(default=24.0, gt=0, le=24 * 365)  # a batch's default
    economy_poll_s: float = Field(default=30.0, gt=0)  # first poll after creation, doubling
    economy_max_poll_s: float = Field(default=600.0, gt=0)  # up to this
    economy_tick_s: float = Field(default=5.0, gt=0)  # a worker looks for economy work
    economy_lease_s: float = Field(default=300.0, gt=0)  # one step of a provider batch
    economy_retry_s: float = Field(default=60.0, gt=0)  # a failed step, tried again after
    # What one provider batch may hold (OpenAI: 50,000 requests, a 200 MB input file).
    batch_max_requests: int = Field(default=50_000, ge=1)
    batch_max_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)

    # Cost: JSON object model -> {"input_per_1m": usd, "output_per_1m": usd}, over the defaults.
    prices_json: str | None = None

    @field_validator("database_url", "redis_url", "openai_base_url", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        return value if value is None else _checked_url("REDIS_URL", value)

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("DATABASE_URL must start with postgresql:// or postgres://")
        return _checked_url("DATABASE_URL", value)

    @model_validator(mode="after")
    def _cluster_needs_a_cluster_url(self) -> Settings:
        if not self.redis_cluster:
            return self
        if self.redis_url is None:
            raise ValueError("BULKGEN_REDIS_CLUSTER=true needs REDIS_URL (any node of the cluster)")
        problem = cluster_url_problem(self.redis_url)
        if problem is not None:
            raise ValueError(f"REDIS_URL with BULKGEN_REDIS_CLUSTER=true: {problem}")
        return self

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> Settings:
        # A heartbeat slower than the lease would let workers rescue each other's live jobs.
        if self.heartbeat_s >= self.lease_s:
            raise ValueError(
                f"BULKGEN_HEARTBEAT_S ({self.heartbeat_s}) must be shorter than "
                f"BULKGEN_LEASE_S ({self.lease_s})"
            )
        return self

    @property
    def uses_simulator(self) -> bool:
        return self.openai_api_key is None and self.openai_base_url is None
