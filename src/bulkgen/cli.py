"""The ``bulkgen`` command line. ``asyncio.run`` lives here and nowhere else."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Callable, Coroutine
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from bulkgen import __version__, logs
from bulkgen.db.migrate import migrate
from bulkgen.db.store import prune_batches
from bulkgen.demo import run_demo, summary_table
from bulkgen.errors import BulkgenError, ConfigError, InputError
from bulkgen.export import write_results
from bulkgen.intake import MAX_BATCH_ROWS, load_file
from bulkgen.models import JobStatus
from bulkgen.options import BatchOptions, check_option, option_bounds, validate_options
from bulkgen.progress import BatchCounts, batch_progress, wait_for_batch
from bulkgen.service import Services, services
from bulkgen.settings import Settings
from bulkgen.simulator.cli import simulate

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
        err.print(f"[bold red]invalid settings:[/] {exc}")
        raise typer.Exit(2) from None


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
    wait: Annotated[bool, typer.Option(help="Show progress until the batch ends.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Enqueue a batch from a CSV or JSONL file and print its id; a worker runs it.

    A column named like an option (model, tone, language, target_words, max_tokens,
    temperature) overrides that option for its row.
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
    budget = _budget(budget_usd)
    settings = _settings(data_dir)

    async def body() -> None:
        if template is not None:
            raw["template"] = _read_text(template, "template")
        options = validate_options({k: v for k, v in raw.items() if v is not None}, settings)
        rows = load_file(file)
        async with services(settings, need_provider=False) as svc:
            batch_id = await svc.submit(rows, options, account=account, budget_usd=budget)
            print(batch_id, flush=True)
            if wait:
                async with batch_progress(svc.store, batch_id, len(rows), console):
                    await wait_for_batch(svc.store, batch_id)
                await _print_status(svc, batch_id, as_json=False)

    _run(body())


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the {what} {path}: {exc}") from exc


def _budget(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = Decimal(-1)
    if not value.is_finite() or value < 0:
        err.print(f"[bold red]error:[/] --budget-usd must be a non-negative amount, not {text!r}")
        raise typer.Exit(2)
    return value


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
            await svc.worker(concurrency=concurrency, burst=burst).run(install_signals=True)

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
    counts = await svc.store.batch_counts(batch_id)
    summary = BatchCounts.of(record.total, counts)
    errors = await svc.store.batch_errors(batch_id)
    usage = await svc.store.batch_usage(batch_id, svc.prices)
    data: dict[str, Any] = {
        "batch_id": str(batch_id),
        "account": record.account,
        "total": record.total,
        **{s.value: summary.get(s) for s in JobStatus},
        "prompt_tokens": sum(c.prompt_tokens for c in counts),
        "completion_tokens": sum(c.completion_tokens for c in counts),
        "cached": sum(c.cached for c in counts),
        **usage.as_dict(),
        "budget_usd": None if record.budget_usd is None else str(record.budget_usd),
        "errors": {kind: jobs for kind, jobs, _ in errors},
    }
    if as_json:
        print(json.dumps(data))
        return
    table = Table(title=f"batch {batch_id} ({record.account})", show_header=False)
    for key, value in data.items():
        if key not in ("batch_id", "account", "errors"):
            table.add_row(key.replace("_", " "), _status_cell(key, value))
    for kind, jobs, example in errors:
        table.add_row(f"error: {kind}", f"{jobs:,}  e.g. {example[:80]}")
    console.print(table)


def _status_cell(key: str, value: object) -> str:
    """Counts with separators, money as USD, lists joined; nothing shown for "none"."""
    if isinstance(value, int):
        return f"{value:,}"
    if key.endswith("_usd") and isinstance(value, str):
        return f"${Decimal(value):,.6f}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return ""


@app.command()
def results(
    batch: BatchArg,
    out: Annotated[Path, typer.Option(help="A folder (one .md per article) or a .jsonl file.")],
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
            return await write_results(svc.store.results_iter(batch_id), out)

    written = _run(body())
    console.print(f"wrote {written} articles to {out}")


app.command("simulate", help="Serve the OpenAI-compatible simulator on its own.")(simulate)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
