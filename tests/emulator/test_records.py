"""Record decoding against a table schema: exact values, and clear errors for bad input."""

from __future__ import annotations

import datetime as dt

import pytest

from emulator.errors import SchemaMismatchError
from emulator.records import JsonRecordDecoder, ProtoRecordDecoder
from emulator.schema import TableSchema
from proto import product_record_pb2
from tests.emulator.zerobus_support import product, to_json, to_proto

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
