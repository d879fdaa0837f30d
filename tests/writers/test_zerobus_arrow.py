"""The zerobus-arrow writer against the local stack's Arrow Flight DoPut: rows read back
exactly (deltalake) with each IPC compression, the service's refusals as clear errors with
nothing written, types it cannot carry refused up front, and the ack deadline."""

from __future__ import annotations

import dataclasses
import os
import secrets
import signal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pydantic import SecretStr, ValidationError

from dwbench.errors import SchemaNotSupportedError, WriteFailedError, WriterUnavailableError
from emulator.process import LocalStackProcess
from tests.conftest import local_targets, products_ddl, run_sql
from workloads import products
from workloads.base import Rows, TableRef, default_table
from workloads.inputs import build_rows, new_batch_id
from workloads.products import sample_items
from workloads.schema import TableSchema
from workloads.telemetry import TABLE as TELEMETRY
from workloads.telemetry import Fleet, FleetRows
from writers import writer_class
from writers.zerobus_arrow import (
    ZerobusArrowSettings,
    ZerobusArrowWriter,
    zerobus_arrow_schema,
)

SOURCE = "zerobus-arrow"


def product_rows(table: TableRef, n: int, seed: int) -> Rows:
    rows = build_rows(
        products.WORKLOAD, sample_items(n, seed=seed), batch_id=new_batch_id(), source=SOURCE
    )
    return dataclasses.replace(rows, table=table)


def delta_rows(endpoints: dict[str, Any], table: str) -> list[dict[str, Any]]:
    path = Path(endpoints["data_dir"], "tables", *table.split("."))
    return DeltaTable(str(path)).to_pyarrow_table().to_pylist()


def batch_rows(
    endpoints: dict[str, Any], table: str, batch_id: str, key: str
) -> list[dict[str, Any]]:
    mine = [r for r in delta_rows(endpoints, table) if r["batch_id"] == batch_id]
    return sorted(mine, key=lambda r: r[key])


async def opened(targets: Any) -> ZerobusArrowWriter:
    writer = ZerobusArrowWriter(targets)
    await writer.open()
    return writer


@pytest.mark.parametrize("compression", ["none", "lz4", "zstd"])
async def test_products_read_back_exactly(local_stack, products_table, compression):
    settings = ZerobusArrowSettings(arrow_compression=compression)
    writer = await opened(local_targets(local_stack, **{"zerobus-arrow": settings}))
    table = products.WORKLOAD.table.with_tables(products_table)
    try:
        rows = product_rows(table, 40, seed=3)
        receipt = await writer.write(rows)
        assert receipt.rows == 40
        assert receipt.details["ipc_compression"] == compression
        assert await writer.count_rows(table, rows.batch_id) == 40
    finally:
        await writer.close()
    expected = sorted(rows.data.to_pylist(), key=lambda r: r["record_id"])
    assert batch_rows(local_stack, products_table, rows.batch_id, "record_id") == expected


async def test_telemetry_reads_back_exactly_with_zstd(local_stack):
    name = f"telemetry_arrow_{secrets.token_hex(3)}"
    table = TELEMETRY.with_tables(f"main.default.{name}", f"public.{name}")
    run_sql(local_stack, table.schema.delta_ddl(table.delta_table))
    settings = ZerobusArrowSettings(arrow_compression="zstd")
    writer = await opened(local_targets(local_stack, **{"zerobus-arrow": settings}))
    clock = {"now": 1_790_000_000_123_456}
    source = FleetRows(table, Fleet(25, seed=9), clock=lambda: clock["now"])
    try:
        for k in range(3):
            clock["now"] += 1_000_000
            data = source(k, 300, new_batch_id(), SOURCE)
            batch_id = data.column("batch_id")[0].as_py()
            await writer.prepare(table)
            assert (await writer.write(Rows(table, data, batch_id))).rows == 300
            key = table.schema.columns[0].name
            stored = batch_rows(local_stack, table.delta_table, batch_id, key)
            assert stored == sorted(data.to_pylist(), key=lambda r: r[key])
    finally:
        await writer.close()


async def test_a_wrong_token_is_a_clear_error_and_writes_nothing(local_stack, products_table):
    targets = dataclasses.replace(local_targets(local_stack), local_token=SecretStr("wrong-token"))
    writer = await opened(targets)
    table = products.WORKLOAD.table.with_tables(products_table)
    try:
        with pytest.raises(WriterUnavailableError) as failed:
            await writer.write(product_rows(table, 3, seed=1))
    finally:
        await writer.close()
    assert failed.value.message == (
        f"cannot open a Zerobus Arrow stream to {products_table} at "
        f"{local_stack['zerobus_endpoint']}: Failed to create stream: code: 'The request does "
        "not have valid authentication credentials', message: \"invalid or missing bearer "
        'token".'
    )
    assert "wrong-token" not in failed.value.message
    assert delta_rows(local_stack, products_table) == []


async def test_an_unknown_table_is_a_clear_error(local_stack):
    writer = await opened(local_targets(local_stack))
    table = products.WORKLOAD.table.with_tables("main.default.no_such_products")
    try:
        with pytest.raises(WriterUnavailableError) as failed:
            await writer.write(product_rows(table, 3, seed=1))
    finally:
        await writer.close()
    assert failed.value.message == (
        "cannot open a Zerobus Arrow stream to main.default.no_such_products at "
        f"{local_stack['zerobus_endpoint']}: Failed to create stream: code: 'Some requested "
        'entity was not found\', message: "table main.default.no_such_products does not exist".'
    )


async def test_a_schema_mismatch_names_the_cause_and_writes_nothing(local_stack):
    name = f"main.default.products_price_text_{secrets.token_hex(3)}"
    # The products table, but with the price held as text.
    run_sql(local_stack, products_ddl(name).replace("product_price DOUBLE", "product_price STRING"))
    writer = await opened(local_targets(local_stack))
    table = products.WORKLOAD.table.with_tables(name)
    try:
        with pytest.raises(WriterUnavailableError) as failed:
            await writer.write(product_rows(table, 3, seed=1))
    finally:
        await writer.close()
    assert failed.value.message == (
        f"Zerobus refused the Arrow stream for {name}: Arrow schema does not match the target "
        "table: schema validation failed (TYPE_INCOMPATIBLE): field product_price: Arrow type "
        "double does not fit column type string."
    )
    assert delta_rows(local_stack, name) == []


def test_the_arrow_schema_follows_the_documented_mapping():
    schema = TableSchema.from_ddl(
        "id BIGINT NOT NULL, name STRING, blob BINARY, tags ARRAY<STRING>, "
        "attrs MAP<STRING, INT>, pos STRUCT<lat: DOUBLE NOT NULL, label: STRING>, "
        "at TIMESTAMP, at_ntz TIMESTAMP_NTZ, day DATE, small TINYINT"
    )
    assert zerobus_arrow_schema(schema) == pa.schema(
        [
            pa.field("id", pa.int64(), False),
            pa.field("name", pa.large_string()),
            pa.field("blob", pa.large_binary()),
            pa.field("tags", pa.list_(pa.field("item", pa.large_string()))),
            pa.field(
                "attrs",
                pa.map_(pa.field("keys", pa.large_string(), False), pa.field("values", pa.int32())),
            ),
            pa.field(
                "pos",
                pa.struct(
                    [pa.field("lat", pa.float64(), False), pa.field("label", pa.large_string())]
                ),
            ),
            pa.field("at", pa.timestamp("us", tz="UTC")),
            pa.field("at_ntz", pa.timestamp("us")),
            pa.field("day", pa.date32()),
            pa.field("small", pa.int8()),
        ]
    )


@pytest.mark.parametrize(
    ("ddl", "reason"),
    [
        (
            "id BIGINT, doc VARIANT",
            "column doc is VARIANT: Zerobus's Arrow form is a struct of binary metadata and "
            "value, and this tool carries VARIANT as JSON text",
        ),
        (
            "id BIGINT, prices ARRAY<DECIMAL(10,2)>",
            "column prices is DECIMAL(10,2): Databricks documents no Arrow form of DECIMAL "
            "for Zerobus Ingest",
        ),
    ],
)
def test_types_without_an_arrow_form_are_refused_before_writing(ddl, reason):
    from dwbench.settings import Settings
    from writers.base import Targets

    writer = ZerobusArrowWriter(Targets(mode="local", settings=Settings(app_mode="local")))
    table = default_table("odd", TableSchema.from_ddl(ddl))
    with pytest.raises(SchemaNotSupportedError) as refused:
        writer.check(table)
    assert (
        refused.value.message
        == f"Zerobus Ingest (Arrow Flight) cannot write workload odd: {reason}"
    )


def test_compression_is_a_setting_with_three_values(monkeypatch):
    assert ZerobusArrowSettings().arrow_compression == "none"
    monkeypatch.setenv("ZEROBUS_ARROW_COMPRESSION", "lz4")
    assert ZerobusArrowSettings().arrow_compression == "lz4"
    monkeypatch.setenv("ZEROBUS_ARROW_COMPRESSION", "gzip")
    with pytest.raises(ValidationError, match="'none', 'lz4' or 'zstd'"):
        ZerobusArrowSettings()


def test_registered():
    assert writer_class("zerobus-arrow") is ZerobusArrowWriter


@pytest.fixture
def own_stack(tmp_path):
    """A local stack of this test's own: it gets frozen."""
    stack = LocalStackProcess(
        tmp_path / "data", token=secrets.token_urlsafe(16), args=["--no-postgres"]
    )
    endpoints = stack.start()
    try:
        run_sql(endpoints, products_ddl("main.default.products"))
        yield endpoints
    finally:
        os.kill(endpoints["pid"], signal.SIGCONT)
        assert stack.stop() == 0


async def test_an_unacknowledged_batch_fails_at_the_deadline_and_is_not_resent(own_stack):
    settings = ZerobusArrowSettings(ack_timeout_s=1.0)
    writer = await opened(local_targets(own_stack, **{"zerobus-arrow": settings}))
    table = products.WORKLOAD.table
    try:
        first = product_rows(table, 3, seed=1)
        assert (await writer.write(first)).rows == 3

        os.kill(own_stack["pid"], signal.SIGSTOP)  # takes the batch, never acknowledges it
        with pytest.raises(WriteFailedError) as failed:
            await writer.write(product_rows(table, 4, seed=2))
        assert failed.value.message == (
            "no durability acknowledgement within 1 s; the rows are not counted as written "
            "(the service may still commit them)"
        )
        assert writer.streams_created == 1
        assert writer.describe()["stream_state"] == "not opened"

        os.kill(own_stack["pid"], signal.SIGCONT)
        after = product_rows(table, 5, seed=3)
        assert (await writer.write(after)).rows == 5
        assert writer.streams_created == 2
        assert await writer.count_rows(table, after.batch_id) == 5
        assert await writer.count_rows(table, first.batch_id) == 3
    finally:
        await writer.close()
