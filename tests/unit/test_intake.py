"""Batch intake: CSV, JSONL and lists; overrides; whole-batch rejection naming row and field."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from bulkgen.errors import ConfigError, InputError
from bulkgen.intake import (
    JobInput,
    load_file,
    parse_csv,
    parse_jsonl,
    parse_rows,
)
from bulkgen.options import BatchOptions, check_option, stored_options, validate_options
from bulkgen.prompts import PromptTemplate
from bulkgen.settings import Settings

FLEET = Settings(model="gpt-4o", max_tokens=1500)
BASE = BatchOptions(model="gpt-4o", max_tokens=1500)


def input_error(call: Callable[..., object], *args: object, **kwargs: object) -> InputError:
    with pytest.raises(InputError) as info:
        call(*args, **kwargs)
    return info.value


# CSV


def test_csv_keywords_variables_and_overrides() -> None:
    data = (
        "keyword,city,tone,target_words,temperature\n"
        "  green tea  ,Kyoto,,,\n"
        "espresso,Rome,playful,1200,0\n"
    )
    jobs = parse_csv(data)
    assert jobs == [
        JobInput("green tea", {"city": "Kyoto"}, {}),
        JobInput(
            "espresso",
            {"city": "Rome"},
            {"tone": "playful", "target_words": 1200, "temperature": 0.0},
        ),
    ]
    assert jobs[0].options(BASE) is BASE
    assert jobs[1].options(BASE) == BatchOptions(
        model="gpt-4o", max_tokens=1500, tone="playful", target_words=1200, temperature=0.0
    )


def test_csv_bytes_with_bom_and_crlf_and_quotes() -> None:
    data = '\ufeffKeyword,notes\r\n"tea, black","said ""strong""\nand hot"\r\n'.encode()
    (job,) = parse_csv(data)
    assert job.keyword == "tea, black"
    assert job.variables == {"notes": 'said "strong"\nand hot'}


def test_csv_skips_blank_lines_and_empty_rows() -> None:
    jobs = parse_csv("\n\nkeyword,x\n\na,1\n,\n  ,  \nb,2\n\n")
    assert [j.keyword for j in jobs] == ["a", "b"]


def test_csv_missing_keyword_column() -> None:
    error = input_error(parse_csv, "name,city\ntea,Kyoto\n")
    assert error.field == "keyword"
    assert "keyword" in str(error)


def test_csv_empty_keyword_names_row_and_line() -> None:
    error = input_error(parse_csv, "keyword,city\ntea,Kyoto\n  ,Rome\n")
    assert (error.row, error.field) == (2, "keyword")
    assert "line 3" in str(error)
    assert str(error).startswith("row 2, field 'keyword'")


def test_csv_keyword_too_long() -> None:
    ok = "k" * 500
    assert parse_csv(f"keyword\n{ok}\n")[0].keyword == ok
    error = input_error(parse_csv, f"keyword\n{ok}x\n")
    assert (error.row, error.field) == (1, "keyword")
    assert "500" in str(error)


def test_csv_ragged_rows() -> None:
    error = input_error(parse_csv, "keyword,city\ntea,Kyoto\ncoffee\n")
    assert error.row == 2
    assert "1 fields" in str(error) and "header has 2" in str(error)
    error = input_error(parse_csv, "keyword,city\ntea,Kyoto,extra\n")
    assert error.row == 1


def test_csv_non_utf8() -> None:
    error = input_error(parse_csv, "keyword\ntea\ncaf\xe9\n".encode("latin-1"))
    assert "UTF-8" in str(error)
    assert "line 3" in str(error)


def test_csv_unterminated_quote_is_refused() -> None:
    error = input_error(parse_csv, 'keyword\n"tea\n')
    assert "CSV" in str(error)


def test_csv_header_problems() -> None:
    assert "twice" in str(input_error(parse_csv, "keyword,city,city\na,b,c\n"))
    assert "column 2" in str(input_error(parse_csv, "keyword,,city\na,b,c\n"))


def test_csv_zero_rows() -> None:
    assert "no rows" in str(input_error(parse_csv, ""))
    assert "no rows" in str(input_error(parse_csv, b"\xef\xbb\xbf"))
    assert "no rows" in str(input_error(parse_csv, "keyword\n\n"))


def test_csv_max_rows() -> None:
    assert len(parse_csv("keyword\n" + "tea\n" * 3, max_rows=3)) == 3
    error = input_error(parse_csv, "keyword\n" + "tea\n" * 4, max_rows=3)
    assert "limit is 3" in str(error)
    assert error.row == 4


@pytest.mark.parametrize(
    ("column", "value", "why"),
    [
        ("target_words", "many", "whole number"),
        ("target_words", "0", "between"),
        ("target_words", "49", "between 50 and 20000"),
        ("target_words", "20001", "between 50 and 20000"),
        ("max_tokens", "15", "between 16 and 200000"),
        ("max_tokens", "200001", "between 16 and 200000"),
        ("max_tokens", "1.5", "whole number"),
        ("temperature", "hot", "number"),
        ("temperature", "2.5", "between 0 and 2"),
        ("temperature", "nan", "between 0 and 2"),
        ("model", "m" * 201, "at most"),
    ],
)
def test_csv_bad_override_names_row_and_field(column: str, value: str, why: str) -> None:
    error = input_error(parse_csv, f"keyword,{column}\nok,\ntea,{value}\n")
    assert (error.row, error.field) == (2, column)
    assert why in str(error)


def test_csv_override_columns_match_case_insensitively() -> None:
    (job,) = parse_csv("Keyword,Model,MAX_TOKENS,Temperature\ntea,gpt-4o-mini,3000,none\n")
    assert job.overrides == {"model": "gpt-4o-mini", "max_tokens": 3000, "temperature": None}
    assert job.variables == {}
    assert job.options(BASE).temperature is None


# JSONL


def test_jsonl_objects() -> None:
    lines = [
        {"keyword": " matcha ", "audience": "students", "max_tokens": 2000},
        {"keyword": "sencha", "rank": 3, "tags": ["a", "b"], "note": None, "tone": None},
    ]
    data = "\n".join(json.dumps(line) for line in lines) + "\n\n"
    jobs = parse_jsonl(data.encode())
    assert jobs[0] == JobInput("matcha", {"audience": "students"}, {"max_tokens": 2000})
    assert jobs[1] == JobInput("sencha", {"rank": "3", "tags": '["a", "b"]'}, {})


def test_jsonl_keeps_unicode_line_separators_inside_strings() -> None:
    (job,) = parse_jsonl('{"keyword": "tea", "notes": "a\u2028b"}\n')
    assert job.variables["notes"] == "a\u2028b"


@pytest.mark.parametrize(
    ("data", "row", "line", "text"),
    [
        ('{"keyword": "a"}\n\n{"keyword": "b"\n', 2, 3, "not valid JSON"),
        ('{"keyword": "a"}\n["b"]\n', 2, 2, "not a JSON object"),
        ('"just a string"\n', 1, 1, "not a JSON object"),
        ('{"keyword": "a"}\n{"city": "x"}\n', 2, 2, "no keyword"),
        ('{"keyword": ""}\n', 1, 1, "empty"),
        ('{"keyword": ["a"]}\n', 1, 1, "must be text"),
        ('{"keyword": "a", "target_words": true}\n', 1, 1, "boolean"),
    ],
)
def test_jsonl_errors_name_row_and_line(data: str, row: int, line: int, text: str) -> None:
    error = input_error(parse_jsonl, data)
    assert error.row == row
    assert f"line {line}" in str(error)
    assert text in str(error)


def test_jsonl_non_utf8_zero_rows_and_max_rows() -> None:
    assert "UTF-8" in str(input_error(parse_jsonl, b'{"keyword": "\xff"}\n'))
    assert "no rows" in str(input_error(parse_jsonl, "\n \n"))
    assert "limit is 1" in str(
        input_error(parse_jsonl, '{"keyword":"a"}\n{"keyword":"b"}', max_rows=1)
    )


def test_jsonl_numeric_keyword_is_accepted_as_text() -> None:
    assert parse_jsonl('{"keyword": 2024}')[0].keyword == "2024"


# Python lists


def test_rows_strings_and_mappings() -> None:
    jobs = parse_rows(["  tea ", {"keyword": "coffee", "language": "French", "shop": "Lyon"}])
    assert jobs == [
        JobInput("tea", {}, {}),
        JobInput("coffee", {"shop": "Lyon"}, {"language": "French"}),
    ]


def test_rows_errors() -> None:
    assert input_error(parse_rows, ["ok", "   "]).row == 2
    assert input_error(parse_rows, ["ok", 5]).row == 2
    assert "no rows" in str(input_error(parse_rows, []))
    assert "limit is 2" in str(input_error(parse_rows, ["a", "b", "c"], max_rows=2))


def test_template_variables_merge_row_and_options() -> None:
    (job,) = parse_rows([{"keyword": "tea", "city": "Kyoto", "tone": "calm"}])
    options = job.options(BASE.model_copy(update={"language": "Japanese"}))
    variables = job.template_variables(options)
    assert variables == {
        "city": "Kyoto",
        "keyword": "tea",
        "tone": "calm",
        "language": "Japanese",
        "target_words": 800,
    }
    rendered = PromptTemplate.default().render(variables)
    assert "Japanese" in rendered[0][1] and "tea" in rendered[1][1]


# Files


def test_load_file_by_extension(tmp_path: Path) -> None:
    (tmp_path / "a.CSV").write_text("keyword\ntea\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"keyword": "tea"}\n', encoding="utf-8")
    (tmp_path / "c.ndjson").write_text('{"keyword": "tea"}\n', encoding="utf-8")
    for name in ("a.CSV", "b.jsonl", "c.ndjson"):
        assert [j.keyword for j in load_file(tmp_path / name)] == ["tea"]


def test_load_file_refuses_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("keyword\ntea\n", encoding="utf-8")
    assert ".txt" in str(input_error(load_file, tmp_path / "a.txt"))
    assert "cannot read" in str(input_error(load_file, tmp_path / "missing.csv"))


def test_load_file_passes_max_rows(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("keyword\na\nb\n", encoding="utf-8")
    assert "limit is 1" in str(input_error(load_file, tmp_path / "a.csv", max_rows=1))


# Batch options


def test_validate_options_types_values() -> None:
    options = validate_options(
        {"model": " gpt-4o-mini ", "target_words": "600", "max_tokens": 900, "temperature": "0.2"},
        FLEET,
    )
    assert options == BatchOptions(
        model="gpt-4o-mini", target_words=600, max_tokens=900, temperature=0.2
    )
    assert validate_options({}, FLEET) == BASE
    assert validate_options({"temperature": None}, FLEET).temperature is None


def test_validate_options_template_is_compiled() -> None:
    text = "Write about {{ keyword }}"
    assert validate_options({"template": text}, FLEET).template == text
    assert validate_options({"template": None}, FLEET).template is None
    with pytest.raises(ConfigError, match="line 1"):
        validate_options({"template": "{{ keyword "}, FLEET)
    with pytest.raises(ConfigError):
        validate_options({"template": "   "}, FLEET)


@pytest.mark.parametrize(
    "raw",
    [
        {"colour": "red"},
        {"model": ""},
        {"model": 5},
        {"tone": None},
        {"target_words": -1},
        {"target_words": 49},
        {"max_tokens": 15},
        {"max_tokens": 200_001},
        {"target_words": True},
        {"max_tokens": "lots"},
        {"temperature": 3},
        {"temperature": "inf"},
    ],
)
def test_validate_options_refuses_bad_values(raw: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        validate_options(raw, FLEET)
    assert next(iter(raw)) in str(info.value)


def test_fleet_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULKGEN_MODEL", "gpt-4.1-mini")
    monkeypatch.setenv("BULKGEN_MAX_TOKENS", "900")
    fleet = Settings()
    chosen = validate_options({}, fleet)
    assert (chosen.model, chosen.max_tokens) == ("gpt-4.1-mini", 900)
    explicit = validate_options({"model": "gpt-4o", "max_tokens": 300}, fleet)
    assert (explicit.model, explicit.max_tokens) == ("gpt-4o", 300)


def test_fleet_defaults_are_bounded_like_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULKGEN_MAX_TOKENS", "15")
    with pytest.raises(ValueError, match="max_tokens"):
        Settings()


def test_row_overrides_and_batch_options_share_their_bounds() -> None:
    """The same value is accepted (or refused) whichever way it comes in."""
    for value in (49, 50, 20_000, 20_001):
        try:
            check_option("target_words", value)
            row_ok = True
        except ValueError:
            row_ok = False
        try:
            validate_options({"target_words": value}, FLEET)
            batch_ok = True
        except ConfigError:
            batch_ok = False
        assert row_ok == batch_ok == (50 <= value <= 20_000)


def test_the_schema_documents_the_bounds() -> None:
    properties = BatchOptions.model_json_schema()["properties"]
    assert (properties["target_words"]["minimum"], properties["target_words"]["maximum"]) == (
        50,
        20_000,
    )
    assert (properties["max_tokens"]["minimum"], properties["max_tokens"]["maximum"]) == (
        16,
        200_000,
    )
    assert set(BatchOptions.model_json_schema()["required"]) == {"model", "max_tokens"}


def test_stored_options_take_no_fleet_default() -> None:
    assert stored_options(BASE.model_dump()) == BASE
    with pytest.raises(ConfigError, match="'max_tokens' is required"):
        stored_options({"model": "gpt-4o"})
