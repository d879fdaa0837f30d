"""SQL literals: the exact text of each form, and every form through the local SQL engine.

The engine tests insert rendered literals with the official SDK and read the Delta table
back with deltalake, an independent reader.
"""

from __future__ import annotations

import datetime as dt
import math
import secrets
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from tests.conftest import run_sql
from tests.writers.exact_values import exact
from workloads.schema import TableSchema
from workloads.types import parse_type, sql_string
from writers.sql_literals import cast_type, column_literals, literal, string_literal

UTC = dt.UTC


def t(text: str) -> Any:
    return parse_type(text)


# -- the text of each form -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "'plain'"),
        ("O'Brien", r"'O\'Brien'"),
        ('say "hi"', "'say \"hi\"'"),
        ("back\\slash", r"'back\\slash'"),
        ("a\nb\rc\td\0e", r"'a\nb\rc\td\u0000e'"),
        # NUL then digits: "\010" would read back as an octal escape (a backspace).
        ("\x0010", r"'\u000010'"),
        ("emoji 😀, ünïcødé, 中文", "'emoji 😀, ünïcødé, 中文'"),
        ("", "''"),
        ("x'); DROP TABLE t; --", r"'x\'); DROP TABLE t; --'"),
        ("\\'", r"'\\\''"),  # a backslash then a quote: neither ends the literal
        # Spark substitutes ${...} in the statement text; $\{ reads back as ${.
        ("${env:HOME} and ${x}", r"'$\{env:HOME} and $\{x}'"),
        ("$ and { apart", "'$ and { apart'"),
    ],
)
def test_strings(value: str, expected: str) -> None:
    assert literal(value, t("STRING")) == expected


def test_string_literals_are_sql_string_unless_they_hold_a_variable_reference() -> None:
    corpus = ["", "a", "'", "\\", "\\\\'", "\n\r\t\0", "😀" * 3, "%_\\%", "$", "{", "}$"]
    corpus += ["".join(chr(c) for c in range(1, 200))]
    for text in corpus:
        assert string_literal(text) == sql_string(text)


@pytest.mark.parametrize(
    ("value", "type_text", "expected"),
    [
        (-128, "TINYINT", "-128"),
        (32767, "SMALLINT", "32767"),
        (-(2**31), "INT", "-2147483648"),
        (2**63 - 1, "BIGINT", "9223372036854775807"),
        (-(2**63), "BIGINT", "-9223372036854775808"),
        (0.1 + 0.2, "DOUBLE", "0.30000000000000004"),
        (1e300, "DOUBLE", "1e+300"),
        (5e-324, "DOUBLE", "5e-324"),
        (-1.5, "DOUBLE", "-1.5"),
        (0.0, "DOUBLE", "0.0"),
        (-0.0, "DOUBLE", "CAST('-0.0' AS DOUBLE)"),
        (math.nan, "DOUBLE", "CAST('NaN' AS DOUBLE)"),
        (math.inf, "DOUBLE", "CAST('Infinity' AS DOUBLE)"),
        (-math.inf, "DOUBLE", "CAST('-Infinity' AS DOUBLE)"),
        (math.nan, "FLOAT", "CAST('NaN' AS FLOAT)"),
        (math.inf, "FLOAT", "CAST('Infinity' AS FLOAT)"),
        (-math.inf, "FLOAT", "CAST('-Infinity' AS FLOAT)"),
        (-0.0, "FLOAT", "CAST('-0.0' AS FLOAT)"),
        (Decimal("12.30"), "DECIMAL(10,2)", "CAST('12.30' AS DECIMAL(10,2))"),
        (Decimal("-0.01"), "DECIMAL(3,2)", "CAST('-0.01' AS DECIMAL(3,2))"),
        (  # Arrow would write 1E-18; a plain digit string reads the same everywhere
            Decimal("0.000000000000000001"),
            "DECIMAL(38,18)",
            "CAST('0.000000000000000001' AS DECIMAL(38,18))",
        ),
        (
            Decimal("12345678901234567890"),
            "DECIMAL(38,0)",
            "CAST('12345678901234567890' AS DECIMAL(38,0))",
        ),
        (True, "BOOLEAN", "TRUE"),
        (False, "BOOLEAN", "FALSE"),
        (dt.date(2026, 1, 2), "DATE", "DATE'2026-01-02'"),
        (dt.date(1, 1, 1), "DATE", "DATE'0001-01-01'"),
        (dt.date(9999, 12, 31), "DATE", "DATE'9999-12-31'"),
        (
            dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
            "TIMESTAMP",
            "TIMESTAMP'2026-01-02 03:04:05.123456+00:00'",
        ),
        (  # another zone: the same instant, in UTC
            dt.datetime(2026, 1, 1, 13, 0, tzinfo=dt.timezone(dt.timedelta(hours=1))),
            "TIMESTAMP",
            "TIMESTAMP'2026-01-01 12:00:00.000000+00:00'",
        ),
        (
            dt.datetime(1, 1, 1, tzinfo=UTC),
            "TIMESTAMP",
            "TIMESTAMP'0001-01-01 00:00:00.000000+00:00'",
        ),
        (
            dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            "TIMESTAMP",
            "TIMESTAMP'9999-12-31 23:59:59.999999+00:00'",
        ),
        (
            dt.datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
            "TIMESTAMP",
            "TIMESTAMP'1969-12-31 23:59:59.000001+00:00'",
        ),
        (
            dt.datetime(2026, 1, 2, 3, 4, 5, 123456),
            "TIMESTAMP_NTZ",
            "TIMESTAMP_NTZ'2026-01-02 03:04:05.123456'",
        ),
        (dt.datetime(1, 1, 1), "TIMESTAMP_NTZ", "TIMESTAMP_NTZ'0001-01-01 00:00:00.000000'"),
        (b"\n\xff", "BINARY", "X'0aff'"),
        (b"", "BINARY", "X''"),
        ('{"a": [1, "it\'s"]}', "VARIANT", r"""PARSE_JSON('{"a": [1, "it\'s"]}')"""),
        (None, "STRING", "NULL"),
        (None, "ARRAY<INT>", "NULL"),
        (None, "STRUCT<a: INT>", "NULL"),
    ],
)
def test_primitives(value: Any, type_text: str, expected: str) -> None:
    assert literal(value, t(type_text)) == expected


def test_a_float32_is_rendered_as_its_exact_value() -> None:
    for value in (0.1, 1.1, 3.4028234663852886e38, 1.401298464324817e-45, 123456.789):
        f32 = np.float32(value)
        text = literal(float(f32), t("FLOAT"))
        # Read as a double, or straight as a float32: the same bits either way.
        assert float(text) == float(f32)
        assert np.float32(text).tobytes() == f32.tobytes()
    assert literal(float(np.float32(0.1)), t("FLOAT")) == "0.10000000149011612"


def test_nested_values() -> None:
    assert literal([], t("ARRAY<STRING>")) == "CAST(ARRAY() AS ARRAY<STRING>)"
    assert literal(["a", None, "it's"], t("ARRAY<STRING>")) == (
        r"ARRAY('a', CAST(NULL AS STRING), 'it\'s')"
    )
    assert literal([], t("MAP<STRING, INT>")) == "CAST(MAP() AS MAP<STRING, INT>)"
    assert literal([("k", 1), ("n", None)], t("MAP<STRING, INT>")) == (
        "MAP('k', 1, 'n', CAST(NULL AS INT))"
    )
    route = t(
        "STRUCT<name: STRING NOT NULL COMMENT 'shown', "
        "stops: ARRAY<STRUCT<lat: DOUBLE, at: TIMESTAMP>>>"
    )
    value = {
        "name": "r'1",
        "stops": [
            {"lat": 1.5, "at": dt.datetime(2026, 1, 1, tzinfo=UTC)},
            {"lat": None, "at": None},
            None,
        ],
    }
    assert literal(value, route) == (
        r"NAMED_STRUCT('name', 'r\'1', 'stops', ARRAY("
        "NAMED_STRUCT('lat', 1.5, 'at', TIMESTAMP'2026-01-01 00:00:00.000000+00:00'), "
        "NAMED_STRUCT('lat', CAST(NULL AS DOUBLE), 'at', CAST(NULL AS TIMESTAMP)), "
        "CAST(NULL AS STRUCT<lat: DOUBLE, at: TIMESTAMP>)))"
    )
    assert literal({"name": None, "stops": []}, route) == (
        "NAMED_STRUCT('name', CAST(NULL AS STRING), "
        "'stops', CAST(ARRAY() AS ARRAY<STRUCT<lat: DOUBLE, at: TIMESTAMP>>))"
    )
    assert literal([[1, None], None, []], t("ARRAY<ARRAY<INT>>")) == (
        "ARRAY(ARRAY(1, CAST(NULL AS INT)), CAST(NULL AS ARRAY<INT>), CAST(ARRAY() AS ARRAY<INT>))"
    )
    decimals = t("MAP<INT, STRUCT<a: DECIMAL(5,1)>>")
    assert literal([(1, {"a": Decimal("1.5")}), (2, None)], decimals) == (
        "MAP(1, NAMED_STRUCT('a', CAST('1.5' AS DECIMAL(5,1))), "
        "2, CAST(NULL AS STRUCT<a: DECIMAL(5,1)>))"
    )
    odd = t("STRUCT<`a b`: INT, `x``y`: ARRAY<DATE>>")
    assert cast_type(odd) == "STRUCT<`a b`: INT, `x``y`: ARRAY<DATE>>"
    assert literal({"a b": 1, "x`y": None}, odd) == (
        "NAMED_STRUCT('a b', 1, 'x`y', CAST(NULL AS ARRAY<DATE>))"
    )


def test_cast_types_drop_comments_and_not_null() -> None:
    dtype = t("ARRAY<STRUCT<a: INT NOT NULL COMMENT 'c', m: MAP<STRING, DECIMAL(10,2)>>>")
    assert cast_type(dtype) == "ARRAY<STRUCT<a: INT, m: MAP<STRING, DECIMAL(10,2)>>>"


def test_slices_and_chunks_render_only_their_rows() -> None:
    lists = pa.array([[1], [2, 3], None, [], [4]], pa.list_(pa.int32())).slice(1, 3)
    assert column_literals(lists, t("ARRAY<INT>")) == [
        "ARRAY(2, 3)",
        "NULL",
        "CAST(ARRAY() AS ARRAY<INT>)",
    ]
    maps = pa.array(
        [[("a", 1)], [("b", 2), ("c", 3)], None, [("d", 4)]], pa.map_(pa.string(), pa.int32())
    ).slice(1)
    assert column_literals(maps, t("MAP<STRING,INT>")) == [
        "MAP('b', 2, 'c', 3)",
        "NULL",
        "MAP('d', 4)",
    ]
    structs = pa.array([{"a": 1}, None, {"a": None}]).slice(1)
    assert column_literals(structs, t("STRUCT<a: BIGINT>")) == [
        "NULL",
        "NAMED_STRUCT('a', CAST(NULL AS BIGINT))",
    ]
    chunked = pa.chunked_array([pa.array(["a"]), pa.array([None, "b"])])
    assert column_literals(chunked, t("STRING")) == ["'a'", "NULL", "'b'"]


# -- every form through the local SQL engine -----------------------------------------------

FORMS_DDL = """
id INT NOT NULL, ti TINYINT, si SMALLINT, i INT, bi BIGINT, f FLOAT, d DOUBLE, s STRING,
b BOOLEAN, bin BINARY, dd DATE, ts TIMESTAMP, ntz TIMESTAMP_NTZ, dec DECIMAL(10,2),
dec38 DECIMAL(38,18), tags ARRAY<STRING>, counts MAP<STRING,INT>,
route STRUCT<name: STRING, stops: ARRAY<STRUCT<lat: DOUBLE, lon: DOUBLE, at: TIMESTAMP>>>,
nested ARRAY<ARRAY<INT>>, by_key MAP<INT, STRUCT<a: DECIMAL(5,1)>>
"""
FORMS = TableSchema.from_ddl(FORMS_DDL)
F32 = float(np.float32(1.1))
# (column, value): each inserted alone into a row of NULLs.
FORM_VALUES: list[tuple[str, Any]] = [
    ("ti", -128),
    ("ti", 127),
    ("si", -32768),
    ("i", 2**31 - 1),
    ("bi", -(2**63)),
    ("bi", 2**63 - 1),
    ("f", F32),
    ("f", float(np.float32(3.4028234663852886e38))),
    ("f", float(np.float32(1e-45))),
    ("f", math.nan),
    ("f", math.inf),
    ("f", -math.inf),
    ("f", -0.0),
    ("d", 0.1 + 0.2),
    ("d", 123456789012345.67),
    ("d", 1e16),
    ("d", 5e-324),
    ("d", 1.7976931348623157e308),
    ("d", -1.5),
    ("d", -0.0),
    ("d", math.nan),
    ("d", math.inf),
    ("d", -math.inf),
    ("s", "x'); DROP TABLE t; --"),
    ("s", "back\\slash, 'quotes' \"too\", \\' and \\\\"),
    ("s", "lines\nand\rtabs\tand nul\0"),
    ("s", "emoji 😀🚀, ünïcødé, 中文"),
    ("s", "${env:HOME} ${spark.app.name} $\\{x}"),
    ("s", "\\u0041 %_ \\%"),
    ("s", ""),
    ("b", True),
    ("b", False),
    ("bin", b""),
    ("bin", b"\x00\xff\n'"),
    ("dd", dt.date(1, 1, 1)),
    ("dd", dt.date(9999, 12, 31)),
    ("ts", dt.datetime(1, 1, 1, tzinfo=UTC)),
    ("ts", dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    ("ts", dt.datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC)),
    ("ntz", dt.datetime(1, 1, 1)),
    ("ntz", dt.datetime(9999, 12, 31, 23, 59, 59, 999999)),
    ("ntz", dt.datetime(2026, 1, 2, 3, 4, 5, 123456)),
    ("dec", Decimal("-99999999.99")),
    ("dec", Decimal("0.00")),
    ("dec38", Decimal("12345678901234567890.123456789012345678")),
    ("dec38", Decimal("0.000000000000000001")),
    ("tags", []),
    ("tags", ["a", None, "it's"]),
    ("counts", []),
    ("counts", [("k", 1), ("n", None)]),
    ("route", {"name": None, "stops": []}),
    (
        "route",
        {
            "name": "r",
            "stops": [{"lat": 1.5, "lon": None, "at": dt.datetime(2026, 1, 1, tzinfo=UTC)}, None],
        },
    ),
    ("nested", [[]]),
    ("nested", [[1, None], None, []]),
    ("by_key", [(1, {"a": Decimal("1.5")}), (2, None), (3, {"a": None})]),
    ("by_key", []),
]


def test_every_form_through_the_local_engine(local_stack: dict[str, Any]) -> None:
    name = f"forms_{secrets.token_hex(3)}"
    run_sql(local_stack, FORMS.delta_ddl(f"main.default.{name}"))
    arrow = FORMS.arrow()
    rows = []
    for index, (column, value) in enumerate(FORM_VALUES):
        row = dict.fromkeys(FORMS.names)
        row.update(id=index, **{column: value})
        rows.append(row)
    batch = pa.RecordBatch.from_pylist(rows, schema=arrow)
    literals = [column_literals(batch.column(c.name), c.type) for c in FORMS.columns]
    values = ", ".join("(" + ", ".join(row) + ")" for row in zip(*literals, strict=True))
    run_sql(local_stack, f"INSERT INTO main.default.{name} VALUES {values}")

    stored = DeltaTable(f"{local_stack['data_dir']}/tables/main/default/{name}")
    got = sorted(stored.to_pyarrow_table().to_pylist(), key=lambda r: r["id"])
    assert len(got) == len(FORM_VALUES)
    for row, (column, value) in zip(got, FORM_VALUES, strict=True):
        assert exact(row[column]) == exact(value), (column, value)
        assert all(v is None for k, v in row.items() if k not in ("id", column))


def test_an_injection_looking_string_is_stored_verbatim(local_stack: dict[str, Any]) -> None:
    name = f"main.default.inject_{secrets.token_hex(3)}"
    run_sql(local_stack, f"CREATE TABLE {name} (s STRING) USING DELTA")
    hostile = f"x'); DROP TABLE {name}; --"
    run_sql(local_stack, f"INSERT INTO {name} VALUES ({literal(hostile, t('STRING'))})")
    run_sql(local_stack, f"INSERT INTO {name} VALUES ({literal(hostile + chr(92), t('STRING'))})")
    path = f"{local_stack['data_dir']}/tables/{name.replace('.', '/')}"
    stored = DeltaTable(path).to_pyarrow_table().column("s").to_pylist()
    assert sorted(stored) == [hostile, hostile + "\\"]
    result = run_sql(local_stack, f"SELECT count(*) FROM {name}")
    assert result.result.data_array == [["2"]]
