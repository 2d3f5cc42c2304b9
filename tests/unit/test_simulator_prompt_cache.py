"""The simulator's prompt cache: which part of a prompt OpenAI would bill as cached."""

from __future__ import annotations

import json

from bulkgen.simulator.prompt_cache import MIN_TOKENS, STEP_TOKENS, PromptCache

TEMPLATE = "You write articles. " * 300  # 6,000 characters: 1,500 simulated tokens


def test_a_repeated_long_prefix_is_cached_in_steps() -> None:
    cache = PromptCache()
    assert cache.serve("gpt-4o", TEMPLATE + "Keyword: tea") == 0  # first sight
    # 1,500 tokens of shared template: the largest step at or under it is 1,408.
    assert cache.serve("gpt-4o", TEMPLATE + "Keyword: coffee") == 1408
    assert (1408 - MIN_TOKENS) % STEP_TOKENS == 0


def test_short_prompts_and_other_models_are_not_cached() -> None:
    cache = PromptCache()
    short = "Keyword: tea. " * 100  # 350 tokens
    cache.serve("gpt-4o", short)
    assert cache.serve("gpt-4o", short) == 0
    cache.serve("gpt-4o", TEMPLATE)
    assert cache.serve("gpt-4o-mini", TEMPLATE) == 0


def test_a_prompt_differing_early_shares_nothing() -> None:
    cache = PromptCache()
    cache.serve("gpt-4o", TEMPLATE)
    assert cache.serve("gpt-4o", "X" + TEMPLATE[1:]) == 0


def test_the_least_recently_used_prefixes_are_forgotten() -> None:
    cache = PromptCache(max_entries=4)  # TEMPLATE alone has 4 cacheable prefixes
    cache.serve("gpt-4o", TEMPLATE)
    cache.serve("gpt-4o", "Y" * len(TEMPLATE))
    assert cache.serve("gpt-4o", TEMPLATE) == 0


def _cached(usage: object) -> object:
    assert isinstance(usage, dict)
    details = usage["prompt_tokens_details"]
    assert isinstance(details, dict)
    return details["cached_tokens"]


async def test_the_simulator_reports_cached_tokens_like_openai() -> None:
    from bulkgen.simulator import SimConfig, SimulatorApp

    app = SimulatorApp(SimConfig(rpm=None, tpm=None))
    usages = [await _usage(app, TEMPLATE + f"Keyword: {k}") for k in ("tea", "coffee")]
    assert [_cached(u) for u in usages] == [0, 1408]
    assert app.stats.cached_tokens == 1408
    plain = SimulatorApp(SimConfig(rpm=None, tpm=None, prompt_cache=False))
    for keyword in ("tea", "coffee"):
        usage = await _usage(plain, TEMPLATE + f"Keyword: {keyword}")
        assert _cached(usage) == 0


async def _usage(app: object, prompt: str) -> dict[str, object]:
    """One chat request straight through the ASGI app; its ``usage``."""
    body = json.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}], "max_tokens": 50}
    ).encode()
    sent: list[dict[str, object]] = []
    requests = iter([{"type": "http.request", "body": body, "more_body": False}])

    async def receive() -> dict[str, object]:
        return next(requests)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
    await app(scope, receive, send)  # type: ignore[operator]
    assert sent[0]["status"] == 200
    usage: dict[str, object] = json.loads(sent[1]["body"])["usage"]  # type: ignore[arg-type]
    return usage
