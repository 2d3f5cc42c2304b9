"""Read a provider's rate-limit headers into one frozen snapshot. Pure: no I/O, no clock.

Understood formats (names are case-insensitive):

- OpenAI: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; resets are Go-style
  durations (``6m0s``, ``12ms``, ``1m30.5s``, ``2h0m0s``) or plain seconds (``20``).
- Gateways: LiteLLM's proxy announces the limits of a key, user, team or end user as
  ``x-ratelimit-{scope}-{limit,remaining}-{requests,tokens}`` (``x-ratelimit-api_key-
  remaining-requests``), besides or instead of the provider's own. Every scope is read,
  OpenAI's unscoped names included, and the tightest wins: the smallest limit and the
  smallest remaining of each dimension, since any one of them refuses when it is spent.
- ``retry-after`` (seconds or an HTTP date) and ``retry-after-ms``; the millisecond form
  wins because it is the more precise.
- Anthropic: ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,
  remaining,reset}`` with RFC 3339 reset instants. ``tokens-*`` is used when present,
  otherwise ``input-tokens-*``: bulkgen reserves prompt plus ``max_tokens`` against one
  token budget, so budgeting that sum against the input limit errs on the safe side.

A malformed value is logged as a warning event and ignored: a provider sending garbage in
one header must never fail a job that otherwise succeeded.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

logger = logging.getLogger(__name__)

_GO_DURATION = re.compile(r"(?P<num>\d+(?:\.\d+)?)(?P<unit>h|ms|us|µs|ns|m|s)")
_SCOPED = re.compile(r"x-ratelimit-(?:[a-z0-9_.-]+-)?(limit|remaining)-(requests|tokens)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


@dataclass(frozen=True, slots=True)
class RateLimitSnapshot:
    """What one response said about the provider's budget; ``None`` means "not said"."""

    limit_rpm: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tpm: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None
    retry_after_s: float | None = None

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in self.__slots__)

    def bucket_depth_s(self) -> float | None:
        """How many seconds of budget the provider's bucket holds, when the headers say.

        A refilling bucket is full again after ``reset``, so ``capacity = remaining +
        reset * limit / 60``; in seconds of budget that is ``reset + remaining * 60 /
        limit``. OpenAI reports a minute-deep bucket (``remaining`` out of the limit, a
        reset of a few ms); a provider (or the simulator under ``time_scale``) that
        enforces over a shorter window reports a shallower one. Only reports with
        ``remaining > 0`` count: an empty bucket may be overdrawn, and then its reset
        overstates the depth. The shallower of the two dimensions wins.
        """
        depths: list[float] = []
        for limit, remaining, reset_s in (
            (self.limit_rpm, self.remaining_requests, self.reset_requests_s),
            (self.limit_tpm, self.remaining_tokens, self.reset_tokens_s),
        ):
            if limit and remaining and reset_s is not None:
                depths.append(reset_s + remaining * 60.0 / limit)
        return min(depths) if depths else None


def parse_duration_s(text: str) -> float:
    """Seconds in a Go-style duration (``1m30.5s``) or a plain non-negative number.

    Raises ``ValueError`` on anything else, so callers decide how loud to be.
    """
    value = text.strip()
    if not value:
        raise ValueError("empty duration")
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"not a non-negative duration: {text!r}")
        return seconds
    position = 0
    total = 0.0
    for match in _GO_DURATION.finditer(value):
        if match.start() != position:
            raise ValueError(f"not a duration: {text!r}")
        total += float(match["num"]) * _UNIT_S[match["unit"]]
        position = match.end()
    if position != len(value):
        raise ValueError(f"not a duration: {text!r}")
    return total


def _warn(name: str, value: str, reason: str) -> None:
    logger.warning(
        "limiter.header_malformed", extra={"header": name, "value": value[:80], "reason": reason}
    )


def _int(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        number = int(raw.strip())
    except ValueError:
        _warn(name, raw, "not an integer")
        return None
    if number < 0:
        _warn(name, raw, "negative")
        return None
    return number


def _tightest(headers: Mapping[str, str], field: str, unit: str) -> int | None:
    """The smallest ``x-ratelimit-[{scope}-]{field}-{unit}`` value over every scope."""
    values = [
        _int(headers, name)
        for name in headers
        if (match := _SCOPED.fullmatch(name)) and match.groups() == (field, unit)
    ]
    known = [value for value in values if value is not None]
    return min(known) if known else None


def _duration(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return parse_duration_s(raw)
    except ValueError:
        _warn(name, raw, "not a duration")
        return None


def _instant(headers: Mapping[str, str], name: str, now_epoch_s: float) -> float | None:
    """Seconds from now until an RFC 3339 instant; an instant in the past counts as 0."""
    raw = headers.get(name)
    if raw is None:
        return None
    text = raw.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        _warn(name, raw, "not an RFC 3339 instant")
        return None
    if moment.tzinfo is None:
        _warn(name, raw, "instant without a time zone")
        return None
    return max(0.0, moment.timestamp() - now_epoch_s)


def retry_after_s(headers: Mapping[str, str], now_epoch_s: float) -> float | None:
    """The provider's wait hint in seconds (lower-cased header names), or None.

    ``retry-after-ms`` wins (more precise); ``retry-after`` is delta-seconds or an HTTP
    date. Negative, non-finite or unreadable values are ignored with a warning, so a bad
    header never schedules a job into the past or forever. The one parser of these
    headers: the provider's error translation uses it too.
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            millis = float(raw_ms.strip())
            if math.isfinite(millis) and millis >= 0:
                return millis / 1000.0
        except ValueError:
            pass
        _warn("retry-after-ms", raw_ms, "not a non-negative number")
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw.strip())
    except ValueError:
        pass
    else:
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
        _warn("retry-after", raw, "negative or not finite")
        return None
    try:
        moment = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        _warn("retry-after", raw, "neither seconds nor an HTTP date")
        return None
    if moment.tzinfo is None:
        _warn("retry-after", raw, "an HTTP date without a time zone")
        return None
    return max(0.0, moment.timestamp() - now_epoch_s)


_LIMIT_HEADER_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-", "ratelimit-")


def announces_limits(headers: Mapping[str, str]) -> bool:
    """True when an answer carries any rate-limit header or wait hint (names lower-cased):
    a 429 without one comes from a server that is full, not from a rate limit."""
    return any(
        name.startswith(_LIMIT_HEADER_PREFIXES) or name in ("retry-after", "retry-after-ms")
        for name in headers
    )


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def parse_rate_limit_headers(
    headers: Mapping[str, str], *, now_epoch_s: float
) -> RateLimitSnapshot:
    """One snapshot from any mix of the formats above; ``x-ratelimit-*`` names (OpenAI's
    and the gateways' scoped ones) win over Anthropic's.

    ``now_epoch_s`` turns absolute instants (HTTP dates, RFC 3339) into waits, so the
    function stays pure and testable.
    """
    h = {name.lower(): value for name, value in headers.items()}
    a = "anthropic-ratelimit-"
    a_tok = f"{a}tokens" if f"{a}tokens-limit" in h or f"{a}tokens-remaining" in h else None
    a_tok = a_tok or f"{a}input-tokens"
    limit_rpm = _first(_tightest(h, "limit", "requests"), _int(h, f"{a}requests-limit"))
    limit_tpm = _first(_tightest(h, "limit", "tokens"), _int(h, f"{a_tok}-limit"))
    remaining_requests = _first(
        _tightest(h, "remaining", "requests"), _int(h, f"{a}requests-remaining")
    )
    remaining_tokens = _first(_tightest(h, "remaining", "tokens"), _int(h, f"{a_tok}-remaining"))
    return RateLimitSnapshot(
        limit_rpm=None if limit_rpm is None else int(limit_rpm),
        remaining_requests=None if remaining_requests is None else int(remaining_requests),
        reset_requests_s=_first(
            _duration(h, "x-ratelimit-reset-requests"),
            _instant(h, f"{a}requests-reset", now_epoch_s),
        ),
        limit_tpm=None if limit_tpm is None else int(limit_tpm),
        remaining_tokens=None if remaining_tokens is None else int(remaining_tokens),
        reset_tokens_s=_first(
            _duration(h, "x-ratelimit-reset-tokens"),
            _instant(h, f"{a_tok}-reset", now_epoch_s),
        ),
        retry_after_s=retry_after_s(h, now_epoch_s),
    )
