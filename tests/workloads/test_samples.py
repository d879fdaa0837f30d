"""Sample rows to replay: JSON lines, CSV and Parquet, checked row by row up front."""

from __future__ import annotations

import datetime as dt
import decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dwbench.errors import InvalidSchemaError
from workloads.registry import workload_from_ddl

DDL = "id BIGINT NOT NULL, name STRING, price DECIMAL(8,2), day DATE, at TIMESTAMP, batch_id STRING"
NESTED = DDL + ", tags ARRAY<STRING>, attrs MAP<STRING,INT>"


def replay(path: Path, ddl: str = DDL) -> list[dict[str, object]]:
    workload = workload_from_ddl("samples", ddl, rows_from=path, id_column="id")
    make = workload.batches(seed=0)
    return make(0, 5, "b-0", "sql").to_pylist() + make(1, 5, "b-1", "sql").to_pylist()


def test_jsonl_rows_replay_cycled_with_fresh_ids(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(
        '{"id": 1, "name": "a", "price": "1.50", "day": "2026-01-02",'
        ' "at": "2026-01-02T03:04:05.000006Z",'
        ' "tags": ["x"], "attrs": {"k": 1}}\n\n'
        '{"id": 2, "name": null, "price": 2}\n'
    )
    rows = replay(path, NESTED)
    assert [r["name"] for r in rows[:4]] == ["a", None, "a", None]
    assert rows[0]["price"] == decimal.Decimal("1.50") and rows[0]["day"] == dt.date(2026, 1, 2)
    assert rows[0]["at"] == dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
    assert rows[0]["tags"] == ["x"] and rows[0]["attrs"] == [("k", 1)]
    assert len({r["id"] for r in rows}) == 10  # fresh ids, not the file's 1 and 2
    assert {r["batch_id"] for r in rows} == {"b-0", "b-1"}


def test_csv_and_parquet(tmp_path: Path) -> None:
    csv = tmp_path / "rows.csv"
    csv.write_text("id,name,price,day\n1,a,1.5,2026-01-02\n2,,3,\n")
    rows = replay(csv)
    assert rows[0]["price"] == decimal.Decimal("1.50") and rows[1]["name"] is None
    table = pa.table({"id": pa.array([5, 6], pa.int32()), "name": ["p", "q"]})
    pq.write_table(table, tmp_path / "rows.parquet")
    rows = replay(tmp_path / "rows.parquet")
    assert [r["name"] for r in rows[:2]] == ["p", "q"] and rows[0]["price"] is None


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "bad.jsonl",
            '{"id": 1}\n{"id": "two"}\n',
            "bad.jsonl line 2: column id: Input should be a valid integer",
        ),
        (
            "bad.jsonl",
            '{"id": 1}\n{"id": 2, "colour": "red"}\n',
            "bad.jsonl line 2: column colour: Extra inputs",
        ),
        ("bad.jsonl", '{"id": 1}\nnot json\n', "bad.jsonl line 2: not JSON"),
        (
            "bad.jsonl",
            '{"price": "1.234", "id": 1}\n',
            "bad.jsonl line 1: column price: Decimal input should have no more than 2 decimal "
            "places",
        ),
        (
            "bad.csv",
            "id,price\n1,1.5\n2,abc\n",
            "bad.csv line 3: column price: 'abc' is not DECIMAL(8,2)",
        ),
        ("bad.csv", "id,name\n1,a\n,b\n", "bad.csv line 3: column id is NOT NULL but has no value"),
        ("bad.csv", "id,shoe\n1,a\n", "bad.csv line 1: shoe not columns of the schema"),
        ("empty.jsonl", "\n", "the file has no rows"),
        ("rows.txt", "x", "unknown format"),
    ],
)
def test_a_bad_sample_row_names_its_line_and_column(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InvalidSchemaError) as caught:
        replay(path)
    assert message in caught.value.message


def test_csv_cannot_carry_nested_columns(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("id\n1\n")
    with pytest.raises(InvalidSchemaError, match="CSV cannot carry tags, attrs"):
        replay(path, NESTED)
