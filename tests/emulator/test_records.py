"""Record decoding against a table schema: exact values, and clear errors for bad input."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math

import pytest
from google.protobuf import descriptor_pb2, message_factory

from emulator.errors import SchemaMismatchError
from emulator.records import FDP, JsonRecordDecoder, ProtoRecordDecoder
from emulator.schema import Column, TableSchema, parse_type
from emulator.unity_catalog import column_info
from proto import product_record_pb2
from tests.emulator.zerobus_support import (
    NESTED_COLUMNS,
    generated_descriptor,
    nested_row,
    nested_to_json,
    nested_to_proto,
    product,
    sparse_row,
    to_json,
    to_proto,
)

PRODUCTS = TableSchema.of(
    ("record_id", "STRING", False),
    ("product_id", "STRING", False),
    ("product_name", "STRING", False),
    ("product_price", "DOUBLE", False),
    ("category", "STRING", False),
    ("sale_start_date", "DATE"),
    ("sale_stop_date", "DATE"),
    ("processed_at", "TIMESTAMP"),
    ("batch_id", "STRING"),
    ("source", "STRING"),
    ("description", "STRING"),
)
DESCRIPTOR = product_record_pb2.ProductRecord.DESCRIPTOR


def proto_decoder() -> ProtoRecordDecoder:
    from google.protobuf import descriptor_pb2

    msg = descriptor_pb2.DescriptorProto()
    DESCRIPTOR.CopyToProto(msg)
    return ProtoRecordDecoder(PRODUCTS, msg.SerializeToString())


def test_proto_values_round_trip_exactly():
    rows = [product(i) for i in range(3)]
    batch = proto_decoder().decode([to_proto(r) for r in rows])
    assert batch.to_pylist() == rows


def test_json_values_round_trip_exactly():
    rows = [product(i) for i in range(3)]
    assert JsonRecordDecoder(PRODUCTS).decode([to_json(r) for r in rows]).to_pylist() == rows


def test_optional_fields_become_nulls():
    msg = product_record_pb2.ProductRecord(
        record_id="r", product_id="p", product_name="n", product_price=0.0, category="c"
    )
    (row,) = proto_decoder().decode([msg.SerializeToString()]).to_pylist()
    assert row["sale_start_date"] is None and row["processed_at"] is None
    assert row["product_price"] == 0.0


def test_json_accepts_iso_timestamps_as_utc():
    record = to_json(product(0)).replace(
        '"processed_at": 1763726400000000', '"processed_at": "2026-11-21T12:00:00"'
    )
    (row,) = JsonRecordDecoder(PRODUCTS).decode([record]).to_pylist()
    assert row["processed_at"] == dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xff\xff\xff", "record 0 is not a valid ProductRecord message"),
        (
            product_record_pb2.ProductRecord(record_id="r").SerializePartialToString(),
            "column product_id is NOT NULL but record 0 has no value for it",
        ),
        (
            to_proto(product(1)) + b"\xa0\x06\x01",  # field 100, varint: not in the descriptor
            "record 0 has fields that ProductRecord does not declare",
        ),
    ],
    ids=["garbage", "missing-required", "unknown-field"],
)
def test_bad_protobuf_is_rejected(payload, message):
    with pytest.raises(SchemaMismatchError) as err:
        proto_decoder().decode([payload])
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "record 0: field 'colour' is not a column of the table"),
        (
            {"product_price": True},
            "record 0: field 'product_price': expected DOUBLE, got bool True",
        ),
        ({"sale_start_date": "21/11/2026"}, "record 0: field 'sale_start_date': expected DATE"),
        ({"record_id": None}, "column record_id is NOT NULL but record 0 has no value for it"),
        (
            {"processed_at": 1.5},
            "record 0: field 'processed_at': expected TIMESTAMP, got float 1.5",
        ),
    ],
)
def test_bad_json_is_rejected(change, message):
    import json

    obj = json.loads(to_json(product(0)))
    obj.update(change)
    with pytest.raises(SchemaMismatchError) as err:
        JsonRecordDecoder(PRODUCTS).decode([json.dumps(obj)])
    assert str(err.value).startswith(message)


def test_json_that_is_not_an_object():
    with pytest.raises(SchemaMismatchError, match="record 1 is not a JSON object"):
        JsonRecordDecoder(PRODUCTS).decode([to_json(product(0)), "[1, 2]"])
    with pytest.raises(SchemaMismatchError, match="record 0 is not valid JSON"):
        JsonRecordDecoder(PRODUCTS).decode(["{"])


def test_integer_overflow_names_the_column():
    schema = TableSchema.of(("id", "STRING", False), ("small", "TINYINT"))
    with pytest.raises(SchemaMismatchError) as err:
        JsonRecordDecoder(schema).decode(['{"id": "a", "small": 300}'])
    assert err.value.column == "small"


# -- nested types -------------------------------------------------------------------------------

NESTED = TableSchema(
    tuple(
        Column(name, parse_type(text.split(" NOT NULL")[0]), " NOT NULL" not in text)
        for name, text in NESTED_COLUMNS
    )
)


def uc_columns(schema: TableSchema, skip: tuple[str, ...] = ("price",)) -> list[dict]:
    """The Unity Catalog columns of a schema, without those generate_proto cannot map."""
    return [column_info(c, i) for i, c in enumerate(schema.columns) if c.name not in skip]


def as_proto_proto(descriptor) -> bytes:
    msg = descriptor_pb2.DescriptorProto()
    descriptor.CopyToProto(msg)
    return msg.SerializeToString()


def floats_as_hex(value):
    """Values with every float replaced by its exact hex form, so -0.0 != 0.0 and NaN == NaN."""
    if isinstance(value, float):
        return value.hex()
    if isinstance(value, dict):
        return {k: floats_as_hex(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(floats_as_hex(v) for v in value)
    return value


def proto_expected(row: dict) -> dict:
    """What a proto record of `row` gives: no DECIMAL, and proto has no null ARRAY or MAP."""
    out = dict(row, price=None)
    out["tags"] = row["tags"] or []
    out["attrs"] = dict(row["attrs"] or [])
    return out


@pytest.mark.parametrize("package", [None, "my.pkg"], ids=["no-package", "package"])
def test_nested_proto_records_decode_exactly(package):
    descriptor = generated_descriptor(uc_columns(NESTED), package=package)
    decoder = ProtoRecordDecoder(NESTED, as_proto_proto(descriptor))
    rows = [nested_row(1), sparse_row(2), nested_row(3)]
    batch = decoder.decode([nested_to_proto(r, descriptor) for r in rows])
    assert batch.schema == NESTED.to_arrow()
    decoded = [dict(r, attrs=dict(r["attrs"])) for r in batch.to_pylist()]
    assert floats_as_hex(decoded) == floats_as_hex([proto_expected(r) for r in rows])


def test_relative_type_names_of_a_file_descriptor_resolve():
    # Given a serialized file, the SDK sends the message as written there: `Route`, not
    # `.Record.Route`.
    descriptor = generated_descriptor(uc_columns(NESTED))
    file_proto = descriptor_pb2.FileDescriptorProto()
    descriptor.file.CopyToProto(file_proto)
    msg = file_proto.message_type[0]
    route = next(f for f in msg.field if f.name == "route")
    route.type_name = "Route"
    stops = next(f for f in msg.nested_type if f.name == "Route").field[1]
    stops.type_name = "Stops"
    decoder = ProtoRecordDecoder(NESTED, msg.SerializeToString())
    (row,) = decoder.decode([nested_to_proto(nested_row(1), descriptor)]).to_pylist()
    assert row["route"] == nested_row(1)["route"]


def _mutated(mutate, columns=None) -> bytes:
    descriptor = generated_descriptor(columns or uc_columns(NESTED))
    msg = descriptor_pb2.DescriptorProto()
    descriptor.CopyToProto(msg)
    mutate(msg)
    return msg.SerializeToString()


def _nested(msg, *names):
    for name in names:
        msg = next(m for m in msg.nested_type if m.name == name)
    return msg


def _field(msg, name):
    return next(f for f in msg.field if f.name == name)


def _lat_as_float(msg):
    _field(_nested(msg, "Route", "Stops"), "lat").type = FDP.TYPE_FLOAT


def _stops_not_repeated(msg):
    _field(_nested(msg, "Route"), "stops").label = FDP.LABEL_OPTIONAL


def _tags_not_repeated(msg):
    _field(msg, "tags").label = FDP.LABEL_OPTIONAL


def _price_as_string(msg):
    msg.field.add(name="price", number=99, type=FDP.TYPE_STRING, label=FDP.LABEL_OPTIONAL)


def _unknown_struct_field(msg):
    _nested(msg, "Route").field.add(
        name="colour", number=9, type=FDP.TYPE_STRING, label=FDP.LABEL_OPTIONAL
    )


def _map_value_as_string(msg):
    _field(_nested(msg, "AttrsEntry"), "value").type = FDP.TYPE_STRING


def _route_as_string(msg):
    route = _field(msg, "route")
    route.type = FDP.TYPE_STRING
    route.ClearField("type_name")


def _outside_reference(msg):
    _field(msg, "route").type_name = ".other.Route"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            _lat_as_float,
            "field route.stops.lat has proto type float, but column route.stops.lat is DOUBLE "
            "(expected double)",
        ),
        (
            _stops_not_repeated,
            "field route.stops is not repeated (message Stops), but column route.stops is "
            "ARRAY<STRUCT<lat: DOUBLE, lon: DOUBLE>>",
        ),
        (
            _tags_not_repeated,
            "field tags is not repeated (string), but column tags is ARRAY<STRING>",
        ),
        (
            _price_as_string,
            "field price fills column price, which is DECIMAL(10,2): DECIMAL has no proto form",
        ),
        (_unknown_struct_field, "field route.colour of Route is not a field of column route"),
        (
            _map_value_as_string,
            "field attrs.value has proto type string, but column attrs.value is INT",
        ),
        (
            _route_as_string,
            "field route has proto type string, but column route is STRUCT<name: STRING, "
            "stops: ARRAY<STRUCT<lat: DOUBLE, lon: DOUBLE>>>",
        ),
        (_outside_reference, "field Record.route refers to type .other.Route, which is not nested"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_nested_descriptor_mismatch_names_the_path(mutate, message):
    with pytest.raises(SchemaMismatchError) as err:
        ProtoRecordDecoder(NESTED, _mutated(mutate))
    assert str(err.value).startswith(message), str(err.value)


def test_not_null_struct_field_needs_a_proto_field_and_a_value():
    schema = TableSchema.of(("id", "BIGINT", False), ("s", "STRUCT<a: INT NOT NULL, b: TINYINT>"))
    columns = [dict(c, type_text=c["type_text"]) for c in uc_columns(schema)]
    descriptor = generated_descriptor(columns)
    decoder = ProtoRecordDecoder(schema, as_proto_proto(descriptor))
    cls = message_factory.GetMessageClass(descriptor)
    ok = cls(id=1, s={"a": 5, "b": -3}).SerializeToString()
    assert decoder.decode([ok]).to_pylist() == [{"id": 1, "s": {"a": 5, "b": -3}}]
    with pytest.raises(SchemaMismatchError) as err:
        decoder.decode([ok, cls(id=2, s={"b": 1}).SerializeToString()])
    assert str(err.value) == "record 1: field s.a is NOT NULL but has no value"
    with pytest.raises(SchemaMismatchError) as err:
        decoder.decode([cls(id=3, s={"a": 1, "b": 300}).SerializeToString()])
    assert str(err.value) == "record 0: field s.b: 300 is out of range for TINYINT"

    def drop_a(msg):
        s = _nested(msg, "S")
        keep = [f for f in s.field if f.name != "a"]
        del s.field[:]
        s.field.extend(keep)

    with pytest.raises(SchemaMismatchError, match="column s.a is NOT NULL but S has no field"):
        ProtoRecordDecoder(schema, _mutated(drop_a, columns))


def test_nested_json_records_decode_exactly():
    rows = [nested_row(1), sparse_row(2), dict(sparse_row(3), tags=[], attrs=[])]
    batch = JsonRecordDecoder(NESTED).decode([nested_to_json(r) for r in rows])
    assert batch.schema == NESTED.to_arrow()
    assert floats_as_hex(batch.to_pylist()) == floats_as_hex(rows)


def test_json_forms_of_each_type():
    schema = TableSchema.of(
        ("p", "DECIMAL(5,2)"),
        ("ntz", "TIMESTAMP_NTZ"),
        ("ts", "TIMESTAMP"),
        ("by_int", "MAP<INT, DATE>"),
        ("by_day", "MAP<DATE, BOOLEAN>"),
        ("nested", "ARRAY<STRUCT<d: DECIMAL(38,10), when: TIMESTAMP_NTZ>>"),
        ("x", "DOUBLE"),
    )
    records = [
        '{"p": "-123.45", "ntz": 1767323045123456, "ts": "2026-01-02T03:04:05+01:00",'
        ' "by_int": {"7": 3, "-1": "2026-01-02"}, "by_day": {"2026-01-02": true},'
        ' "nested": [{"d": "1234567890123456789012345678.0123456789", "when": "2026-01-02"}],'
        ' "x": 0.30000000000000004}',
        '{"p": 1.5, "ntz": "2026-01-02T03:04:05.123456", "x": "NaN", "nested": [null]}',
        '{"p": 7, "x": 1e308}',
    ]
    rows = JsonRecordDecoder(schema).decode(records).to_pylist()
    assert rows[0] == {
        "p": decimal.Decimal("-123.45"),
        "ntz": dt.datetime(2026, 1, 2, 3, 4, 5, 123456),
        "ts": dt.datetime(2026, 1, 2, 2, 4, 5, tzinfo=dt.UTC),
        "by_int": [(7, dt.date(1970, 1, 4)), (-1, dt.date(2026, 1, 2))],
        "by_day": [(dt.date(2026, 1, 2), True)],
        "nested": [
            {
                "d": decimal.Decimal("1234567890123456789012345678.0123456789"),
                "when": dt.datetime(2026, 1, 2),
            }
        ],
        "x": 0.30000000000000004,
    }
    assert rows[1]["p"] == decimal.Decimal("1.50") and math.isnan(rows[1]["x"])
    assert rows[1]["ntz"] == dt.datetime(2026, 1, 2, 3, 4, 5, 123456)
    assert rows[1]["nested"] == [None]
    assert (rows[2]["p"], rows[2]["x"]) == (decimal.Decimal("7.00"), 1e308)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {"route": {"name": "r", "stops": [{"lat": 1.0}, {}, {}, {"lat": "x"}]}},
            "record 0: field 'route.stops[3].lat': expected DOUBLE, got str 'x'",
        ),
        (
            {"route": {"name": "r", "stop": []}},
            "record 0: field 'route.stop': not a field of the STRUCT (fields: name, stops)",
        ),
        ({"route": "r"}, "record 0: field 'route': expected STRUCT<name: STRING, stops:"),
        ({"tags": "a"}, "record 0: field 'tags': expected ARRAY<STRING>, got str 'a'"),
        ({"tags": ["a", 1]}, "record 0: field 'tags[1]': expected STRING, got int 1"),
        (
            {"attrs": {"a": 2**31}},
            "record 0: field 'attrs['a']': 2147483648 is out of range for INT",
        ),
        (
            {"attrs": [["a", 1]]},
            "record 0: field 'attrs': expected MAP<STRING, INT> (a JSON object)",
        ),
        ({"price": "19.999"}, "record 0: field 'price': 19.999 has more than 2 decimal places"),
        ({"price": 123456789}, "record 0: field 'price': 123456789 does not fit DECIMAL(10,2)"),
        ({"price": "cheap"}, "record 0: field 'price': expected DECIMAL(10,2), got 'cheap'"),
        ({"price": True}, "record 0: field 'price': expected DECIMAL(10,2) (a number or its text)"),
        ({"small": 128}, "record 0: field 'small': 128 is out of range for TINYINT (-128 to 127)"),
        ({"small": 1.0}, "record 0: field 'small': expected TINYINT, got Decimal"),
        ({"f": 1e39}, "record 0: field 'f': 1E+39 is out of range for FLOAT"),
        (
            {"ts_ntz": "2026-01-02T03:04:05+00:00"},
            "record 0: field 'ts_ntz': expected TIMESTAMP_NTZ, a timestamp without a time zone",
        ),
        ({"b": "not base64!"}, "record 0: field 'b': expected BINARY (base64 text)"),
    ],
)
def test_bad_nested_json_names_the_path(record, message):
    with pytest.raises(SchemaMismatchError) as err:
        JsonRecordDecoder(NESTED).decode([json.dumps({"id": 1} | record)])
    assert str(err.value).startswith(message), str(err.value)


def test_json_not_null_struct_field():
    schema = TableSchema.of(("s", "ARRAY<STRUCT<a: INT NOT NULL>>"))
    with pytest.raises(SchemaMismatchError) as err:
        JsonRecordDecoder(schema).decode(['{"s": [{"a": 1}]}', '{"s": [{"a": 1}, {"a": null}]}'])
    assert str(err.value) == "record 1: field 's[1].a': the field is NOT NULL but has no value"


def test_every_shape_generate_proto_maps_decodes():
    schema = TableSchema.of(
        ("m", "MAP<STRING, STRUCT<a: INT, b: ARRAY<SMALLINT>>>"),
        ("k", "MAP<TINYINT, DATE>"),
        ("arr", "ARRAY<TIMESTAMP>"),
        ("bs", "ARRAY<BINARY>"),
        ("deep", "STRUCT<x: STRUCT<y: STRUCT<z: MAP<BIGINT, BOOLEAN>>>>"),
    )
    descriptor = generated_descriptor(uc_columns(schema))
    decoder = ProtoRecordDecoder(schema, as_proto_proto(descriptor))
    cls = message_factory.GetMessageClass(descriptor)
    full = cls(
        m={"p": {"a": 1, "b": [1, -2]}, "q": {}},
        k={-5: 3},
        arr=[0, 1],
        bs=[b"x"],
        deep={"x": {"y": {"z": {9: True}}}},
    )
    first, empty = decoder.decode([full.SerializeToString(), cls().SerializeToString()]).to_pylist()
    # Proto maps keep no order.
    assert dict(first["m"]) == {"p": {"a": 1, "b": [1, -2]}, "q": {"a": None, "b": []}}
    assert first["k"] == [(-5, dt.date(1970, 1, 4))]
    assert first["arr"] == [
        dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
        dt.datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=dt.UTC),
    ]
    assert (first["bs"], first["deep"]) == ([b"x"], {"x": {"y": {"z": [(9, True)]}}})
    assert empty == {"m": [], "k": [], "arr": [], "bs": [], "deep": None}
    with pytest.raises(SchemaMismatchError, match=r"^record 0: field k.key: 300 is out of range"):
        decoder.decode([cls(k={300: 1}).SerializeToString()])
    with pytest.raises(SchemaMismatchError, match=r"^record 0: field m.value.b: 40000 is out of"):
        decoder.decode([cls(m={"p": {"b": [40000]}}).SerializeToString()])
