"""The provider's prompt cache, as OpenAI runs it: a prompt that begins like one served
recently is billed partly as cached (``usage.prompt_tokens_details.cached_tokens``).

OpenAI caches prompt prefixes of at least 1,024 tokens, in steps of 128 tokens, per model.
Here a prefix is its first ``4 * n`` characters (the simulator's token count, see
``tokens.py``) for n = 1024, 1152, ...; the cached part of a prompt is the longest such
prefix seen before. Entries are forgotten least recently used first, past
``max_entries``, never by time, so the answers depend only on the request sequence.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from bulkgen.simulator.tokens import CHARS_PER_TOKEN

MIN_TOKENS = 1024
STEP_TOKENS = 128


class PromptCache:
    """Prefix digests of the prompts served, per model, in least-recently-used order."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def serve(self, model: str, prompt: str) -> int:
        """Tokens of ``prompt`` read from the cache; then its prefixes are cached too."""
        digests = _prefix_digests(model, prompt)
        cached = 0
        for tokens, digest in digests:
            if digest in self._seen:
                cached = tokens
                self._seen.move_to_end(digest)
        for _, digest in digests:
            self._seen[digest] = None
            self._seen.move_to_end(digest)
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
        return cached


def _prefix_digests(model: str, prompt: str) -> list[tuple[int, bytes]]:
    """(tokens, digest) of every cacheable prefix, hashing the prompt once from the start."""
    running = hashlib.blake2b(model.encode() + b"\0", digest_size=16)
    found: list[tuple[int, bytes]] = []
    done_chars = 0
    tokens = MIN_TOKENS
    while tokens * CHARS_PER_TOKEN <= len(prompt):
        end = tokens * CHARS_PER_TOKEN
        running.update(prompt[done_chars:end].encode("utf-8", "surrogatepass"))
        done_chars = end
        found.append((tokens, running.digest()))
        tokens += STEP_TOKENS
    return found
