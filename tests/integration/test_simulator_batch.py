"""The simulator's Files and Batch APIs as the official openai SDK sees them, over real HTTP.

Time is driven through the batch clock's scale (``batch.time_scale``, 0 pauses it); tests
poll until a state is reached, bounded only for liveness, and never time anything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import httpx
import openai
import pytest

from bulkgen.simulator import SimConfig, count_tokens, running_simulator
from bulkgen.simulator.config import BatchConfig
from bulkgen.simulator.control import sim_configure, sim_stats

ENDPOINT: Final = "/v1/chat/completions"
LIVENESS_S = 60.0
FAST = BatchConfig(time_scale=1000.0, requests_per_s=10.0, validating_s=1.0, finalizing_s=1.0)


def _request(custom_id: str, keyword: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": ENDPOINT,
        "body": {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": f"Keyword: {keyword}"}],
            "max_tokens": 120,
            **body,
        },
    }


def _requests(count: int, prefix: str = "row") -> list[dict[str, Any]]:
    return [_request(f"{prefix}-{index}", f"topic {index}") for index in range(count)]


def _jsonl(items: list[Any]) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def _config(batch: BatchConfig = FAST, **changes: Any) -> SimConfig:
    return SimConfig(rpm=None, tpm=None, seed=changes.pop("seed", 4), batch=batch, **changes)


@pytest.fixture
async def sim() -> AsyncIterator[tuple[str, openai.AsyncOpenAI]]:
    async with running_simulator(_config()) as base_url, _client(base_url) as client:
        yield base_url, client


def _client(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key="sk-test", max_retries=0, timeout=10.0)


async def _submit(
    client: openai.AsyncOpenAI, content: bytes, metadata: dict[str, str] | None = None
) -> Any:
    uploaded = await client.files.create(file=("input.jsonl", content), purpose="batch")
    return await client.batches.create(
        input_file_id=uploaded.id,
        endpoint=ENDPOINT,
        completion_window="24h",
        metadata=metadata,
    )


async def _until(client: openai.AsyncOpenAI, batch_id: str, done: Any) -> Any:
    """Poll until ``done(batch)``; the deadline only stops a test that would hang."""
    deadline = time.monotonic() + LIVENESS_S
    while True:
        batch = await client.batches.retrieve(batch_id)
        if done(batch):
            return batch
        assert time.monotonic() < deadline, f"batch stuck: {batch}"
        await asyncio.sleep(0.01)


async def _ended(client: openai.AsyncOpenAI, batch_id: str) -> Any:
    ended = {"completed", "failed", "expired", "cancelled"}
    return await _until(client, batch_id, lambda batch: batch.status in ended)


async def _lines(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await client.files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines()]


async def test_a_batch_completes_and_answers_every_custom_id_once_as_the_endpoint_does(
    sim: tuple[str, openai.AsyncOpenAI],
) -> None:
    base_url, client = sim
    requests = _requests(20)
    created = await _submit(client, _jsonl(requests), {"bulkgen_batch": "b-1"})
    assert created.status == "validating" and created.endpoint == ENDPOINT
    assert created.expires_at == created.created_at + 24 * 3600
    batch = await _ended(client, created.id)
    assert batch.status == "completed" and batch.error_file_id is None and batch.errors is None
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (20, 20)
    assert batch.request_counts.failed == 0 and batch.model == "gpt-4o"
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    output = await _lines(client, batch.output_file_id)
    ids = [line["custom_id"] for line in output]
    assert sorted(ids) == sorted(request["custom_id"] for request in requests)
    assert ids != [request["custom_id"] for request in requests]  # shuffled, as OpenAI's is
    by_id = {line["custom_id"]: line for line in output}
    for request in requests[:5]:
        line = by_id[request["custom_id"]]
        assert line["error"] is None and line["response"]["status_code"] == 200
        online = await client.chat.completions.create(**request["body"])
        body = line["response"]["body"]
        assert body["choices"][0]["message"]["content"] == online.choices[0].message.content
        assert online.usage is not None
        assert body["usage"]["completion_tokens"] == online.usage.completion_tokens
        assert body["usage"]["prompt_tokens"] == online.usage.prompt_tokens
    assert batch.usage is not None
    assert batch.usage.output_tokens == sum(
        count_tokens(line["response"]["body"]["choices"][0]["message"]["content"])
        for line in output
    )
    stats = await sim_stats(base_url)
    assert stats["requests"] == 5  # the online calls only
    assert stats["batch"]["file_uploads"] == 1 and stats["batch"]["batch_creates"] == 1
    assert stats["batch"]["requests"] == 20 and stats["batch"]["requests_failed"] == 0


@pytest.mark.parametrize(
    ("batch", "content", "code", "line"),
    [
        (BatchConfig(max_requests=3), _jsonl(_requests(4)), "too_many_requests", None),
        (BatchConfig(max_input_bytes=200), _jsonl(_requests(4)), "file_too_large", None),
        (BatchConfig(), _jsonl([*_requests(2), _requests(1)[0]]), "duplicate_custom_id", 3),
        (BatchConfig(), _jsonl([{**_requests(1)[0], "url": "/v1/embeddings"}]), "invalid_url", 1),
        (BatchConfig(), _jsonl(_requests(1)) + b"{not json\n", "invalid_json_line", 2),
        (
            BatchConfig(),
            _jsonl([_request("a", "x"), _request("b", "y", model="gpt-4o-mini")]),
            "mismatched_model",
            2,
        ),
        (BatchConfig(), b"\n\n", "empty_file", None),
    ],
)
async def test_an_input_over_a_limit_or_malformed_fails_the_batch_at_validation(
    batch: BatchConfig, content: bytes, code: str, line: int | None
) -> None:
    fast = dataclasses.replace(batch, time_scale=1000.0)
    async with running_simulator(_config(fast)) as base_url, _client(base_url) as client:
        created = await _submit(client, content)
        assert created.status == "validating"
        failed = await _ended(client, created.id)
    assert failed.status == "failed" and failed.failed_at is not None
    assert failed.errors is not None and failed.errors.data
    error = failed.errors.data[0]
    assert (error.code, error.line) == (code, line), error
    assert failed.output_file_id is None and failed.error_file_id is None
    assert failed.request_counts is not None and failed.request_counts.total == 0


async def test_the_enqueued_token_limit_is_per_model_and_frees_as_batches_end() -> None:
    # Five rows of 11 prompt tokens each: 55 enqueued tokens per batch, 80 allowed.
    paused = BatchConfig(time_scale=0.0, enqueued_tokens=80, validating_s=1.0, finalizing_s=1.0)
    async with running_simulator(_config(paused)) as base_url, _client(base_url) as client:
        first = await _submit(client, _jsonl(_requests(5)))
        second = await _submit(client, _jsonl(_requests(5)))
        mini = [_request(f"m{i}", f"t{i}", model="gpt-4o-mini") for i in range(5)]
        other_model = await _submit(client, _jsonl(mini))
        await sim_configure(base_url, {"batch": {"time_scale": 1000.0}})
        first = await _ended(client, first.id)
        second = await _ended(client, second.id)
        other_model = await _ended(client, other_model.id)
        third = await _ended(client, (await _submit(client, _jsonl(_requests(5)))).id)
    assert (first.status, other_model.status, third.status) == ("completed",) * 3
    assert second.status == "failed" and second.errors is not None and second.errors.data
    error = second.errors.data[0]
    assert error.code == "token_limit_exceeded"
    assert error.message is not None and "Enqueued token limit reached for gpt-4o" in error.message


async def test_an_expired_batch_keeps_its_finished_rows_and_lists_the_rest_as_batch_expired() -> (
    None
):
    # A four-second window at one row a second: rows ending at 1, 2, 3 and 4 s are kept.
    window = BatchConfig(time_scale=50.0, requests_per_s=1.0, validating_s=0.0, window_s=4.0)
    requests = _requests(10)
    async with running_simulator(_config(window)) as base_url, _client(base_url) as client:
        expired = await _ended(client, (await _submit(client, _jsonl(requests))).id)
        output = await _lines(client, expired.output_file_id)
        errors = await _lines(client, expired.error_file_id)
    assert expired.status == "expired" and expired.expired_at == expired.created_at + 4
    assert expired.request_counts is not None
    assert (expired.request_counts.total, expired.request_counts.completed) == (10, 4)
    assert expired.request_counts.failed == 0
    assert len(output) == 4 and all(line["response"]["status_code"] == 200 for line in output)
    assert len(errors) == 6
    assert all(line["response"] is None for line in errors)
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}
    answered = [line["custom_id"] for line in output + errors]
    assert sorted(answered) == sorted(request["custom_id"] for request in requests)


async def test_a_cancelled_batch_keeps_its_finished_rows(
    sim: tuple[str, openai.AsyncOpenAI],
) -> None:
    base_url, client = sim
    # Two thousand rows at ten a wall second: minutes of work, cancelled early.
    await sim_configure(
        base_url, {"batch": {"time_scale": 10.0, "requests_per_s": 1.0, "validating_s": 0.0}}
    )
    created = await _submit(client, _jsonl(_requests(2000)))
    running = await _until(client, created.id, lambda batch: batch.request_counts.completed >= 2)
    assert running.status == "in_progress"
    cancelling = await client.batches.cancel(created.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    cancelled = await _ended(client, created.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    again = await client.batches.cancel(created.id)
    assert again.status == "cancelled"
    counts = cancelled.request_counts
    assert counts is not None and 2 <= counts.completed < 2000 and counts.total == 2000
    output = await _lines(client, cancelled.output_file_id)
    errors = await _lines(client, cancelled.error_file_id)
    assert len(output) == counts.completed
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    assert len(output) + len(errors) == 2000
    assert len({line["custom_id"] for line in output + errors}) == 2000
    await sim_configure(base_url, {"batch": dataclasses.asdict(FAST)})
    done = await _ended(client, (await _submit(client, _jsonl(_requests(2)))).id)
    with pytest.raises(openai.ConflictError):
        await client.batches.cancel(done.id)


async def test_batches_list_newest_first_page_by_page_with_their_metadata(
    sim: tuple[str, openai.AsyncOpenAI],
) -> None:
    _, client = sim
    uploaded = await client.files.create(file=("in.jsonl", _jsonl(_requests(2))), purpose="batch")
    created = [
        await client.batches.create(
            input_file_id=uploaded.id,
            endpoint=ENDPOINT,
            completion_window="24h",
            metadata={"bulkgen_batch": f"job-{index}", "worker": "w1"},
        )
        for index in range(5)
    ]
    first_page = await client.batches.list(limit=2)
    assert [batch.id for batch in first_page.data] == [created[4].id, created[3].id]
    assert first_page.has_more
    listed = [batch async for batch in client.batches.list(limit=2)]
    assert [batch.id for batch in listed] == [batch.id for batch in reversed(created)]
    found = [b for b in listed if b.metadata and b.metadata.get("bulkgen_batch") == "job-2"]
    assert [batch.id for batch in found] == [created[2].id]
    assert (await client.batches.retrieve(created[0].id)).metadata == {
        "bulkgen_batch": "job-0",
        "worker": "w1",
    }
    last_page = await client.batches.list(limit=2, after=created[1].id)
    assert [batch.id for batch in last_page.data] == [created[0].id] and not last_page.has_more
    with pytest.raises(openai.BadRequestError) as info:
        await client.batches.create(
            input_file_id=uploaded.id,
            endpoint=ENDPOINT,
            completion_window="24h",
            metadata={f"k{index}": "v" for index in range(17)},
        )
    assert info.value.body is not None and "metadata" in str(info.value.body)


async def test_row_faults_and_refused_rows_go_to_the_error_file() -> None:
    faulty = dataclasses.replace(FAST, faults={"503": 0.3, "empty": 0.3})
    requests = [*_requests(40), {**_request("no-messages", "x"), "body": {"model": "gpt-4o"}}]
    async with running_simulator(_config(faulty)) as base_url, _client(base_url) as client:
        batch = await _ended(client, (await _submit(client, _jsonl(requests))).id)
        output = await _lines(client, batch.output_file_id)
        errors = await _lines(client, batch.error_file_id)
        stats = await sim_stats(base_url)
    assert batch.status == "completed" and batch.request_counts is not None
    assert batch.request_counts.failed == len(errors) > 1
    assert batch.request_counts.completed == len(output)
    statuses = {line["custom_id"]: line["response"]["status_code"] for line in errors}
    assert statuses.pop("no-messages") == 400
    assert set(statuses.values()) == {503}
    assert all(line["error"] is None for line in errors)
    assert all(line["response"]["body"]["error"]["type"] for line in errors)
    contents = [line["response"]["body"]["choices"][0]["message"]["content"] for line in output]
    assert "" in contents and any(contents)
    assert stats["batch"]["requests_failed"] == len(errors)


async def _batch_contents(seed: int) -> list[tuple[str, int, str, Any]]:
    faulty = dataclasses.replace(FAST, faults={"503": 0.2, "truncate": 0.2})
    async with running_simulator(_config(faulty, seed=seed)) as url, _client(url) as client:
        batch = await _ended(client, (await _submit(client, _jsonl(_requests(15)))).id)
        lines = await _lines(client, batch.output_file_id) + await _lines(
            client, batch.error_file_id
        )
    contents = []
    for line in lines:
        body = line["response"]["body"]
        text = body["choices"][0]["message"]["content"] if "choices" in body else ""
        contents.append(
            (line["custom_id"], line["response"]["status_code"], text, body.get("usage"))
        )
    return contents


async def test_the_same_seed_gives_the_same_files_and_another_seed_does_not() -> None:
    first = await _batch_contents(seed=21)
    assert first == await _batch_contents(seed=21)
    assert first != await _batch_contents(seed=22)


async def test_uploads_are_bounded_by_the_store_and_files_round_trip() -> None:
    small = dataclasses.replace(FAST, files_max_bytes=1000)
    async with running_simulator(_config(small)) as base_url, _client(base_url) as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.files.create(file=("big.jsonl", b"x" * 2000), purpose="batch")
        assert info.value.status_code == 413 and info.value.code == "file_too_large"
        kept = await client.files.create(file=("a.jsonl", b"a" * 600), purpose="batch")
        with pytest.raises(openai.APIStatusError):
            await client.files.create(file=("b.jsonl", b"b" * 600), purpose="batch")
        assert (await client.files.retrieve(kept.id)).bytes == 600
        assert (await client.files.content(kept.id)).content == b"a" * 600
        assert [f.id async for f in client.files.list()] == [kept.id]
        assert (await client.files.delete(kept.id)).deleted
        again = await client.files.create(file=("b.jsonl", b"b" * 600), purpose="batch")
        assert again.filename == "b.jsonl" and again.purpose == "batch"
        with pytest.raises(openai.BadRequestError):
            await client.files.create(file=("c.jsonl", b"c"), purpose="fine-tune")
        with pytest.raises(openai.NotFoundError):
            await client.files.retrieve("file-missing")
        with pytest.raises(openai.NotFoundError):
            await client.batches.retrieve("batch_missing")
        async with httpx.AsyncClient() as http:
            anonymous = await http.get(base_url + "/files")
        stats = await sim_stats(base_url)
    assert anonymous.status_code == 200  # no api_key configured: every key is accepted
    assert stats["batch"]["file_uploads"] == 2


async def test_batch_routes_want_the_api_key_when_one_is_set() -> None:
    async with (
        running_simulator(_config(api_key="sk-right")) as base_url,
        openai.AsyncOpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0) as bad,
    ):
        with pytest.raises(openai.AuthenticationError):
            await bad.files.create(file=("a.jsonl", _jsonl(_requests(1))), purpose="batch")
        with pytest.raises(openai.AuthenticationError):
            await bad.batches.list()
