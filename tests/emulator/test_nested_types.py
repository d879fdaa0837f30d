"""Nested and the other non-flat column types end to end, over real sockets with real clients.

One table of every shape (STRUCT with an ARRAY of STRUCTs, MAP, ARRAY, DECIMAL, TIMESTAMP_NTZ,
...) is written through the Zerobus SDK (proto, with the descriptor the SDK's generate_proto
derives from the table's Unity Catalog columns, and JSON) and through SQL INSERT literals,
then read back from the Delta files by an independent reader.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import secrets
from typing import Any

import pytest
from databricks.sdk.errors import NotFound
from databricks.sdk.service.sql import StatementState
from zerobus.sdk.shared import NonRetriableException, ZerobusException

from tests.conftest import run_sql, workspace_client
from tests.emulator.test_records import floats_as_hex, proto_expected
from tests.emulator.test_zerobus import INVALID_ARGUMENT, assert_invalid_argument
from tests.emulator.zerobus_support import (
    async_stream,
    generated_descriptor,
    nested_ddl,
    nested_row,
    nested_to_json,
    nested_to_proto,
    read_nested,
    sparse_row,
    table_path,
)


@pytest.fixture
def nested_table(local_stack: dict[str, Any]) -> str:
    name = f"main.default.nested_{secrets.token_hex(4)}"
    run_sql(local_stack, nested_ddl(name))
    return name


def uc_columns(endpoints: dict[str, Any], table: str) -> list[dict[str, Any]]:
    info = workspace_client(endpoints).tables.get(table)
    return [c.as_dict() for c in info.columns or []]


def test_unity_catalog_describes_the_table(local_stack, nested_table):
    w = workspace_client(local_stack)
    info = w.tables.get(nested_table)
    catalog, schema, name = nested_table.split(".")
    assert (info.catalog_name, info.schema_name, info.name, info.full_name) == (
        catalog,
        schema,
        name,
        nested_table,
    )
    assert (info.table_type.value, info.data_source_format.value) == ("MANAGED", "DELTA")
    columns = {c.name: c for c in info.columns}
    assert [c.name for c in info.columns] == [
        "id", "ts_ntz", "tags", "attrs", "route", "price", "d", "t", "b", "f", "small", "note",
    ]  # fmt: skip
    assert [c.position for c in info.columns] == list(range(12))
    assert [(c.type_text, c.type_name.value) for c in info.columns] == [
        ("bigint", "LONG"),
        ("timestamp_ntz", "TIMESTAMP_NTZ"),
        ("array<string>", "ARRAY"),
        ("map<string,int>", "MAP"),
        ("struct<name:string,stops:array<struct<lat:double,lon:double>>>", "STRUCT"),
        ("decimal(10,2)", "DECIMAL"),
        ("date", "DATE"),
        ("timestamp", "TIMESTAMP"),
        ("binary", "BINARY"),
        ("float", "FLOAT"),
        ("tinyint", "BYTE"),
        ("string", "STRING"),
    ]
    assert (columns["price"].type_precision, columns["price"].type_scale) == (10, 2)
    assert (columns["id"].nullable, columns["id"].comment) == (False, "the row's id")
    assert columns["tags"].nullable is True
    assert json.loads(columns["route"].type_json) == {
        "name": "route",
        "type": {
            "type": "struct",
            "fields": [
                {"name": "name", "type": "string", "nullable": True, "metadata": {}},
                {
                    "name": "stops",
                    "type": {
                        "type": "array",
                        "elementType": {
                            "type": "struct",
                            "fields": [
                                {"name": "lat", "type": "double", "nullable": True, "metadata": {}},
                                {"name": "lon", "type": "double", "nullable": True, "metadata": {}},
                            ],
                        },
                        "containsNull": True,
                    },
                    "nullable": True,
                    "metadata": {},
                },
            ],
        },
        "nullable": True,
        "metadata": {},
    }
    assert json.loads(columns["attrs"].type_json)["type"] == {
        "type": "map",
        "keyType": "string",
        "valueType": "integer",
        "valueContainsNull": True,
    }
    listed = w.tables.list(catalog_name=catalog, schema_name=schema)
    assert nested_table in [t.full_name for t in listed]
    assert w.tables.exists(nested_table).table_exists is True
    with pytest.raises(NotFound) as err:
        w.tables.get(f"{catalog}.{schema}.no_such_table")
    assert err.value.error_code == "TABLE_DOES_NOT_EXIST"
    assert w.tables.exists(f"{catalog}.{schema}.no_such_table").table_exists is False


async def test_proto_records_land_exactly(local_stack, nested_table):
    # The descriptor a Zerobus user would generate from the table: DECIMAL has no proto form,
    # so the price column is left out (and stays NULL).
    columns = [c for c in uc_columns(local_stack, nested_table) if c["type_name"] != "DECIMAL"]
    descriptor = generated_descriptor(columns)
    rows = [nested_row(i) for i in range(5)] + [sparse_row(100)]
    stream = await async_stream(local_stack, nested_table, descriptor=descriptor)
    await stream.ingest_records_offset([nested_to_proto(r, descriptor) for r in rows])
    await stream.flush()
    await stream.close()
    stored = [dict(r, attrs=dict(r["attrs"])) for r in read_nested(local_stack, nested_table)]
    assert floats_as_hex(stored) == floats_as_hex([proto_expected(r) for r in rows])


async def test_json_records_land_exactly(local_stack, nested_table):
    rows = [nested_row(i) for i in range(5)] + [sparse_row(100)]
    stream = await async_stream(local_stack, nested_table, descriptor=None)
    await stream.ingest_records_offset([nested_to_json(r) for r in rows])
    await stream.flush()
    await stream.close()
    assert floats_as_hex(read_nested(local_stack, nested_table)) == floats_as_hex(rows)


async def test_json_with_a_wrong_nested_type_writes_nothing(local_stack, nested_table):
    stream = await async_stream(local_stack, nested_table, descriptor=None)
    bad = json.loads(nested_to_json(nested_row(1)))
    bad["route"]["stops"][2]["lat"] = "x"
    with pytest.raises(ZerobusException) as err:
        await stream.ingest_records_offset([nested_to_json(nested_row(0)), json.dumps(bad)])
        await stream.flush()
    assert_invalid_argument(
        err.value, "offset 0: record 1: field 'route.stops[2].lat': expected DOUBLE, got str 'x'"
    )
    assert read_nested(local_stack, nested_table) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c | {"type_text": c["type_text"].replace("lat:double", "lat:float")},
            "field route.stops.lat has proto type float, but column route.stops.lat is DOUBLE",
        ),
        (
            lambda c: c | {"type_text": c["type_text"].replace("array<struct", "struct")[:-1]},
            "field route.stops is not repeated (message Stops), but column route.stops is "
            "ARRAY<STRUCT<lat: DOUBLE, lon: DOUBLE>>",
        ),
    ],
    ids=["wrong-leaf-type", "struct-for-array"],
)
async def test_descriptor_with_a_wrong_nested_type_is_refused(
    local_stack, nested_table, change, message
):
    columns = [c for c in uc_columns(local_stack, nested_table) if c["type_name"] != "DECIMAL"]
    columns = [change(c) if c["name"] == "route" else c for c in columns]
    with pytest.raises(NonRetriableException) as err:
        await async_stream(local_stack, nested_table, descriptor=generated_descriptor(columns))
    assert INVALID_ARGUMENT in str(err.value)
    assert message in str(err.value)


async def test_descriptor_that_fills_a_decimal_is_refused(local_stack, nested_table):
    columns = uc_columns(local_stack, nested_table)
    # generate_proto maps no DECIMAL; a hand-made descriptor that sends one as a string:
    columns = [c | {"type_text": "string"} if c["name"] == "price" else c for c in columns]
    with pytest.raises(NonRetriableException) as err:
        await async_stream(local_stack, nested_table, descriptor=generated_descriptor(columns))
    assert INVALID_ARGUMENT in str(err.value)
    assert "field price fills column price, which is DECIMAL(10,2): DECIMAL has no proto" in str(
        err.value
    )


# The literal forms of the SQL writer: every type, nested ones built with ARRAY, MAP and
# NAMED_STRUCT, empty ones typed with CAST, strings with backslash escapes.
SQL_ROWS = r"""
(1, TIMESTAMP_NTZ'2026-01-02 03:04:05.123457', ARRAY('a', 't1', 'é😀 \'q\' \\ \n'),
 MAP('x', 1, 'min', -2147483648),
 NAMED_STRUCT('name', 'route 1', 'stops', ARRAY(
   NAMED_STRUCT('lat', 53.52, 'lon', 13.405),
   NAMED_STRUCT('lat', 0.30000000000000004, 'lon', -0.0),
   NAMED_STRUCT('lat', 5e-324, 'lon', NULL))),
 CAST('20.99' AS DECIMAL(10,2)), DATE'2026-01-03', TIMESTAMP'2026-01-02 03:04:05.123456+00:00',
 X'00ff01', 1.25, -127, NULL),
(2, NULL, CAST(ARRAY() AS ARRAY<STRING>), CAST(MAP() AS MAP<STRING,INT>),
 NAMED_STRUCT('name', NULL, 'stops', CAST(ARRAY() AS ARRAY<STRUCT<lat: DOUBLE, lon: DOUBLE>>)),
 -99999999.99, NULL, NULL, NULL, CAST('-Infinity' AS FLOAT), NULL, 'tab\there\r\u0000'),
(3, NULL, ARRAY(NULL), NULL,
 NAMED_STRUCT('name', 'nan', 'stops', ARRAY(NAMED_STRUCT('lat', CAST('NaN' AS DOUBLE),
   'lon', CAST('Infinity' AS DOUBLE)), NULL)),
 0.5, NULL, NULL, NULL, 3.4028234663852886e38, 127, '')
"""


def test_sql_insert_literals_land_exactly_and_select_renders_them(local_stack, nested_table):
    run_sql(local_stack, f"INSERT INTO {nested_table} VALUES {SQL_ROWS}")
    one, two, three = read_nested(local_stack, nested_table)
    assert floats_as_hex(one) == floats_as_hex(nested_row(1))
    assert two == {
        "id": 2,
        "ts_ntz": None,
        "tags": [],
        "attrs": [],
        "route": {"name": None, "stops": []},
        "price": decimal.Decimal("-99999999.99"),
        "d": None,
        "t": None,
        "b": None,
        "f": -math.inf,
        "small": None,
        "note": "tab\there\r\x00",
    }
    assert three["tags"] == [None] and three["attrs"] is None
    stop, missing = three["route"]["stops"]
    assert math.isnan(stop["lat"]) and stop["lon"] == math.inf and missing is None
    assert (three["price"], three["small"]) == (decimal.Decimal("0.50"), 127)
    assert three["f"] == 3.4028234663852886e38  # the largest FLOAT

    resp = run_sql(local_stack, f"SELECT * FROM {nested_table} ORDER BY id")
    columns = resp.manifest.schema.columns
    assert [(c.type_name.value, c.type_text) for c in columns][:6] == [
        ("LONG", "BIGINT"),
        ("TIMESTAMP", "TIMESTAMP_NTZ"),  # the Statement API has no TIMESTAMP_NTZ type name
        ("ARRAY", "ARRAY<STRING>"),
        ("MAP", "MAP<STRING, INT>"),
        ("STRUCT", "STRUCT<name: STRING, stops: ARRAY<STRUCT<lat: DOUBLE, lon: DOUBLE>>>"),
        ("DECIMAL", "DECIMAL(10,2)"),
    ]
    first, second, third = resp.result.data_array
    assert first == [
        "1",
        "2026-01-02T03:04:05.123457",
        '["a","t1","é😀 \'q\' \\\\ \\n"]',
        '{"x":1,"min":-2147483648}',
        '{"name":"route 1","stops":[{"lat":53.52,"lon":13.405},'
        '{"lat":0.30000000000000004,"lon":-0.0},{"lat":5.0E-324,"lon":null}]}',
        "20.99",
        "2026-01-03",
        "2026-01-02T03:04:05.123456Z",
        "AP8B",
        "1.25",
        "-127",
        None,
    ]
    assert second[2:5] == ["[]", "{}", '{"name":null,"stops":[]}']
    assert third[2:5] == [
        "[null]",
        None,
        '{"name":"nan","stops":[{"lat":"NaN","lon":"Infinity"},null]}',
    ]
    assert json.loads(first[4])["stops"][1]["lat"] == 0.1 + 0.2


def test_sql_with_parameters_fills_a_nested_table(local_stack, nested_table):
    from databricks.sdk.service.sql import StatementParameterListItem as P

    run_sql(
        local_stack,
        f"INSERT INTO {nested_table} (id, price, ts_ntz, tags) "
        "VALUES (:id, :price, :ntz, ARRAY(:tag))",
        parameters=[
            P(name="id", value="7", type="BIGINT"),
            P(name="price", value="12.345", type="DECIMAL(10,3)"),
            P(name="ntz", value="2026-01-02 03:04:05.000001", type="TIMESTAMP_NTZ"),
            P(name="tag", value="it's"),
        ],
    )
    (row,) = read_nested(local_stack, nested_table)
    assert (row["id"], row["price"], row["ts_ntz"], row["tags"]) == (
        7,
        decimal.Decimal("12.35"),  # DECIMAL(10,3) into DECIMAL(10,2): rounded, as a cast does
        dt.datetime(2026, 1, 2, 3, 4, 5, 1),
        ["it's"],
    )


@pytest.mark.parametrize(
    ("values", "error_class", "mentions"),
    [
        ("(1, 200)", "CAST_OVERFLOW_IN_TABLE_INSERT", "`small`"),
        ("(1, CAST(300 AS TINYINT))", "CAST_OVERFLOW", "`small`"),
    ],
)
def test_sql_value_out_of_range_fails_and_writes_nothing(
    local_stack, nested_table, values, error_class, mentions
):
    w = workspace_client(local_stack)
    version_before = _version(local_stack, nested_table)
    resp = w.statement_execution.execute_statement(
        statement=f"INSERT INTO {nested_table} (id, small) VALUES (0, 1), {values}",
        warehouse_id=local_stack["warehouse_id"],
        wait_timeout="30s",
    )
    _assert_failed(resp, error_class, mentions)
    assert _version(local_stack, nested_table) == version_before


@pytest.mark.parametrize(
    ("column", "value", "error_class", "mentions"),
    [
        ("attrs", "MAP('a', 2147483648)", "CAST_OVERFLOW_IN_TABLE_INSERT", "`attrs['a']`"),
        ("price", "123456789.5", "CAST_OVERFLOW_IN_TABLE_INSERT", "`price`"),
        (
            "route",
            "NAMED_STRUCT('name', 'r', 'stops', ARRAY(NAMED_STRUCT('lat', 'x', 'lon', 1.0)))",
            "INCOMPATIBLE_DATA_FOR_TABLE.CANNOT_SAFELY_CAST",
            "`route.stops[0].lat`",
        ),
        ("route", "NAMED_STRUCT('name', 'r')", "INCOMPATIBLE_DATA_FOR_TABLE", "`route`"),
        ("attrs", "MAP('a', 1, 'a', 2)", "DUPLICATED_MAP_KEY", "`attrs`"),
        ("ts_ntz", "TIMESTAMP_NTZ'2026-13-01 00:00:00'", "CAST_INVALID_INPUT", "`ts_ntz`"),
    ],
)
def test_sql_bad_nested_value_fails_naming_the_column(
    local_stack, nested_table, column, value, error_class, mentions
):
    w = workspace_client(local_stack)
    resp = w.statement_execution.execute_statement(
        statement=f"INSERT INTO {nested_table} (id, {column}) VALUES (1, {value})",
        warehouse_id=local_stack["warehouse_id"],
        wait_timeout="30s",
    )
    _assert_failed(resp, error_class, mentions)
    assert read_nested(local_stack, nested_table) == []


def _assert_failed(resp: Any, error_class: str, mentions: str) -> None:
    assert resp.status.state == StatementState.FAILED, resp.status
    message = resp.status.error.message
    assert message.startswith(f"[{error_class}"), message
    assert mentions in message, message


def _version(endpoints: dict[str, Any], table: str) -> int:
    from deltalake import DeltaTable

    return DeltaTable(str(table_path(endpoints, table))).version()


def test_variant_columns_are_refused(local_stack):
    w = workspace_client(local_stack)
    resp = w.statement_execution.execute_statement(
        statement="CREATE TABLE main.default.with_variant (id BIGINT, v VARIANT)",
        warehouse_id=local_stack["warehouse_id"],
        wait_timeout="30s",
    )
    _assert_failed(resp, "UNSUPPORTED_DATATYPE", "VARIANT, which is not supported by the local")
    assert "`v`" in resp.status.error.message
