"""Scrubbing credentials out of text that came from outside before it is logged or stored.

A provider's error message is stored in ``jobs.error_message``, shown by ``status`` and the
exports, and logged; some gateways quote the request's ``Authorization`` header in it, and
OpenAI's own 401 quotes the key in a masked form (``sk-abc1****wxyz``). :func:`redact`
replaces, with ``[redacted]``:

- every secret this process knows (:func:`remember`: the providers' API keys, whatever
  their shape, as soon as a provider is built);
- credentials by shape: ``Bearer`` tokens, ``sk-...`` keys (``sk-proj-``,
  ``sk-ant-``, ...) including their masked forms, JWTs, the value of ``api_key=``,
  ``x-api-key:``, ``authorization:``, ``token=``-style pairs, and any other run of 32+
  letters and digits that mixes upper case, lower case and digits, as generated keys do.

Shapes are chosen so that ordinary messages survive: words, numbers, model names, URLs,
UUIDs and hex digests (request ids, cache keys) are single-case or too short.

The secrets known are process-wide on purpose: the last-line log filter
(:class:`RedactingFilter`) is installed before any provider exists and must still know the
key the provider is given later; the list only grows, by one entry per configured key.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

__all__ = ["REDACTED", "RedactingFilter", "redact", "remember"]

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 6  # shorter "keys" (test placeholders) would blank out ordinary words

_known: set[str] = set()
# Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

_KEY_CHARS = r"[A-Za-z0-9_\-]"
_MASK = r"(?:\*{2,}|\.{3}|…)"
_BEARER = re.compile(r"\b(Bearer\s+)([A-Za-z0-9._~+/=\-]{8,})", re.I)
_SHAPES = [
    # name=value / "name": "value" pairs whose name says secret.
    (
        re.compile(
            r"(?i)\b((?:x-)?api[-_]?key|access[-_]?token|auth[-_]?token|secret|password"
            r"|authorization)(\"?'?\s*[:=]\s*\"?'?)(?!bearer\b|basic\b|token\b|\[redacted\])"
            r"([^\s\"',;&]{6,})"
        ),
        r"\1\2" + REDACTED,
    ),
    # sk-... keys, whole or masked (sk-abc...wxyz, sk-proj-****wxyz).
    (
        re.compile(
            rf"\bsk-(?:{_KEY_CHARS}*{_MASK}{_KEY_CHARS}*(?:{_MASK}{_KEY_CHARS}*)*|{_KEY_CHARS}{{16,}})"
        ),
        REDACTED,
    ),
    # JSON web tokens.
    (re.compile(rf"\beyJ{_KEY_CHARS}{{8,}}\.{_KEY_CHARS}{{8,}}(?:\.{_KEY_CHARS}+)?"), REDACTED),
    # Masked tokens of any other shape: abcd****wxyz.
    (re.compile(rf"{_KEY_CHARS}{{2,}}\*{{4,}}{_KEY_CHARS}*"), REDACTED),
]
_LONG_TOKEN = re.compile(rf"(?<![A-Za-z0-9_\-]){_KEY_CHARS}{{32,}}")


def remember(secret: str | None) -> None:
    """Redact ``secret`` from every message this process redacts from now on."""
    if secret and len(secret) >= MIN_SECRET_CHARS:
        _known.add(secret)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without the known ``secrets`` (and :func:`remember`-ed ones) nor anything
    shaped like a credential."""
    for secret in sorted({*_known, *secrets}, key=len, reverse=True):
        if len(secret) >= MIN_SECRET_CHARS and secret in text:
            text = text.replace(secret, REDACTED)
    text = _BEARER.sub(_bearer, text)
    for pattern, replacement in _SHAPES:
        text = pattern.sub(replacement, text)
    return _LONG_TOKEN.sub(_token_or_text, text)


def _bearer(match: re.Match[str]) -> str:
    """``Bearer <credential>``, but not "bearer tokens" in a sentence."""
    credential = match.group(2)
    if len(credential) >= 20 or any(c.isdigit() for c in credential):
        return match.group(1) + REDACTED
    return match.group(0)


def _token_or_text(match: re.Match[str]) -> str:
    """Generated keys mix cases and digits; identifiers, hex and words do not."""
    token = match.group(0)
    mixed = (
        any(c.isupper() for c in token)
        and any(c.islower() for c in token)
        and any(c.isdigit() for c in token)
    )
    return REDACTED if mixed else token


class RedactingFilter(logging.Filter):
    """The last line: a handler filter that redacts a record's message, its ``extra``
    values and its traceback before any formatter sees them, whatever logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken logging call: the handler reports it, as without us
            return True
        record.msg, record.args = redact(message), None
        for name, value in list(vars(record).items()):
            if name not in _STANDARD and not isinstance(value, int | float | None):
                setattr(record, name, redact(str(value)))  # numbers hold no key
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
