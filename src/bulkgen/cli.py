"""The ``bulkgen`` command line. ``asyncio.run`` lives here and nowhere else."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Callable, Coroutine
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from bulkgen import __version__, accounts, logs
from bulkgen.accounts import DEFAULT_QUOTA
from bulkgen.batch_status import read_batch_status
from bulkgen.db.account_scope import batch_retry_failed
from bulkgen.db.accounts import AccountRow
from bulkgen.db.migrate import migrate
from bulkgen.db.store import prune_batches
from bulkgen.demo import run_demo, summary_table
from bulkgen.errors import BulkgenError, ConfigError, InputError
from bulkgen.estimate import BatchEstimate, Cost
from bulkgen.export import write_results
from bulkgen.intake import MAX_BATCH_ROWS, load_file
from bulkgen.models import BatchMode
from bulkgen.options import (
    BatchOptions,
    check_budget_usd,
    check_option,
    option_bounds,
    validate_options,
)
from bulkgen.pricing import PRICES_AS_OF
from bulkgen.progress import batch_progress, wait_for_batch
from bulkgen.service import Services, services
from bulkgen.service import dry_run as service_dry_run
from bulkgen.settings import Settings
from bulkgen.simulator.cli import simulate
from bulkgen.worker_progress import worker_progress

HELP = """\
Generate one article per keyword, for batches of 50 to 10,000 keywords, through OpenAI or
any OpenAI-compatible API: as fast as the provider's rate limits allow, and every job ends
done with its content or failed with its reason, never silently empty.

Start with `bulkgen demo`: a 200-article batch against the built-in simulator, nothing to
set up. Then, with your own keywords:

* `bulkgen submit keywords.csv`: enqueue a batch from a CSV or JSONL file, print its id
* `bulkgen worker --burst`: run the queued jobs, then exit
* `bulkgen status BATCH_ID`: progress, tokens, cost and errors
* `bulkgen results BATCH_ID --out articles/`: export the articles

Settings come from the environment: `DATABASE_URL`, `REDIS_URL`, `OPENAI_API_KEY`,
`OPENAI_BASE_URL` and `BULKGEN_*` (such as `BULKGEN_MODEL`). With none set, bulkgen uses
embedded PostgreSQL and the built-in simulator.
"""

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help=HELP, rich_markup_mode="markdown"
)
db_app = typer.Typer(no_args_is_help=True, help="Database maintenance.")
app.add_typer(db_app, name="db")

console = Console()
err = Console(stderr=True)
T = TypeVar("T")

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Embedded PostgreSQL data folder.")
]
JsonFlag = Annotated[bool, typer.Option("--json", help="End with a JSON summary line.")]
BatchArg = Annotated[str, typer.Argument(help="The batch id that submit printed.")]


def _show_version(value: bool) -> None:
    if value:
        print(f"bulkgen {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    pass


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one command; every bulkgen error becomes a clear message and exit code 1."""
    try:
        return asyncio.run(coro)
    except BulkgenError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None


def _settings(data_dir: Path | None = None, **overrides: Any) -> Settings:
    try:
        base = Settings()
        changes = {k: v for k, v in overrides.items() if v is not None}
        if data_dir is not None:
            changes["data_dir"] = data_dir
        return base.model_copy(update=changes) if changes else base
    except ValidationError as exc:
        err.print(f"[bold red]invalid settings:[/] {_settings_problems(exc)}", highlight=False)
        raise typer.Exit(2) from None


def _settings_problems(exc: ValidationError) -> str:
    """One line per bad variable, named as it is set (``DATABASE_URL``, ``BULKGEN_RPM``),
    without the value: a service URL may hold a password."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        name = str(error["loc"][0]) if error["loc"] else ""  # a variable's own name, or ...
        if name in Settings.model_fields:  # ... a field read as BULKGEN_<FIELD>
            name = f"BULKGEN_{name.upper()}"
        message = error["msg"].removeprefix("Value error, ")
        named = not name or message.startswith(name)
        lines.append(message if named else f"{name}: {message}")
    return "\n  ".join(lines)


def _batch_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        err.print(f"[bold red]error:[/] {text!r} is not a batch id (a UUID)")
        raise typer.Exit(2) from None


@app.command()
def demo(
    jobs: Annotated[int, typer.Option(min=1, max=MAX_BATCH_ROWS, help="How many articles.")] = 200,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Run a batch end to end on this machine, with live progress and a summary.

    Uses the built-in simulator and (without DATABASE_URL) embedded PostgreSQL: nothing
    to set up, nothing billed.
    """
    logs.configure(logging.ERROR)
    settings = _settings(data_dir)
    report = _run(run_demo(settings, jobs=jobs, console=console, show=not as_json))
    if not as_json:
        console.print(summary_table(report))
    else:
        print(json.dumps(report.as_dict()))


@db_app.command("migrate")
def db_migrate(data_dir: DataDir = None) -> None:
    """Apply pending schema migrations."""

    async def body() -> list[str]:
        async with services(_settings(data_dir), need_provider=False) as svc:
            return await migrate(svc.store.pool)

    applied = _run(body())
    console.print("schema up to date" if not applied else f"applied: {', '.join(applied)}")


@db_app.command("prune")
def db_prune(
    older_than_days: Annotated[int, typer.Option(min=0, help="Age of batches to delete.")] = 30,
    data_dir: DataDir = None,
) -> None:
    """Delete finished batches (jobs and results too) older than the cutoff."""

    async def body() -> tuple[int, int]:
        async with services(
            _settings(data_dir), need_provider=False, apply_migrations=False
        ) as svc:
            return await prune_batches(svc.store, older_than_days=older_than_days)

    batches, jobs = _run(body())
    console.print(f"deleted {batches} batches ({jobs} jobs)")


def _checked(name: str) -> Callable[[Any], Any]:
    """A flag's callback that checks its value as the batch options declare it, so a bad
    value is refused before anything runs, with the flag's name in the message."""

    def check(value: Any) -> Any:
        if value is not None:
            try:
                check_option(name, value)
            except ValueError as exc:
                raise typer.BadParameter(str(exc)) from None
        return value  # as given: validate_options converts it ("none" -> no temperature)

    return check


def _option_flag(name: str, fleet_variable: str | None = None, **extra: Any) -> Any:
    """A ``submit`` flag for a batch option, described and checked from its declaration:
    what it is, its range, its default (``fleet_variable`` names the setting that holds
    it), and a clear error naming the flag for a bad value."""
    field = BatchOptions.model_fields[name]
    text, _, note = (field.description or "").partition(";")
    bounds = option_bounds(name)
    if bounds is not None:
        text += f" ({bounds[0]:,g} to {bounds[1]:,g})"
    text += f";{note}" if note else ""
    if fleet_variable is not None:
        text += f" [default: ${fleet_variable} or {Settings.model_fields[name].default}]"
    elif field.default is not None:
        text += f" [default: {field.default}]"
    return typer.Option(callback=_checked(name), help=text, show_default=False, **extra)


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="CSV with a keyword column, or JSONL.")],
    account: Annotated[str, typer.Option(help="Account name.")] = "default",
    model: Annotated[str | None, _option_flag("model", "BULKGEN_MODEL")] = None,
    tone: Annotated[str | None, _option_flag("tone")] = None,
    language: Annotated[str | None, _option_flag("language")] = None,
    target_words: Annotated[int | None, _option_flag("target_words")] = None,
    max_tokens: Annotated[int | None, _option_flag("max_tokens", "BULKGEN_MAX_TOKENS")] = None,
    temperature: Annotated[str | None, _option_flag("temperature", metavar="NUMBER|none")] = None,
    template: Annotated[Path | None, typer.Option(help="A Jinja2 prompt template.")] = None,
    budget_usd: Annotated[str | None, typer.Option(help="Spending cap for the batch.")] = None,
    mode: Annotated[
        BatchMode,
        typer.Option(
            case_sensitive=False,
            help="online: one call per job, as fast as the rate limits allow. economy: "
            "through the provider's Batch API, at half the price, within its 24-hour window.",
        ),
    ] = BatchMode.ONLINE,
    deadline: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION",
            help="With --fallback-online: when what is still missing runs online, e.g. 6h, "
            "90m, 2d [default: BULKGEN_ECONOMY_DEADLINE_H, 24h].",
        ),
    ] = None,
    fallback_online: Annotated[
        bool,
        typer.Option(
            "--fallback-online",
            help="Economy mode: at the deadline, run what is still missing online.",
        ),
    ] = False,
    wait: Annotated[bool, typer.Option(help="Show progress until the batch ends.")] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Check the file and every row's prompt, print the estimated tokens and "
            "cost, and enqueue nothing.",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="With --dry-run: the estimate as one JSON line.")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Enqueue a batch from a CSV or JSONL file and print its id; a worker runs it.

    A column named like an option (model, tone, language, target_words, max_tokens,
    temperature) overrides that option for its row. With --dry-run, nothing is enqueued
    and no database is opened: the file is checked as a real submit checks it, and the
    batch's estimated tokens and cost are printed instead. With --mode economy the batch
    goes through the provider's Batch API: half the price, answers within a day.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", account):
        err.print("[bold red]error:[/] --account takes 1-64 letters, digits, '.', '_' or '-'")
        raise typer.Exit(2)
    raw: dict[str, Any] = {
        "model": model,
        "tone": tone,
        "language": language,
        "target_words": target_words,
        "max_tokens": max_tokens,
        "temperature": temperature,
    }
    if as_json and not dry_run:
        err.print("[bold red]error:[/] --json goes with --dry-run")
        raise typer.Exit(2)
    if wait and dry_run:
        err.print("[bold red]error:[/] --wait cannot go with --dry-run: nothing is enqueued")
        raise typer.Exit(2)
    budget = _budget(budget_usd)
    if mode != BatchMode.ECONOMY and (deadline is not None or fallback_online):
        err.print("[bold red]error:[/] --deadline and --fallback-online go with --mode economy")
        raise typer.Exit(2)
    deadline_h = _hours(deadline)
    if deadline is not None and not fallback_online:
        err.print(
            "[bold red]error:[/] --deadline goes with --fallback-online: it says when what "
            "is still missing runs online (without it, the provider's 24 hours apply)"
        )
        raise typer.Exit(2)
    settings = _settings(data_dir)

    async def body() -> None:
        if template is not None:
            raw["template"] = _read_text(template, "template")
        options = validate_options({k: v for k, v in raw.items() if v is not None}, settings)
        rows = load_file(file)
        if dry_run:
            estimate = await service_dry_run(settings, rows, options, budget_usd=budget)
            _print_estimate(estimate, file, budget, settings, mode=mode, as_json=as_json)
            return
        async with services(settings, need_provider=False) as svc:
            batch_id = await svc.submit(
                rows,
                options,
                account=account,
                budget_usd=budget,
                mode=mode,
                deadline_h=deadline_h,
                fallback_online=fallback_online,
            )
            print(batch_id, flush=True)
            if wait:
                async with batch_progress(svc.store, batch_id, len(rows), console):
                    await wait_for_batch(svc.store, batch_id)
                await _print_status(svc, batch_id, as_json=False)

    _run(body())


def _print_estimate(
    estimate: BatchEstimate,
    file: Path,
    budget: Decimal | None,
    settings: Settings,
    *,
    mode: BatchMode,
    as_json: bool,
) -> None:
    """The dry run's answer, worded for someone who has never run a batch."""
    overridden = bool(settings.prices_json and settings.prices_json.strip())
    data = {
        "dry_run": True,
        "enqueued": False,
        "file": str(file),
        "mode": str(mode),
        **estimate.as_dict(),
        "budget_usd": None if budget is None else str(budget),
        "prices_as_of": PRICES_AS_OF,
        "prices_overridden": overridden,
    }
    if as_json:
        print(json.dumps(data))
        return
    for line in _estimate_lines(estimate, file, budget, mode=mode, overridden=overridden):
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def _estimate_lines(
    estimate: BatchEstimate,
    file: Path,
    budget: Decimal | None,
    *,
    mode: BatchMode,
    overridden: bool,
) -> list[str]:
    jobs = estimate.jobs
    models = ", ".join(f"{m.model}: {m.jobs:,}" for m in estimate.by_model)
    online, batch = estimate.online, estimate.batch
    prices = "BULKGEN_PRICES_JSON over the shipped" if overridden else "the shipped"
    lines = [
        f"Dry run of {file}: every row checked, nothing enqueued.",
        "",
        f"  jobs                          {jobs:,}  (model {models})",
        f"  prompt tokens (estimated)     {estimate.prompt_tokens:,}"
        f"  (about {estimate.prompt_tokens // jobs:,} per job)",
        f"  answer tokens, worst case     {estimate.max_answer_tokens:,}"
        f"  (if every answer uses all of max_tokens: {estimate.max_answer_tokens // jobs:,}"
        " per job)",
        f"  answer tokens, expected       {estimate.expected_answer_tokens:,}"
        f"  (if every article is about target_words long, 4 tokens per 3 words:"
        f" {estimate.expected_answer_tokens // jobs:,} per job)",
        "",
        f"  {'estimated cost (USD)':<34}{'expected':<13}worst case",
        _cost_row("online", mode == BatchMode.ONLINE, online),
        _cost_row("economy (Batch API)", mode == BatchMode.ECONOMY, batch),
        "",
        "Notes:",
        "- Tokens are estimated without a tokenizer (about 4 characters per token); the "
        "provider bills its own count.",
        f"- Prices: {prices} list prices of {PRICES_AS_OF}.",
        "- Economy mode (--mode economy) sends the batch through the provider's Batch API: "
        "half the price, answers within 24 hours.",
    ]
    chosen = batch if mode == BatchMode.ECONOMY else online
    if estimate.unpriced_models:
        lines.append(
            f"- No price is known for {', '.join(estimate.unpriced_models)}: those jobs count "
            "as $0 above. Set their prices in BULKGEN_PRICES_JSON."
        )
    if budget is not None:
        if chosen.worst_case <= budget:
            verdict = "even the worst case fits within it"
        elif chosen.expected <= budget:
            verdict = "the expected cost fits within it, the worst case does not"
        else:
            verdict = "the expected cost is above it"
        lines.append(
            f"- Budget {_usd(budget)}: {verdict}. Jobs that would take spending past the "
            "budget end cancelled (budget_exceeded)."
        )
    return lines


def _cost_row(label: str, this_batch: bool, cost: Cost) -> str:
    """One row of the dry run's cost table; the mode the batch would run in is marked."""
    name = f"{label} (this batch)" if this_batch else label
    return f"  {name:<34}{_usd(cost.expected):<13}{_usd(cost.worst_case)}"


def _hours(duration: str | None) -> float | None:
    """``24h``, ``90m``, ``2d`` or a number of hours -> hours; a clear error otherwise."""
    if duration is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhd]?)\s*", duration.lower())
    if match is None or float(match[1]) <= 0:
        err.print(
            f"[bold red]error:[/] --deadline takes a duration such as 24h, 90m or 2d, "
            f"not {duration!r}"
        )
        raise typer.Exit(2)
    per_unit = {"m": 1 / 60, "h": 1.0, "": 1.0, "d": 24.0}
    return float(match[1]) * per_unit[match[2]]


def _usd(amount: Decimal) -> str:
    """Cents from a dollar up; smaller sums keep 4 decimals so they do not show as $0.00."""
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:,.4f}"


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the {what} {path}: {exc}") from exc


def _budget(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        return check_budget_usd(text)
    except ConfigError as exc:
        err.print(f"[bold red]error:[/] --{exc}".replace("budget_usd", "budget-usd", 1))
        raise typer.Exit(2) from None


@app.command()
def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=10_000,
            help="Jobs in flight at most [default: $BULKGEN_CONCURRENCY, else as the rate allows]",
            show_default=False,
        ),
    ] = None,
    burst: Annotated[bool, typer.Option(help="Drain the queue, then exit.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Claim and run jobs until stopped (SIGINT/SIGTERM) or, with --burst, until none is left."""
    logs.configure(logging.INFO)

    async def body() -> None:
        async with services(_settings(data_dir)) as svc:
            running = svc.worker(concurrency=concurrency, burst=burst)
            async with worker_progress(running, svc.store, err):
                await running.run(install_signals=True)

    _run(body())


@app.command()
def cancel(batch: BatchArg, data_dir: DataDir = None) -> None:
    """Cancel a batch: queued jobs end at once, running ones end when their call returns."""
    batch_id = _batch_id(batch)

    async def body() -> int:
        async with services(
            _settings(data_dir), need_provider=False, apply_migrations=False
        ) as svc:
            if await svc.store.batch_get(batch_id) is None:
                raise ConfigError(f"no batch {batch_id}")
            return await svc.store.batch_cancel(batch_id)

    cancelled = _run(body())
    console.print(f"cancelled {cancelled} queued jobs; running jobs stop when their call ends")


@app.command()
def status(batch: BatchArg, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Show a batch's progress: job counts, tokens, cost and errors."""
    batch_id = _batch_id(batch)

    async def body() -> None:
        async with services(
            _settings(data_dir), need_provider=False, apply_migrations=False
        ) as svc:
            await _print_status(svc, batch_id, as_json=as_json)

    _run(body())


async def _print_status(svc: Services, batch_id: uuid.UUID, *, as_json: bool) -> None:
    record = await svc.store.batch_get(batch_id)
    if record is None:
        raise ConfigError(f"no batch {batch_id}")
    status = await read_batch_status(svc.store, record, svc.prices)
    model = str(record.options.get("model") or svc.settings.model)
    concurrency = await svc.fleet_concurrency(model)
    data = status.as_dict()
    if as_json:
        data["concurrency_limit"] = {
            "model": model,
            "limit": concurrency.limit,
            "note": concurrency.note,
        }
        print(json.dumps(data))
        return
    table = Table(title=f"batch {batch_id} ({record.account})", show_header=False)
    for key, value in data.items():
        if key not in ("batch_id", "account", "errors"):
            table.add_row(key.replace("_", " "), _status_cell(key, value))
    for error in status.errors:
        table.add_row(f"error: {error.kind}", f"{error.jobs:,}  e.g. {error.example[:80]}")
    limit = "unknown" if concurrency.limit is None else str(concurrency.limit)
    table.add_row(f"concurrency limit ({model})", f"{limit} ({concurrency.note})")
    console.print(table)


def _status_cell(key: str, value: object) -> str:
    """Counts with separators, money as USD, shares as percentages, lists joined; nothing
    shown for "none"."""
    if isinstance(value, int):
        return f"{value:,}"
    if key.endswith("_share") and isinstance(value, float):
        return f"{value:.1%}"
    if key.endswith("_usd") and isinstance(value, str):
        return f"${Decimal(value):,.6f}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, str):
        return value
    return ""


@app.command()
def results(
    batch: BatchArg,
    out: Annotated[Path, typer.Option(help="A folder (one .md per article) or a .jsonl file.")],
    force: Annotated[bool, typer.Option(help="Replace an existing .jsonl file.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Export a batch's articles: one Markdown file each, or every job as JSON lines."""
    batch_id = _batch_id(batch)

    async def body() -> int:
        async with services(
            _settings(data_dir), need_provider=False, apply_migrations=False
        ) as svc:
            if await svc.store.batch_get(batch_id) is None:
                raise ConfigError(f"no batch {batch_id}")
            return await write_results(svc.store.results_iter(batch_id), out, force=force)

    written = _run(body())
    console.print(f"wrote {written} articles to {out}")


app.command("simulate", help="Serve the OpenAI-compatible simulator on its own.")(simulate)


@app.command()
def retry(batch: str, data_dir: DataDir = None) -> None:
    """Put a batch's failed jobs back in the queue with fresh attempts."""
    batch_id = _batch_id(batch)

    async def body() -> int:
        async with services(
            _settings(data_dir), need_provider=False, apply_migrations=False
        ) as svc:
            record = await svc.store.batch_get(batch_id)
            requeued = (
                None
                if record is None
                else await batch_retry_failed(svc.store, record.account_id, batch_id)
            )
            if requeued is None:
                raise ConfigError(f"no batch {batch_id}")
            return requeued

    requeued = _run(body())
    console.print(f"re-queued {requeued} failed jobs; a worker runs them next")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="0 picks a free port.")] = 8000,
    worker: Annotated[
        bool, typer.Option("--worker/--no-worker", help="Also run a worker in this process.")
    ] = True,
    concurrency: Annotated[int | None, typer.Option(min=1, max=10_000)] = None,
    data_dir: DataDir = None,
) -> None:
    """Serve the HTTP API (docs at /docs); by default a worker runs in the same process."""
    # Imported here: the web stack costs every other command start-up time for nothing.
    from bulkgen.api.serve import FIRST_ACCOUNT, ServeOptions, serve_api
    from bulkgen.api.settings import ApiSettings

    logs.configure(logging.INFO)
    settings = _settings(data_dir)
    try:
        api_settings = ApiSettings()
    except ValidationError as exc:
        err.print(f"[bold red]invalid settings:[/] {exc}")
        raise typer.Exit(2) from None

    def announce(base_url: str, first_key: str | None) -> None:
        print(f"bulkgen API on {base_url} (docs: {base_url}/docs)", flush=True)
        if first_key is not None:
            print(f"API key for account '{FIRST_ACCOUNT}' (shown only this once):", flush=True)
            print(first_key, flush=True)

    options = ServeOptions(host=host, port=port, worker=worker, concurrency=concurrency)
    _run(serve_api(settings, api_settings, options, announce))


accounts_app = typer.Typer(no_args_is_help=True, help="Accounts and their API keys.")
app.add_typer(accounts_app, name="accounts")
AccountName = Annotated[str, typer.Argument(help="1-64 letters, digits, '.', '_' or '-'.")]


def _show_key(name: str, key: str) -> None:
    """The key alone on stdout (so `KEY=$(bulkgen accounts create x)` works), the note on
    stderr. This is the only time the key is ever shown."""
    err.print(f"API key for account {name!r} (shown only this once; store it now):")
    print(key, flush=True)


@accounts_app.command("create")
def accounts_create(
    name: AccountName,
    concurrency_quota: Annotated[
        int, typer.Option(help="Jobs this account may have running at once.")
    ] = DEFAULT_QUOTA,
    data_dir: DataDir = None,
) -> None:
    """Create an account and print its API key."""

    async def body() -> str:
        accounts.check_name(name)
        accounts.check_quota(concurrency_quota)
        async with services(_settings(data_dir), need_provider=False) as svc:
            return await accounts.create_account(svc.store, name, quota=concurrency_quota)

    _show_key(name, _run(body()))


@accounts_app.command("list")
def accounts_list(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Every account: quota, claim weight, creation time, whether it has a key, and its
    batches."""

    async def body() -> list[AccountRow]:
        async with services(
            _settings(data_dir), need_provider=False, apply_migrations=False
        ) as svc:
            return await accounts.list_accounts(svc.store)

    rows = _run(body())
    if as_json:
        print(json.dumps([_account_json(r) for r in rows]))
        return
    table = Table("name", "quota", "weight", "created", "key", "batches")
    for r in rows:
        created = r.created_at.strftime("%Y-%m-%d %H:%M")
        has_key = "yes" if r.has_key else "no"
        table.add_row(
            r.name,
            f"{r.concurrency_quota:,}",
            str(r.claim_weight),
            created,
            has_key,
            f"{r.batches:,}",
        )
    console.print(table)


def _account_json(row: AccountRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "concurrency_quota": row.concurrency_quota,
        "claim_weight": row.claim_weight,
        "created_at": row.created_at.isoformat(),
        "has_key": row.has_key,
        "batches": row.batches,
    }


@accounts_app.command("rotate-key")
def accounts_rotate_key(name: AccountName, data_dir: DataDir = None) -> None:
    """Give the account a new API key; the old one stops working at once."""

    async def body() -> str:
        async with services(_settings(data_dir), need_provider=False) as svc:
            return await accounts.rotate_key(svc.store, name)

    _show_key(name, _run(body()))


@accounts_app.command("revoke")
def accounts_revoke(name: AccountName, data_dir: DataDir = None) -> None:
    """Remove the account's API key: no key works for it until `rotate-key`."""

    async def body() -> None:
        async with services(_settings(data_dir), need_provider=False) as svc:
            await accounts.revoke_key(svc.store, name)

    _run(body())
    console.print(f"account {name!r} has no API key now; requests with the old one get 401")


@accounts_app.command("set-quota")
def accounts_set_quota(
    name: AccountName,
    quota: Annotated[int, typer.Argument(help="Jobs the account may have running at once.")],
    data_dir: DataDir = None,
) -> None:
    """Set how many jobs the account may have running at once, across every worker."""

    async def body() -> None:
        accounts.check_quota(quota)
        async with services(_settings(data_dir), need_provider=False) as svc:
            await accounts.set_quota(svc.store, name, quota)

    _run(body())
    console.print(f"account {name!r} may now run {quota:,} jobs at once")


@accounts_app.command("set-weight")
def accounts_set_weight(
    name: AccountName,
    weight: Annotated[int, typer.Argument(help="1 to 100; every account starts at 1.")],
    data_dir: DataDir = None,
) -> None:
    """Set the account's weight in the fair claim: while accounts wait together, each gets
    a share of the workers in proportion to its weight."""

    async def body() -> None:
        accounts.check_weight(weight)
        async with services(_settings(data_dir), need_provider=False) as svc:
            await accounts.set_weight(svc.store, name, weight)

    _run(body())
    console.print(
        f"account {name!r} now weighs {weight} in the claim: waiting beside accounts that "
        f"weigh 1, it is offered {weight} jobs for each one of theirs"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
