"""Deterministic, article-shaped markdown for a prompt.

The text depends only on the keyword, the target length and the RNG it is given, so the
same prompt and seed always give the same article (tests rely on this), and its length in
tokens is exact under :mod:`bulkgen.simulator.tokens`.
"""

from __future__ import annotations

import random
import re

from bulkgen.simulator.tokens import chars_for_tokens

_WORD_TEXT = (
    "practical approach method result team process quality budget reader guide detail "
    "example plan tool system value step option choice cost benefit risk goal review "
    "change habit skill idea problem solution pattern rule trade-off season market "
    "question answer measure schedule routine setup mistake lesson outcome evidence "
    "careful simple reliable common useful clear steady modest direct flexible proven "
    "improves reduces supports explains requires balances compares protects shapes "
    "often usually rarely always first next finally instead however meanwhile"
)
_WORDS = tuple(_WORD_TEXT.split())

_HEADINGS = (
    "Why {kw} matters",
    "Getting started with {kw}",
    "Common mistakes with {kw}",
    "How to choose the right {kw}",
    "A step-by-step plan for {kw}",
    "What experts say about {kw}",
    "Costs and trade-offs of {kw}",
    "Frequently asked questions about {kw}",
)

_TITLES = (
    "{kw}: A Practical Guide",
    "The Complete Guide to {kw}",
    "{kw}: What You Need to Know",
    "Everything About {kw}",
)

_KEYWORD_LABEL = re.compile(r"\b(?:keyword|topic)\s*:\s*", re.I)
_KEYWORD_HINT = re.compile(r"\b(?:keyword|topic|about|on)\b\s*[:\-]?\s*", re.I)


def keyword_of(prompt: str) -> str:
    """The topic of a prompt: after ``keyword:``, else after ``about``/``on``, else its last line.

    Kept to eight words so a long instruction does not become a paragraph-long title.
    """
    hints = list(_KEYWORD_LABEL.finditer(prompt)) or list(_KEYWORD_HINT.finditer(prompt))
    lines = [line.strip() for line in prompt.splitlines() if line.strip()]
    if hints and prompt[hints[-1].end() :].strip():
        raw = re.split(r"[\n.?!]", prompt[hints[-1].end() :].strip())[0]
    else:
        raw = lines[-1] if lines else "untitled topic"
    words = re.sub(r"[^\w\s\-']", " ", raw).split()[:8]
    return " ".join(words) or "untitled topic"


def _sentence(rng: random.Random, keyword: str) -> str:
    words = rng.choices(_WORDS, k=rng.randint(8, 16))
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), keyword)
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def _paragraph(rng: random.Random, keyword: str) -> str:
    return " ".join(_sentence(rng, keyword) for _ in range(rng.randint(3, 6)))


def write_article(prompt: str, target_tokens: int, rng: random.Random) -> str:
    """An article of about ``target_tokens`` tokens that ends at a paragraph boundary.

    Blocks are appended until the next one would overflow the target, but a title, one
    section heading and one paragraph are always there, so the text is recognisably an
    article; the caller cuts it (``finish_reason="length"``) when that exceeds max_tokens.
    """
    keyword = keyword_of(prompt)
    limit_chars = chars_for_tokens(target_tokens)
    parts = ["# " + rng.choice(_TITLES).format(kw=keyword.title())]
    size = len(parts[0])
    headings = list(_HEADINGS)
    rng.shuffle(headings)
    section = 0
    while size < limit_chars or len(parts) < 3:
        if section < len(headings) and (section == 0 or (len(parts) > 2 and rng.random() < 0.35)):
            block = "## " + headings[section].format(kw=keyword)
            section += 1
        else:
            block = _paragraph(rng, keyword)
        if size + 2 + len(block) > limit_chars and len(parts) >= 3:
            break
        parts.append(block)
        size += 2 + len(block)
    return "\n\n".join(parts)


def cut_to_tokens(text: str, max_tokens: int) -> str:
    """Cut ``text`` to ``max_tokens`` tokens, mid-word if need be, as a length stop does."""
    return text[: chars_for_tokens(max_tokens)]
