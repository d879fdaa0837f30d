"""Every writer, any schema: telemetry and a nested DDL written and read back exactly from
the target (Delta files with deltalake, Postgres with psycopg); DECIMAL where the path
carries it, refused up front with the reason where it does not."""

from __future__ import annotations

import datetime as dt
import decimal
import secrets
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from dwbench.errors import SchemaNotSupportedError
from tests.conftest import DATABRICKS_ONLY, local_targets, run_sql
from workloads.base import Rows, TableRef, default_table
from workloads.inputs import new_batch_id
from workloads.schema import TableSchema
from workloads.telemetry import TABLE as TELEMETRY
from workloads.telemetry import Fleet, FleetRows
from workloads.wire import json_value
from writers import WRITERS, writer_class
from writers.base import DataWriterInterface

# Every writer that stores rows and that the local stack serves, from the registry.
STORING = [
    name for name in WRITERS if name not in DATABRICKS_ONLY and writer_class(name).stores_rows
]
NESTED_DDL = """
  id BIGINT NOT NULL,
  at_ntz TIMESTAMP_NTZ,
  tags ARRAY<STRING>,
  attrs MAP<STRING, INT>,
  route STRUCT<name: STRING, stops: ARRAY<STRUCT<lat: DOUBLE, lon: DOUBLE>>>,
  small TINYINT,
  ratio FLOAT,
  day DATE,
  at TIMESTAMP,
  payload BINARY,
  note STRING,
  batch_id STRING NOT NULL,
  source STRING NOT NULL
"""
NESTED_ROWS = [
    {
        "id": 1,
        "at_ntz": dt.datetime(2026, 1, 2, 3, 4, 5, 123456),
        "tags": ["a", 'it\'s "quoted"', "ünï\ncode"],
        "attrs": [("x", 1), ("y", -2_147_483_648)],
        "route": {
            "name": "r1",
            "stops": [{"lat": 37.123456789012345, "lon": -122.5}, {"lat": 0.1, "lon": 1e-300}],
        },
        "small": -128,
        "ratio": 0.1,
        "day": dt.date(1, 1, 1),
        "at": dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
        "payload": b"\x00\x01\xff",
        "note": "x'); DROP TABLE t; --",
    },
    # Nullable columns left null; empty array and map; a struct with a null field.
    {"id": 2, "tags": [], "attrs": [], "route": {"name": None, "stops": []}},
]


def unique_table(prefix: str, schema: TableSchema, **kwargs: Any) -> TableRef:
    name = f"{prefix}_{secrets.token_hex(3)}"
    return default_table(name, schema, delta_table=f"main.default.{name}", **kwargs)


@pytest.fixture
async def writers(local_stack: dict[str, Any]):
    opened: dict[str, DataWriterInterface] = {}
    for name in STORING:
        writer = writer_class(name)(local_targets(local_stack))
        await writer.open()
        opened[name] = writer
    yield opened
    for writer in opened.values():
        await writer.close()


def stored(
    endpoints: dict[str, Any], writer: str, table: TableRef, batch_id: str
) -> list[dict[str, Any]]:
    """The batch's rows as the target holds them, read independently of the writer."""
    if writer == "lakebase":
        with psycopg.connect(endpoints["postgres_dsn"]) as conn:
            schema, name = table.postgres_table.split(".")
            # Binary results: text would round a real (float4) to 6 digits.
            cur = conn.cursor(binary=True)
            cur.execute(
                psycopg.sql.SQL("SELECT * FROM {} WHERE batch_id = %s ORDER BY 1").format(
                    psycopg.sql.Identifier(schema, name)
                ),
                [batch_id],
            )
            names = [c.name for c in cur.description or []]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    path = Path(endpoints["data_dir"], "tables", *table.delta_table.split("."))
    rows = DeltaTable(str(path)).to_pyarrow_table().to_pylist()
    mine = [r for r in rows if r["batch_id"] == batch_id and r["source"] == writer]
    return sorted(mine, key=lambda r: next(iter(r.values())))


def unordered_maps(table: TableRef, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Map entries compared as sets: a map has no order (protobuf maps do not keep one)."""
    maps = [c.name for c in table.schema.columns if c.type.sql().startswith("MAP<")]
    return [
        {k: dict(v) if k in maps and isinstance(v, list) else v for k, v in r.items()} for r in rows
    ]


def expected(writer: str, table: TableRef, data: pa.RecordBatch) -> list[dict[str, Any]]:
    rows = data.to_pylist()
    if writer != "lakebase":
        return unordered_maps(table, rows)
    complex_columns = {
        c.name: json_value(c.type) for c in table.schema.columns if c.type.is_complex
    }
    return [
        {
            k: complex_columns[k](v) if k in complex_columns and v is not None else v
            for k, v in r.items()
        }
        for r in rows
    ]


async def write_and_read(
    endpoints, writer: DataWriterInterface, table: TableRef, data: pa.RecordBatch
):
    batch_id = data.column("batch_id")[0].as_py()
    await writer.prepare(table)
    receipt = await writer.write(Rows(table, data, batch_id))
    assert receipt.rows == data.num_rows
    return unordered_maps(table, stored(endpoints, writer.name, table, batch_id))


@pytest.mark.parametrize("name", STORING)
async def test_telemetry_reads_back_exactly(local_stack, writers, name):
    table = TELEMETRY.with_tables(
        f"main.default.telemetry_{name.replace('-', '_')}",
        f"public.telemetry_{name.replace('-', '_')}",
    )
    run_sql(local_stack, table.schema.delta_ddl(table.delta_table))
    clock = {"now": 1_790_000_000_123_456}
    rows = FleetRows(table, Fleet(30, seed=5), clock=lambda: clock["now"])
    for k in range(3):
        clock["now"] += 1_000_000
        data = rows(k, 200, new_batch_id(), name)
        assert await write_and_read(local_stack, writers[name], table, data) == expected(
            name, table, data
        )


@pytest.mark.parametrize("name", STORING)
async def test_nested_types_and_nulls_read_back_exactly(local_stack, writers, name):
    schema = TableSchema.from_ddl(NESTED_DDL)
    table = unique_table("nested", schema, id_column="id")
    run_sql(local_stack, schema.delta_ddl(table.delta_table))
    batch_id = new_batch_id()
    rows = [{**r, "batch_id": batch_id, "source": name} for r in NESTED_ROWS]
    data = pa.RecordBatch.from_pylist(rows, schema=schema.arrow())
    assert await write_and_read(local_stack, writers[name], table, data) == expected(
        name, table, data
    )


@pytest.mark.parametrize("name", STORING)
async def test_decimal_where_the_path_carries_it(local_stack, writers, name):
    schema = TableSchema.from_ddl(
        "id BIGINT NOT NULL, price DECIMAL(10,2), batch_id STRING, source STRING"
    )
    table = unique_table("prices", schema, id_column="id")
    run_sql(local_stack, schema.delta_ddl(table.delta_table))
    writer = writers[name]
    if name.startswith("zerobus"):
        with pytest.raises(SchemaNotSupportedError) as refused:
            await writer.prepare(table)
        reason = refused.value.message
        assert "column price is DECIMAL(10,2)" in reason and "DECIMAL" in reason.split(":", 1)[1]
        path = Path(local_stack["data_dir"], "tables", *table.delta_table.split("."))
        assert DeltaTable(str(path)).to_pyarrow_table().num_rows == 0  # nothing written
        return
    batch_id = new_batch_id()
    values = [
        decimal.Decimal("12345678.91"),
        decimal.Decimal("-0.01"),
        None,
        decimal.Decimal("0.00"),
    ]
    data = pa.RecordBatch.from_pylist(
        [{"id": i, "price": v, "batch_id": batch_id, "source": name} for i, v in enumerate(values)],
        schema=schema.arrow(),
    )
    back = await write_and_read(local_stack, writer, table, data)
    assert [r["price"] for r in back] == values


def test_a_new_schema_on_the_same_table_is_checked_anew() -> None:
    """A workload registered again under the same name and tables with another schema gets
    new forms, not the ones cached for the old schema."""
    from dwbench.settings import Settings
    from writers.base import Targets
    from writers.zerobus import ZerobusWriter

    writer = ZerobusWriter(Targets(mode="local", settings=Settings(app_mode="local")))
    before = default_table("again", TableSchema.from_ddl("id BIGINT, price DOUBLE"))
    after = default_table("again", TableSchema.from_ddl("id BIGINT, price DECIMAL(10,2)"))
    writer.check(before)
    with pytest.raises(SchemaNotSupportedError, match="column price is DECIMAL"):
        writer.check(after)
