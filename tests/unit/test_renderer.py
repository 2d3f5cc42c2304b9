"""Rendering account templates in child processes: bounded in time, memory and size, and
never on the event loop."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import pytest

from bulkgen.errors import InputError
from bulkgen.prompts import PromptTemplate
from bulkgen.renderer import RenderLimits, TemplateRenderer

BASE = {"keyword": "green tea", "tone": "friendly", "language": "German", "target_words": 900}
# 1e10 loop steps, each range within the sandbox's cap: minutes to hours in one call.
STALL = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x"


@pytest.fixture
async def renderer() -> AsyncIterator[TemplateRenderer]:
    renderer = TemplateRenderer(RenderLimits(timeout_s=1.0, max_chars=10_000), processes=1)
    try:
        yield renderer
    finally:
        await renderer.aclose()


async def test_renders_exactly_what_the_template_renders_in_place(
    renderer: TemplateRenderer,
) -> None:
    roles = PromptTemplate.from_text("{# system #}\nBe {{ tone }}.\n{# user #}\n{{ keyword }}")
    for template in (PromptTemplate.default(), roles):
        assert await renderer.render(template, BASE) == template.render(BASE)
    odd = {**BASE, "keyword": 'caf\u00e9 \ud800 \u2028 "q"'}  # a lone surrogate, a separator
    assert await renderer.render(roles, odd) == roles.render(odd)


async def test_a_stalling_template_fails_as_input_while_the_loop_keeps_ticking(
    renderer: TemplateRenderer,
) -> None:
    ticks = 0

    async def heartbeat_like() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(heartbeat_like())
    try:
        with pytest.raises(InputError, match="took longer than 1 s"):
            await renderer.render(PromptTemplate.from_text(STALL), BASE)
    finally:
        ticker.cancel()
    assert ticks >= 5  # rendered in place, the loop would not have ticked once
    # The stuck process was killed and replaced: the next render works.
    assert await renderer.render(PromptTemplate.default(), BASE)


async def test_output_beyond_the_limit_is_refused_while_rendering(
    renderer: TemplateRenderer,
) -> None:
    endless = PromptTemplate.from_text("{% for i in range(100000) %}{{ keyword }} {% endfor %}")
    with pytest.raises(InputError, match="more than 10000 characters"):
        await renderer.render(endless, BASE)
    with pytest.raises(InputError, match="more than 50 characters"):
        endless.render(BASE, max_chars=50)
    assert PromptTemplate.from_text("{{ keyword }}").render(BASE, max_chars=9) == (
        ("user", "green tea"),
    )


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS is enforced on Linux only")
async def test_a_template_asking_for_a_gigabyte_gets_a_memory_error(
    renderer: TemplateRenderer,
) -> None:
    bomb = PromptTemplate.from_text("{{ keyword | center(1000000000) | length }}")
    with pytest.raises(InputError, match="more memory than allowed"):
        await renderer.render(bomb, BASE)
    assert await renderer.render(PromptTemplate.default(), BASE)


async def test_a_sandbox_violation_is_an_input_error(renderer: TemplateRenderer) -> None:
    unsafe = PromptTemplate.from_text("{{ keyword.__class__.__mro__ }}")
    with pytest.raises(InputError, match="unsafe"):
        await renderer.render(unsafe, BASE)


async def test_an_undefined_variable_names_its_field_once(renderer: TemplateRenderer) -> None:
    with pytest.raises(InputError) as info:
        await renderer.render(PromptTemplate.from_text("{{ keyword }} in {{ citty }}"), BASE)
    assert info.value.field == "citty"
    assert str(info.value).count("citty") == 2  # "field 'citty': ... 'citty' is undefined"


async def test_a_template_that_timed_out_cannot_hold_up_other_templates(
    renderer: TemplateRenderer,
) -> None:
    slow = PromptTemplate.from_text(STALL)
    with pytest.raises(InputError):
        await renderer.render(slow, BASE)  # now quarantined
    assert await renderer.render(PromptTemplate.default(), BASE)  # the normal lane is up
    slow_rows = [asyncio.ensure_future(renderer.render(slow, BASE)) for _ in range(3)]
    normal = asyncio.ensure_future(renderer.render(PromptTemplate.default(), BASE))
    assert await normal
    # With one lane the normal row would have queued behind all three slow ones.
    assert not all(task.done() for task in slow_rows)
    for task in slow_rows:
        with pytest.raises(InputError):
            await task


async def test_a_template_is_sent_again_to_a_process_that_dropped_it(
    renderer: TemplateRenderer,
) -> None:
    templates = [PromptTemplate.from_text(f"{{{{ keyword }}}} {n}") for n in range(40)]
    for template in templates:  # more than a process keeps
        assert await renderer.render(template, BASE) == template.render(BASE)
    assert await renderer.render(templates[0], BASE) == (("user", "green tea 0"),)
