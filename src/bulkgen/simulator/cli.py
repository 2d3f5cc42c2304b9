"""``bulkgen simulate``: serve the OpenAI-compatible simulator from the command line.

Options are validated here, once, into a :class:`SimConfig`; an unknown fault kind or a
rate outside 0..1 stops with a message naming it instead of serving something else.
"""

from __future__ import annotations

from typing import Annotated

import typer

from bulkgen.simulator.config import (
    DEFAULT_MODELS,
    BatchConfig,
    ConfigError,
    SimConfig,
    parse_answer_delay,
    parse_fault_rate,
)
from bulkgen.simulator.server import serve


def simulate(
    rpm: Annotated[int, typer.Option(help="Requests per minute per model; 0 = unlimited.")] = 500,
    tpm: Annotated[
        int, typer.Option(help="Tokens per minute per model (prompt + max_tokens); 0 = unlimited.")
    ] = 30_000,
    latency_ms: Annotated[float, typer.Option(help="Time to first token, ms.")] = 300.0,
    tokens_per_s: Annotated[
        float, typer.Option(help="Output speed; 0 = instant after the first token.")
    ] = 80.0,
    jitter: Annotated[float, typer.Option(help="Latency jitter as a fraction (0..1).")] = 0.2,
    fault_rate: Annotated[
        list[str] | None,
        typer.Option(help="KIND=RATE, repeatable, e.g. --fault-rate 503=0.02."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for content, faults and jitter.")] = 0,
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 8400,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    burst_s: Annotated[
        float, typer.Option(help="Seconds' worth of the minute limit a bucket holds.")
    ] = 1.0,
    time_scale: Annotated[float, typer.Option(help="k > 1 runs k times faster.")] = 1.0,
    api_key: Annotated[
        str | None, typer.Option(help="If set, other keys get 401.", envvar="BULKGEN_SIM_API_KEY")
    ] = None,
    model: Annotated[list[str] | None, typer.Option(help="Served model, repeatable.")] = None,
    default_max_tokens: Annotated[int, typer.Option(help="max_tokens when absent.")] = 1024,
    hang_s: Annotated[float, typer.Option(help="How long a 'hang' fault holds.")] = 3600.0,
    fault_retry_after_ms: Annotated[
        float, typer.Option(help="The wait a '429' fault asks for, ms.")
    ] = 200.0,
    prompt_cache: Annotated[
        bool, typer.Option(help="Bill repeated prompt prefixes (1,024+ tokens) as cached.")
    ] = True,
    max_inflight: Annotated[
        int, typer.Option(help="Chat requests served at once; above it, overload. 0 = no cap.")
    ] = 0,
    overload_status: Annotated[
        int, typer.Option(help="The answer above --max-inflight: 503 (overloaded) or 429.")
    ] = 503,
    batch_time_scale: Annotated[
        float, typer.Option(help="Batch clock speed: k runs batches k times faster; 0 pauses.")
    ] = 1.0,
    batch_requests_per_s: Annotated[
        float, typer.Option(help="Batch rows run per simulated second, per batch.")
    ] = 50.0,
    batch_validating_s: Annotated[
        float, typer.Option(help="Simulated seconds a batch spends validating.")
    ] = 2.0,
    batch_finalizing_s: Annotated[
        float, typer.Option(help="Simulated seconds a batch spends finalizing or cancelling.")
    ] = 2.0,
    batch_window_s: Annotated[
        float, typer.Option(help="Simulated seconds of the '24h' completion window.")
    ] = 86_400.0,
    batch_max_requests: Annotated[
        int, typer.Option(help="Requests in one batch at most.")
    ] = 50_000,
    batch_max_input_bytes: Annotated[
        int, typer.Option(help="Bytes of one batch input file at most.")
    ] = 200 * 1024 * 1024,
    batch_enqueued_tokens: Annotated[
        int, typer.Option(help="Prompt tokens of unfinished batches per model; 0 = unlimited.")
    ] = 2_000_000,
    batch_files_max_bytes: Annotated[
        int, typer.Option(help="Bytes the file store holds in all (uploads and results).")
    ] = 1024 * 1024 * 1024,
    batch_fault_rate: Annotated[
        list[str] | None,
        typer.Option(
            help="KIND=RATE for batch rows, repeatable, e.g. --batch-fault-rate 503=0.01."
        ),
    ] = None,
    batch_answer_delay: Annotated[
        list[str] | None,
        typer.Option(
            help="CALL=SECONDS, repeatable: hold the answer to a Batch API call (upload, "
            "create, content) that long after it took effect, e.g. --batch-answer-delay "
            "create=30.",
        ),
    ] = None,
    managed: Annotated[
        bool, typer.Option(hidden=True, help="Run by a parent process: ignore SIGINT.")
    ] = False,
) -> None:
    """Serve an OpenAI-compatible API with rate limits, latency and injected faults."""
    try:
        faults = dict(parse_fault_rate(item) for item in (fault_rate or ["503=0.02"]))
        batch = BatchConfig(
            time_scale=batch_time_scale, requests_per_s=batch_requests_per_s,
            validating_s=batch_validating_s, finalizing_s=batch_finalizing_s,
            window_s=batch_window_s, max_requests=batch_max_requests,
            max_input_bytes=batch_max_input_bytes, enqueued_tokens=batch_enqueued_tokens or None,
            files_max_bytes=batch_files_max_bytes,
            faults=dict(parse_fault_rate(item) for item in batch_fault_rate or []),
            answer_delay_s=dict(parse_answer_delay(item) for item in batch_answer_delay or []),
        )  # fmt: skip
        config = SimConfig(
            rpm=rpm, tpm=tpm, burst_s=burst_s, ttft_ms=latency_ms, tokens_per_s=tokens_per_s,
            jitter=jitter, time_scale=time_scale, faults=faults, seed=seed, api_key=api_key,
            models=tuple(model) if model else DEFAULT_MODELS,
            default_max_tokens=default_max_tokens, hang_s=hang_s,
            fault_retry_after_ms=fault_retry_after_ms, prompt_cache=prompt_cache, batch=batch,
            max_inflight=max_inflight or None, overload_status=overload_status,
        )  # fmt: skip
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    serve(config, host, port, managed=managed)
