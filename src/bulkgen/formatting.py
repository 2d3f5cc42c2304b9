"""Model output -> a publishable article, and the gate that keeps bad output from ``done``.

:func:`validate_completion` is the single place that decides whether a completion is usable
(non-empty, not truncated, not filtered, long enough); the pipeline calls it before
anything is stored, so an empty or cut-off answer becomes a retryable
:class:`~bulkgen.errors.InvalidOutput` instead of a silent empty success.

An answer's Markdown is parsed once (:func:`parse_markdown`): the gate counts its words on the
parse it returns, and :func:`format_article` renders that same parse.

:func:`format_article` renders Markdown with ``markdown-it-py`` (CommonMark plus tables and
strikethrough, raw HTML allowed through to the sanitiser) and sanitises the result with
``nh3``: scripts, styles, event-handler attributes and non-http(s)/mailto URLs never reach
the HTML that a dashboard or a CMS will display.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import nh3
from markdown_it import MarkdownIt
from markdown_it.token import Token

from bulkgen.errors import InvalidOutput
from bulkgen.models import Completion

__all__ = [
    "Article",
    "ParsedMarkdown",
    "count_words",
    "format_article",
    "parse_markdown",
    "validate_completion",
]

_MARKDOWN = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])

_URL_SCHEMES = frozenset({"http", "https", "mailto"})
_ATTRIBUTES: dict[str, set[str]] = {
    **{tag: set(attrs) for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()},
    "a": {"href", "hreflang", "title"},
    "img": {"src", "alt", "title", "width", "height"},
}
_CLEAN_CONTENT_TAGS = frozenset({"script", "style"})

# Han, kana and compatibility ideographs are written without spaces: each character counts
# as one word (the usual convention for East Asian word counts), so a Japanese or Chinese
# article is not judged "too short" for lack of spaces.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+(?:['’\-][^\W_{_CJK}]+)*")
# A whole answer wrapped in one ```markdown fence: a common model habit, unwrapped.
_WRAPPING_FENCE = re.compile(r"\A\s*```(?:markdown|md)?[ \t]*\n(.*)\n```[ \t]*\s*\Z", re.S | re.I)


@dataclass(frozen=True)
class Article:
    """A formatted article: plain-text title, the source Markdown and sanitised HTML."""

    title: str
    markdown: str
    html: str
    word_count: int


@dataclass(frozen=True)
class ParsedMarkdown:
    """An answer's Markdown, parsed once: what the gate counts and what formatting renders,
    so the two can never disagree on the words, and the parser runs once per answer."""

    source: str  # unwrapped from a whole-answer fence, trimmed
    tokens: tuple[Token, ...]
    word_count: int  # visible words: link targets and markup excluded


def count_words(text: str) -> int:
    """Words in ``text``; Markdown punctuation (``#``, ``*``, ``-``, ``|``) is not counted."""
    return len(_WORD.findall(text))


def _unwrap(markdown: str) -> str:
    match = _WRAPPING_FENCE.match(markdown)
    inner = match.group(1) if match else markdown
    return inner.strip()


def _inline_text(children: Iterable[Token]) -> str:
    parts: list[str] = []
    for child in children:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
    return " ".join("".join(parts).split())


def _title(tokens: Sequence[Token]) -> str:
    """Plain text of the first level-1 heading (ATX ``# `` or setext), or ``""``."""
    for index, token in enumerate(tokens[:-1]):
        if token.type == "heading_open" and token.tag == "h1":
            inline = tokens[index + 1]
            return _inline_text(inline.children or ())
    return ""


def _visible_text(tokens: Sequence[Token]) -> str:
    parts: list[str] = []
    for token in tokens:
        if token.type == "inline":
            parts.append(_inline_text(token.children or ()))
        elif token.type in ("fence", "code_block"):
            parts.append(token.content)
    return "\n".join(parts)


def sanitize_html(html: str) -> str:
    """Drop anything executable: scripts, styles, ``on*`` handlers, unsafe URL schemes."""
    return nh3.clean(
        html,
        attributes=_ATTRIBUTES,
        url_schemes=set(_URL_SCHEMES),
        clean_content_tags=set(_CLEAN_CONTENT_TAGS),
        link_rel="noopener noreferrer nofollow",
    )


def parse_markdown(markdown: str) -> ParsedMarkdown:
    """Parse ``markdown`` (a whole-answer fence unwrapped) and count its visible words."""
    source = _unwrap(markdown)
    tokens = tuple(_MARKDOWN.parse(source))
    return ParsedMarkdown(source, tokens, count_words(_visible_text(tokens)))


def format_article(markdown: str | ParsedMarkdown, *, fallback_title: str) -> Article:
    """Render and sanitise ``markdown`` (source text, or the parse the gate returned); the
    title is its first ``# `` heading, else ``fallback_title`` (usually the keyword). The
    heading stays in the HTML body.

    ``word_count`` counts the visible text (link targets and markup excluded).
    """
    parsed = parse_markdown(markdown) if isinstance(markdown, str) else markdown
    html = sanitize_html(_MARKDOWN.renderer.render(parsed.tokens, _MARKDOWN.options, {}))
    return Article(
        title=_title(parsed.tokens) or fallback_title.strip(),
        markdown=parsed.source,
        html=html,
        word_count=parsed.word_count,
    )


def validate_completion(completion: Completion, *, min_words: int) -> ParsedMarkdown:
    """Raise :class:`InvalidOutput` unless ``completion`` may become a ``done`` job; return
    its parse, for :func:`format_article` to render without parsing it again.

    Checked in this order, so the most actionable reason wins: ``content_filter``
    (finish reason), ``truncated`` (finish reason ``length``, even with empty content,
    since a larger ``max_tokens`` may fix it), ``empty`` (blank after trimming), then
    ``too_short`` (fewer than ``min_words`` visible words, counted as
    :func:`format_article` counts them).
    """
    if completion.finish_reason == "content_filter":
        raise InvalidOutput("provider's content filter stopped the output", reason="content_filter")
    if completion.finish_reason == "length":
        raise InvalidOutput(
            f"output truncated at max_tokens ({completion.usage.completion_tokens} tokens)",
            reason="truncated",
        )
    if not completion.content.strip():
        raise InvalidOutput("output is empty", reason="empty")
    parsed = parse_markdown(completion.content)
    if parsed.word_count < min_words:
        raise InvalidOutput(
            f"output has {parsed.word_count} words, fewer than {min_words}", reason="too_short"
        )
    return parsed
