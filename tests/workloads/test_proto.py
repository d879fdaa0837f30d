"""The derived proto2 descriptor equals what the Zerobus SDK's generate_proto tool makes of
the same table, and encodes rows that parse back to the same values."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from google.protobuf import descriptor_pb2
from zerobus.tools import generate_proto

from workloads import products, telemetry
from workloads.proto import NoProtoForm, descriptor_proto, proto_form
from workloads.schema import TableSchema

NESTED = TableSchema.from_ddl(
    """CREATE TABLE main.default.nested (
      id BIGINT NOT NULL,
      at_ntz TIMESTAMP_NTZ,
      tags ARRAY<STRING>,
      attrs MAP<STRING, INT>,
      route STRUCT<name: STRING, stops: ARRAY<STRUCT<lat: DOUBLE, lon: DOUBLE>>>,
      points MAP<STRING, STRUCT<x: INT, y: INT>>,
      small TINYINT,
      flag BOOLEAN NOT NULL,
      payload BINARY,
      day DATE,
      at TIMESTAMP,
      ratio FLOAT
    )"""
)


def sdk_descriptor(
    schema: TableSchema, message: str, tmp_path: Path
) -> descriptor_pb2.DescriptorProto:
    """The SDK tool's .proto for the table (as UC would describe its columns), compiled."""
    columns = [
        {"name": c.name, "type_text": c.type.sql().lower(), "nullable": c.nullable}
        for c in schema.columns
    ]
    proto_file = tmp_path / f"{message}.proto"
    generate_proto.generate_proto_file(message, columns, str(proto_file))
    out = tmp_path / "set.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{tmp_path}",
            f"--descriptor_set_out={out}",
            proto_file.name,
        ],
        check=True,
        cwd=tmp_path,
    )
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    (message_proto,) = files.file[0].message_type
    _clear_json_names(message_proto)
    return message_proto


def _clear_json_names(message: descriptor_pb2.DescriptorProto) -> None:
    for field in message.field:
        field.ClearField("json_name")
    for nested in message.nested_type:
        _clear_json_names(nested)


@pytest.mark.parametrize(
    ("schema", "message"),
    [(NESTED, "nested"), (products.SCHEMA, "products"), (telemetry.SCHEMA, "telemetry")],
)
def test_descriptor_equals_generate_proto(
    schema: TableSchema, message: str, tmp_path: Path
) -> None:
    assert descriptor_proto(schema, message) == sdk_descriptor(schema, message, tmp_path)


def test_the_sdk_receives_one_self_contained_descriptor() -> None:
    form = proto_form(NESTED, "nested")
    sent = descriptor_pb2.DescriptorProto()
    form.descriptor.CopyToProto(sent)  # what the SDK serializes into the stream request
    assert sent == descriptor_proto(NESTED, "nested")
    assert {t.name for t in sent.nested_type} == {"AttrsEntry", "Route", "Points", "PointsEntry"}


@pytest.mark.parametrize(
    ("ddl", "reason"),
    [
        (
            "price DECIMAL(10,2)",
            "column price is DECIMAL(10,2): the Zerobus SDK's generate_proto maps no DECIMAL",
        ),
        ("grid ARRAY<ARRAY<INT>>", "column grid: protobuf has no arrays of arrays"),
        ("m MAP<STRING, ARRAY<INT>>", "protobuf map values cannot be arrays or maps"),
        ("m MAP<DOUBLE, INT>", "protobuf map keys cannot be DOUBLE"),
        ("`my col` INT", "'my col' is not a protobuf field name"),
        ("message INT", "'message' is a protobuf keyword"),
        ("s STRUCT<d: DECIMAL(5,1)>", "column s.d is DECIMAL(5,1)"),
    ],
)
def test_types_without_a_proto_form_are_refused_with_the_reason(ddl: str, reason: str) -> None:
    with pytest.raises(NoProtoForm) as caught:
        descriptor_proto(TableSchema.from_ddl(ddl), "t")
    assert reason in str(caught.value)


def test_encoded_rows_parse_back_to_the_values() -> None:
    at = dt.datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=dt.UTC)
    batch = pa.RecordBatch.from_pylist(
        [
            {
                "id": 7,
                "at_ntz": dt.datetime(1999, 12, 31, 23, 59, 59, 999999),
                "tags": ["a", "b"],
                "attrs": [("x", 1), ("y", -2)],
                "route": {
                    "name": "r1",
                    "stops": [{"lat": 37.5, "lon": -122.25}, {"lat": None, "lon": 1.0}],
                },
                "points": [("p", {"x": 1, "y": None})],
                "small": -128,
                "flag": True,
                "payload": b"\x00\xff",
                "day": dt.date(1, 1, 1),
                "at": at,
                "ratio": 0.1,
            },
            {"id": 8, "flag": False},
        ],
        schema=NESTED.arrow(),
    )
    form = proto_form(NESTED, "nested")
    first, second = (form.message_class.FromString(b) for b in form.encoder(NESTED)(batch))
    assert first.id == 7 and first.flag is True and first.small == -128
    assert first.at_ntz == 946684799999999
    assert first.at == 1772600767891011
    assert first.day == (dt.date(1, 1, 1) - dt.date(1970, 1, 1)).days
    assert list(first.tags) == ["a", "b"] and dict(first.attrs) == {"x": 1, "y": -2}
    assert first.route.name == "r1" and first.route.stops[0].lat == 37.5
    assert not first.route.stops[1].HasField("lat") and first.route.stops[1].lon == 1.0
    assert first.points["p"].x == 1 and not first.points["p"].HasField("y")
    assert first.payload == b"\x00\xff"
    assert first.ratio == pa.scalar(0.1, pa.float32()).as_py()
    assert second.id == 8 and not second.HasField("route") and not second.tags
