"""Helpers for driving the local Zerobus service with the official SDK."""

from __future__ import annotations

import datetime as dt
import json
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
