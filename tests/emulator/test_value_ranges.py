"""`check_batch`: what Arrow holds and a Databricks table cannot, found in nested values too,
with the record and the path to the value named."""

from __future__ import annotations

import datetime as dt
import decimal

import pyarrow as pa
import pytest

from emulator.records import JsonRecordDecoder
from emulator.schema import TableSchema
from emulator.value_ranges import MAX_DAYS, MAX_MICROS, MIN_DAYS, MIN_MICROS, check_batch

SCHEMA = TableSchema.of(
    ("id", "BIGINT", False),
    ("d", "DATE"),
    ("t", "TIMESTAMP_NTZ"),
    ("price", "DECIMAL(5,2)"),
    ("days", "ARRAY<DATE>"),
    ("spans", "MAP<STRING, ARRAY<TIMESTAMP>>"),
    ("route", "STRUCT<name: STRING NOT NULL, stops: ARRAY<STRUCT<at: DATE>>>"),
)


def batch(**columns: pa.Array) -> pa.RecordBatch:
    arrow = SCHEMA.to_arrow()
    count = len(next(iter(columns.values())))
    arrays = [
        columns.get(f.name, pa.nulls(count, f.type)) if f.name != "id" else pa.array(range(count))
        for f in arrow
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=arrow)


def test_the_bounds_are_years_1_and_9999():
    assert dt.date(1970, 1, 1) + dt.timedelta(days=MIN_DAYS) == dt.date(1, 1, 1)
    assert dt.date(1970, 1, 1) + dt.timedelta(days=MAX_DAYS) == dt.date(9999, 12, 31)
    epoch = dt.datetime(1970, 1, 1)
    assert epoch + dt.timedelta(microseconds=MIN_MICROS) == dt.datetime(1, 1, 1)
    assert epoch + dt.timedelta(microseconds=MAX_MICROS) == dt.datetime.max
    edges = pa.array([MIN_DAYS, MAX_DAYS], pa.int32()).view(pa.date32())
    check_batch(batch(d=edges), SCHEMA)  # the edges themselves fit


def raw(values: list[int], arrow_type: pa.DataType) -> pa.Array:
    width = pa.int32() if arrow_type == pa.date32() else pa.int64()
    return pa.array(values, width).view(arrow_type)


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (
            {"d": raw([0, 2**31 - 1], pa.date32())},
            "record 1: field 'd': 2147483647 days since 1970-01-01 is outside the range of "
            "DATE (0001-01-01 to 9999-12-31)",
        ),
        (
            {"t": raw([MIN_MICROS - 1], pa.timestamp("us"))},
            f"record 0: field 't': {MIN_MICROS - 1} µs since 1970-01-01 is outside the range "
            "of TIMESTAMP_NTZ (0001-01-01 00:00:00 to 9999-12-31 23:59:59.999999)",
        ),
        (
            {
                "price": pa.array([decimal.Decimal("1.00"), decimal.Decimal("1000.00")]).cast(
                    pa.decimal128(7, 2)
                )
            },
            None,  # cast to the column type below, bypassing Arrow's precision check
        ),
        (
            {"days": pa.array([[], None, [dt.date(2026, 1, 1), None]], pa.list_(pa.date32()))},
            None,
        ),
    ],
)
def test_top_level_values(columns, message):
    if "price" in columns:
        wide = columns["price"]
        columns = {"price": wide.view(pa.decimal128(5, 2))}
        message = "record 1: field 'price': 1000.00 does not fit DECIMAL(5,2)"
    if message is None:
        check_batch(batch(**columns), SCHEMA)
        return
    with pytest.raises(Exception) as err:
        check_batch(batch(**columns), SCHEMA)
    assert str(err.value) == message


def test_nested_values_name_their_path():
    decoder = JsonRecordDecoder(SCHEMA)
    good = '{"id": 1, "days": ["2026-01-01"], "spans": {"a": [0]}}'
    cases = {
        '{"id": 1, "days": [0, 2932897]}': (
            "record 1: field 'days[1]': 2932897 days since 1970-01-01 is outside the range of "
            "DATE (0001-01-01 to 9999-12-31)"
        ),
        '{"id": 1, "spans": {"a": [0], "b": [1, 253402300800000000]}}': (
            "record 1: field 'spans['b'][1]': 253402300800000000 µs since 1970-01-01 is outside "
            "the range of TIMESTAMP (0001-01-01 00:00:00 to 9999-12-31 23:59:59.999999)"
        ),
        '{"id": 1, "route": {"name": "r", "stops": [{"at": 0}, {"at": -719163}]}}': (
            "record 1: field 'route.stops[1].at': -719163 days since 1970-01-01 is outside the "
            "range of DATE (0001-01-01 to 9999-12-31)"
        ),
        '{"id": 1, "t": "9999-12-31T23:59:59.999999"}': None,
    }
    for record, message in cases.items():
        if message is None:
            decoder.decode([good, record])
            continue
        with pytest.raises(Exception) as err:
            decoder.decode([good, record])
        assert str(err.value) == message


def test_arrow_checks_reach_values_json_cannot_carry():
    """An IPC batch may carry what no decoder makes: a map value beyond 9999 behind a key,
    a null in a NOT NULL struct field (only where the struct is present)."""
    micros = pa.array(
        [[("k", [0])], [("late", [MAX_MICROS + 1])]], pa.map_(pa.string(), pa.list_(pa.int64()))
    )
    stamps = micros.items.view(pa.list_(pa.field("element", pa.timestamp("us", tz="UTC"))))
    as_ts = pa.MapArray.from_arrays(micros.offsets, micros.keys, stamps)
    with pytest.raises(Exception) as err:
        check_batch(batch(spans=as_ts.cast(SCHEMA.to_arrow().field("spans").type)), SCHEMA)
    assert str(err.value).startswith("record 1: field 'spans['late'][0]': ")

    route_type = SCHEMA.to_arrow().field("route").type
    name = pa.array(["a", None, None], pa.string())
    stops = pa.nulls(3, route_type.field("stops").type)
    route = pa.StructArray.from_arrays(
        [name, stops], fields=list(route_type), mask=pa.array([False, True, False])
    )
    with pytest.raises(Exception) as err:
        check_batch(batch(route=route), SCHEMA)
    assert str(err.value) == "record 2: field 'route.name': the field is NOT NULL but has no value"


def test_every_integer_and_float_width_is_checked_where_decoded():
    from google.protobuf import descriptor_pb2

    from emulator.records import ProtoRecordDecoder

    fdp = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.DescriptorProto(name="R")
    proto.field.add(name="s", number=1, type=fdp.TYPE_INT32, label=fdp.LABEL_OPTIONAL)
    schema = TableSchema.of(("s", "SMALLINT"), ("f", "FLOAT"), ("t", "TINYINT"))
    decoder = ProtoRecordDecoder(schema, proto.SerializeToString())
    records = [decoder._cls(s=1).SerializeToString(), decoder._cls(s=40_000).SerializeToString()]
    with pytest.raises(Exception) as err:
        decoder.decode(records)
    assert str(err.value) == (
        "record 1: field 's': value does not fit SMALLINT: Integer value 40000 not in range: "
        "-32768 to 32767"
    )
    json_decoder = JsonRecordDecoder(schema)
    for record, message in (
        ('{"f": 1e39}', "record 1: field 'f': 1e+39 is out of range for FLOAT"),
        ('{"t": -129}', "record 1: field 't': -129 is out of range for TINYINT (-128 to 127)"),
    ):
        with pytest.raises(Exception) as err:
            json_decoder.decode(["{}", record])
        assert str(err.value) == message


def test_sql_refuses_a_double_past_float_range_from_a_query(tmp_path):
    from emulator.catalog import Catalog
    from emulator.sql_eval import Interrupt, SqlError, SqlEvaluator, StatementContext

    catalog = Catalog(tmp_path)
    catalog.create_table("main.default.t", TableSchema.of(("f", "FLOAT")))
    evaluator = SqlEvaluator(catalog)
    ctx = StatementContext("main", "default", None, None, 1 << 20)
    with pytest.raises(SqlError) as err:
        evaluator.prepare("INSERT INTO t SELECT 1e39", [], ctx, Interrupt())
    assert err.value.message == (
        '[CAST_OVERFLOW_IN_TABLE_INSERT] Cannot assign a value of "DOUBLE" type to the "FLOAT" '
        "type column `f` because it overflows. SQLSTATE: 22003"
    )
    infinite = evaluator.prepare(
        "INSERT INTO t SELECT CAST('Infinity' AS DOUBLE)", [], ctx, Interrupt()
    )
    assert infinite.batch.column(0).to_pylist() == [float("inf")]  # type: ignore[attr-defined]


def test_a_json_number_past_double_range_is_not_infinity():
    decoder = JsonRecordDecoder(TableSchema.of(("x", "DOUBLE"), ("m", "MAP<DOUBLE, INT>")))
    problem = 'a number is beyond the range of DOUBLE (infinity is written "Infinity")'
    for record, path in (
        ('{"x": 1e400}', "x"),
        ('{"x": -Infinity}', "x"),  # not JSON; Python's parser reads it as 1e400 does
        ('{"m": {"1e400": 1}}', "m['1e400']"),
    ):
        with pytest.raises(Exception) as err:
            decoder.decode([record])
        assert str(err.value) == f"record 0: field '{path}': {problem}"
    rows = decoder.decode(['{"x": "-Infinity", "m": {"Infinity": 1}}']).to_pylist()
    assert rows == [{"x": float("-inf"), "m": [(float("inf"), 1)]}]
