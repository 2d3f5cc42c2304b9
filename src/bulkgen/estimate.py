"""What a batch would use and cost before it exists: ``bulkgen submit --dry-run``.

Every row's prompt is rendered through the renderer and template a worker would use, so a
row whose prompt cannot render is refused here with its row number, where a real submit
only renders the first row and lets the others fail one job at a time.

Three token figures per job, none of them from a tokenizer:

- **prompt tokens**, estimated: a quarter of the prompt's characters (the rate the
  pipeline's admission reserves) plus the framing a chat request adds, three tokens a
  message and three to open the answer. English prose runs close to this; other scripts
  and dense code use more tokens per character, so treat it as a floor for those.
- **worst-case answer tokens**: the row's ``max_tokens``, the most the provider may bill.
- **expected answer tokens**: an article of ``target_words`` words at about 4 tokens per
  3 words (English), never more than ``max_tokens``.

Costs are priced with the price table at both tiers: ``online`` (one call per job, what
runs today) and ``batch`` (the provider's Batch API prices). Pure apart from rendering.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from bulkgen.errors import InputError
from bulkgen.intake import JobInput
from bulkgen.models import Usage
from bulkgen.options import BatchOptions
from bulkgen.pricing import PriceTable, PriceTier
from bulkgen.prompts import PromptTemplate
from bulkgen.renderer import TemplateRenderer

__all__ = [
    "BatchEstimate",
    "Cost",
    "ModelEstimate",
    "estimate_batch",
    "expected_answer_tokens",
    "prompt_tokens_estimate",
]

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 3  # role and separators around each message's content
ANSWER_PRIMING_TOKENS = 3  # what opens the assistant's answer
TOKENS_PER_WORD = Fraction(4, 3)  # English prose: about 0.75 words a token
RENDER_CONCURRENCY = 32  # rows handed to the renderer at once (its lane bounds the processes)


def prompt_tokens_estimate(messages: Sequence[tuple[str, str]]) -> int:
    """Tokens a chat request's prompt is likely billed for, without a tokenizer."""
    chars = sum(len(content) for _, content in messages)
    content_tokens = -(-chars // CHARS_PER_TOKEN)
    return content_tokens + TOKENS_PER_MESSAGE * len(messages) + ANSWER_PRIMING_TOKENS


def expected_answer_tokens(options: BatchOptions) -> int:
    """Tokens of an article that runs to its ``target_words``, capped at ``max_tokens``."""
    return min(options.max_tokens, math.ceil(options.target_words * TOKENS_PER_WORD))


@dataclass(frozen=True, slots=True)
class Cost:
    """USD for a set of jobs, both ways: if every answer uses its ``max_tokens``
    (``worst_case``), and if every answer is as long as its ``target_words`` (``expected``)."""

    worst_case: Decimal
    expected: Decimal

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.worst_case + other.worst_case, self.expected + other.expected)

    def as_dict(self) -> dict[str, str]:
        return {"worst_case": str(self.worst_case), "expected": str(self.expected)}


_FREE = Cost(Decimal(0), Decimal(0))


@dataclass(frozen=True, slots=True)
class ModelEstimate:
    """The jobs of one model (rows may override the model)."""

    model: str
    jobs: int
    prompt_tokens: int
    max_answer_tokens: int
    expected_answer_tokens: int
    online: Cost
    batch: Cost
    priced: bool  # False: the price table does not know this model; its costs are 0

    def as_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "jobs": self.jobs,
            "prompt_tokens": self.prompt_tokens,
            "max_answer_tokens": self.max_answer_tokens,
            "expected_answer_tokens": self.expected_answer_tokens,
            "online_usd": self.online.as_dict(),
            "batch_usd": self.batch.as_dict(),
            "priced": self.priced,
        }


@dataclass(frozen=True, slots=True)
class BatchEstimate:
    """A whole batch, and per model; money is exact Decimal USD."""

    by_model: tuple[ModelEstimate, ...]

    @property
    def jobs(self) -> int:
        return sum(m.jobs for m in self.by_model)

    @property
    def prompt_tokens(self) -> int:
        return sum(m.prompt_tokens for m in self.by_model)

    @property
    def max_answer_tokens(self) -> int:
        return sum(m.max_answer_tokens for m in self.by_model)

    @property
    def expected_answer_tokens(self) -> int:
        return sum(m.expected_answer_tokens for m in self.by_model)

    @property
    def online(self) -> Cost:
        return sum((m.online for m in self.by_model), _FREE)

    @property
    def batch(self) -> Cost:
        return sum((m.batch for m in self.by_model), _FREE)

    @property
    def unpriced_models(self) -> tuple[str, ...]:
        return tuple(m.model for m in self.by_model if not m.priced)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready; money as strings so no float rounds a cent away."""
        return {
            "jobs": self.jobs,
            "prompt_tokens": self.prompt_tokens,
            "max_answer_tokens": self.max_answer_tokens,
            "expected_answer_tokens": self.expected_answer_tokens,
            "online_usd": self.online.as_dict(),
            "batch_usd": self.batch.as_dict(),
            "unpriced_models": list(self.unpriced_models),
            "models": [m.as_dict() for m in self.by_model],
        }


@dataclass(frozen=True, slots=True)
class _Job:
    model: str
    prompt_tokens: int
    max_tokens: int
    expected_tokens: int


async def _render(
    renderer: TemplateRenderer,
    template: PromptTemplate,
    row_number: int,
    row: JobInput,
    options: BatchOptions,
) -> _Job:
    row_options = row.options(options)
    try:
        messages = await renderer.render(template, row.template_variables(row_options))
    except InputError as exc:
        raise InputError(f"the prompt template cannot render it: {exc}", row=row_number) from exc
    return _Job(
        row_options.model,
        prompt_tokens_estimate(messages),
        row_options.max_tokens,
        expected_answer_tokens(row_options),
    )


async def estimate_batch(
    rows: Sequence[JobInput],
    options: BatchOptions,
    template: PromptTemplate,
    renderer: TemplateRenderer,
    prices: PriceTable,
) -> BatchEstimate:
    """Render every row and price the batch; the first row that cannot render raises
    :class:`InputError` with its 1-based row number, as intake names rows."""
    jobs: list[_Job] = []
    for start in range(0, len(rows), RENDER_CONCURRENCY):
        chunk = rows[start : start + RENDER_CONCURRENCY]
        rendered = await asyncio.gather(
            *(
                _render(renderer, template, start + offset + 1, row, options)
                for offset, row in enumerate(chunk)
            ),
            return_exceptions=True,  # every render ends before the first error is raised
        )
        for outcome in rendered:
            if isinstance(outcome, BaseException):
                raise outcome
            jobs.append(outcome)
    models = sorted({job.model for job in jobs})
    return BatchEstimate(
        tuple(_model_estimate(m, [j for j in jobs if j.model == m], prices) for m in models)
    )


def _model_estimate(model: str, jobs: list[_Job], prices: PriceTable) -> ModelEstimate:
    prompt = sum(j.prompt_tokens for j in jobs)
    most = sum(j.max_tokens for j in jobs)
    expected = sum(j.expected_tokens for j in jobs)

    def cost(tier: PriceTier) -> Cost:
        return Cost(
            worst_case=prices.worst_case_cost_usd(model, prompt, most, tier=tier),
            expected=prices.cost_usd(model, Usage(prompt, expected), tier=tier),
        )

    return ModelEstimate(
        model=model,
        jobs=len(jobs),
        prompt_tokens=prompt,
        max_answer_tokens=most,
        expected_answer_tokens=expected,
        online=cost(PriceTier.ONLINE),
        batch=cost(PriceTier.BATCH),
        priced=prices.price(model).known,
    )
