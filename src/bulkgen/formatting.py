"""Model output -> a publishable article, and the gate that keeps bad output from ``done``.

:func:`validate_completion` is the single place that decides whether a completion is usable
(non-empty, not truncated, not filtered, long enough); the pipeline calls it before
anything is stored, so an empty or cut-off answer becomes a retryable
:class:`~bulkgen.errors.InvalidOutput` instead of a silent empty success.

An answer's Markdown is parsed into a tree once (:func:`parse_markdown`): the gate counts its
words on it and takes the title from it, and :func:`format_article` uses those, rendering
the same source.

:func:`format_article` renders Markdown with ``markdown-it-pyrs`` (the markdown-it rules in
Rust: CommonMark plus tables and strikethrough, raw HTML allowed through to the sanitiser)
and sanitises the result with ``nh3``: scripts, styles, event-handler attributes and
non-http(s)/mailto URLs never reach the HTML that a dashboard or a CMS will display. The
parser was chosen by ``bench/markdown.py`` (BENCHMARKS.md): 20 times faster than
markdown-it-py, the same HTML on the benchmark's article, 649 of the CommonMark spec's 652
examples the same once sanitised.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import markdown_it_pyrs
import nh3

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

# CommonMark passes raw HTML through (markdown-it-py's "html" option): the sanitiser
# decides what of it survives.
_MARKDOWN = markdown_it_pyrs.MarkdownIt("commonmark").enable_many(["table", "strikethrough"])
# The tree's block nodes; every other node is inline content (text, emphasis, links...).
_BLOCKS = frozenset(
    {
        "root", "paragraph", "heading", "lheading", "blockquote", "bullet_list",
        "ordered_list", "list_item", "table", "thead", "tbody", "trow", "tcell", "hr",
        "html_block", "code_block", "fence",
    }
)  # fmt: skip
_LITERAL_BLOCKS = frozenset({"code_block", "fence"})  # their text counts as it is

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
    """An answer's Markdown, parsed once: its words (what the gate counts) and title (what
    formatting shows), so the two can never disagree on them."""

    source: str  # unwrapped from a whole-answer fence, trimmed
    title: str  # plain text of the first level-1 heading, or ""
    word_count: int  # visible words: link targets, image descriptions and markup excluded


def count_words(text: str) -> int:
    """Words in ``text``; Markdown punctuation (``#``, ``*``, ``-``, ``|``) is not counted."""
    return len(_WORD.findall(text))


def _unwrap(markdown: str) -> str:
    match = _WRAPPING_FENCE.match(markdown)
    inner = match.group(1) if match else markdown
    return inner.strip()


def _inline_text(nodes: Iterable[markdown_it_pyrs.Node]) -> str:
    """The visible text of a run of inline nodes: text and code, a space for a line break,
    whitespace collapsed. Images (their descriptions) and raw HTML are not text."""
    parts: list[str] = []

    def visit(node: markdown_it_pyrs.Node) -> None:
        if node.name in ("text", "text_special"):  # special: entities, escapes, autolinks
            parts.append(str(node.meta.get("content", "")))
        elif node.name in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif node.name not in ("image", "html_inline"):
            for child in node.children:
                visit(child)

    for node in nodes:
        visit(node)
    return " ".join("".join(parts).split())


def _blocks_text(node: markdown_it_pyrs.Node, out: list[str]) -> None:
    """Each block's visible text into ``out``, in document order, one entry per run of
    inline content (a paragraph, a heading, a table cell, a tight list item)."""
    run: list[markdown_it_pyrs.Node] = []
    for child in node.children:
        if child.name not in _BLOCKS:
            run.append(child)
            continue
        if run:
            out.append(_inline_text(run))
            run = []
        if child.name in _LITERAL_BLOCKS:
            out.append(str(child.meta.get("content", "")))
        else:
            _blocks_text(child, out)
    if run:
        out.append(_inline_text(run))


def _title(tree: markdown_it_pyrs.Node) -> str:
    """Plain text of the first level-1 heading (ATX ``# `` or setext), or ``""``."""
    for node in tree.walk():
        if node.name in ("heading", "lheading") and node.meta.get("level") == 1:
            return _inline_text(node.children)
    return ""


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
    """Parse ``markdown`` (a whole-answer fence unwrapped): its title and visible words."""
    source = _unwrap(markdown)
    tree = _MARKDOWN.tree(source)
    texts: list[str] = []
    _blocks_text(tree, texts)
    return ParsedMarkdown(source, _title(tree), count_words("\n".join(texts)))


def format_article(markdown: str | ParsedMarkdown, *, fallback_title: str) -> Article:
    """Render and sanitise ``markdown`` (source text, or the parse the gate returned); the
    title is its first ``# `` heading, else ``fallback_title`` (usually the keyword). The
    heading stays in the HTML body.

    ``word_count`` counts the visible text (link targets and markup excluded).
    """
    parsed = parse_markdown(markdown) if isinstance(markdown, str) else markdown
    html = sanitize_html(_MARKDOWN.render(parsed.source))
    return Article(
        title=parsed.title or fallback_title.strip(),
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
