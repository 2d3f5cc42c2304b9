"""The Batch API client against the simulator's Files and Batch APIs, over real HTTP.

The simulator's batch clock runs fast (``time_scale``), so a "24 hour" batch ends in
moments; tests poll until a batch has ended, bounded only for liveness, and time nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator, Callable

import pytest

from bulkgen.errors import ProviderError, ProviderRejected
from bulkgen.models import ChatRequest
from bulkgen.providers.openai_batch import (
    BatchLimits,
    InputFile,
    OpenAIBatchClient,
    ProviderBatch,
    RowAnswered,
    RowFailed,
    RowNotRun,
    RowResult,
    build_input_files,
)
from bulkgen.simulator import SimConfig, running_simulator
from bulkgen.simulator.config import BatchConfig
from bulkgen.simulator.control import sim_stats

LIVENESS_S = 60.0
FAST = BatchConfig(time_scale=1000.0, requests_per_s=10.0, validating_s=1.0, finalizing_s=1.0)
DISPATCH = "bulkgen_dispatch"


def _config(batch: BatchConfig = FAST) -> SimConfig:
    return SimConfig(rpm=None, tpm=None, seed=7, batch=batch)


def _request(index: int, model: str = "gpt-4o") -> ChatRequest:
    # Prompts of different lengths, so files end on the byte limit as well as the count.
    text = f"Write about topic {index}." + " Be concrete." * (index % 9)
    return ChatRequest(model=model, messages=(("user", text),), max_tokens=60)


def _client(base_url: str) -> OpenAIBatchClient:
    return OpenAIBatchClient(base_url, "sk-test", timeout_s=30.0)


async def _until(
    client: OpenAIBatchClient, batch_id: str, done: Callable[[ProviderBatch], bool]
) -> ProviderBatch:
    """Poll until ``done(batch)``; the deadline only stops a test that would hang."""
    deadline = time.monotonic() + LIVENESS_S
    while True:
        batch = await client.retrieve(batch_id)
        if done(batch):
            return batch
        assert time.monotonic() < deadline, f"batch stuck: {batch}"
        await asyncio.sleep(0.01)


async def _send(
    client: OpenAIBatchClient, file: InputFile, metadata: dict[str, str]
) -> ProviderBatch:
    return await client.create(await client.upload(file), metadata=metadata)


@pytest.fixture
async def sim() -> AsyncIterator[tuple[str, OpenAIBatchClient]]:
    async with running_simulator(_config()) as base_url:
        client = _client(base_url)
        try:
            yield base_url, client
        finally:
            await client.aclose()


async def test_500_requests_split_over_files_are_all_answered_once() -> None:
    limits = BatchLimits(max_requests=45, max_bytes=10_900)
    # The simulator refuses any file over the same limits: a file past one fails its batch.
    provider_limits = dataclasses.replace(
        FAST, max_requests=limits.max_requests, max_input_bytes=limits.max_bytes
    )
    pairs = [
        (f"job-{i}", _request(i, "gpt-4o-mini" if i % 5 == 0 else "gpt-4o")) for i in range(500)
    ]
    files = build_input_files(pairs, limits)
    assert len(files) >= 500 // 45 + 1
    assert {f.model for f in files} == {"gpt-4o", "gpt-4o-mini"}
    assert any(len(f.custom_ids) == limits.max_requests for f in files)  # cut by count
    # ... and by bytes: a file that ended short of the count, and not for its model's end.
    assert any(
        len(f.custom_ids) < limits.max_requests and f.model == after.model
        for f, after in itertools.pairwise(files)
    )
    async with running_simulator(_config(provider_limits)) as base_url:
        client = _client(base_url)
        try:
            created = [
                await _send(client, file, {DISPATCH: "d-500", "part": str(n)})
                for n, file in enumerate(files)
            ]
            ended = [await client.wait(b.id, poll_s=0.01, max_poll_s=0.1) for b in created]
            results: list[RowResult] = []
            for batch in ended:
                results += (await client.results(batch)).values()
            stats = await sim_stats(base_url)
        finally:
            await client.aclose()
    assert [b.status for b in ended] == ["completed"] * len(files), [b.errors for b in ended]
    assert [b.metadata["part"] for b in ended] == [str(n) for n in range(len(files))]
    ids = [r.custom_id for r in results]
    assert sorted(ids) == sorted(cid for cid, _ in pairs)  # every job once, none twice
    answered = [r for r in results if isinstance(r, RowAnswered)]
    assert len(answered) == 500
    assert all(r.completion.content and r.completion.usage.completion_tokens for r in answered)
    models = {r.custom_id: r.completion.model for r in answered}
    assert models["job-5"].startswith("gpt-4o-mini") and not models["job-6"].startswith(
        "gpt-4o-mini"
    )
    assert stats["batch"]["batch_creates"] == len(files)
    assert stats["batch"]["requests"] == 500
    assert stats["requests"] == 0  # no online call


async def test_a_batch_created_before_a_crash_is_found_by_its_metadata() -> None:
    paused = dataclasses.replace(FAST, time_scale=0.0)  # every batch stays as created
    async with running_simulator(_config(paused)) as base_url:
        before_crash = _client(base_url)
        try:
            others = [
                await _send(
                    before_crash,
                    build_input_files([(f"o{n}", _request(n))], BatchLimits())[0],
                    {DISPATCH: f"other-{n}"},
                )
                for n in range(3)
            ]
            (file,) = build_input_files([("j1", _request(1)), ("j2", _request(2))], BatchLimits())
            lost = await _send(before_crash, file, {DISPATCH: "d-1", "account": "7"})
            newer = await _send(before_crash, file, {DISPATCH: "other-9"})
        finally:
            await before_crash.aclose()  # the worker dies before recording lost.id
        after_restart = _client(base_url)
        try:
            found = await after_restart.find({DISPATCH: "d-1"}, page_size=2)
            by_both = await after_restart.find({DISPATCH: "d-1", "account": "7"}, page_size=1)
            wrong_account = await after_restart.find({DISPATCH: "d-1", "account": "8"})
            since = await after_restart.find({DISPATCH: "d-1"}, created_since=lost.created_at)
            too_late = await after_restart.find(
                {DISPATCH: "d-1"}, created_since=newer.created_at + 1
            )
            everything = await after_restart.find({}, page_size=2)
        finally:
            await after_restart.aclose()
    assert [b.id for b in found] == [lost.id]
    assert found[0].input_file_id == lost.input_file_id and found[0].status == "validating"
    assert [b.id for b in by_both] == [lost.id]
    assert wrong_account == [] and too_late == []
    assert [b.id for b in since] == [lost.id]
    assert [b.id for b in everything] == [newer.id, lost.id, *(b.id for b in reversed(others))]


async def test_an_expired_batch_keeps_its_finished_rows_and_names_the_rest() -> None:
    window = BatchConfig(time_scale=50.0, requests_per_s=1.0, validating_s=0.0, window_s=4.0)
    (file,) = build_input_files([(f"j{i}", _request(i)) for i in range(10)], BatchLimits())
    async with running_simulator(_config(window)) as base_url:
        client = _client(base_url)
        try:
            batch = await client.wait(
                (await _send(client, file, {DISPATCH: "d-x"})).id, poll_s=0.01
            )
            results = await client.results(batch)
        finally:
            await client.aclose()
    assert batch.status == "expired" and (batch.total, batch.completed) == (10, 4)
    assert sorted(results) == sorted(file.custom_ids)
    answered = [r for r in results.values() if isinstance(r, RowAnswered)]
    not_run = [r for r in results.values() if isinstance(r, RowNotRun)]
    assert len(answered) == 4 and len(not_run) == 6
    assert {r.code for r in not_run} == {"batch_expired"}


async def test_cancel_keeps_what_finished_and_is_idempotent(
    sim: tuple[str, OpenAIBatchClient],
) -> None:
    _, client = sim
    slow = dataclasses.replace(FAST, time_scale=10.0, requests_per_s=1.0, validating_s=0.0)
    async with running_simulator(_config(slow)) as slow_url:
        slow_client = _client(slow_url)
        try:
            # Two thousand rows at ten a wall second: minutes of work, cancelled early.
            (file,) = build_input_files(
                [(f"j{i}", _request(i)) for i in range(2000)], BatchLimits()
            )
            created = await _send(slow_client, file, {DISPATCH: "d-c"})
            await _until(slow_client, created.id, lambda batch: batch.completed >= 2)
            cancelling = await slow_client.cancel(created.id)
            cancelled = await slow_client.wait(created.id, poll_s=0.01)
            again = await slow_client.cancel(created.id)
            results = await slow_client.results(cancelled)
        finally:
            await slow_client.aclose()
    assert cancelling.status in ("cancelling", "cancelled")
    assert cancelled.status == again.status == "cancelled"
    assert sorted(results) == sorted(file.custom_ids)
    not_run = [r for r in results.values() if isinstance(r, RowNotRun)]
    answered = [r for r in results.values() if isinstance(r, RowAnswered)]
    assert 2 <= len(answered) == cancelled.completed < 2000
    assert not_run and {r.code for r in not_run} == {"batch_cancelled"}
    # A batch that completed on its own: cancelling it returns it as it ended.
    (small,) = build_input_files([("a", _request(1))], BatchLimits())
    done = await client.wait((await _send(client, small, {DISPATCH: "d-d"})).id, poll_s=0.01)
    assert done.status == "completed"
    assert (await client.cancel(done.id)).status == "completed"


async def test_error_rows_come_out_typed_as_online_errors() -> None:
    faulty = dataclasses.replace(FAST, faults={"503": 0.25, "500": 0.1, "empty": 0.2})
    pairs = [(f"j{i}", _request(i)) for i in range(40)]
    pairs.append(("no-messages", ChatRequest(model="gpt-4o", messages=(), max_tokens=60)))
    (file,) = build_input_files(pairs, BatchLimits())
    async with running_simulator(_config(faulty)) as base_url:
        client = _client(base_url)
        try:
            batch = await client.wait(
                (await _send(client, file, {DISPATCH: "d-e"})).id, poll_s=0.01
            )
            results = await client.results(batch)
        finally:
            await client.aclose()
    assert batch.status == "completed" and sorted(results) == sorted(file.custom_ids)
    failed = {r.custom_id: r.error for r in results.values() if isinstance(r, RowFailed)}
    refused = failed.pop("no-messages")
    assert isinstance(refused, ProviderRejected) and refused.status_code == 400
    assert failed and {e.status_code for e in failed.values()} <= {500, 503}
    assert all(e.retryable and not isinstance(e, ProviderRejected) for e in failed.values())
    assert batch.failed == len(failed) + 1
    answered = [r for r in results.values() if isinstance(r, RowAnswered)]
    assert batch.completed == len(answered)
    assert any(r.completion.content == "" for r in answered)  # empty: the pipeline's call
    assert any(r.completion.content for r in answered)


async def test_a_refused_file_fails_its_batch_with_reasons_and_unknown_ids_are_rejected() -> None:
    strict = dataclasses.replace(FAST, max_requests=3)
    (file,) = build_input_files([(f"j{i}", _request(i)) for i in range(4)], BatchLimits())
    async with running_simulator(_config(strict)) as base_url:
        client = _client(base_url)
        try:
            batch = await client.wait(
                (await _send(client, file, {DISPATCH: "d-f"})).id, poll_s=0.01
            )
            results = await client.results(batch)
            with pytest.raises(ProviderRejected) as unknown:
                await client.retrieve("batch_nope")
        finally:
            await client.aclose()
    assert batch.status == "failed" and batch.output_file_id is None
    assert any(e.startswith("too_many_requests:") for e in batch.errors)
    assert results == {}
    assert unknown.value.status_code == 404


async def test_an_unreachable_server_is_a_typed_error() -> None:
    client = OpenAIBatchClient("http://127.0.0.1:9/v1", "sk-test", timeout_s=5.0)
    try:
        with pytest.raises(ProviderError) as caught:
            await client.find({DISPATCH: "d"})
    finally:
        await client.aclose()
    assert caught.value.retryable
