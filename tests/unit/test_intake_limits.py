"""What the database would refuse is refused at intake, naming the row and the field:
NUL characters, lone surrogates, fields over the one documented size limit, and spending
caps beyond what the batch's column can keep."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from bulkgen.errors import ConfigError, InputError
from bulkgen.intake import MAX_FIELD_CHARS, parse_csv, parse_jsonl, parse_rows
from bulkgen.options import check_budget_usd


def _refused(call: object) -> InputError:
    assert callable(call)
    with pytest.raises(InputError) as caught:
        call()
    return caught.value


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ("keyword,audience\nfine,ok\nbad\x00word,ok\n", "keyword"),
        ("keyword,audience\nfine,ok\nword,bad\x00cell\n", "audience"),
    ],
)
def test_a_nul_in_a_csv_cell_is_refused_with_its_row_and_field(data: str, field: str) -> None:
    error = _refused(lambda: parse_csv(data))
    assert (error.row, error.field) == (2, field)
    assert "NUL" in str(error)


def test_nul_and_lone_surrogates_in_jsonl_are_refused_with_their_row_and_field() -> None:
    nul = '{"keyword": "a"}\n{"keyword": "b", "audience": "x\\u0000y"}\n'
    error = _refused(lambda: parse_jsonl(nul))
    assert (error.row, error.field) == (2, "audience")
    surrogate = '{"keyword": "a\\ud800"}\n'
    error = _refused(lambda: parse_jsonl(surrogate))
    assert (error.row, error.field) == (1, "keyword")
    assert "surrogate" in str(error)
    nested = '{"keyword": "a", "meta": {"k": "\\udfff"}}\n'
    assert _refused(lambda: parse_jsonl(nested)).field == "meta"


def test_a_nul_in_a_field_name_or_an_override_is_refused() -> None:
    assert _refused(lambda: parse_rows([{"keyword": "a", "bad\x00name": "v"}])).row == 1
    error = _refused(lambda: parse_rows([{"keyword": "a", "tone": "dry\x00"}]))
    assert error.field == "tone"


def test_one_size_limit_for_csv_cells_and_jsonl_values() -> None:
    big = "x" * (MAX_FIELD_CHARS + 1)
    csv_error = _refused(lambda: parse_csv(f"keyword,notes\na,ok\nb,{big}\n"))
    assert (csv_error.row, csv_error.field) == (2, "notes")
    assert "malformed" not in str(csv_error)
    jsonl_error = _refused(lambda: parse_jsonl(json.dumps({"keyword": "a", "notes": big})))
    assert (jsonl_error.row, jsonl_error.field) == (1, "notes")
    nested = json.dumps({"keyword": "a", "notes": {"deep": ["y" * MAX_FIELD_CHARS]}})
    assert _refused(lambda: parse_jsonl(nested)).field == "notes"
    at_limit = "z" * MAX_FIELD_CHARS
    (row,) = parse_csv(f"keyword,notes\na,{at_limit}\n")
    assert row.variables["notes"] == at_limit


@pytest.mark.parametrize(
    "value", ["1e309", "Infinity", "NaN", "-1", "100000000", "0.0000001", "ten", True, [1]]
)
def test_a_spending_cap_the_column_cannot_keep_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError, match="budget_usd"):
        check_budget_usd(value)


@pytest.mark.parametrize(
    ("value", "amount"),
    [("0", Decimal(0)), ("12.5", Decimal("12.5")), (3, Decimal(3)), ("99999999.999999", None)],
)
def test_a_spending_cap_within_the_column_is_kept_exactly(
    value: object, amount: Decimal | None
) -> None:
    assert check_budget_usd(value) == (amount if amount is not None else Decimal(str(value)))
