"""The one composition root: settings -> pool, store, Redis, cache, limiter, budget ledger,
price table, provider.

The CLI, the demo, the tests and the benchmarks build their parts here, so there is exactly
one place that decides embedded vs. external PostgreSQL, in-process vs. Redis limits,
cache and budgets, and simulator vs. real provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from redis.exceptions import RedisError

from bulkgen.budget import BudgetLedger, LedgerBackend, MemoryLedger, RedisLedger
from bulkgen.cache import SingleFlight, build_cache
from bulkgen.db.embedded import start_embedded
from bulkgen.db.idempotency import IdempotencyKey
from bulkgen.db.migrate import migrate
from bulkgen.db.pool import create_pool
from bulkgen.db.provider_batches import ProviderBatchStore
from bulkgen.db.store import Store
from bulkgen.economy import Economy, EconomyConfig
from bulkgen.errors import ConfigError, InputError
from bulkgen.estimate import BatchEstimate, estimate_batch
from bulkgen.intake import JobInput
from bulkgen.limits import LimitKey, RateGovernor, api_key_id, build_governor
from bulkgen.limits.redis_backend import read_fleet_limit
from bulkgen.metrics import Metrics
from bulkgen.metrics import metrics as default_metrics
from bulkgen.models import BatchMode, ChatRequest, Completion
from bulkgen.options import BatchOptions, check_budget_usd, validate_options
from bulkgen.pipeline import Pipeline, PipelineConfig
from bulkgen.pricing import PriceTable, default_price_table, load_price_table
from bulkgen.prompts import PromptTemplate
from bulkgen.providers import OpenAICompatProvider, Provider
from bulkgen.providers.openai_batch import BatchLimits, OpenAIBatchClient
from bulkgen.redis_client import RedisClient, discover, open_redis
from bulkgen.renderer import RenderLimits, TemplateRenderer
from bulkgen.retry import RetryPolicy
from bulkgen.settings import Settings
from bulkgen.simulator import SimConfig, SimulatorProcess
from bulkgen.worker import Worker, WorkerConfig

logger = logging.getLogger(__name__)

OPENAI_BASE_URL = "https://api.openai.com/v1"
SIMULATOR_API_KEY = "sk-simulator"
NO_API_KEY = "sk-no-key-configured"

BUILTIN_SIMULATOR = SimConfig(
    rpm=500,
    tpm=600_000,
    time_scale=10.0,
    ttft_ms=400.0,
    tokens_per_s=60.0,
    jitter=0.2,
)
"""What runs when no provider is configured: an account allowing 500 requests and 600,000
tokens a minute, with answers as slow as a real model's (0.4 s to the first token, then 60
tokens/s), played ten times faster than real time. A first run therefore looks like a
real batch in fast-forward (the 200 example keywords in seconds, not the quarter of an
hour a small account would take); ``bulkgen simulate`` serves any other account."""


REDIS_READ_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class ConcurrencyView:
    """A concurrency limit as an operator is shown it: the number, or None, and why."""

    limit: int | None
    note: str


@dataclass
class Services:
    settings: Settings
    store: Store
    provider: Provider
    governor: RateGovernor
    singleflight: SingleFlight
    metrics: Metrics
    renderer: TemplateRenderer  # one per process; its children start on the first render
    redis: RedisClient | None = None
    database_url: str = ""
    _closers: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    budget: BudgetLedger | None = None  # one per process: every pipeline shares its ledger
    prices: PriceTable = field(default_factory=default_price_table)
    # The provider's Batch API, for economy batches; None: this process sends none (a
    # provider given in code, or a command that calls no provider).
    batch_client: OpenAIBatchClient | None = None

    def pipeline(self) -> Pipeline:
        return Pipeline(
            provider=self.provider,
            governor=self.governor,
            singleflight=self.singleflight,
            retry=RetryPolicy.from_settings(self.settings),
            config=PipelineConfig(min_words=self.settings.min_words),
            metrics=self.metrics,
            renderer=self.renderer,
            budget=self.budget,
        )

    def worker(self, *, concurrency: int | None = None, burst: bool = False) -> Worker:
        config = worker_config(self.settings, concurrency=concurrency, burst=burst)
        worker = Worker(self.store, self.pipeline(), config, metrics=self.metrics)
        if self.batch_client is not None:
            worker.economy = Economy(
                worker_id=worker.id,
                store=self.store,
                provider_batches=ProviderBatchStore(self.store.pool),
                client=self.batch_client,
                pipeline=worker.pipeline,
                plan=worker.plan,
                prices=self.prices,
                config=economy_config(self.settings),
                metrics=self.metrics,
                written=worker.tally.count,
            )
        return worker

    def batch_options(self, **chosen: object) -> BatchOptions:
        """Options for a batch submitted from code: ``chosen`` over the fleet's defaults."""
        return validate_options(chosen, self.settings)

    async def submit(
        self,
        rows: Sequence[JobInput],
        options: BatchOptions,
        *,
        account: str = "default",
        budget_usd: Decimal | None = None,
        idempotency: IdempotencyKey | None = None,
        mode: BatchMode = BatchMode.ONLINE,
        deadline_h: float | None = None,
        fallback_online: bool = False,
    ) -> uuid.UUID:
        """Enqueue a batch atomically; the template is checked before anything is written,
        down to rendering the first row within the render limits, and a spending cap is one
        the database can keep.

        With ``idempotency``, a request repeated under the same key returns the first one's
        batch instead of creating another. An ``economy`` batch goes through the provider's
        Batch API; after ``deadline_h`` hours (default ``BULKGEN_ECONOMY_DEADLINE_H``) what
        is still missing goes online if ``fallback_online``.
        """
        if budget_usd is not None:
            budget_usd = check_budget_usd(budget_usd)
        template = batch_template(options)
        if rows:
            await self._render_first(template, rows[0], options)
        stored_options = options.model_dump(exclude={"template"})
        inputs = [
            {"keyword": r.keyword, "variables": r.variables, "overrides": r.overrides} for r in rows
        ]
        return await self.store.batch_create(
            account=account,
            options=stored_options,
            template=template.text,
            template_version=template.version,
            inputs=inputs,
            budget_usd=budget_usd,
            idempotency=idempotency,
            mode=mode,
            deadline_s=_deadline_s(mode, deadline_h, fallback_online, self.settings),
            fallback_online=fallback_online,
        )

    async def fleet_concurrency(self, model: str) -> ConcurrencyView:
        """The concurrency limit the workers probed for ``model`` on the configured
        provider, as they share it in Redis. Unknown when it cannot be seen from here:
        without Redis each worker keeps its own, and each worker's built-in simulator is a
        server of its own."""
        endpoint = provider_endpoint(self.settings)
        if endpoint is None:
            return ConcurrencyView(None, "each worker runs its own simulator")
        if self.redis is None:
            return ConcurrencyView(None, "without Redis each worker probes its own")
        key = LimitKey(endpoint[0], api_key_id(endpoint[1]), model)
        try:
            async with asyncio.timeout(REDIS_READ_TIMEOUT_S):
                reading = await read_fleet_limit(self.redis, key)
        except (RedisError, OSError, TimeoutError) as exc:
            return ConcurrencyView(None, f"Redis did not answer: {type(exc).__name__}")
        if reading is None:
            return ConcurrencyView(None, "not probed: limits announced, or no worker running")
        return ConcurrencyView(
            reading.limit, f"probed by the fleet, changed {reading.age_s:.0f} s ago"
        )

    async def _render_first(
        self, template: PromptTemplate, row: JobInput, options: BatchOptions
    ) -> None:
        """A template that cannot render (undefined variable, unsafe access, too slow, too
        long) is refused here, whole, instead of failing every job one by one."""
        try:
            await self.renderer.render(template, row.template_variables(row.options(options)))
        except InputError as exc:
            raise InputError(f"the prompt template cannot render it: {exc}", row=1) from exc

    async def aclose(self) -> None:
        await self.renderer.aclose()
        await self._closers.aclose()


def _deadline_s(
    mode: BatchMode, deadline_h: float | None, fallback_online: bool, settings: Settings
) -> float | None:
    """Seconds from now until what is missing goes online; None: no deadline (an online
    batch, or an economy batch that takes whatever time the provider takes)."""
    if mode != BatchMode.ECONOMY and (deadline_h is not None or fallback_online):
        raise ConfigError("a deadline and its fallback apply to economy batches only")
    if deadline_h is not None and not fallback_online:
        raise ConfigError(
            "a deadline needs the fallback to online (--fallback-online): without it an "
            "economy batch takes the time the provider takes"
        )
    if not fallback_online:
        return None
    hours = settings.economy_deadline_h if deadline_h is None else deadline_h
    if not 0 < hours <= 24 * 365:
        raise ConfigError(f"the deadline must be more than 0 and at most a year, not {hours} h")
    return hours * 3600


def economy_config(settings: Settings) -> EconomyConfig:
    return EconomyConfig(
        limits=BatchLimits(settings.batch_max_requests, settings.batch_max_bytes),
        lease_s=settings.economy_lease_s,
        poll_s=settings.economy_poll_s,
        max_poll_s=settings.economy_max_poll_s,
        tick_s=settings.economy_tick_s,
        retry_s=settings.economy_retry_s,
    )


def worker_config(
    settings: Settings, *, concurrency: int | None = None, burst: bool = False
) -> WorkerConfig:
    """The worker's knobs from settings; ``concurrency`` (a command-line flag) wins."""
    return WorkerConfig(
        concurrency=concurrency or settings.concurrency,
        concurrency_auto_max=settings.concurrency_auto_max,
        lease_s=settings.lease_s,
        heartbeat_s=settings.heartbeat_s,
        poll_s=settings.poll_s,
        shutdown_grace_s=settings.shutdown_grace_s,
        status_linger_ms=settings.status_linger_ms,
        max_attempts=settings.max_attempts,
        cache_scope=settings.cache_scope,
        burst=burst,
    )


class NoProvider:
    """Stands in for commands that generate nothing (status, results, migrations), so they
    neither start the simulator nor need an API key."""

    base_url = ""
    api_key_id = ""

    async def complete(self, request: ChatRequest) -> Completion:
        raise ConfigError("this command does not call a provider")

    async def aclose(self) -> None:
        return None


def provider_endpoint(settings: Settings) -> tuple[str, str] | None:
    """The configured provider's base URL and API key; None when each process starts the
    built-in simulator (a server of its own, on a port of its own)."""
    if settings.uses_simulator:
        return None
    base_url = settings.openai_base_url or OPENAI_BASE_URL
    if settings.openai_api_key is None:
        return base_url, NO_API_KEY
    return base_url, settings.openai_api_key.get_secret_value()


async def _provider(
    settings: Settings, stack: contextlib.AsyncExitStack
) -> tuple[Provider, OpenAIBatchClient]:
    """The online provider and the Batch API client of the same server and key."""
    endpoint = provider_endpoint(settings)
    if endpoint is None:
        sim = await stack.enter_async_context(SimulatorProcess(BUILTIN_SIMULATOR))
        base_url, api_key = sim.base_url, SIMULATOR_API_KEY
        logger.info("service.simulator", extra={"base_url": base_url})
    else:
        base_url, api_key = endpoint
        if api_key == NO_API_KEY:
            # A self-hosted OpenAI-compatible server often needs no key; the SDK needs one.
            logger.warning("service.no_api_key", extra={"base_url": base_url})
    provider = OpenAICompatProvider(base_url, api_key, timeout_s=settings.provider_timeout_s)
    stack.push_async_callback(provider.aclose)
    batch_client = OpenAIBatchClient(base_url, api_key, timeout_s=settings.provider_timeout_s)
    stack.push_async_callback(batch_client.aclose)
    return provider, batch_client


def _redis_client(settings: Settings) -> RedisClient:
    """One bounded connection pool per process, like the database's (per node on a
    cluster): see :mod:`bulkgen.redis_client`."""
    return open_redis(
        settings.redis_url or "",
        cluster=settings.redis_cluster,
        max_connections=settings.redis_pool_max,
    )


async def open_services(
    settings: Settings,
    *,
    provider: Provider | None = None,
    need_provider: bool = True,
    apply_migrations: bool = True,
    metrics: Metrics | None = None,
) -> Services:
    """Build everything; the caller must ``await services.aclose()`` (or use ``services()``)."""
    stack = contextlib.AsyncExitStack()
    prices = load_price_table(settings.prices_json)  # a bad price table fails before any work
    try:
        database_url = settings.database_url or await start_embedded(settings.data_dir)
        pool = await create_pool(
            database_url,
            max_size=settings.db_pool_max,
            min_size=settings.db_pool_min,
            command_timeout_s=settings.db_command_timeout_s,
        )
        stack.push_async_callback(pool.close)
        if apply_migrations:  # read-only commands never write DDL where they point
            await migrate(pool)
        redis = None
        if settings.redis_url:
            redis = _redis_client(settings)
            stack.push_async_callback(redis.aclose)
            await discover(redis)
        metrics = metrics or default_metrics
        batch_client = None
        if provider is None and need_provider:
            provider, batch_client = await _provider(settings, stack)
        elif provider is None:
            provider = NoProvider()
        governor = await build_governor(settings, redis, metrics=metrics)
        stack.push_async_callback(governor.aclose)
        _, singleflight = build_cache(settings, redis, metrics=metrics)
    except BaseException:
        await stack.aclose()
        raise
    store = Store(pool)
    return Services(
        settings=settings,
        store=store,
        provider=provider,
        governor=governor,
        singleflight=singleflight,
        metrics=metrics,
        redis=redis,
        database_url=database_url,
        _closers=stack,
        budget=_budget_ledger(settings, store, prices, redis, metrics),
        prices=prices,
        renderer=build_renderer(settings),
        batch_client=batch_client,
    )


def batch_template(options: BatchOptions) -> PromptTemplate:
    """The template a batch's jobs render: its own, else the shipped one."""
    return (
        PromptTemplate.from_text(options.template) if options.template else PromptTemplate.default()
    )


def build_renderer(settings: Settings) -> TemplateRenderer:
    return TemplateRenderer(
        RenderLimits(
            timeout_s=settings.template_render_timeout_s, max_chars=settings.prompt_max_chars
        )
    )


async def dry_run(
    settings: Settings,
    rows: Sequence[JobInput],
    options: BatchOptions,
    *,
    budget_usd: Decimal | None = None,
) -> BatchEstimate:
    """What ``Services.submit`` would enqueue, checked as it checks it (and every row's
    prompt rendered, not only the first), with no database, Redis or provider opened."""
    if budget_usd is not None:
        check_budget_usd(budget_usd)
    prices = load_price_table(settings.prices_json)
    renderer = build_renderer(settings)
    try:
        return await estimate_batch(rows, options, batch_template(options), renderer, prices)
    finally:
        await renderer.aclose()


def _budget_ledger(
    settings: Settings,
    store: Store,
    prices: PriceTable,
    redis: RedisClient | None,
    metrics: Metrics,
) -> BudgetLedger:
    """Fleet-wide in Redis when there is one, per process otherwise; seeded from the store.

    A call waiting for others to settle gives up after ``provider_timeout_s``: a reservation
    still blocking it by then was most likely left by a worker that died mid-call.
    """
    backend: LedgerBackend = (
        MemoryLedger() if redis is None else RedisLedger(redis, metrics=metrics)
    )
    return BudgetLedger(
        backend,
        lambda batch_id: store.batch_budget_seed(batch_id, prices),
        prices=prices,
        wait_s=settings.provider_timeout_s,
        metrics=metrics,
    )


@contextlib.asynccontextmanager
async def services(settings: Settings, **kwargs: Any) -> AsyncIterator[Services]:
    built = await open_services(settings, **kwargs)
    try:
        yield built
    finally:
        await built.aclose()
