"""Batch API input files and result files (bulkgen.providers.openai_batch), pure."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from bulkgen.errors import (
    InputError,
    InvalidOutput,
    ProviderOverloaded,
    ProviderRejected,
    ProviderUnavailable,
    QuotaExhausted,
)
from bulkgen.models import ChatRequest, Usage
from bulkgen.providers.openai_batch import (
    ENDPOINT,
    BatchLimits,
    RowAnswered,
    RowFailed,
    RowNotRun,
    build_input_files,
    parse_results,
)


def _request(text: str, model: str = "gpt-4o", **changes: Any) -> ChatRequest:
    fields: dict[str, Any] = {
        "model": model,
        "messages": (("system", "Be brief."), ("user", text)),
        "max_tokens": 300,
        "temperature": 0.7,
        **changes,
    }
    return ChatRequest(**fields)


def _lines(content: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in content.splitlines()]


def test_a_line_is_the_online_request_under_its_custom_id() -> None:
    request = _request("caf\u00e9", extra=(("top_p", 0.5),))
    (file,) = build_input_files([("42", request)], BatchLimits())
    assert file.custom_ids == ("42",) and file.model == "gpt-4o"
    assert file.content.endswith(b"\n")
    assert _lines(file.content) == [
        {
            "custom_id": "42",
            "method": "POST",
            "url": ENDPOINT,
            "body": {
                "model": "gpt-4o",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "caf\u00e9"},
                ],
                "max_tokens": 300,
                "top_p": 0.5,
                "temperature": 0.7,
            },
        }
    ]
    (no_temperature,) = build_input_files([("1", _request("x", temperature=None))], BatchLimits())
    assert "temperature" not in _lines(no_temperature.content)[0]["body"]


def test_files_split_at_the_request_limit_keeping_order() -> None:
    pairs = [(str(i), _request(f"topic {i}")) for i in range(25)]
    files = build_input_files(pairs, BatchLimits(max_requests=10))
    assert [len(f.custom_ids) for f in files] == [10, 10, 5]
    assert [cid for f in files for cid in f.custom_ids] == [str(i) for i in range(25)]
    for file in files:
        assert [line["custom_id"] for line in _lines(file.content)] == list(file.custom_ids)


def test_files_split_at_the_byte_limit_and_every_file_fits() -> None:
    pairs = [(str(i), _request("x" * (i * 7 % 50))) for i in range(40)]
    one_line = len(build_input_files(pairs[:1], BatchLimits())[0].content)
    limit = 4 * one_line
    files = build_input_files(pairs, BatchLimits(max_bytes=limit))
    assert len(files) > 10
    assert all(len(f.content) <= limit for f in files)
    assert sorted(cid for f in files for cid in f.custom_ids) == sorted(c for c, _ in pairs)
    # A file closes only when the next line would not fit: no two neighbours could merge.
    for first, second in itertools.pairwise(files):
        next_line = second.content.splitlines(keepends=True)[0]
        assert len(first.content) + len(next_line) > limit


def test_one_model_per_file() -> None:
    pairs = [
        ("a", _request("1")),
        ("b", _request("2", model="gpt-4o-mini")),
        ("c", _request("3")),
        ("d", _request("4", model="gpt-4o-mini")),
    ]
    files = build_input_files(pairs, BatchLimits())
    assert [(f.model, f.custom_ids) for f in files] == [
        ("gpt-4o", ("a", "c")),
        ("gpt-4o-mini", ("b", "d")),
    ]


def test_a_request_larger_than_a_file_is_named_and_a_repeated_id_is_a_bug() -> None:
    small = len(build_input_files([("ok", _request("x"))], BatchLimits())[0].content)
    with pytest.raises(
        InputError, match=f"request big takes 429 bytes, more than the {small:,} a batch"
    ):
        build_input_files(
            [("ok", _request("x")), ("big", _request("y" * 200))], BatchLimits(max_bytes=small)
        )
    with pytest.raises(ValueError, match="appears twice"):
        build_input_files([("a", _request("x")), ("a", _request("y"))], BatchLimits())
    with pytest.raises(ValueError):
        BatchLimits(max_requests=0)
    assert build_input_files([], BatchLimits()) == []


def _answer(custom_id: str, content: str | None, **usage: int) -> dict[str, Any]:
    body = {
        "id": "chatcmpl-1",
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 20, **usage},
    }
    return {
        "id": "r",
        "custom_id": custom_id,
        "response": {"status_code": 200, "body": body},
        "error": None,
    }


def _failed(custom_id: str, status: int, error: dict[str, Any]) -> dict[str, Any]:
    response = {"status_code": status, "request_id": "req", "body": {"error": error}}
    return {"id": "r", "custom_id": custom_id, "response": response, "error": None}


def _not_run(custom_id: str, code: str) -> dict[str, Any]:
    return {
        "id": "r",
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": "not run"},
    }


def _jsonl(*lines: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def test_results_of_both_files_one_per_custom_id_in_any_order() -> None:
    output = _jsonl(_answer("3", "# Three"), _answer("1", "# One", prompt_tokens_details=5))
    errors = _jsonl(
        _failed(
            "2", 503, {"message": "The engine is currently overloaded", "type": "server_error"}
        ),
        _failed("4", 500, {"message": "boom", "type": "server_error"}),
        _failed("5", 400, {"message": "bad", "type": "invalid_request_error", "code": None}),
        _failed(
            "6", 429, {"message": "pay", "type": "insufficient_quota", "code": "insufficient_quota"}
        ),
        _not_run("7", "batch_expired"),
        _not_run("8", "batch_cancelled"),
    )
    results = parse_results(output, errors, model="gpt-4o")
    assert sorted(results) == [str(i) for i in range(1, 9)]
    one = results["1"]
    assert isinstance(one, RowAnswered)
    assert one.completion.content == "# One" and one.completion.finish_reason == "stop"
    assert one.completion.model == "gpt-4o-2024-08-06"
    assert one.completion.usage == Usage(10, 20)
    kinds = {cid: type(r.error) for cid, r in results.items() if isinstance(r, RowFailed)}
    assert kinds == {
        "2": ProviderOverloaded,
        "4": ProviderUnavailable,
        "5": ProviderRejected,
        "6": QuotaExhausted,
    }
    failed = results["4"]
    assert isinstance(failed, RowFailed) and failed.error.status_code == 500
    assert "boom" in str(failed.error)
    assert results["7"] == RowNotRun("7", "batch_expired", "not run")
    assert results["8"] == RowNotRun("8", "batch_cancelled", "not run")


def test_an_answer_without_content_is_answered_empty_and_one_without_choices_is_malformed() -> None:
    broken = {**_answer("b", "x"), "response": {"status_code": 200, "body": {"choices": []}}}
    results = parse_results(_jsonl(_answer("a", None), broken))
    empty = results["a"]
    assert isinstance(empty, RowAnswered) and empty.completion.content == ""
    malformed = results["b"]
    assert isinstance(malformed, RowFailed) and isinstance(malformed.error, InvalidOutput)
    assert malformed.error.kind == "malformed"


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"{not json\n", "file 1, line 1: not JSON"),
        (b'{"response": null}\n', "file 1, line 1: no custom_id"),
        (
            b'{"custom_id": "a", "response": null, "error": null}\n',
            "neither a response nor an error",
        ),
        (
            _jsonl(_answer("a", "x"), _not_run("a", "batch_expired")),
            "file 1, line 2: custom_id 'a' answered twice",
        ),
    ],
)
def test_an_unreadable_results_file_is_malformed_whole(content: bytes, why: str) -> None:
    with pytest.raises(InvalidOutput, match=why):
        parse_results(content)


def test_a_row_error_is_redacted_of_the_key() -> None:
    error = {
        "message": "Incorrect API key provided: sk-live-123456789abcdef",
        "type": "invalid_request_error",
    }
    results = parse_results(_jsonl(_failed("a", 401, error)), secrets=("sk-live-123456789abcdef",))
    failed = results["a"]
    assert isinstance(failed, RowFailed)
    assert "sk-live-123456789abcdef" not in str(failed.error)
    assert isinstance(failed.error, ProviderRejected)


def test_blank_lines_are_skipped_and_a_bad_line_is_named_by_file_and_line() -> None:
    assert list(parse_results(b"\n" + _jsonl(_answer("a", "x")) + b"\n\n", b"")) == ["a"]
    with pytest.raises(InvalidOutput, match="file 2, line 2: custom_id 'a' answered twice"):
        parse_results(_jsonl(_answer("a", "x")), _jsonl(_answer("b", "y"), _not_run("a", "e")))
