"""OpenAI-compatible provider over the official ``openai`` SDK, with the SDK's retries off.

This module is the one boundary where ``openai``/``httpx`` errors become bulkgen errors
(:func:`translate_status` applies the same table to an error answer read from a Batch API
result file)::

    429 + code/type insufficient_quota  -> QuotaExhausted        (fails at once)
    429 without limit headers or hint   -> ProviderOverloaded    (snooze, no attempt burnt)
    429 otherwise                       -> RateLimited           (snooze, no attempt burnt)
    503 saying "overloaded", 529        -> ProviderOverloaded    (snooze, no attempt burnt)
    408, 409                            -> ProviderUnavailable   (retryable at OpenAI)
    400, 401, 403, 404, 422, other 4xx  -> ProviderRejected      (fails at once)
    5xx and any other status            -> ProviderUnavailable
    openai.APITimeoutError              -> ProviderTimeout
    openai.APIConnectionError           -> ProviderConnectionError
    unparseable 2xx body / no choices   -> InvalidOutput(reason="malformed")

Every translated error carries ``status_code``, the response headers (lower-cased) and
``retry_after_s`` from ``retry-after-ms`` (preferred) or ``retry-after`` (seconds or an
HTTP date). Retrying is never done here: the SDK runs with ``max_retries=0`` and the
worker's :class:`~bulkgen.retry.RetryPolicy` decides, so one 429 cannot turn into a
hidden burst of retries from every coroutine at once.

Its message has every credential redacted (:mod:`bulkgen.redaction`: the configured key
and anything shaped like one): gateways quote the ``Authorization`` header, OpenAI's 401
quotes the key masked, and from here the message is logged, stored and shown.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, cast

import httpx
import openai

from bulkgen.errors import (
    InvalidOutput,
    ProviderConnectionError,
    ProviderError,
    ProviderOverloaded,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExhausted,
    RateLimited,
)
from bulkgen.limits.headers import announces_limits, retry_after_s
from bulkgen.models import ChatRequest, Completion, Usage
from bulkgen.providers.base import api_key_id
from bulkgen.redaction import redact, remember

__all__ = [
    "OpenAICompatProvider",
    "api_key_id",
    "parse_completion_body",
    "parse_retry_after_s",
    "sdk_client",
    "translate_error",
    "translate_status",
]

_RETRYABLE_4XX = frozenset({408, 409})


def _lower_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers}


def parse_retry_after_s(headers: Mapping[str, str], *, now_s: float) -> float | None:
    """The provider's wait hint in seconds, or None (see :func:`retry_after_s`)."""
    return retry_after_s(headers, now_s)


def _body_code(body: object) -> str | None:
    """The OpenAI error code of an error body, looked up where servers put it (code, then
    type), inside an ``error`` envelope or not."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            for key in ("code", "type"):
                value = inner.get(key)
                if isinstance(value, str) and value:
                    return value
    return None


def _error_code(exc: openai.APIStatusError) -> str | None:
    """The OpenAI error code, looked up in both places servers put it (code, then type)."""
    if exc.code:
        return exc.code
    return _body_code(exc.body) or getattr(exc, "type", None) or None


def _says_overloaded(status: int, code: str | None, error_type: str | None, message: str) -> bool:
    """A 503 whose code, type or message says the server is overloaded (OpenAI's own
    "The engine is currently overloaded", inference servers' "overloaded" code), or
    Anthropic's 529 ``overloaded_error``; a bare 503 stays an outage."""
    if status == 529:
        return True
    words = f"{code or ''} {error_type or ''} {message}".lower()
    return status == 503 and "overload" in words


def _status_error_class(
    status: int,
    code: str | None,
    error_type: str | None,
    message: str,
    headers: Mapping[str, str],
) -> type[ProviderError]:
    if status == 429:
        if code == "insufficient_quota":
            return QuotaExhausted
        return RateLimited if announces_limits(headers) else ProviderOverloaded
    if _says_overloaded(status, code, error_type, message):
        return ProviderOverloaded
    if status in _RETRYABLE_4XX:
        return ProviderUnavailable
    if 400 <= status < 500:
        return ProviderRejected
    return ProviderUnavailable


def _status_error(
    status: int,
    code: str | None,
    error_type: str | None,
    message: str,
    headers: dict[str, str],
    now_s: float,
) -> ProviderError:
    cls = _status_error_class(status, code, error_type, message, headers)
    detail = f"HTTP {status}" + (f" ({code})" if code else "")
    return cls(
        f"{detail}: {message}",
        status_code=status,
        retry_after_s=parse_retry_after_s(headers, now_s=now_s),
        headers=headers,
    )


def translate_status(
    status: int,
    body: object,
    *,
    headers: Mapping[str, str] | None = None,
    now_s: float,
    secrets: Collection[str] = (),
) -> ProviderError:
    """An error answer met outside an SDK call (a Batch API row's ``status_code`` and
    ``body``) -> the error an online call answered so would raise, by the same table."""
    inner = body.get("error", body) if isinstance(body, dict) else None
    message = inner.get("message") if isinstance(inner, dict) else None
    error_type = inner.get("type") if isinstance(inner, dict) else None
    error = _status_error(
        status,
        _body_code(body),
        error_type if isinstance(error_type, str) else None,
        message if isinstance(message, str) and message else "no message",
        _lower_headers((headers or {}).items()),
        now_s,
    )
    error.args = (redact(str(error), secrets),)
    return error


def translate_error(
    exc: openai.OpenAIError, *, now_s: float, secrets: Collection[str] = ()
) -> ProviderError:
    """Map one SDK error to the bulkgen tree (see the module docstring for the table), its
    message redacted of ``secrets`` and of anything shaped like a credential, since from
    here it is logged, stored in the job's row and shown.

    Unknown SDK errors become :class:`ProviderUnavailable` (retryable, attempts burnt) so
    they end as a loud ``failed`` after ``max_attempts`` instead of escaping untyped.
    """
    error = _translate(exc, now_s=now_s)
    error.args = (redact(str(error), secrets),)
    return error


def _translate(exc: openai.OpenAIError, *, now_s: float) -> ProviderError:
    if isinstance(exc, openai.APIStatusError):
        headers = _lower_headers(exc.response.headers.items())
        error_type = getattr(exc, "type", None)
        return _status_error(
            exc.status_code,
            _error_code(exc),
            error_type if isinstance(error_type, str) else None,
            exc.message,
            headers,
            now_s,
        )
    if isinstance(exc, openai.APITimeoutError):
        return ProviderTimeout(f"provider timed out: {exc}")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        why = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
        return ProviderConnectionError(f"connection to provider failed: {why}")
    if isinstance(exc, openai.APIResponseValidationError):
        return _malformed(f"response failed validation: {exc}", exc.status_code, {})
    return ProviderUnavailable(f"provider call failed: {type(exc).__name__}: {exc}")


def _malformed(message: str, status_code: int, headers: dict[str, str]) -> InvalidOutput:
    error = InvalidOutput(message, reason="malformed")
    error.status_code = status_code
    error.headers = headers
    return error


def _as_int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _usage(raw: dict[str, Any]) -> Usage:
    """Token counts as billed; cached prompt tokens (``prompt_tokens_details.cached_tokens``)
    are kept within ``prompt_tokens``, so a server reporting more than the whole prompt
    cannot make a call cheaper than free."""
    prompt_tokens = _as_int(raw.get("prompt_tokens"))
    details = raw.get("prompt_tokens_details")
    cached = _as_int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=_as_int(raw.get("completion_tokens")),
        cache_read_tokens=max(0, min(cached, prompt_tokens)),
    )


def parse_completion_body(
    body: bytes, *, request_model: str, status_code: int, headers: dict[str, str]
) -> tuple[str, Usage, str, str]:
    """``(content, usage, finish_reason, model)`` from a chat-completion body.

    The SDK's own parsing does not validate (a body of ``{}`` parses), so the shape is
    checked here: anything without a first choice carrying a message is ``malformed``,
    which the retry policy treats as a retryable invalid output rather than an empty
    success. ``content: null`` becomes ``""`` so that emptiness is judged in one place,
    :func:`bulkgen.formatting.validate_completion`.
    """
    try:
        data: object = json.loads(body)
    except ValueError as exc:
        raise _malformed(f"body is not JSON: {exc}", status_code, headers) from exc
    if not isinstance(data, dict):
        raise _malformed("body is not a JSON object", status_code, headers)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _malformed("response has no choices", status_code, headers)
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise _malformed("first choice has no message", status_code, headers)
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise _malformed("message content is not a string", status_code, headers)
    finish_reason = choices[0].get("finish_reason")
    usage_raw = data.get("usage")
    usage = _usage(usage_raw) if isinstance(usage_raw, dict) else Usage()
    model = data.get("model")
    return (
        content or "",
        usage,
        finish_reason if isinstance(finish_reason, str) and finish_reason else "unknown",
        model if isinstance(model, str) and model else request_model,
    )


def sdk_client(
    base_url: str,
    api_key: str,
    *,
    timeout_s: float,
    connect_timeout_s: float,
    max_connections: int,
    http_client: httpx.AsyncClient | None = None,
) -> openai.AsyncOpenAI:
    """The SDK's client with its retries off (the caller's policy decides) over one
    bounded connection pool; ``http_client`` is injectable for tests."""
    timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
    if http_client is None:
        http_client = httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
            ),
        )
    # The SDK accepts an httpx.AsyncClient at run time; its annotation names its own
    # client type, hence the cast.
    return openai.AsyncOpenAI(
        base_url=base_url,
        api_key=api_key,
        max_retries=0,
        timeout=cast(Any, timeout),
        http_client=cast(Any, http_client),
    )


class OpenAIClient:
    """What every client of one OpenAI-compatible server and key holds: the official SDK
    client (its retries off), the key's id (logs and limits name it, never the key), the
    key itself only to redact it, and how SDK errors become the project's typed errors.

    ``http_client`` is injectable for tests (e.g. over ``httpx.MockTransport``); ``clock``
    (epoch seconds) only serves HTTP-date ``retry-after`` values.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float,
        connect_timeout_s: float = 10.0,
        max_connections: int = 1000,
        http_client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url
        self.api_key_id = api_key_id(api_key)
        self._secrets = (api_key,)
        remember(api_key)  # so the log filter knows it too, whatever its shape
        self._clock = clock
        self._client = sdk_client(
            base_url,
            api_key,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            max_connections=max_connections,
            http_client=http_client,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, api_key_id={self.api_key_id!r})"

    def _translated(self, exc: openai.OpenAIError) -> ProviderError:
        return translate_error(exc, now_s=self._clock(), secrets=self._secrets)

    async def aclose(self) -> None:
        """Close the HTTP pool; the client is unusable afterwards."""
        await self._client.close()


class OpenAICompatProvider(OpenAIClient):
    """A :class:`~bulkgen.providers.base.Provider` for OpenAI and OpenAI-compatible servers.

    One instance owns one connection pool (``max_connections``) shared by every coroutine
    of the process.
    """

    async def complete(self, request: ChatRequest) -> Completion:
        """One call, no retry; errors come out as :mod:`bulkgen.errors` types only."""
        kwargs: dict[str, Any] = dict(request.extra)
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        started_s = time.monotonic()
        try:
            raw = await self._client.chat.completions.with_raw_response.create(
                model=request.model,
                messages=cast(Any, request.as_messages()),
                max_tokens=request.max_tokens,
                **kwargs,
            )
            body = raw.content
        except openai.OpenAIError as exc:
            raise self._translated(exc) from exc
        latency_s = time.monotonic() - started_s
        headers = _lower_headers(raw.headers.items())
        if not 200 <= raw.status_code < 300:
            raise ProviderUnavailable(
                f"HTTP {raw.status_code}: unexpected status",
                status_code=raw.status_code,
                retry_after_s=parse_retry_after_s(headers, now_s=self._clock()),
                headers=headers,
            )
        content, usage, finish_reason, model = parse_completion_body(
            body, request_model=request.model, status_code=raw.status_code, headers=headers
        )
        return Completion(
            content=content,
            usage=usage,
            finish_reason=finish_reason,
            model=model,
            headers=headers,
            latency_s=latency_s,
        )
