"""Markdown on the finish path: parsing once, and what other parsers would cost.

Every ``done`` job runs the validation gate and formatting on the event loop. On an
article of about 800 visible words (headings, lists, a table, links, emphasis, code; made
by this script from a fixed seed), in the same run:

- **path**: the old path (the gate parses and counts, then ``format_article`` parses the
  text again) against the current one (``format_article`` renders the gate's parse);
- **parsers**: Markdown -> HTML with markdown-it-py as bulkgen configured it before it
  moved to markdown-it-pyrs (the baseline) against ``cmarkgfm``, ``pyromark`` and
  ``markdown-it-pyrs`` (the runtime parser now) configured alike
  (CommonMark, raw HTML passed to the sanitiser, tables, strikethrough), each where it is
  installed (``pip install -e '.[bench]'``). ``same after sanitiser`` says whether its HTML
  for the article, once through ``sanitize_html``, is byte for byte markdown-it-py's;
  ``ignoring whitespace`` whether it is once whitespace between tags is dropped, and
  ``lines differing`` how many tags or text runs differ then (one per line).

Times are CPU microseconds per article (what the event loop pays), the median of
``--rounds`` rounds of ``--articles`` articles, the cases of a round interleaved so that a
change of load hits them all alike.

With ``--spec``, every parser also renders the 652 examples of the CommonMark spec
(``commonmark.json`` as markdown-it-py's source distribution ships it: give its path, or
``pypi`` to fetch that distribution with pip): per parser, how many examples give the
spec's HTML exactly, and how many give, once through the sanitiser, the same HTML as
markdown-it-py as bulkgen configured it (what switching parsers changes for users).

    .venv/bin/python bench/markdown.py [--articles 100] [--rounds 5] [--spec pypi|PATH]
"""

from __future__ import annotations

import argparse
import difflib
import importlib.metadata
import importlib.util
import json
import random
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

from bulkgen.formatting import (
    format_article,
    parse_markdown,
    sanitize_html,
    validate_completion,
)
from bulkgen.models import Completion, Usage
from record import Run, add_out_argument

Render = Callable[[str], str]

# The baseline: markdown-it-py as bulkgen's formatting configured it before markdown-it-pyrs.
MARKDOWN_IT_PY = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])

_WORDS = """
tea leaf water steep pot cup green black oolong white aroma flavour bitter sweet
temperature minute harvest garden spring season grade cultivar roast oxidation brew
kettle porcelain clay infusion caffeine texture colour body finish market grower
shade sun hillside picking rolling drying storage fresh light dark smooth bright
""".split()  # noqa: SIM905 (reads better than 48 quoted words)


def _phrase(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def _sentence(rng: random.Random) -> str:
    """Ten to eighteen words, now and then with emphasis, code or a link inside."""
    words = [rng.choice(_WORDS) for _ in range(rng.randint(10, 18))]
    i = rng.randrange(len(words) - 2)
    kind = rng.randrange(6)
    if kind == 0:
        words[i] = f"*{words[i]}*"
    elif kind == 1:
        words[i] = f"**{words[i]} {words[i + 1]}**"
        del words[i + 1]
    elif kind == 2:
        words[i] = f"`{words[i]}`"
    elif kind == 3:
        words[i] = f"[{words[i]}](https://example.com/{words[i]}?ref={i} " + '"More")'
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def _paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(_sentence(rng) for _ in range(sentences))


def _table(rng: random.Random) -> str:
    rows = ["| Grade | Water °C | Minutes | Notes |", "|:------|-------:|:---:|---|"]
    for _ in range(5):
        rows.append(
            f"| {_phrase(rng, 1).title()} | {rng.randint(70, 98)} | {rng.randint(1, 5)} "
            f"| {_phrase(rng, 4)} |"
        )
    return "\n".join(rows)


def _section(rng: random.Random, index: int) -> list[str]:
    blocks = [f"## {_phrase(rng, 3).capitalize()}", _paragraph(rng, 3)]
    shape = index % 4
    if shape == 0:
        blocks.append("\n".join(f"- {_sentence(rng)}" for _ in range(4)))
    elif shape == 1:
        items = [f"{n}. {_sentence(rng)}" for n in range(1, 5)]
        items.insert(2, f"   - {_phrase(rng, 5)}\n   - ~~{_phrase(rng, 3)}~~")
        blocks.append("\n".join(items))
    elif shape == 2:
        blocks += [_table(rng), f"> {_sentence(rng)}\n> {_sentence(rng)}"]
    else:
        blocks += [
            f"### {_phrase(rng, 2).capitalize()}",
            "```text\n" + _phrase(rng, 8) + "\n```",
            f"See <https://example.com/{index}> or <kbd>{_phrase(rng, 1)}</kbd>.",
        ]
    blocks.append(_paragraph(rng, 2))
    return blocks


def write_article(words: int, seed: int) -> str:
    """A Markdown article of at least ``words`` visible words, the same for the same seed."""
    rng = random.Random(seed)
    blocks = [f"# {_phrase(rng, 4).title()}", _paragraph(rng, 3)]
    pending: list[str] = []
    while parse_markdown("\n\n".join(blocks)).word_count < words:
        if not pending:
            pending = _section(rng, len(blocks))
        blocks.append(pending.pop(0))
    return "\n\n".join(blocks) + "\n"


def peers() -> dict[str, Render | None]:
    """Each peer configured like the runtime parser, or None when it is not installed."""
    found: dict[str, Render | None] = {}
    if importlib.util.find_spec("cmarkgfm"):
        import cmarkgfm
        from cmarkgfm.cmark import Options

        def cmark(text: str) -> str:
            return str(
                cmarkgfm.markdown_to_html_with_extensions(
                    text, options=Options.CMARK_OPT_UNSAFE, extensions=["table", "strikethrough"]
                )
            )

        found["cmarkgfm"] = cmark
    else:
        found["cmarkgfm"] = None
    if importlib.util.find_spec("pyromark"):
        import pyromark

        options = pyromark.Options.ENABLE_TABLES | pyromark.Options.ENABLE_STRIKETHROUGH
        found["pyromark"] = pyromark.Markdown(options=options).html
    else:
        found["pyromark"] = None
    if importlib.util.find_spec("markdown_it_pyrs"):
        import markdown_it_pyrs

        parser = markdown_it_pyrs.MarkdownIt("commonmark").enable_many(["table", "strikethrough"])
        found["markdown-it-pyrs"] = parser.render
    else:
        found["markdown-it-pyrs"] = None
    return found


def per_article_us(run: Callable[[], object], articles: int) -> float:
    """CPU time of this process per article: the work runs on one thread, and on a shared
    machine CPU time moves far less with the load than elapsed time does."""
    started = time.process_time()
    for _ in range(articles):
        run()
    return (time.process_time() - started) / articles * 1e6


def _squeezed(html: str) -> str:
    return re.sub(r">\s+<", "><", html).strip()


def lines_differing(html: str, baseline: str) -> int:
    """Tags and text runs (one per line once whitespace between tags is dropped) that
    differ from the baseline's."""
    ours, theirs = (_squeezed(h).replace("><", ">\n<").splitlines() for h in (html, baseline))
    diff = difflib.unified_diff(theirs, ours, lineterm="", n=0)
    return sum(1 for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---"))


def spec_examples(where: str) -> list[dict[str, Any]]:
    """The CommonMark spec's examples, from a ``commonmark.json`` file or (``pypi``) from
    the source distribution of the installed markdown-it-py, fetched with pip."""
    if where != "pypi":
        return list(json.loads(Path(where).read_text(encoding="utf-8")))
    version = importlib.metadata.version("markdown-it-py")
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
             ":all:", f"markdown-it-py=={version}", "--dest", folder],
            check=True,
        )  # fmt: skip
        (archive,) = Path(folder).glob("*.tar.gz")
        with tarfile.open(archive) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("commonmark.json"))
            data = tar.extractfile(member)
            assert data is not None
            return list(json.loads(data.read()))


def spec_fidelity(renders: dict[str, Render], examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per parser: examples rendered as the spec says, and examples whose sanitised HTML is
    markdown-it-py's (ignoring whitespace between tags), with the first few that are not."""
    baseline = [_squeezed(sanitize_html(MARKDOWN_IT_PY.render(e["markdown"]))) for e in examples]
    fidelity: dict[str, Any] = {}
    for name, render in renders.items():
        as_spec = as_baseline = 0
        differing: list[int] = []
        for example, expected in zip(examples, baseline, strict=True):
            html = render(example["markdown"])
            as_spec += html == example["html"]
            if _squeezed(sanitize_html(html)) == expected:
                as_baseline += 1
            else:
                differing.append(example["example"])
        fidelity[name] = {
            "examples": len(examples),
            "as_spec": as_spec,
            "as_markdown_it_py_after_sanitizer": as_baseline,
            "first_differing_examples": differing[:10],
        }
    return fidelity


def main(args: argparse.Namespace) -> None:
    run = Run("markdown", args.out)
    article = write_article(args.words, args.seed)
    words = parse_markdown(article).word_count
    answer = Completion(article, Usage(300, 1100), "stop", "gpt-4o")

    def old_path() -> object:
        validate_completion(answer, min_words=100)  # parses and counts...
        return format_article(answer.content, fallback_title="tea")  # ...and again

    def new_path() -> object:
        parsed = validate_completion(answer, min_words=100)
        return format_article(parsed, fallback_title="tea")

    assert old_path() == new_path()
    renders: dict[str, Render] = {"markdown-it-py": MARKDOWN_IT_PY.render}
    missing = []
    for name, render in peers().items():
        if render is None:
            missing.append(name)
        else:
            renders[name] = render
    cases: dict[str, Callable[[], object]] = {"old path": old_path, "new path": new_path}
    cases |= {name: (lambda r=render: r(article)) for name, render in renders.items()}
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, case in cases.items():
            samples[name].append(per_article_us(case, args.articles))
    us = {name: statistics.median(values) for name, values in samples.items()}
    baseline = sanitize_html(MARKDOWN_IT_PY.render(article))
    raw_html = MARKDOWN_IT_PY.render(article)
    sanitize_us = statistics.median(
        per_article_us(lambda: sanitize_html(raw_html), args.articles) for _ in range(3)
    )

    print(f"article: {len(article)} characters, {words} visible words")
    print(f"\n{'path':<12}{'cpu us/article':>16}")
    for name in ("old path", "new path"):
        print(f"{name:<12}{us[name]:>16.0f}")
    path_ratio = us["old path"] / us["new path"]
    print(f"old / new: x{path_ratio:.2f}")

    parsers: dict[str, dict[str, Any]] = {}
    header = f"\n{'parser':<18}{'cpu us/article':>16}{'vs markdown-it-py':>19}"
    header += f"{'same after sanitiser':>22}{'ignoring whitespace':>21}{'lines differing':>17}"
    print(header)
    for name, render in renders.items():
        clean = sanitize_html(render(article))
        parsers[name] = {
            "us_per_article": round(us[name], 1),
            "ratio_to_markdown_it_py": round(us[name] / us["markdown-it-py"], 3),
            "same_html_after_sanitizer": clean == baseline,
            "same_html_ignoring_whitespace": _squeezed(clean) == _squeezed(baseline),
            "lines_differing": lines_differing(clean, baseline),
        }
        row = parsers[name]
        print(
            f"{name:<18}{row['us_per_article']:>16.0f}{row['ratio_to_markdown_it_py']:>18.2f}x"
            f"{'yes' if row['same_html_after_sanitizer'] else 'no':>22}"
            f"{'yes' if row['same_html_ignoring_whitespace'] else 'no':>21}"
            f"{row['lines_differing']:>17}"
        )
    for name in missing:
        print(f"{name:<18}{'not installed':>16}")
    print(f"for scale, sanitize_html on markdown-it-py's HTML: {sanitize_us:.0f} cpu us/article")
    fidelity = None
    if args.spec:
        fidelity = spec_fidelity(renders, spec_examples(args.spec))
        header = f"{'CommonMark spec':<18}{'examples':>10}{'as the spec':>13}"
        print(f"\n{header}{'as markdown-it-py':>19}")
        for name, row in fidelity.items():
            print(
                f"{name:<18}{row['examples']:>10}{row['as_spec']:>13}"
                f"{row['as_markdown_it_py_after_sanitizer']:>19}"
            )
        print("as markdown-it-py: sanitised HTML equal to markdown-it-py's, as bulkgen used it")
    run.finish(
        {
            "article_chars": len(article),
            "article_words": words,
            "articles_per_round": args.articles,
            "rounds": args.rounds,
            "old_path_us_per_article": round(us["old path"], 1),
            "new_path_us_per_article": round(us["new path"], 1),
            "old_over_new": round(path_ratio, 3),
            "sanitize_us_per_article": round(sanitize_us, 1),
            "parsers": parsers,
            "not_installed": missing,
            "commonmark_spec": fidelity,
        }
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--articles", type=int, default=100, help="articles per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--words", type=int, default=800, help="visible words, at least")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--spec", help="commonmark.json, or pypi to fetch it: CommonMark spec fidelity too"
    )
    add_out_argument(parser, "markdown")
    main(parser.parse_args())
