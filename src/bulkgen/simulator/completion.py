"""What the model answers to a chat call: content and finish reason.

One function for the online endpoint and the Batch API, so a request gets the same answer
(and the same usage) whichever way it was sent: the text depends only on the seed, the
model, ``max_tokens``, the prompt and the content fault drawn for it.
"""

from __future__ import annotations

import random

from bulkgen.simulator.article import cut_to_tokens, write_article
from bulkgen.simulator.protocol import ChatCall
from bulkgen.simulator.tokens import count_tokens


def answer(seed: int, call: ChatCall, fault: str | None) -> tuple[str, str]:
    """Content and finish reason: deterministic in (seed, model, prompt, max_tokens, fault)."""
    if fault == "empty":
        return "", "stop"
    if fault == "whitespace":
        return " \n\n \n", "stop"
    rng = random.Random(f"{seed}|{call.model}|{call.max_tokens}|{call.prompt}")
    target = max(1, round(call.max_tokens * rng.uniform(0.5, 0.95)))
    if fault == "truncate":
        target = max(1, round(call.max_tokens * rng.uniform(0.05, 0.15)))
        return cut_to_tokens(write_article(call.last_user, target * 2, rng), target), "length"
    text = write_article(call.last_user, target, rng)
    if count_tokens(text) >= call.max_tokens:
        return cut_to_tokens(text, call.max_tokens), "length"
    return text, "stop"
