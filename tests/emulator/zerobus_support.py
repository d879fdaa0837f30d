"""Helpers for driving the local Zerobus service with the official SDK."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable
from zerobus.sdk import aio, sync
from zerobus.sdk.shared import StreamConfigurationOptions, TableProperties

from proto import product_record_pb2
from writers.zerobus import LocalBearerToken

EPOCH = dt.date(1970, 1, 1)


def fast_options(**overrides: Any) -> StreamConfigurationOptions:
    """SDK options with short recovery pauses, so failure tests finish quickly."""
    opts: dict[str, Any] = {
        "recovery_backoff_ms": 200,
        "recovery_timeout_ms": 5000,
        "recovery_retries": 3,
        "server_lack_of_ack_timeout_ms": 10000,
        "flush_timeout_ms": 60000,
    }
    opts.update(overrides)
    return StreamConfigurationOptions(**opts)


async def async_stream(
    endpoints: dict[str, Any],
    table: str,
    *,
    descriptor: Any = product_record_pb2.ProductRecord.DESCRIPTOR,
    token: str | None = None,
    header_table: str | None = None,
    options: StreamConfigurationOptions | None = None,
) -> aio.ZerobusStream:
    sdk = aio.ZerobusSdk(endpoints["zerobus_endpoint"], endpoints["api_url"])
    await sdk._inner.set_use_tls(False)
    props = TableProperties(table, descriptor) if descriptor is not None else TableProperties(table)
    headers = LocalBearerToken(token or endpoints["token"], header_table or table)
    return await sdk.create_stream(
        table_properties=props, headers_provider=headers, options=options or fast_options()
    )


def sync_stream(
    endpoints: dict[str, Any],
    table: str,
    *,
    descriptor: Any = product_record_pb2.ProductRecord.DESCRIPTOR,
    options: StreamConfigurationOptions | None = None,
) -> sync.ZerobusStream:
    sdk = sync.ZerobusSdk(endpoints["zerobus_endpoint"], endpoints["api_url"])
    sdk._inner.set_use_tls(False)
    props = TableProperties(table, descriptor) if descriptor is not None else TableProperties(table)
    return sdk.create_stream(
        table_properties=props,
        headers_provider=LocalBearerToken(endpoints["token"], table),
        options=options or fast_options(),
    )


def product(i: int, *, prefix: str = "rec", description_bytes: int = 0) -> dict[str, Any]:
    """A products row with every column set, distinct per i (dates and timestamps included)."""
    return {
        "record_id": f"{prefix}-{i:08d}",
        "product_id": f"PROD{i % 1000:03d}",
        "product_name": f"Smart Watch {i}",
        "product_price": round(1.25 + i * 0.5, 2),
        "category": "electronics",
        "sale_start_date": dt.date(2026, 1, 1) + dt.timedelta(days=i % 300),
        "sale_stop_date": dt.date(2026, 12, 31),
        "processed_at": dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
        + dt.timedelta(microseconds=i * 1001),
        "batch_id": f"batch-{i // 100}",
        "source": "zerobus",
        "description": ("x" * description_bytes) if description_bytes else f"item {i}",
    }


def _micros(ts: dt.datetime) -> int:
    delta = ts - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def to_proto(row: dict[str, Any]) -> bytes:
    fields = dict(row)
    for key in ("sale_start_date", "sale_stop_date"):
        fields[key] = (fields[key] - EPOCH).days
    fields["processed_at"] = _micros(fields["processed_at"])
    return product_record_pb2.ProductRecord(**fields).SerializeToString()


def to_json(row: dict[str, Any]) -> str:
    fields = dict(row)
    for key in ("sale_start_date", "sale_stop_date"):
        fields[key] = fields[key].isoformat()
    fields["processed_at"] = _micros(fields["processed_at"])
    return json.dumps(fields)


def table_path(endpoints: dict[str, Any], table: str) -> Path:
    return Path(endpoints["data_dir"], "tables", *table.split("."))


def read_rows(endpoints: dict[str, Any], table: str) -> list[dict[str, Any]]:
    """Every row of the table, read from the Delta files by an independent reader."""
    data: pa.Table = DeltaTable(str(table_path(endpoints, table))).to_pyarrow_table()
    return sorted(data.to_pylist(), key=lambda r: r["record_id"])


# -- a table of every nested shape ------------------------------------------------------------

NESTED_COLUMNS = [
    ("id", "BIGINT NOT NULL COMMENT 'the row\\'s id'"),
    ("ts_ntz", "TIMESTAMP_NTZ"),
    ("tags", "ARRAY<STRING>"),
    ("attrs", "MAP<STRING,INT>"),
    ("route", "STRUCT<name: STRING, stops: ARRAY<STRUCT<lat: DOUBLE, lon: DOUBLE>>>"),
    ("price", "DECIMAL(10,2)"),
    ("d", "DATE"),
    ("t", "TIMESTAMP"),
    ("b", "BINARY"),
    ("f", "FLOAT"),
    ("small", "TINYINT"),
    ("note", "STRING"),
]


def nested_ddl(table: str) -> str:
    return f"CREATE TABLE {table} ({', '.join(f'{n} {t}' for n, t in NESTED_COLUMNS)})"


def nested_row(i: int) -> dict[str, Any]:
    """A row of the nested table as Delta gives it back, every column but `note` set."""
    return {
        "id": i,
        "ts_ntz": dt.datetime(2026, 1, 2, 3, 4, 5, 123456) + dt.timedelta(microseconds=i),
        "tags": ["a", f"t{i}", "é😀 'q' \\ \n"],
        "attrs": [("x", i), ("min", -(2**31))],
        "route": {
            "name": f"route {i}",
            "stops": [
                {"lat": 52.52 + i, "lon": 13.405},
                {"lat": 0.1 + 0.2, "lon": -0.0},
                {"lat": 5e-324, "lon": None},
            ],
        },
        "price": decimal.Decimal("19.99") + i,
        "d": dt.date(2026, 1, 2) + dt.timedelta(days=i),
        "t": dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC),
        "b": bytes([0, 255, i % 256]),
        "f": 0.25 + i,
        "small": -128 + i,
        "note": None,
    }


def sparse_row(i: int) -> dict[str, Any]:
    """Only the NOT NULL column set."""
    return {name: None for name, _ in NESTED_COLUMNS} | {"id": i}


def generated_descriptor(columns: list[dict[str, Any]], *, package: str | None = None) -> Any:
    """The record descriptor the SDK's generate_proto derives from Unity Catalog columns,
    compiled by protoc: exactly what a Zerobus user would stream with."""
    from google.protobuf import descriptor_pb2, descriptor_pool
    from grpc_tools import protoc
    from zerobus.tools import generate_proto

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "record.proto")
        generate_proto.generate_proto_file(
            "Record", generate_proto.extract_columns({"columns": columns}), str(source)
        )
        if package:
            text = source.read_text().replace(
                'syntax = "proto2";', f'syntax = "proto2";\npackage {package};'
            )
            source.write_text(text)
        out = Path(tmp, "record.pb")
        assert protoc.main(["protoc", f"-I{tmp}", f"--descriptor_set_out={out}", source.name]) == 0
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    pool.Add(files.file[0])
    return pool.FindMessageTypeByName(f"{package}.Record" if package else "Record")


def nested_to_proto(row: dict[str, Any], descriptor: Any) -> bytes:
    """A nested row as a message of the generated descriptor (no DECIMAL: it has no field)."""
    from google.protobuf import message_factory

    fields: dict[str, Any] = {}
    for name, value in row.items():
        if value is None or name not in descriptor.fields_by_name:
            continue
        if name == "ts_ntz":
            value = _micros(value.replace(tzinfo=dt.UTC))
        elif name == "t":
            value = _micros(value)
        elif name == "d":
            value = (value - EPOCH).days
        elif name == "attrs":
            value = dict(value)
        elif name == "route":
            value = {
                "name": value["name"],
                "stops": [
                    {k: v for k, v in stop.items() if v is not None} for stop in value["stops"]
                ],
            }
        fields[name] = value
    return message_factory.GetMessageClass(descriptor)(**fields).SerializeToString()


def nested_to_json(row: dict[str, Any]) -> str:
    fields: dict[str, Any] = {}
    for name, value in row.items():
        if name == "ts_ntz" and value is not None:
            value = value.isoformat()
        elif name == "t" and value is not None:
            value = _micros(value)
        elif name == "d" and value is not None:
            value = value.isoformat()
        elif name == "b" and value is not None:
            value = base64.b64encode(value).decode()
        elif name == "attrs" and value is not None:
            value = dict(value)
        elif name == "price" and value is not None:
            value = str(value)
        fields[name] = value
    return json.dumps(fields)


def read_nested(endpoints: dict[str, Any], table: str) -> list[dict[str, Any]]:
    data: pa.Table = DeltaTable(str(table_path(endpoints, table))).to_pyarrow_table()
    return sorted(data.to_pylist(), key=lambda r: r["id"])
