"""Batch options, declared once: their types, bounds, defaults and error wording.

:class:`BatchOptions` is what every job of a batch shares (a CSV or JSONL row may override
all but the template). Every face validates through it: ``bulkgen submit``'s flags, the
per-row overrides of intake, and request bodies of an HTTP API (``BatchOptions`` is a
pydantic model, so ``BatchOptions.model_json_schema()`` documents the same bounds). A
value one face accepts is therefore never refused by another.

Fleet defaults: ``model`` and ``max_tokens`` have no default here. :func:`validate_options`
fills them from ``BULKGEN_MODEL`` and ``BULKGEN_MAX_TOKENS`` (:class:`~bulkgen.Settings`)
when a batch is submitted without them, and the batch stores the values it took, so a
worker started with other settings still runs the batch as it was submitted.

Bounds, and why:

- ``target_words`` 50-20,000: fewer than 50 words is a snippet, not an article, and a model
  asked for a handful of words easily lands under the output check's minimum
  (``BULKGEN_MIN_WORDS``, 30 by default), failing every job; 20,000 words (~27,000 tokens)
  is about the longest article one completion of current models can hold.
- ``max_tokens`` 16-200,000: fewer than 16 tokens cannot hold an article, so every answer
  would come back truncated; the largest output limits of current models are near 128,000
  tokens, and 200,000 leaves room for the next ones while refusing slips such as
  1,500,000 for 1,500.
- ``temperature`` 0-2, OpenAI's range; ``None`` (or "none"/"null" in a file) sends none,
  for models that accept only their default.
- ``model``, ``tone``, ``language``: 1-200 characters after trimming; they end up in the
  prompt or the request, where an empty or runaway value is always a mistake.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

import annotated_types
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails

from bulkgen.errors import ConfigError
from bulkgen.prompts import PromptTemplate

if TYPE_CHECKING:
    from bulkgen.settings import Settings

__all__ = [
    "OVERRIDABLE_OPTIONS",
    "BatchOptions",
    "MaxTokens",
    "ModelName",
    "check_option",
    "option_bounds",
    "stored_options",
    "validate_options",
]

MAX_TEXT_OPTION_CHARS = 200


def _whole_number(value: object) -> object:
    """pydantic would read ``True`` as 1; a boolean where a count belongs is a mistake."""
    if isinstance(value, bool):
        raise ValueError("must be a whole number, not a boolean")
    return value


def _temperature(value: object) -> object:
    """A cell reading none or null (any case) is how a CSV row says "send no temperature"."""
    if isinstance(value, str) and value.strip().lower() in ("none", "null"):
        return None
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {value!r}")
    return value


Text = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT_OPTION_CHARS),
]
ModelName = Annotated[Text, Field(description="Model name, as the provider spells it")]
MaxTokens = Annotated[
    int,
    Field(ge=16, le=200_000, description="Most tokens one answer may use"),
    BeforeValidator(_whole_number),
]


class BatchOptions(BaseModel):
    """Options shared by every job of a batch (a row may override all but ``template``).

    Frozen and complete: a stored batch always names its model and ``max_tokens``. Build
    one from user input with :func:`validate_options`, which supplies the fleet defaults.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: ModelName
    max_tokens: MaxTokens
    tone: Annotated[Text, Field(description="Tone of voice the prompt asks for")] = "informative"
    language: Annotated[Text, Field(description="Language to write in")] = "English"
    target_words: Annotated[
        int,
        Field(ge=50, le=20_000, description="Length of each article, in words"),
        BeforeValidator(_whole_number),
    ] = 800
    temperature: Annotated[
        float | None,
        Field(
            ge=0.0,
            le=2.0,
            allow_inf_nan=False,
            description="Sampling temperature; none or null sends none",
        ),
        BeforeValidator(_temperature),
    ] = 0.7
    template: Annotated[
        str | None,
        Field(description="Jinja2 prompt template text; null uses the default template"),
    ] = None

    @field_validator("template")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        """A template that does not compile is refused at submit, not once per job."""
        if value is None:
            return None
        if not value.strip():
            raise ValueError("must be non-empty template text or None")
        try:
            PromptTemplate.from_text(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value


OVERRIDABLE_OPTIONS: tuple[str, ...] = tuple(
    name for name in BatchOptions.model_fields if name != "template"
)

# One validator per option, made from the model's own field declarations, so a row's
# override and a CLI flag are checked exactly as the whole model checks them.
_FIELDS: dict[str, TypeAdapter[Any]] = {
    name: TypeAdapter(BatchOptions.model_fields[name].rebuild_annotation())
    for name in OVERRIDABLE_OPTIONS
}


def option_bounds(name: str) -> tuple[float, float] | None:
    """``(low, high)`` of a numeric option, from its declaration; None for the others."""
    low: float | None = None
    high: float | None = None
    for item in BatchOptions.model_fields[name].metadata:
        if isinstance(item, annotated_types.Ge) and isinstance(item.ge, int | float):
            low = item.ge
        elif isinstance(item, annotated_types.Le) and isinstance(item.le, int | float):
            high = item.le
    return None if low is None or high is None else (low, high)


def _shown(value: object) -> str:
    """Numbers as a user typed them (2, not 2.0); anything else quoted."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return repr(value)


def _problem(name: str, error: ErrorDetails) -> str:
    """pydantic's error -> the wording bulkgen uses everywhere ("must be ..., got ...")."""
    kind, value = error["type"], error["input"]
    context = error.get("ctx") or {}
    bounds = option_bounds(name) if name in BatchOptions.model_fields else None
    if kind in ("greater_than_equal", "less_than_equal", "finite_number") and bounds:
        low, high = bounds
        return f"must be between {_shown(low)} and {_shown(high)}, got {_shown(value)}"
    messages = {
        "int_type": f"must be a whole number, got {value!r}",
        "int_parsing": f"must be a whole number, got {value!r}",
        "int_from_float": f"must be a whole number, got {value!r}",
        "float_type": f"must be a number, got {value!r}",
        "float_parsing": f"must be a number, got {value!r}",
        "string_type": f"must be text, not {type(value).__name__}",
        "string_too_short": "must not be empty",
        "string_too_long": f"must be at most {context.get('max_length')} characters",
        "missing": "is required",
    }
    if kind == "value_error" and "error" in context:
        return str(context["error"])
    return messages.get(kind, error["msg"])


def check_option(name: str, value: object) -> Any:
    """One option's value, checked as :class:`BatchOptions` checks it.

    Raises ``ValueError`` saying what is wrong without naming the option, so the caller
    can say where it came from (a row and field, a CLI flag).
    """
    try:
        return _FIELDS[name].validate_python(value)
    except ValidationError as exc:
        raise ValueError(_problem(name, exc.errors()[0])) from None


def _options(values: Mapping[str, object]) -> BatchOptions:
    """Every option at once; the first problem becomes a ConfigError naming the option."""
    known = set(BatchOptions.model_fields)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(unknown)}; known: {sorted(known)}")
    try:
        return BatchOptions.model_validate(dict(values))
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else "options"
        raise ConfigError(f"option {name!r} {_problem(name, error)}") from None


def validate_options(raw: Mapping[str, object], settings: Settings) -> BatchOptions:
    """What a user chose (CLI, API) -> complete :class:`BatchOptions`, checked at the edge.

    ``model`` and ``max_tokens`` not given take the fleet's defaults, ``BULKGEN_MODEL`` and
    ``BULKGEN_MAX_TOKENS``. Unknown names and bad values raise :class:`ConfigError`
    naming the option; a template is compiled now, so a syntax error is reported before
    the batch exists.
    """
    fleet: dict[str, object] = {"model": settings.model, "max_tokens": settings.max_tokens}
    return _options({**fleet, **raw})


def stored_options(stored: Mapping[str, object]) -> BatchOptions:
    """A stored batch's options, checked again (a row edited by hand is refused, loudly).

    No fleet default applies: a batch runs with the model and ``max_tokens`` it was
    submitted with, whatever the settings of the worker that runs it.
    """
    return _options(stored)
