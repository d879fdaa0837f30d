"""Column types: their SQL, Unity Catalog, Arrow and Delta forms, and a round trip through Delta."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from emulator.catalog import Catalog
from emulator.errors import SchemaMismatchError
from emulator.schema import (
    ArrayType,
    Column,
    DecimalType,
    MapType,
    PrimitiveType,
    StructType,
    TableSchema,
    parse_type,
)

EVERY_TYPE = TableSchema.of(
    ("id", "BIGINT", False),
    ("i", "INT"),
    ("sm", "SMALLINT"),
    ("ti", "TINYINT"),
    ("f", "FLOAT"),
    ("d", "DOUBLE"),
    ("price", "DECIMAL(10,2)"),
    ("wide", "DECIMAL(38,38)"),
    ("plain_decimal", "DECIMAL"),
    ("s", "STRING"),
    ("v", "VARCHAR(10)"),
    ("b", "BOOLEAN"),
    ("bin", "BINARY"),
    ("day", "DATE"),
    ("ts", "TIMESTAMP"),
    ("ts_ltz", "TIMESTAMP_LTZ"),
    ("ts_ntz", "TIMESTAMP_NTZ"),
    ("tags", "ARRAY<STRING>"),
    ("matrix", "ARRAY<ARRAY<INT>>"),
    ("attrs", "MAP<STRING, INT>"),
    ("by_day", "MAP<DATE, ARRAY<DECIMAL(5,1)>>"),
    (
        "route",
        "STRUCT<name: STRING NOT NULL COMMENT 'the route\\'s name', "
        "stops: ARRAY<STRUCT<lat: DOUBLE, lon: DOUBLE, at: TIMESTAMP_NTZ>>, "
        "meta: MAP<STRING, STRUCT<x: DECIMAL(4,2)>>>",
    ),
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bigint", PrimitiveType("BIGINT")),
        ("LONG", PrimitiveType("BIGINT")),
        ("integer", PrimitiveType("INT")),
        ("short", PrimitiveType("SMALLINT")),
        ("byte", PrimitiveType("TINYINT")),
        ("real", PrimitiveType("FLOAT")),
        ("varchar(20)", PrimitiveType("STRING")),
        ("CHAR(3)", PrimitiveType("STRING")),
        ("TEXT", PrimitiveType("STRING")),
        ("TIMESTAMP_LTZ", PrimitiveType("TIMESTAMP")),
        ("timestamp_ntz", PrimitiveType("TIMESTAMP_NTZ")),
        ("DECIMAL", DecimalType(10, 0)),
        ("DEC(5)", DecimalType(5, 0)),
        ("NUMERIC(7,3)", DecimalType(7, 3)),
        ("array<struct<lat:double,lon:double>>", None),
        ("MAP<STRING,INT>", MapType(PrimitiveType("STRING"), PrimitiveType("INT"))),
    ],
)
def test_type_names_and_aliases(text, expected):
    parsed = parse_type(text)
    if expected is None:
        element = StructType(
            (Column("lat", PrimitiveType("DOUBLE")), Column("lon", PrimitiveType("DOUBLE")))
        )
        expected = ArrayType(element)
    assert parsed == expected


def test_the_forms_of_a_nested_column():
    route = EVERY_TYPE.column("route")
    assert route is not None
    assert route.type.sql() == (
        "STRUCT<name: STRING NOT NULL COMMENT 'the route\\'s name', "
        "stops: ARRAY<STRUCT<lat: DOUBLE, lon: DOUBLE, at: TIMESTAMP_NTZ>>, "
        "meta: MAP<STRING, STRUCT<x: DECIMAL(4,2)>>>"
    )
    assert route.type.catalog_string() == (
        "struct<name:string,stops:array<struct<lat:double,lon:double,at:timestamp_ntz>>,"
        "meta:map<string,struct<x:decimal(4,2)>>>"
    )
    assert route.type.type_name == "STRUCT"
    assert route.spark_json()["type"]["fields"][0] == {
        "name": "name",
        "type": "string",
        "nullable": False,
        "metadata": {"comment": "the route's name"},
    }
    # The SQL form reads back as the same type.
    assert parse_type(route.type.sql()) == route.type
    assert parse_type(route.type.catalog_string()) != route.type  # no NOT NULL, no COMMENT


def test_uc_type_names():
    names = {c.name: c.type.type_name for c in EVERY_TYPE.columns}
    assert names == {
        "id": "LONG", "i": "INT", "sm": "SHORT", "ti": "BYTE", "f": "FLOAT", "d": "DOUBLE",
        "price": "DECIMAL", "wide": "DECIMAL", "plain_decimal": "DECIMAL", "s": "STRING",
        "v": "STRING", "b": "BOOLEAN", "bin": "BINARY", "day": "DATE", "ts": "TIMESTAMP",
        "ts_ltz": "TIMESTAMP", "ts_ntz": "TIMESTAMP_NTZ", "tags": "ARRAY", "matrix": "ARRAY",
        "attrs": "MAP", "by_day": "MAP", "route": "STRUCT",
    }  # fmt: skip


def test_arrow_forms_are_what_deltalake_reads_back():
    arrow = EVERY_TYPE.to_arrow()
    # pyarrow's equality ignores list item names: check the names themselves as well.
    from_delta = pa.schema(EVERY_TYPE.to_delta().to_arrow())
    assert arrow == from_delta
    assert _same_names(arrow, from_delta)
    assert arrow.field("tags").type.value_field == pa.field("element", pa.string())
    attrs = arrow.field("attrs").type
    assert (attrs.key_field, attrs.item_field) == (
        pa.field("key", pa.string(), nullable=False),
        pa.field("value", pa.int32()),
    )
    assert arrow.field("ts").type == pa.timestamp("us", tz="UTC")
    assert arrow.field("ts_ntz").type == pa.timestamp("us")
    assert arrow.field("price").type == pa.decimal128(10, 2)
    assert not arrow.field("id").nullable


def _names(t: pa.DataType) -> list[str]:
    out: list[str] = []
    for i in range(t.num_fields):
        f = t.field(i)
        out += [f.name, str(f.nullable), *_names(f.type)]
    return out


def _same_names(a: pa.Schema, b: pa.Schema) -> bool:
    return all(
        (fa.name, fa.nullable, _names(fa.type)) == (fb.name, fb.nullable, _names(fb.type))
        for fa, fb in zip(a, b, strict=True)
    )


ROW = {
    "id": 1,
    "i": -(2**31),
    "sm": 2**15 - 1,
    "ti": -128,
    "f": 0.25,
    "d": 0.1 + 0.2,
    "price": decimal.Decimal("-12345678.99"),
    "wide": decimal.Decimal("0." + "9" * 38),
    "plain_decimal": decimal.Decimal("9999999999"),
    "s": "é😀\n'\\",
    "v": "x",
    "b": True,
    "bin": b"\x00\xff",
    "day": dt.date(2026, 1, 2),
    "ts": dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC),
    "ts_ltz": dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
    "ts_ntz": dt.datetime(2026, 1, 2, 3, 4, 5, 123456),
    "tags": ["a", None, ""],
    "matrix": [[1, 2], [], None, [None]],
    "attrs": [("a", 1), ("b", None)],
    "by_day": [(dt.date(2026, 1, 1), [decimal.Decimal("1.5"), None])],
    "route": {
        "name": "r1",
        "stops": [{"lat": 52.1, "lon": -0.0, "at": dt.datetime(2026, 1, 1)}, None],
        "meta": [("k", {"x": decimal.Decimal("-0.01")})],
    },
}


def test_every_type_round_trips_through_delta(tmp_path: Path):
    async def write() -> None:
        catalog = Catalog(tmp_path)
        catalog.create_table("main.default.every", EVERY_TYPE)
        empty = {k: None for k in ROW} | {"id": 2}
        batch = pa.RecordBatch.from_pylist([ROW, empty], schema=EVERY_TYPE.to_arrow())
        await catalog.writer("main.default.every").append(batch)
        await catalog.close()

    asyncio.run(write())
    table = DeltaTable(str(tmp_path / "tables" / "main" / "default" / "every"))
    data = table.to_pyarrow_table()
    assert data.schema == EVERY_TYPE.to_arrow()
    assert _same_names(data.schema, EVERY_TYPE.to_arrow())
    rows = sorted(data.to_pylist(), key=lambda r: r["id"])
    assert rows[0] == ROW
    assert rows[1] == {k: None for k in ROW} | {"id": 2}
    # The catalog reads the schema back from the Delta log after a restart.
    reopened = Catalog(tmp_path)
    assert reopened.get("main.default.every").schema == EVERY_TYPE
    assert reopened.get("main.default.every").schema.column("route").type.fields[0].comment == (
        "the route's name"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("VARIANT", "type VARIANT, which is not supported by the local stack"),
        ("INTERVAL DAY", "type INTERVAL DAY, which is not supported by the local stack"),
        ("ARRAY<VARIANT>", "type VARIANT, which is not supported by the local stack"),
        ("DECIMAL(39,2)", "DECIMAL(39,2) is out of range"),
        ("DECIMAL(5,6)", "DECIMAL(5,6) is out of range"),
        ("MAP<ARRAY<INT>, INT>", "MAP keys of type ARRAY<INT> are not supported"),
        ("no_such_type", "not supported by the local stack"),
    ],
)
def test_unsupported_types_are_refused(text, message):
    with pytest.raises(SchemaMismatchError) as err:
        parse_type(text)
    assert message in str(err.value)


def test_duplicate_names_are_refused():
    with pytest.raises(SchemaMismatchError, match="duplicate column A"):
        TableSchema.of(("a", "INT"), ("A", "INT"))
    with pytest.raises(SchemaMismatchError, match="duplicate field x"):
        parse_type("STRUCT<x: INT, x: STRING>")


def test_ddl_reads_back():
    again = TableSchema(
        tuple(
            Column(c.name, parse_type(c.type.sql()), c.nullable, c.comment)
            for c in EVERY_TYPE.columns
        )
    )
    assert again == EVERY_TYPE
    assert json.loads(json.dumps([c.spark_json() for c in EVERY_TYPE.columns]))
