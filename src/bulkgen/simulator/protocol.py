"""OpenAI's wire format: request validation, response bodies, error bodies, headers.

Everything a client parses lives here, so matching OpenAI (what the official SDK maps to
``RateLimitError``, ``AuthenticationError``...) is checked in one place.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from bulkgen.simulator.ratelimit import Decision, LimitReport, go_duration
from bulkgen.simulator.tokens import prompt_tokens

ORGANIZATION = "org-sim"
SERVER_FAULTS = {"500": "Internal server error", "502": "Bad gateway", "503": "Service unavailable"}
"""The message of each injected server error."""


class InvalidRequest(Exception):
    """The request body is not a valid chat completion request; answered with HTTP 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class ChatCall:
    """The parts of a chat request the simulator acts on."""

    model: str
    prompt: str
    last_user: str
    max_tokens: int
    prompt_tokens: int

    @property
    def cost_tokens(self) -> int:
        """What the token bucket charges, as OpenAI counts: prompt plus max_tokens."""
        return self.prompt_tokens + self.max_tokens


def parse_chat_request(raw: bytes, default_max_tokens: int) -> ChatCall:
    """Validate a request body the way OpenAI does for the fields the simulator uses."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("We could not parse the JSON body of your request.") from None
    return chat_call_of(body, default_max_tokens)


def chat_call_of(body: object, default_max_tokens: int) -> ChatCall:
    """Validate a decoded request body (an HTTP request's, or a batch input line's)."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", "model")
    texts = _message_texts(body.get("messages"))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = default_max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise InvalidRequest(f"Invalid 'max_tokens': {max_tokens!r}.", "max_tokens")
    if body.get("stream"):
        raise InvalidRequest("The simulator does not support streaming.", "stream")
    users = [text for role, text in texts if role == "user"]
    return ChatCall(
        model=model,
        prompt="\n".join(text for _, text in texts),
        last_user=users[-1] if users else texts[-1][1],
        max_tokens=max_tokens,
        prompt_tokens=prompt_tokens([text for _, text in texts]),
    )


def _message_texts(messages: object) -> list[tuple[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", "messages")
    texts: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"Invalid 'messages[{index}]'.", f"messages[{index}]")
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(
                str(part.get("text", "")) for part in content if isinstance(part, dict)
            )
        if content is not None and not isinstance(content, str):
            raise InvalidRequest(
                f"Invalid type for 'messages[{index}].content'.", f"messages[{index}].content"
            )
        texts.append((message["role"], content or ""))
    return texts


def error_body(message: str, kind: str, code: str | None, param: str | None = None) -> bytes:
    """OpenAI's error envelope: ``{"error": {"message", "type", "param", "code"}}``."""
    return json.dumps(error_object(message, kind, code, param)).encode()


def error_object(
    message: str, kind: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def rate_limit_message(model: str, decision: Decision, requested: int, wall_wait_s: float) -> str:
    """The message OpenAI writes on a rate-limit 429, with the wait in wall-clock time."""
    report = decision.requests if decision.refused_by == "requests" else decision.tokens
    limit = report.limit_per_min if report is not None else 0
    what = "requests per min (RPM)" if decision.refused_by == "requests" else "tokens per min (TPM)"
    wait = f"{math.ceil(wall_wait_s * 1000)}ms" if wall_wait_s < 1 else f"{wall_wait_s:.3g}s"
    return (
        f"Rate limit reached for {model} in organization {ORGANIZATION} on {what}: "
        f"Limit {limit}, Used {decision.used}, Requested {requested}. "
        f"Please try again in {wait}. This is a simulated limit."
    )


def limit_headers(
    requests: LimitReport | None, tokens: LimitReport | None, time_scale: float
) -> list[tuple[bytes, bytes]]:
    """``x-ratelimit-*`` in wall-clock terms: limits per wall minute, resets in wall time.

    An unlimited dimension (rpm or tpm of 0/None) has no headers, as it has no limit.
    """
    headers: list[tuple[bytes, bytes]] = []
    for suffix, report in (("requests", requests), ("tokens", tokens)):
        if report is not None:
            headers.extend(_report_headers(suffix, report, time_scale))
    return headers


def _report_headers(
    suffix: str, report: LimitReport, time_scale: float
) -> list[tuple[bytes, bytes]]:
    limit = round(report.limit_per_min * time_scale)
    return [
        (b"x-ratelimit-limit-" + suffix.encode(), str(limit).encode()),
        (b"x-ratelimit-remaining-" + suffix.encode(), str(report.remaining).encode()),
        (
            b"x-ratelimit-reset-" + suffix.encode(),
            go_duration(report.reset_s / time_scale).encode(),
        ),
    ]


def retry_headers(wall_wait_s: float) -> list[tuple[bytes, bytes]]:
    """``retry-after`` in whole seconds (rounded up, as OpenAI sends) and ``retry-after-ms``."""
    wait_ms = max(1, math.ceil(wall_wait_s * 1000))
    return [
        (b"retry-after", str(max(1, math.ceil(wait_ms / 1000))).encode()),
        (b"retry-after-ms", str(wait_ms).encode()),
    ]


def completion_body(
    ident: str,
    created_s: int,
    call: ChatCall,
    content: str,
    finish_reason: str,
    tokens: int,
    cached_tokens: int = 0,
) -> bytes:
    """A ``chat.completion`` object with ``usage``, as OpenAI answers a non-streamed call
    (``cached_tokens``: the part of the prompt read from the prompt cache)."""
    body = completion_object(ident, created_s, call, content, finish_reason, tokens, cached_tokens)
    return json.dumps(body).encode()


def completion_object(
    ident: str,
    created_s: int,
    call: ChatCall,
    content: str,
    finish_reason: str,
    tokens: int,
    cached_tokens: int = 0,
) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "chat.completion",
        "created": created_s,
        "model": call.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": call.prompt_tokens,
            "completion_tokens": tokens,
            "total_tokens": call.prompt_tokens + tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens},
        },
        "system_fingerprint": "fp_simulator",
    }


def models_body(models: tuple[str, ...]) -> bytes:
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "simulator"} for m in models]
    return json.dumps({"object": "list", "data": data}).encode()
