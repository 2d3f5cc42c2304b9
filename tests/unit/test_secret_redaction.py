"""No API key leaves bulkgen in a message: redaction by value and by shape, at the provider
boundary and in the log output; the simulator's gateway that echoes the key."""

from __future__ import annotations

import io
import json
import logging

import httpx
import openai
import pytest

from bulkgen import logs
from bulkgen.errors import ProviderRejected, ProviderUnavailable
from bulkgen.models import ChatRequest
from bulkgen.providers import OpenAICompatProvider
from bulkgen.redaction import REDACTED, RedactingFilter, redact, remember
from bulkgen.simulator import SimConfig, running_simulator

KEY = "sk-proj-Qx7vT2mLp9Rb4Kc8Nw1Zs6Hd3Fg5Jy0Ae_Uo-Ti8Ev2Bn7Cm4Xl1Pq9Wr6Sk3Dz"
REQUEST = ChatRequest(model="gpt-4o", messages=(("user", "tea"),), max_tokens=10)


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        (f"Authorization: Bearer {KEY}", KEY),
        (f'{{"headers": {{"authorization": "Bearer {KEY}"}}}}', KEY),
        ("Incorrect API key provided: sk-proj-************************************Sk3D.", "Sk3D"),
        ("Incorrect API key provided: sk-abc...wxyz.", "sk-abc...wxyz"),
        ("key sk-ant-api03-Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8 refused", "Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8"),
        ("x-api-key: 0a9b8c7d6e5f4a3b", "0a9b8c7d6e5f4a3b"),
        ("GET /v1/models?api_key=Zm9vYmFyYmF6 403", "Zm9vYmFyYmF6"),
        ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N", "eyJ"),
        ("gateway key AIzaSyD9tSrke72PouQMnMXa7eZSW0jkFMBWYx expired", "AIzaSyD9tS"),
        ("masked: gw12************ab90", "ab90"),
    ],
)
def test_credentials_are_redacted_by_shape(text: str, gone: str) -> None:
    cleaned = redact(text)
    assert gone not in cleaned
    assert REDACTED in cleaned


@pytest.mark.parametrize(
    "text",
    [
        "Rate limit reached for gpt-4o-mini-2024-07-18 in organization org-sim on requests per"
        " min (RPM): Limit 500, Used 500, Requested 1. Please try again in 120ms.",
        "This model's maximum context length is 128000 tokens. However, you requested 130000"
        " tokens (2000 in the messages, 128000 in the completion).",
        "request req_8f14e45fceea167a5a36dedd4bea2543, batch 0a1b2c3d-4e5f-6789-abcd-ef0123456789",
        "cache key 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "The bearer of bad news asked for basic information: risk-free, task-based, sk-learn.",
        "You can find your API key at https://platform.openai.com/account/api-keys.",
        "Wait... the secret is in the sauce; the password must be at least 8 characters.",
    ],
)
def test_ordinary_messages_are_left_alone(text: str) -> None:
    assert redact(text) == text


def test_a_configured_key_of_any_shape_is_redacted_once_known() -> None:
    plain = "corpgatewaycredential"  # lower-case letters only: no shape would catch it
    assert redact(f"refused {plain}") == f"refused {plain}"
    assert redact(f"refused {plain}", [plain]) == f"refused {REDACTED}"
    remember(plain)
    assert redact(f"refused {plain}!") == f"refused {REDACTED}!"


def _provider(api_key: str, status: int, message: str) -> OpenAICompatProvider:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
    transport = httpx.MockTransport(lambda request: httpx.Response(status, json=body))
    return OpenAICompatProvider(
        "http://gateway.test/v1",
        api_key,
        timeout_s=5,
        http_client=httpx.AsyncClient(transport=transport),
    )


@pytest.mark.parametrize("status", [401, 502])
async def test_provider_errors_leave_the_boundary_redacted(status: int) -> None:
    key = "gatewaysecretvalue"  # a key of no recognisable shape: redacted as configured
    provider = _provider(key, status, f"bad auth {key}; Bearer {key}; {KEY[:6]}...{KEY[-4:]}")
    try:
        with pytest.raises((ProviderRejected, ProviderUnavailable)) as info:
            await provider.complete(REQUEST)
    finally:
        await provider.aclose()
    message = str(info.value)
    assert key not in message and KEY[-4:] not in message
    assert message.startswith(f"HTTP {status}") and REDACTED in message


def test_the_log_filter_redacts_message_extras_and_tracebacks() -> None:
    stream = io.StringIO()
    logs.configure(logging.INFO, stream)
    logger = logging.getLogger("bulkgen.test.redaction")
    try:
        logger.error("call failed: %s", f"Bearer {KEY}", extra={"error": f"echo {KEY}"})
        try:
            raise RuntimeError(f"Authorization: Bearer {KEY}")
        except RuntimeError:
            logger.exception("job.crashed", extra={"job_id": 3})
    finally:
        logging.getLogger().handlers.clear()
    output = stream.getvalue()
    assert KEY not in output
    assert "call failed: Bearer [redacted]" in output
    assert "error=echo [redacted]" in output and "job_id=3" in output
    assert "RuntimeError: Authorization: Bearer [redacted]" in output


def test_the_filter_keeps_numbers_as_numbers() -> None:
    record = logging.LogRecord("x", logging.INFO, "f", 1, "job.done", None, None)
    record.__dict__["attempts"] = 2
    assert RedactingFilter().filter(record)
    assert record.__dict__["attempts"] == 2


async def test_the_simulators_echo_auth_fault_quotes_the_key() -> None:
    """The fault the integration tests rely on really leaks the key, whole and masked."""
    async with running_simulator(SimConfig(api_key=KEY, faults={"echo_auth": 1.0})) as url:
        async with openai.AsyncOpenAI(base_url=url, api_key=KEY, max_retries=0) as client:
            with pytest.raises(openai.AuthenticationError) as info:
                await client.chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "tea"}]
                )
        async with httpx.AsyncClient() as http:
            stats = (await http.get(url.removesuffix("/v1") + "/_sim/stats")).json()
    message = json.dumps(info.value.body)
    assert f"Bearer {KEY}" in message
    assert f"{KEY[:6]}...{KEY[-4:]}" in message
    assert stats["faults"]["echo_auth"] == 1


def test_a_broken_logging_call_still_reaches_the_handler() -> None:
    record = logging.LogRecord("x", logging.INFO, "f", 1, "%d items", ("many",), None)
    assert RedactingFilter().filter(record)
    assert record.args == ("many",)
