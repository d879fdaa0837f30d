"""Table schemas from DDL and JSON, and the forms derived from them."""

from __future__ import annotations

import pyarrow as pa
import pytest

from dwbench.errors import InvalidSchemaError
from workloads.schema import TableSchema
from workloads.types import (
    ArrayType,
    DecimalType,
    MapType,
    Primitive,
    StructField,
    StructType,
    parse_type,
)

DDL = """
-- a comment line
CREATE TABLE IF NOT EXISTS main.sales.orders (
  id BIGINT NOT NULL COMMENT 'the order\\'s id',
  placed_at TIMESTAMP_NTZ,
  total DECIMAL(10, 2) NOT NULL,
  tags ARRAY<STRING>,
  counts MAP<STRING, INT>,
  route STRUCT<name: STRING NOT NULL, stops: ARRAY<STRUCT<lat: DOUBLE, lon: DOUBLE>>>,
  `odd name` VARCHAR(20)
) USING DELTA TBLPROPERTIES ('delta.appendOnly' = 'true')
"""


def test_ddl_with_every_shape_parses() -> None:
    schema = TableSchema.from_ddl(DDL)
    assert schema.names == ["id", "placed_at", "total", "tags", "counts", "route", "odd name"]
    id_, placed, total, tags, counts, route, odd = schema.columns
    assert (id_.type, id_.nullable, id_.comment) == (Primitive("BIGINT"), False, "the order's id")
    assert placed.type == Primitive("TIMESTAMP_NTZ")
    assert total.type == DecimalType(10, 2) and not total.nullable
    assert tags.type == ArrayType(Primitive("STRING"))
    assert counts.type == MapType(Primitive("STRING"), Primitive("INT"))
    assert route.type == StructType(
        (
            StructField("name", Primitive("STRING"), nullable=False),
            StructField(
                "stops",
                ArrayType(
                    StructType(
                        (
                            StructField("lat", Primitive("DOUBLE")),
                            StructField("lon", Primitive("DOUBLE")),
                        )
                    )
                ),
            ),
        )
    )
    assert odd.type == Primitive("STRING")


def test_sql_text_round_trips_and_aliases_normalise() -> None:
    for text in (
        "array<struct<lat:double,lon:double>>",
        "MAP<STRING,ARRAY<BIGINT>>",
        "decimal(38,38)",
    ):
        parsed = parse_type(text)
        assert parse_type(parsed.sql()) == parsed
    assert parse_type("integer") == Primitive("INT")
    assert parse_type("Long") == Primitive("BIGINT")
    assert parse_type("timestamp_ltz") == Primitive("TIMESTAMP")
    assert parse_type("decimal") == DecimalType(10, 0)
    assert parse_type("numeric(5)") == DecimalType(5, 0)


def test_derived_forms() -> None:
    schema = TableSchema.from_ddl(DDL)
    arrow = schema.arrow()
    assert arrow.field("total").type == pa.decimal128(10, 2)
    assert arrow.field("placed_at").type == pa.timestamp("us")
    assert arrow.field("id").nullable is False
    assert isinstance(arrow.field("counts").type, pa.MapType)
    delta = schema.delta_ddl("main.sales.orders")
    assert delta.startswith("CREATE TABLE IF NOT EXISTS `main`.`sales`.`orders` (")
    assert (
        "route STRUCT<name: STRING NOT NULL, stops: ARRAY<STRUCT<lat: DOUBLE, lon: DOUBLE>>>"
        in delta
    )
    assert "`odd name` STRING" in delta and "COMMENT 'the order\\'s id'" in delta
    assert TableSchema.from_ddl(delta) == schema  # the derived DDL reads back the same
    pg = schema.postgres_ddl("public.orders", primary_key="id")
    assert '"total" numeric(10,2) NOT NULL' in pg and '"route" jsonb' in pg
    assert '"placed_at" timestamp,' in pg and 'PRIMARY KEY ("id")' in pg
    form = schema.json_schema()
    assert form["required"] == ["id", "total"]
    assert form["properties"]["id"] == {
        "type": "integer",
        "minimum": -(2**63),
        "maximum": 2**63 - 1,
        "description": "the order's id",
    }


def test_json_column_lists_with_generator_specs() -> None:
    schema = TableSchema.from_text(
        '{"columns": [{"name": "city", "type": "string", "nullable": false,'
        ' "generator": {"values": ["Oslo", "Lima"]}}, {"name": "n", "type": "int"}]}'
    )
    assert schema.columns[0].generator is not None
    assert schema.columns[0].generator.values == ["Oslo", "Lima"]
    assert schema.columns[1].type == Primitive("INT")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a FOO", "column a: unknown column type 'FOO'"),
        ("a INT, A STRING", "duplicate column 'A'"),
        ("", "expected a column name"),
        ("CREATE TABLE t ()", "a table needs at least one column"),
        ("a DECIMAL(39,2)", "column a: DECIMAL(39,2): precision must be 1 to 38"),
        ("a DECIMAL(5,6)", "scale must be 0 to the precision (5)"),
        ("a ARRAY<INT", "column a: expected '>' to close ARRAY<"),
        ("a MAP<ARRAY<INT>, INT>", "MAP keys must be a primitive type"),
        ("s STRUCT<x: INT, X: INT>", "duplicate STRUCT field 'X'"),
        ("a INT PRIMARY KEY", "expected ',' or the end of the column list after column a"),
        ("a INT, CONSTRAINT pk PRIMARY KEY (a)", "table constraints are not supported"),
        ('[{"name": "a"}]', 'column a: "type" must be a string'),
        (
            '[{"name": "a", "type": "int", "generator": {"null_fraction": 2}}]',
            "generator: null_fraction",
        ),
        ("a " + "ARRAY<" * 40 + "INT" + ">" * 40, "nest deeper than 32 levels"),
    ],
)
def test_bad_schemas_say_what_to_fix(text: str, message: str) -> None:
    with pytest.raises(InvalidSchemaError) as caught:
        TableSchema.from_text(text)
    assert message in caught.value.message
