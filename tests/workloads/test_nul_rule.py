"""NUL (U+0000) in text is refused up front for every writer alike, where the input is
validated, naming the field: Postgres (lakebase) cannot store it, and a rule that held
for one writer only would make the writers' results differ (issue 11, finding 7)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from dwbench.errors import InvalidSchemaError
from workloads.inputs import NUL_RULE, input_model
from workloads.registry import workload_from_ddl

DDL = (
    "id BIGINT NOT NULL, name STRING, tags ARRAY<STRING>, attrs MAP<STRING,INT>, "
    "route STRUCT<stop: STRING>"
)


@pytest.mark.parametrize(
    ("item", "loc"),
    [
        ({"name": "a\0b"}, ("name",)),
        ({"tags": ["ok", "\0"]}, ("tags", 1)),
        ({"attrs": {"k\0": 1}}, ("attrs", "k\0", "[key]")),
        ({"route": {"stop": "x\0"}}, ("route", "stop")),
    ],
)
def test_the_input_model_refuses_nul_naming_the_field(item, loc):
    model = input_model(workload_from_ddl("nul", DDL))
    with pytest.raises(ValidationError) as err:
        model.model_validate({"id": 1, **item})
    errors = err.value.errors(include_url=False)
    assert [(e["loc"], e["msg"]) for e in errors] == [(loc, f"Value error, {NUL_RULE}")]


def test_sample_files_refuse_nul_with_line_and_column(tmp_path: Path):
    csv = tmp_path / "rows.csv"
    csv.write_text("id,name\n1,fine\n2,bad\0text\n", encoding="utf-8")
    with pytest.raises(InvalidSchemaError) as err:
        workload_from_ddl("nul", "id BIGINT NOT NULL, name STRING", rows_from=csv)
    assert err.value.message == f"rows.csv line 3: column name: {NUL_RULE}"

    parquet = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"id": [1, 2], "name": ["bad\0", "fine"]}), parquet)
    with pytest.raises(InvalidSchemaError) as err:
        workload_from_ddl("nul", "id BIGINT NOT NULL, name STRING", rows_from=parquet)
    assert err.value.message == f"rows.parquet line 1: column name: {NUL_RULE}"

    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"id": 1, "name": "a\\u0000"}\n', encoding="utf-8")
    with pytest.raises(InvalidSchemaError) as err:
        workload_from_ddl("nul", "id BIGINT NOT NULL, name STRING", rows_from=jsonl)
    assert err.value.message == f"rows.jsonl line 1: column name: Value error, {NUL_RULE}"


def test_sample_json_lines_too_deep_or_too_long_a_number(tmp_path: Path):
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(InvalidSchemaError) as err:
        workload_from_ddl("deep", "id BIGINT NOT NULL", rows_from=jsonl)
    assert err.value.message == "rows.jsonl line 1: not JSON: nested too deeply"
    jsonl.write_text('{"id": ' + "9" * 5000 + "}\n", encoding="utf-8")
    with pytest.raises(InvalidSchemaError) as err:
        workload_from_ddl("huge", "id BIGINT NOT NULL", rows_from=jsonl)
    assert err.value.message.startswith("rows.jsonl line 1: not JSON: Exceeds the limit (4300")
