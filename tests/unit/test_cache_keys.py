"""Cache keys: equal for the same request however it was spelled, different otherwise."""

from __future__ import annotations

import dataclasses
import re
from decimal import Decimal

import pytest

from bulkgen.cache import KEY_PREFIX, cache_key, cache_scope, canonical_json
from bulkgen.errors import ConfigError
from bulkgen.models import ChatRequest

BASE_URL = "https://api.openai.com/v1"
REQUEST = ChatRequest(
    model="gpt-4o-mini",
    messages=(("system", "You write articles."), ("user", "Write about: tea")),
    max_tokens=800,
    temperature=0.7,
    extra=(("presence_penalty", 0.0), ("top_p", 0.9)),
)


def key(
    request: ChatRequest = REQUEST,
    *,
    scope: str = "account:a1",
    base_url: str = BASE_URL,
    template_version: str = "t1",
) -> str:
    return cache_key(
        scope=scope, base_url=base_url, request=request, template_version=template_version
    )


def test_key_has_prefix_and_sha256_hex() -> None:
    assert re.fullmatch(re.escape(KEY_PREFIX) + r"\{[0-9a-f]{64}\}", key())


def test_key_is_stable_across_calls() -> None:
    assert key() == key(dataclasses.replace(REQUEST))


def test_option_order_does_not_change_key() -> None:
    reordered = dataclasses.replace(REQUEST, extra=(("top_p", 0.9), ("presence_penalty", 0.0)))
    assert key(reordered) == key()


@pytest.mark.parametrize(
    ("temperature", "top_p", "penalty"),
    [(0.70, 0.90, 0), (0.7, Decimal("0.90"), 0.0), (0.7000, 0.9, Decimal("0"))],
)
def test_equal_numbers_give_equal_keys(temperature: float, top_p: object, penalty: object) -> None:
    spelled = dataclasses.replace(
        REQUEST, temperature=temperature, extra=(("top_p", top_p), ("presence_penalty", penalty))
    )
    assert key(spelled) == key()


def test_integral_float_equals_int() -> None:
    as_float = dataclasses.replace(REQUEST, temperature=1.0)
    as_int = dataclasses.replace(REQUEST, temperature=1)
    assert key(as_float) == key(as_int)


def test_trailing_slash_and_host_case_of_base_url_do_not_change_key() -> None:
    assert key(base_url="https://API.openai.com/v1/") == key()
    assert key(base_url="  https://api.openai.com/v1//  ") == key()


@pytest.mark.parametrize(
    "changed",
    [
        dataclasses.replace(REQUEST, model="gpt-4o"),
        dataclasses.replace(REQUEST, max_tokens=801),
        dataclasses.replace(REQUEST, temperature=0.8),
        dataclasses.replace(REQUEST, temperature=None),
        dataclasses.replace(REQUEST, extra=(("presence_penalty", 0.0), ("top_p", 0.95))),
        dataclasses.replace(REQUEST, extra=(("top_p", 0.9),)),
        dataclasses.replace(REQUEST, extra=(*REQUEST.extra, ("seed", 7))),
        dataclasses.replace(REQUEST, messages=(("user", "Write about: tea"),)),
        dataclasses.replace(
            REQUEST, messages=(("system", "You write articles."), ("user", "Write about: coffee"))
        ),
        dataclasses.replace(
            REQUEST, messages=(("user", "You write articles."), ("user", "Write about: tea"))
        ),
    ],
)
def test_output_changing_request_fields_change_key(changed: ChatRequest) -> None:
    assert key(changed) != key()


def test_base_url_template_version_and_scope_change_key() -> None:
    assert key(base_url="http://127.0.0.1:8000/v1") != key()
    assert key(template_version="t2") != key()
    assert key(scope="account:a2") != key()
    assert key(scope="global") != key()


def test_message_boundaries_are_part_of_the_key() -> None:
    """Moving text between messages must not collide (no naive concatenation)."""
    one = dataclasses.replace(REQUEST, messages=(("user", "ab"), ("user", "c")))
    two = dataclasses.replace(REQUEST, messages=(("user", "a"), ("user", "bc")))
    assert key(one) != key(two)


def test_canonical_json_is_compact_and_sorted() -> None:
    text = canonical_json(
        scope="global", base_url=BASE_URL + "/", request=REQUEST, template_version="t1"
    )
    assert " " not in text.replace("You write articles.", "").replace("Write about: tea", "")
    assert text.index('"base_url"') < text.index('"messages"') < text.index('"scope"')
    assert '"base_url":"https://api.openai.com/v1"' in text
    assert '"presence_penalty":0' in text


def test_non_finite_or_unsupported_options_are_refused() -> None:
    with pytest.raises(ConfigError):
        key(dataclasses.replace(REQUEST, temperature=float("nan")))
    with pytest.raises(ConfigError):
        key(dataclasses.replace(REQUEST, extra=(("stop", {1, 2}),)))


def test_conflicting_duplicate_option_is_refused() -> None:
    with pytest.raises(ConfigError, match="top_p"):
        key(dataclasses.replace(REQUEST, extra=(("top_p", 0.9), ("top_p", 0.5))))


def test_nested_options_are_canonical() -> None:
    a = dataclasses.replace(REQUEST, extra=(("response_format", {"type": "text", "n": 1.0}),))
    b = dataclasses.replace(REQUEST, extra=(("response_format", {"n": 1, "type": "text"}),))
    assert key(a) == key(b)


def test_cache_scope_is_per_account_by_default() -> None:
    assert cache_scope("account", "a1") == "account:a1"
    assert cache_scope("account", "a1") != cache_scope("account", "a2")
    assert cache_scope("global", "a1") == cache_scope("global", "a2") == "global"


def test_account_scope_needs_an_account() -> None:
    with pytest.raises(ConfigError):
        cache_scope("account", " ")
