"""What the tests of the Zerobus JSON writers (REST, Kafka, MQTT) share: the tables they
write, the rows they read back, the cases every JSON path must pass the same way."""

from __future__ import annotations

import secrets
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pydantic import SecretStr

from dwbench.auth import WorkspaceAuth
from dwbench.errors import SchemaNotSupportedError, WriteFailedError
from dwbench.settings import Settings
from tests.conftest import run_sql
from tests.writers.exact_values import exact
from tests.writers.test_workloads import NESTED_DDL, NESTED_ROWS, expected, unique_table
from workloads import products
from workloads.base import Rows, TableRef
from workloads.inputs import build_rows, new_batch_id
from workloads.products import sample_items
from workloads.schema import TableSchema
from workloads.telemetry import TABLE as TELEMETRY
from workloads.telemetry import Fleet, FleetRows
from writers.base import DataWriterInterface, Targets


def delta_rows(endpoints: dict[str, Any], table: str) -> list[dict[str, Any]]:
    path = Path(endpoints["data_dir"], "tables", *table.split("."))
    return DeltaTable(str(path)).to_pyarrow_table().to_pylist()


def batch_rows(endpoints: dict[str, Any], table: TableRef, batch_id: str) -> list[dict[str, Any]]:
    mine = [r for r in delta_rows(endpoints, table.delta_table) if r["batch_id"] == batch_id]
    return sorted(mine, key=lambda r: next(iter(r.values())))


def products_table(endpoints: dict[str, Any], prefix: str) -> TableRef:
    name = f"main.default.{prefix}_{secrets.token_hex(3)}"
    table = products.WORKLOAD.table.with_tables(delta_table=name)
    run_sql(endpoints, table.schema.delta_ddl(name))
    return table


def products_rows(table: TableRef, n: int, source: str, *, seed: int = 7) -> Rows:
    rows = build_rows(
        products.WORKLOAD, sample_items(n, seed=seed), batch_id=new_batch_id(), source=source
    )
    return Rows(table, rows.data, rows.batch_id)


def telemetry_batches(
    endpoints: dict[str, Any], prefix: str, source: str, count: int = 3
) -> list[Rows]:
    """`count` telemetry batches of 200 rows, a second apart, into a new table."""
    name = f"main.default.{prefix}_telemetry_{secrets.token_hex(3)}"
    table = TELEMETRY.with_tables(name, "public.unused")
    run_sql(endpoints, table.schema.delta_ddl(name))
    clock = {"now": 1_790_000_000_123_456}
    rows = FleetRows(table, Fleet(30, seed=5), clock=lambda: clock["now"])
    batches = []
    for k in range(count):
        clock["now"] += 1_000_000
        data = rows(k, 200, new_batch_id(), source)
        batches.append(Rows(table, data, data.column("batch_id")[0].as_py()))
    return batches


def assert_read_back(endpoints: dict[str, Any], batch: Rows, source: str) -> None:
    back = batch_rows(endpoints, batch.table, batch.batch_id)
    assert exact(back) == exact(expected(source, batch.table, batch.data))


async def check_nested_types(
    endpoints: dict[str, Any], writer: DataWriterInterface, prefix: str
) -> None:
    """Nested types and nulls written and read back exactly."""
    schema = TableSchema.from_ddl(NESTED_DDL)
    table = unique_table(f"{prefix}_nested", schema, id_column="id")
    run_sql(endpoints, schema.delta_ddl(table.delta_table))
    batch_id = new_batch_id()
    data = pa.RecordBatch.from_pylist(
        [{**r, "batch_id": batch_id, "source": writer.name} for r in NESTED_ROWS],
        schema=schema.arrow(),
    )
    await writer.write(Rows(table, data, batch_id))
    back = batch_rows(endpoints, table, batch_id)
    maps = [dict(r, attrs=dict(r["attrs"]) if r["attrs"] is not None else None) for r in back]
    assert exact(maps) == exact(expected(writer.name, table, data))


async def check_decimal_refused(
    endpoints: dict[str, Any], writer: DataWriterInterface, prefix: str
) -> TableRef:
    """DECIMAL is refused before anything is written, with the reason."""
    schema = TableSchema.from_ddl("id BIGINT NOT NULL, price DECIMAL(10,2), batch_id STRING")
    table = unique_table(f"{prefix}_prices", schema)
    run_sql(endpoints, schema.delta_ddl(table.delta_table))
    with pytest.raises(SchemaNotSupportedError) as refused:
        await writer.prepare(table)
    assert refused.value.message == (
        f"{writer.label} cannot write workload {table.workload}: column price is "
        "DECIMAL(10,2), and Zerobus documents no JSON form for DECIMAL"
    )
    assert delta_rows(endpoints, table.delta_table) == []
    return table


async def check_nan_refused(
    endpoints: dict[str, Any], writer: DataWriterInterface, prefix: str
) -> None:
    """A value JSON has no form for (NaN) fails the whole batch before anything is sent."""
    (batch,) = telemetry_batches(endpoints, prefix, writer.name, count=1)
    latitude = batch.data.column("latitude").to_pylist()
    latitude[3] = float("nan")
    data = batch.data.set_column(
        batch.data.schema.get_field_index("latitude"),
        batch.data.schema.field("latitude"),
        pa.array(latitude, pa.float64()),
    )
    with pytest.raises(WriteFailedError) as refused:
        await writer.write(Rows(batch.table, data, batch.batch_id))
    assert refused.value.message == (
        "cannot encode the batch as JSON: column latitude: JSON has no form for nan; "
        "nothing was sent"
    )
    assert delta_rows(endpoints, batch.table.delta_table) == []


def workspace_targets(endpoints: dict[str, Any], secret: str) -> Targets:
    """Databricks mode, with the local stack standing in for the workspace and Zerobus."""
    settings = Settings(
        app_mode="databricks",
        databricks_host=endpoints["api_url"],
        databricks_client_id=endpoints["oauth_client_id"],
        databricks_client_secret=SecretStr(secret),
    )
    # The service principal as unified auth resolves it; only its client credentials are
    # read by these writers, so the SDK's Config (which would authenticate at once) is left out.
    auth = WorkspaceAuth(
        config=SimpleNamespace(client_id=endpoints["oauth_client_id"], client_secret=secret),
        host=endpoints["api_url"],
        auth_type="oauth-m2m",
        profile=None,
        source="DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET",
    )
    return Targets(
        mode="databricks",
        settings=settings,
        zerobus_endpoint=endpoints["zerobus_rest_url"],
        workspace_url=endpoints["api_url"],
        warehouse_id="local",
        workspace_auth=auth,
    )
