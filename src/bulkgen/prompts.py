"""Prompt templates: Jinja2 text -> the ``(role, content)`` messages of one request.

**Roles convention.** A template is split into messages by *marker lines*: a line that
holds nothing but a Jinja comment naming a role, ``{# system #}``, ``{# user #}`` or
``{# assistant #}`` (``{#- user -#}`` works too). Each marker starts a message that runs
to the next marker. A template without markers is one ``user`` message; text before the
first marker is not allowed. Because the markers are comments, a template is valid Jinja
as a whole, and since each section is rendered on its own a variable's *value* can never
inject a new message (a keyword that contains ``{# system #}`` stays text). A Jinja
statement cannot span two sections. Messages that render blank are dropped.

**Rendering.** Templates run in :class:`jinja2.sandbox.ImmutableSandboxedEnvironment`
(batch templates come from users: no attribute tricks, no mutation of the variables) with
:class:`jinja2.StrictUndefined`, so a misspelt variable fails the job's input loudly
instead of sending a prompt with a hole in it. Autoescaping is off: the output is a
prompt, not HTML. Use ``{% if name is defined %}`` for optional variables.

**Bounds.** The sandbox limits what a template may touch, not how long it runs: nested
loops (each ``range`` within the sandbox's cap) or a filter asked for a huge string can run
for minutes inside one call no thread can interrupt. :meth:`PromptTemplate.render` bounds the
output (``max_chars``, checked while rendering, so a runaway loop stops early) and turns
every failure a template can cause (an unsafe access included) into :class:`InputError`;
time and memory are bounded by running it in a child process, see :mod:`bulkgen.renderer`.

``version`` is ``sha256(text)[:16]`` and is part of the result-cache key: editing a
template can never serve articles written for the old one.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bulkgen.errors import ConfigError, InputError

__all__ = ["ROLES", "PromptTemplate"]

ROLES = ("system", "user", "assistant")
MAX_TEMPLATE_CHARS = 100_000

_MARKER = re.compile(r"^[ \t]*\{#-?[ \t]*(system|user|assistant)[ \t]*-?#\}[ \t]*$", re.M)
_UNDEFINED = re.compile(r"^'([^']+)' is undefined$")
_ENV = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    trim_blocks=True,
    lstrip_blocks=True,
)

_Section = tuple[str, jinja2.Template]


@dataclass(frozen=True)
class PromptTemplate:
    """A validated template and its version. Build with :meth:`from_text` or :meth:`default`."""

    text: str
    version: str

    @classmethod
    def default(cls) -> PromptTemplate:
        """The built-in article prompt (``templates/article.j2``)."""
        text = resources.files("bulkgen").joinpath("templates", "article.j2").read_text("utf-8")
        return cls.from_text(text)

    @classmethod
    def from_text(cls, text: str) -> PromptTemplate:
        """Validate ``text`` now (syntax errors -> :class:`ConfigError` with the line number),
        so a broken template is refused when the batch is submitted, not per job."""
        _compile(text)
        return cls(text=text, version=hashlib.sha256(text.encode("utf-8")).hexdigest()[:16])

    def render(
        self, variables: Mapping[str, object], *, max_chars: int | None = None
    ) -> tuple[tuple[str, str], ...]:
        """The messages for one job, content stripped. Whatever goes wrong because of the
        template or the variables (undefined variable, unsafe access, more than
        ``max_chars`` characters in all) -> :class:`InputError`."""
        messages: list[tuple[str, str]] = []
        budget = _Budget(max_chars)
        for role, template in _compile(self.text):
            content = _render_section(template, variables, budget).strip()
            if content:
                messages.append((role, content))
        if not messages:
            raise InputError("the prompt template rendered no message")
        return tuple(messages)


class _Budget:
    """Characters left for the whole prompt, spent chunk by chunk as the template yields."""

    def __init__(self, max_chars: int | None) -> None:
        self.max_chars = max_chars
        self.left = max_chars

    def spend(self, chunk: str) -> None:
        if self.left is None:
            return
        self.left -= len(chunk)
        if self.left < 0:
            raise InputError(f"the prompt template rendered more than {self.max_chars} characters")


def _render_section(
    template: jinja2.Template, variables: Mapping[str, object], budget: _Budget
) -> str:
    chunks: list[str] = []
    try:
        for chunk in template.generate(variables):
            budget.spend(chunk)
            chunks.append(chunk)
    except jinja2.UndefinedError as exc:
        match = _UNDEFINED.match(str(exc.message or ""))
        if match:
            name = match.group(1)
            raise InputError(f"template variable {name!r} is undefined", field=name) from exc
        raise InputError(f"template refers to something undefined: {exc.message}") from exc
    except SecurityError as exc:
        raise InputError(f"prompt template did something unsafe: {exc}") from exc
    except RecursionError as exc:
        raise InputError("prompt template recursed too deeply") from exc
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, LookupError) as exc:
        raise InputError(f"prompt template failed to render: {exc}") from exc
    return "".join(chunks)


def _split(text: str) -> list[tuple[str, int, str]]:
    """``(role, first line number, source)`` per section, line numbers 1-based in ``text``."""
    markers = list(_MARKER.finditer(text))
    if not markers:
        return [("user", 1, text)]
    head = text[: markers[0].start()]
    if head.strip():
        line = head.count("\n", 0, len(head) - len(head.lstrip())) + 1
        raise ConfigError(
            f"prompt template line {line}: text before the first role marker "
            "({# system #} / {# user #} / {# assistant #})"
        )
    sections = []
    for index, marker in enumerate(markers):
        end = markers[index + 1].start() if index + 1 < len(markers) else len(text)
        start = marker.end()
        sections.append((marker.group(1), text.count("\n", 0, start) + 1, text[start:end]))
    return sections


@functools.lru_cache(maxsize=64)
def _compile(text: str) -> tuple[_Section, ...]:
    """Compiled sections of ``text``; cached because every job of a batch shares one."""
    if len(text) > MAX_TEMPLATE_CHARS:
        raise ConfigError(f"prompt template is longer than {MAX_TEMPLATE_CHARS} characters")
    _parse(text, first_line=1)  # whole-text check: the best line numbers for users
    return tuple((role, _parse(source, first_line=line)) for role, line, source in _split(text))


def _parse(source: str, *, first_line: int) -> jinja2.Template:
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        line = (exc.lineno or 1) + first_line - 1
        raise ConfigError(f"prompt template syntax error at line {line}: {exc.message}") from exc
    except (RecursionError, SyntaxError) as exc:  # Jinja's parser or Python's compiler gave up
        raise ConfigError("prompt template is nested too deeply to compile") from exc
