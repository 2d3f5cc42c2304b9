"""What a batch used and cost, from its jobs' own rows. Pure: no I/O.

The store groups a batch's jobs by (status, cached, model) and hands the lines to
:func:`summarize`, which prices them with the price table. The rules:

- A **paid** line is a ``done`` job answered by the provider, or a ``failed`` job whose
  last attempt got an answer that was then rejected (empty, truncated, too short): the
  provider billed those tokens, so they count towards ``cost_usd`` (and the budget).
- A **cached** line is a ``done`` job answered from the cache or by an identical request in
  flight; its tokens are what the call would have used, so its price is ``saved_usd``.
- Prompt tokens the provider served from its own prompt cache (``cache_read_tokens``, a
  part of ``prompt_tokens``) are priced at the model's cached-input price.
- A line's ``tier`` says how its jobs were sent: ``online`` (one call each) or ``batch``
  (through the provider's Batch API, billed at the table's batch prices). A cached line
  is priced at its own tier too: what the cache saved is what the call would have cost.
  ``economy_saved_usd`` is what the paid ``batch`` lines would have cost online, less
  what they cost.
- Tokens of attempts that were retried are not kept per job (only the last attempt's are),
  so ``cost_usd`` is what the rows can prove; the budget ledger counts every answer.

Amounts are exact :class:`~decimal.Decimal` USD; models without a known price cost 0 and
are listed in ``unpriced_models`` instead of being guessed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from bulkgen.models import JobStatus, Usage
from bulkgen.pricing import PriceTable, PriceTier, default_price_table

__all__ = ["BatchUsage", "BudgetSeed", "UsageLine", "summarize"]


@dataclass(frozen=True, slots=True)
class BudgetSeed:
    """What the database says about a batch: its cap (None: none) and its cost so far."""

    cap_usd: Decimal | None
    spent_usd: Decimal


@dataclass(frozen=True, slots=True)
class UsageLine:
    """Jobs of one batch sharing a status, a cache flag and a model, with their tokens."""

    status: str
    cached: bool
    model: str
    jobs: int
    prompt_tokens: int
    completion_tokens: int
    cache_read_tokens: int = 0  # of prompt_tokens, read from the provider's prompt cache
    tier: PriceTier = PriceTier.ONLINE

    @property
    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, self.completion_tokens, self.cache_read_tokens)


@dataclass(frozen=True, slots=True)
class BatchUsage:
    """A batch's tokens and money; ``cost_usd`` is paid, ``saved_usd`` avoided by the cache."""

    paid_jobs: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    failed_cost_usd: Decimal
    cache_hits: int
    cached_prompt_tokens: int
    cached_completion_tokens: int
    saved_usd: Decimal
    unpriced_models: tuple[str, ...]
    lines: tuple[UsageLine, ...]
    cache_read_tokens: int = 0  # of prompt_tokens: billed at the cached-input price
    # What the jobs answered through a Batch API would have cost online, less what they did.
    economy_saved_usd: Decimal = Decimal(0)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready; money as strings so no float rounds a cent away."""
        return {
            "paid_jobs": self.paid_jobs,
            "paid_prompt_tokens": self.prompt_tokens,
            "paid_completion_tokens": self.completion_tokens,
            "paid_cache_read_tokens": self.cache_read_tokens,
            "cost_usd": str(self.cost_usd),
            "failed_cost_usd": str(self.failed_cost_usd),
            "cache_hits": self.cache_hits,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "cached_completion_tokens": self.cached_completion_tokens,
            "saved_usd": str(self.saved_usd),
            "economy_saved_usd": str(self.economy_saved_usd),
            "unpriced_models": list(self.unpriced_models),
        }


def summarize(lines: Iterable[UsageLine], prices: PriceTable | None = None) -> BatchUsage:
    """Price every line once (per model, not per job) and add them up."""
    table = prices or default_price_table()
    kept = tuple(lines)
    paid = [ln for ln in kept if not ln.cached]
    hits = [ln for ln in kept if ln.cached and ln.status == JobStatus.DONE]

    def cost(of: Iterable[UsageLine]) -> Decimal:
        return sum(
            (table.cost_usd(ln.model, ln.usage, tier=ln.tier) for ln in of),
            Decimal(0),
        )

    def online_cost(line: UsageLine) -> Decimal:
        return table.cost_usd(line.model, line.usage)

    return BatchUsage(
        paid_jobs=sum(ln.jobs for ln in paid),
        prompt_tokens=sum(ln.prompt_tokens for ln in paid),
        completion_tokens=sum(ln.completion_tokens for ln in paid),
        cost_usd=cost(paid),
        failed_cost_usd=cost(ln for ln in paid if ln.status != JobStatus.DONE),
        cache_hits=sum(ln.jobs for ln in hits),
        cached_prompt_tokens=sum(ln.prompt_tokens for ln in hits),
        cached_completion_tokens=sum(ln.completion_tokens for ln in hits),
        saved_usd=cost(hits),
        unpriced_models=tuple(sorted({ln.model for ln in kept if not table.price(ln.model).known})),
        lines=kept,
        cache_read_tokens=sum(ln.cache_read_tokens for ln in paid),
        economy_saved_usd=sum(
            (online_cost(ln) for ln in paid if ln.tier == PriceTier.BATCH), Decimal(0)
        )
        - cost(ln for ln in paid if ln.tier == PriceTier.BATCH),
    )
