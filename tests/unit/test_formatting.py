"""Markdown -> sanitised HTML, titles, word counts, and the validation gate before ``done``."""

from __future__ import annotations

import pytest

from bulkgen.errors import InvalidOutput
from bulkgen.formatting import (
    Article,
    ParsedMarkdown,
    count_words,
    format_article,
    parse_markdown,
    validate_completion,
)
from bulkgen.models import Completion, Usage

ARTICLE = """# How to Brew **Green** Tea

Green tea rewards patience. Use water at about 80 °C, not boiling.

## Steps

1. Warm the pot.
2. Steep for *two* minutes.

| Grade | Temperature |
|-------|-------------|
| Sencha | 75 °C |

Read [the guide](https://example.com/tea "Guide") for more.
"""


def completion(content: str, finish_reason: str = "stop") -> Completion:
    return Completion(
        content=content,
        usage=Usage(prompt_tokens=10, completion_tokens=20),
        finish_reason=finish_reason,
        model="gpt-4o",
    )


def test_title_is_first_h1_as_plain_text() -> None:
    article = format_article(ARTICLE, fallback_title="green tea")
    assert article.title == "How to Brew Green Tea"
    assert article.markdown == ARTICLE.strip()


def test_html_rendering_keeps_structure() -> None:
    html = format_article(ARTICLE, fallback_title="x").html
    assert "<h1>How to Brew <strong>Green</strong> Tea</h1>" in html
    assert "<h2>Steps</h2>" in html
    assert "<ol>" in html and "<li>Warm the pot.</li>" in html
    assert "<em>two</em>" in html
    assert "<table>" in html and "<td>Sencha</td>" in html
    assert 'href="https://example.com/tea"' in html
    assert 'rel="noopener noreferrer nofollow"' in html


def test_fallback_title_when_no_h1() -> None:
    article = format_article("## Only a subheading\n\nBody text here.", fallback_title=" tea ")
    assert article.title == "tea"


def test_setext_h1_counts_as_title_and_later_h1_does_not_win() -> None:
    text = "Brewing Basics\n==============\n\nIntro.\n\n# Second heading\n"
    assert format_article(text, fallback_title="x").title == "Brewing Basics"


def test_heading_in_code_block_is_not_a_title() -> None:
    text = "```\n# not a title\n```\n\nBody."
    assert format_article(text, fallback_title="kw").title == "kw"


def test_wrapping_markdown_fence_is_removed() -> None:
    article = format_article("```markdown\n# Tea\n\nTea is good.\n```\n", fallback_title="x")
    assert article.title == "Tea"
    assert article.markdown == "# Tea\n\nTea is good."
    assert "<pre>" not in article.html


def test_word_count_counts_visible_words_only() -> None:
    text = "# Tea Time\n\nIt's a **well-known** drink: see [this page](https://example.com/a/b/c)."
    # Tea, Time, It's, a, well-known, drink, see, this, page (not the URL)
    assert format_article(text, fallback_title="x").word_count == 9


def test_count_words_handles_cjk_without_spaces() -> None:
    assert count_words("緑茶") == 2
    assert count_words("お茶を飲む") == 5
    assert count_words("hello, world -- 123") == 3
    assert count_words("  * - # | ") == 0


@pytest.mark.parametrize(
    ("dangerous", "forbidden"),
    [
        ("<script>alert('x')</script>", ["<script", "alert("]),
        ('<img src="a.png" onerror="alert(1)">', ["onerror", "alert("]),
        ('<a href="#" onclick="steal()">x</a>', ["onclick", "steal("]),
        ('<a href="javascript:alert(1)">x</a>', ["javascript:"]),
        ('<a href="JaVaScRiPt:alert(1)">x</a>', ["javascript:", "JaVaScRiPt:"]),
        ("[click](javascript:alert(1))", ['href="javascript']),
        ('<img src="javascript:alert(1)">', ["javascript:"]),
        ("<style>body{display:none}</style>", ["<style", "display:none"]),
        ('<iframe src="https://evil.example"></iframe>', ["<iframe"]),
        ('<div onmouseover="x()">hover</div>', ["onmouseover"]),
        ('<a href="data:text/html,<script>1</script>">x</a>', ["data:", "<script"]),
        ('<svg onload="alert(1)"></svg>', ["onload", "<svg"]),
    ],
)
def test_sanitising_removes_executable_content(dangerous: str, forbidden: list[str]) -> None:
    html = format_article(
        f"# T\n\nBefore {dangerous} after\n\n{dangerous}\n", fallback_title="x"
    ).html
    for bad in forbidden:
        assert bad not in html
    assert "Before" in html and "after" in html


def test_safe_inline_html_survives() -> None:
    html = format_article(
        'Tea <em>is</em> <a href="mailto:a@b.c">mail</a>', fallback_title="x"
    ).html
    assert "<em>is</em>" in html
    assert 'href="mailto:a@b.c"' in html


def test_article_is_frozen() -> None:
    article = format_article("# T\n\nx", fallback_title="k")
    assert isinstance(article, Article)
    with pytest.raises(AttributeError):
        article.title = "other"  # type: ignore[misc]


# validate_completion


def test_valid_completion_passes() -> None:
    validate_completion(completion(ARTICLE), min_words=20)


@pytest.mark.parametrize("content", ["", " ", "\n\t  \n", "\u00a0\u2003"])
def test_empty_or_whitespace_is_invalid(content: str) -> None:
    with pytest.raises(InvalidOutput) as info:
        validate_completion(completion(content), min_words=0)
    assert info.value.kind == "empty"
    assert info.value.retryable


def test_finish_reason_length_is_truncated() -> None:
    with pytest.raises(InvalidOutput) as info:
        validate_completion(completion(ARTICLE, "length"), min_words=1)
    assert info.value.kind == "truncated"


def test_truncated_wins_over_empty() -> None:
    """Empty output that hit max_tokens (a reasoning model) needs more tokens, not a retry."""
    with pytest.raises(InvalidOutput) as info:
        validate_completion(completion("", "length"), min_words=1)
    assert info.value.kind == "truncated"


def test_content_filter_is_reported() -> None:
    with pytest.raises(InvalidOutput) as info:
        validate_completion(completion("", "content_filter"), min_words=1)
    assert info.value.kind == "content_filter"


def test_too_short() -> None:
    with pytest.raises(InvalidOutput) as info:
        validate_completion(completion("# Tea\n\nToo short."), min_words=5)
    assert info.value.kind == "too_short"
    assert "3 words" in str(info.value)
    validate_completion(completion("# Tea\n\nLong enough now."), min_words=4)


def test_markup_does_not_count_towards_min_words() -> None:
    with pytest.raises(InvalidOutput) as info:
        validate_completion(completion("# \n\n- \n- \n\n---\n\n| | |\n|-|-|\n"), min_words=1)
    assert info.value.kind == "too_short"


def test_unknown_finish_reason_with_content_is_accepted() -> None:
    validate_completion(completion("Tea is a fine drink.", "unknown"), min_words=3)


def test_the_gate_returns_the_parse_that_formatting_renders() -> None:
    """One parse serves both: the gate's word count is the article's, and rendering the
    parse gives exactly what formatting the text gives."""
    fenced = "```markdown\n" + ARTICLE + "\n```"
    parsed = validate_completion(completion(fenced), min_words=20)
    assert isinstance(parsed, ParsedMarkdown) and parsed == parse_markdown(fenced)
    assert parsed.source == ARTICLE.strip()
    from_text = format_article(fenced, fallback_title="tea")
    assert format_article(parsed, fallback_title="tea") == from_text
    assert (
        parsed.word_count
        == from_text.word_count
        == count_words(
            "How to Brew Green Tea Green tea rewards patience. Use water at about 80 °C, not"
            " boiling. Steps Warm the pot. Steep for two minutes. Grade Temperature Sencha 75 °C"
            " Read the guide for more."
        )
    )
