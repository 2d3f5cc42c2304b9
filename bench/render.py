"""Prompt rendering: what rendering in a child process costs a normal row.

Account templates render in child processes (``bulkgen.renderer``) so a slow one cannot
stall the worker's event loop. This measures the price for the normal case, the built-in
article template, against the baseline of rendering the same rows in place
(``PromptTemplate.render``), in the same run:

- ``wall us/row``: elapsed time per row, one row at a time and ``--concurrency`` at once;
- ``loop cpu us/row``: CPU of this process per row, i.e. what the event loop pays (the
  child's own CPU runs beside it, on another core when there is one).

For scale, the last line times ``format_article`` on a simulator article, which every
``done`` job runs on the event loop.

    .venv/bin/python bench/render.py [--rows 5000] [--concurrency 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable

from bulkgen.formatting import format_article
from bulkgen.prompts import PromptTemplate
from bulkgen.renderer import RenderLimits, TemplateRenderer
from bulkgen.simulator.article import write_article

Measure = Callable[[], Awaitable[None]]


def rows(count: int) -> list[dict[str, object]]:
    return [
        {"keyword": f"keyword {i}", "tone": "friendly", "language": "English", "target_words": 800}
        for i in range(count)
    ]


async def timed(run: Measure, count: int) -> tuple[float, float]:
    """``(wall us/row, cpu us/row)`` of one call of ``run`` over ``count`` rows."""
    wall, cpu = time.perf_counter(), time.process_time()
    await run()
    return (
        (time.perf_counter() - wall) / count * 1e6,
        (time.process_time() - cpu) / count * 1e6,
    )


async def main(args: argparse.Namespace) -> None:
    template = PromptTemplate.default()
    variables = rows(args.rows)
    renderer = TemplateRenderer(RenderLimits(timeout_s=2.0, max_chars=500_000))
    await renderer.render(template, variables[0])  # start the child outside the timing
    gate = asyncio.Semaphore(args.concurrency)

    async def in_place() -> None:
        for row in variables:
            template.render(row)

    async def child_one_at_a_time() -> None:
        for row in variables:
            await renderer.render(template, row)

    async def child_concurrent() -> None:
        async def one(row: dict[str, object]) -> None:
            async with gate:
                await renderer.render(template, row)

        await asyncio.gather(*(one(row) for row in variables))

    cases = {
        "in place (baseline)": in_place,
        "child, one at a time": child_one_at_a_time,
        f"child, {args.concurrency} at once": child_concurrent,
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    try:
        for _ in range(args.repeat):
            for name, run in cases.items():
                results[name].append(await timed(run, args.rows))
    finally:
        await renderer.aclose()
    print(f"{'path':<24}{'wall us/row':>14}{'loop cpu us/row':>18}")
    medians = {}
    for name, samples in results.items():
        wall = statistics.median(s[0] for s in samples)
        cpu = statistics.median(s[1] for s in samples)
        medians[name] = (wall, cpu)
        print(f"{name:<24}{wall:>14.1f}{cpu:>18.1f}")
    base_wall, base_cpu = medians["in place (baseline)"]
    for name, (wall, cpu) in medians.items():
        if name != "in place (baseline)":
            print(f"{name}: wall x{wall / base_wall:.1f}, loop cpu x{cpu / base_cpu:.1f}")
    article = write_article("green tea", 1000, random.Random(1))
    started = time.process_time()
    for _ in range(200):
        format_article(article, fallback_title="green tea")
    print(f"for scale, format_article: {(time.process_time() - started) / 200 * 1e6:.0f} us/row")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
