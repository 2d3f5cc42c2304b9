"""A batch's estimate before it exists (bulkgen.estimate): every row rendered, both tiers
priced from the same token counts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from bulkgen.errors import InputError
from bulkgen.estimate import (
    estimate_batch,
    expected_answer_tokens,
    prompt_tokens_estimate,
)
from bulkgen.intake import parse_csv, parse_jsonl
from bulkgen.models import Usage
from bulkgen.options import validate_options
from bulkgen.pricing import PriceTier, default_price_table, load_price_table
from bulkgen.prompts import PromptTemplate
from bulkgen.renderer import RenderLimits, TemplateRenderer
from bulkgen.settings import Settings

FLEET = Settings(model="gpt-4o", max_tokens=1500)
OPTIONS = validate_options({"target_words": 600}, FLEET)


@pytest.fixture
async def renderer() -> AsyncIterator[TemplateRenderer]:
    renderer = TemplateRenderer(RenderLimits(timeout_s=10.0, max_chars=100_000), processes=1)
    try:
        yield renderer
    finally:
        await renderer.aclose()


def test_prompt_tokens_are_a_quarter_of_the_characters_plus_framing() -> None:
    assert prompt_tokens_estimate([("user", "x" * 400)]) == 100 + 3 + 3
    # Characters of every message together, rounded up once: 8 -> 2.
    assert prompt_tokens_estimate([("system", "x" * 5), ("user", "y" * 3)]) == 2 + 6 + 3
    assert prompt_tokens_estimate([("user", "x")]) == 1 + 3 + 3


def test_expected_answer_is_target_words_in_tokens_within_max_tokens() -> None:
    assert expected_answer_tokens(OPTIONS) == 800  # 600 words at 4 tokens per 3 words
    assert expected_answer_tokens(OPTIONS.model_copy(update={"target_words": 601})) == 802
    assert expected_answer_tokens(OPTIONS.model_copy(update={"max_tokens": 500})) == 500


async def test_every_row_is_rendered_and_priced_at_both_tiers(
    renderer: TemplateRenderer,
) -> None:
    template = PromptTemplate.from_text("{# system #}\nWrite.\n{# user #}\n{{ keyword }}")
    rows = parse_csv("keyword,model,max_tokens\nab,,\nabcdef,gpt-4o-mini,100\ncd,,\n")
    estimate = await estimate_batch(rows, OPTIONS, template, renderer, default_price_table())
    assert estimate.jobs == 3
    assert [(m.model, m.jobs) for m in estimate.by_model] == [("gpt-4o", 2), ("gpt-4o-mini", 1)]
    gpt4o, mini = estimate.by_model
    # "Write." and the keyword (8 or 12 characters -> 2 or 3), 2 messages, the answer's 3.
    assert gpt4o.prompt_tokens == 2 * (2 + 6 + 3)
    assert mini.prompt_tokens == 3 + 6 + 3
    assert (gpt4o.max_answer_tokens, gpt4o.expected_answer_tokens) == (3000, 1600)
    assert (mini.max_answer_tokens, mini.expected_answer_tokens) == (100, 100)
    prices = default_price_table()
    assert gpt4o.online.worst_case == prices.cost_usd("gpt-4o", Usage(22, 3000))
    assert gpt4o.online.expected == prices.cost_usd("gpt-4o", Usage(22, 1600))
    assert gpt4o.batch.expected == prices.cost_usd("gpt-4o", Usage(22, 1600), tier=PriceTier.BATCH)
    assert estimate.batch.worst_case * 2 == estimate.online.worst_case
    assert estimate.online.expected == gpt4o.online.expected + mini.online.expected
    assert estimate.prompt_tokens == 22 + 12
    assert estimate.max_answer_tokens == 3100
    assert estimate.unpriced_models == ()


async def test_the_prompt_counted_is_the_one_a_worker_would_send(
    renderer: TemplateRenderer,
) -> None:
    rows = parse_csv("keyword,audience\ngreen tea,students\n")
    template = PromptTemplate.default()
    estimate = await estimate_batch(rows, OPTIONS, template, renderer, default_price_table())
    messages = template.render(rows[0].template_variables(rows[0].options(OPTIONS)))
    assert "students" in messages[-1][1]
    assert estimate.prompt_tokens == prompt_tokens_estimate(messages)


async def test_the_first_row_that_cannot_render_is_named(renderer: TemplateRenderer) -> None:
    template = PromptTemplate.from_text("{{ keyword }} for {{ audience }}")
    lines = [{"keyword": f"k{i}", "audience": "all"} for i in range(70)]
    del lines[66]["audience"]
    del lines[40]["audience"]  # two bad rows, in different render chunks: the first wins
    rows = parse_jsonl("\n".join(json.dumps(line) for line in lines))
    with pytest.raises(InputError, match=r"cannot render it.*'audience' is undefined") as caught:
        await estimate_batch(rows, OPTIONS, template, renderer, default_price_table())
    assert caught.value.row == 41


async def test_unknown_models_are_named_and_cost_nothing(renderer: TemplateRenderer) -> None:
    rows = parse_csv("keyword,model\na,llama-3-70b\nb,\n")
    estimate = await estimate_batch(
        rows, OPTIONS, PromptTemplate.default(), renderer, default_price_table()
    )
    assert estimate.unpriced_models == ("llama-3-70b",)
    llama = estimate.by_model[1]
    assert llama.model == "llama-3-70b" and not llama.priced
    assert llama.online.worst_case == llama.batch.worst_case == 0
    priced = load_price_table('{"llama-3-70b": {"input_per_1m": 1, "output_per_1m": 1}}')
    again = await estimate_batch(rows, OPTIONS, PromptTemplate.default(), renderer, priced)
    assert again.unpriced_models == ()
    assert again.by_model[1].online.worst_case > 0


async def test_json_shape_keeps_money_exact(renderer: TemplateRenderer) -> None:
    rows = parse_csv("keyword\nalpha\n")
    estimate = await estimate_batch(
        rows, OPTIONS, PromptTemplate.default(), renderer, default_price_table()
    )
    data = estimate.as_dict()
    assert data["jobs"] == 1
    online = data["online_usd"]
    assert isinstance(online, dict)
    assert Decimal(online["worst_case"]) == estimate.online.worst_case
    assert json.loads(json.dumps(data)) == data
