"""Simulator capacity: requests/s one simulator process serves, against a trivial baseline.

Both servers run in their own process under the same uvicorn settings (uvloop, httptools);
the load generator runs here, on raw keep-alive asyncio streams, so the client costs far
less than the server. The baseline is a fixed-response ASGI app: the ratio shows what the
simulator's own work (validation, limits, article text, JSON) costs on top of uvicorn.
The client's count of answered requests is checked against the simulator's own
(``/_sim/stats``), and the size of its answers is measured, not assumed.

    .venv/bin/python bench/simulator.py --duration-s 10 --connections 64

Writes its result to ``bench/results/simulator.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn
import uvloop

from bulkgen.simulator import SimConfig, SimulatorProcess
from bulkgen.simulator.control import sim_stats
from bulkgen.simulator.server import READY_PREFIX, base_url_of, bind_socket
from record import Run, add_out_argument

BODY = json.dumps(
    {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You write helpful, well-structured articles."},
            {"role": "user", "content": "Write an article. Keyword: home espresso machines"},
        ],
        "max_tokens": 1024,
    }
).encode()
FIXED = b'{"ok": true}'
TARGET_REQUESTS_PER_S = 1000.0


async def baseline_app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
) -> None:
    """The cheapest ASGI answer: read the body, send a fixed JSON reply."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json"), (b"content-length", b"12")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": FIXED})


def serve_baseline() -> None:
    sock = bind_socket("127.0.0.1", 0)
    print(READY_PREFIX + base_url_of(sock, "127.0.0.1"), flush=True)
    config = uvicorn.Config(
        baseline_app, loop="uvloop", http="httptools", lifespan="off",
        access_log=False, log_level="warning",
    )  # fmt: skip
    uvicorn.Server(config).run(sockets=[sock])


async def _connection(
    host: str, port: int, request: bytes, stop_s: float
) -> tuple[list[float], int]:
    """One keep-alive connection sending back-to-back requests; returns the latencies of
    its 200s and the body bytes they carried."""
    reader, writer = await asyncio.open_connection(host, port)
    latencies: list[float] = []
    body_bytes = 0
    try:
        while time.perf_counter() < stop_s:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if head.startswith(b"HTTP/1.1 200"):
                latencies.append(time.perf_counter() - started)
                body_bytes += length
    finally:
        writer.close()
    return latencies, body_bytes


async def drive(base_url: str, connections: int, duration_s: float) -> dict[str, float]:
    """Hammer ``POST /v1/chat/completions`` for ``duration_s``; report throughput."""
    url = urllib.parse.urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    request = (
        f"POST {url.path}/chat/completions HTTP/1.1\r\nhost: {host}\r\n"
        f"authorization: Bearer sk-bench\r\ncontent-type: application/json\r\n"
        f"content-length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    started = time.perf_counter()
    stop_s = started + duration_s
    results = await asyncio.gather(
        *(_connection(host, port, request, stop_s) for _ in range(connections))
    )
    elapsed_s = time.perf_counter() - started
    latencies = [value for result, _ in results for value in result]
    body_bytes = sum(size for _, size in results)
    return {
        "requests": len(latencies),
        "seconds": elapsed_s,
        "requests_per_s": len(latencies) / elapsed_s,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else 0.0,
        "mean_body_bytes": body_bytes / len(latencies) if latencies else 0.0,
    }


def run_baseline(connections: int, duration_s: float) -> dict[str, float]:
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve-baseline"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().removeprefix(READY_PREFIX).strip()
        time.sleep(0.5)
        return uvloop.run(drive(base_url, connections, duration_s))
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def measure_simulator(connections: int, duration_s: float) -> dict[str, float]:
    """Drive a fresh simulator, then read its own counters before it stops."""
    config = SimConfig(rpm=None, tpm=None, ttft_ms=0, tokens_per_s=0, faults={})
    with SimulatorProcess(config) as sim:
        row = uvloop.run(drive(sim.base_url, connections, duration_s))
        stats = uvloop.run(sim_stats(sim.base_url))
    row["server_requests"] = stats["requests"]
    row["server_ok"] = stats["ok"]
    row["mean_completion_tokens"] = stats["completion_tokens"] / max(1, stats["ok"])
    return row


def print_table(simulated: dict[str, float], baseline: dict[str, float]) -> None:
    print(f"{'server':<12}{'requests':>10}{'seconds':>9}{'req/s':>10}{'p50 ms':>9}")
    for name, row in (("simulator", simulated), ("baseline", baseline)):
        print(
            f"{name:<12}{row['requests']:>10.0f}{row['seconds']:>9.2f}"
            f"{row['requests_per_s']:>10.0f}{row['p50_ms']:>9.2f}"
        )
    same = "identical" if simulated["requests"] == simulated["server_requests"] else "DIFFERENT"
    print(
        f"simulator requests: {simulated['requests']:.0f} answered 200 (client),"
        f" {simulated['server_requests']:.0f} received and {simulated['server_ok']:.0f}"
        f" answered ok (/_sim/stats): {same}"
    )
    print(
        f"simulator answer: {simulated['mean_body_bytes']:.0f} body bytes,"
        f" {simulated['mean_completion_tokens']:.0f} completion tokens (means)"
    )
    ratio = simulated["requests_per_s"] / baseline["requests_per_s"]
    headroom = simulated["requests_per_s"] / TARGET_REQUESTS_PER_S
    print(f"simulator/baseline: {ratio:.2f}")
    print(f"target {TARGET_REQUESTS_PER_S:.0f} req/s: {headroom:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    add_out_argument(parser, "simulator")
    args = parser.parse_args()
    if args.serve_baseline:
        serve_baseline()
        return
    run = Run("simulator", args.out)
    simulated = measure_simulator(args.connections, args.duration_s)
    baseline = run_baseline(args.connections, args.duration_s)
    print_table(simulated, baseline)
    figures = {
        "connections": args.connections,
        "duration_s": args.duration_s,
        "simulator": {k: round(v, 3) for k, v in simulated.items()},
        "baseline": {k: round(v, 3) for k, v in baseline.items()},
        "simulator_over_baseline": round(
            simulated["requests_per_s"] / baseline["requests_per_s"], 3
        ),
        "target_requests_per_s": TARGET_REQUESTS_PER_S,
        "counts_match": simulated["requests"] == simulated["server_requests"],
    }
    run.finish(figures)


if __name__ == "__main__":
    main()
