"""Token counting by a deterministic approximation: one token per 4 characters.

Real tokenizers average roughly 4 characters of English per token. Using ``ceil(chars/4)``
everywhere (prompt, completion, rate-limit cost) keeps ``usage`` self-consistent, so a
client can check ``completion_tokens == count_tokens(content)`` exactly.
"""

from __future__ import annotations

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4
"""Per-message framing (role, separators), as chat formats add on top of the text."""
REPLY_PRIMING_TOKENS = 3


def count_tokens(text: str) -> int:
    """Tokens in ``text``: ``ceil(len(text) / 4)``; the empty string is 0 tokens."""
    return -(-len(text) // CHARS_PER_TOKEN)


def chars_for_tokens(tokens: int) -> int:
    """The longest text length that still counts as ``tokens`` tokens."""
    return max(tokens, 0) * CHARS_PER_TOKEN


def prompt_tokens(message_texts: list[str]) -> int:
    """Prompt cost: each message's text plus a fixed framing overhead, plus reply priming."""
    return REPLY_PRIMING_TOKENS + sum(
        count_tokens(text) + MESSAGE_OVERHEAD_TOKENS for text in message_texts
    )
