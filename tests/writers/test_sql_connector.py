"""The SQL connector writer: unavailable on the local stack (no Thrift there), its settings
and availability reasons in Databricks mode, its statements (the `sql` writer's), and its
connection lanes (one connection per statement in flight)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from dwbench.auth import WorkspaceAuth, resolve_workspace_auth
from dwbench.errors import WriterUnavailableError
from dwbench.settings import Settings
from tests.conftest import local_targets
from workloads import products
from workloads.base import default_table
from workloads.inputs import build_rows, new_batch_id
from writers import WRITERS, writer_class, writer_metadata
from writers.base import Targets
from writers.sql import STATEMENT_BUDGET_BYTES, SqlSettings, SqlWriter, insert_statements
from writers.sql_connector import (
    LOCAL_REASON,
    ConnectionLanes,
    SqlConnectorSettings,
    SqlConnectorWriter,
)


def databricks_targets(
    auth: WorkspaceAuth | None, problem: str | None = None, **config: Any
) -> Targets:
    return Targets(
        mode="databricks",
        settings=Settings(app_mode="databricks"),
        workspace_url=auth.host if auth else None,
        workspace_auth=auth,
        auth_problem=problem,
        writer_settings={
            # The warehouse is the sql writer's setting, shared by every SQL writer.
            "sql": SqlSettings(warehouse_id=config.pop("warehouse_id", None)),
            "sql-connector": SqlConnectorSettings(**config),
        },
    )


@pytest.fixture
def pat(local_stack: dict[str, Any]) -> WorkspaceAuth:
    """Unified auth with a token, resolved against the local stack's API (no network)."""
    return resolve_workspace_auth(
        Settings(
            app_mode="databricks",
            databricks_host=local_stack["api_url"],
            databricks_token=local_stack["token"],
        )
    )


async def test_local_mode_is_unavailable_with_the_reason(local_stack):
    writer = SqlConnectorWriter(local_targets(local_stack))
    assert LOCAL_REASON == (
        "the local stack does not speak the SQL connector's Thrift protocol; use `sql` "
        "(Statement Execution API) locally"
    )
    availability = await writer.availability()
    assert not availability.available and availability.reason == LOCAL_REASON
    with pytest.raises(WriterUnavailableError) as info:
        await writer.open()
    assert info.value.message == LOCAL_REASON and info.value.writer == "sql-connector"
    await writer.close()


async def test_databricks_mode_without_credentials_says_why():
    problem = "no Databricks credentials: set DATABRICKS_HOST and DATABRICKS_TOKEN"
    writer = SqlConnectorWriter(databricks_targets(None, problem, warehouse_id="w1"))
    availability = await writer.availability()
    assert not availability.available and availability.reason == problem
    with pytest.raises(WriterUnavailableError) as info:
        await writer.open()
    assert info.value.message == problem


async def test_databricks_mode_without_a_warehouse_says_so(
    pat: WorkspaceAuth, local_stack: dict[str, Any]
):
    writer = SqlConnectorWriter(databricks_targets(pat))
    reason = "set DATABRICKS_WAREHOUSE_ID to the id of the SQL warehouse to write through"
    availability = await writer.availability()
    assert not availability.available and availability.reason == reason
    assert local_stack["token"] not in repr(availability)
    with pytest.raises(WriterUnavailableError) as info:
        await writer.open()
    assert info.value.message == reason


def test_databricks_details_name_the_http_path(pat: WorkspaceAuth, local_stack: dict[str, Any]):
    writer = SqlConnectorWriter(databricks_targets(pat, warehouse_id="abc123"))
    details = writer._details()
    assert details["http_path"] == "/sql/1.0/warehouses/abc123"
    assert details["warehouse_id"] == "abc123" and details["connections"] == 0
    assert details["auth"] == "pat (DATABRICKS_TOKEN)"
    assert local_stack["token"] not in repr(details)


def test_statements_are_the_sql_writers():
    """Same literals, same statement budget, same split: only the transport differs."""
    assert SqlConnectorWriter.statement_budget_bytes == SqlWriter.statement_budget_bytes
    assert SqlConnectorWriter.statement_budget_bytes == STATEMENT_BUDGET_BYTES
    table = default_table("products", products.SCHEMA, delta_table="main.default.products")
    items = products.sample_items(3, seed=1)
    rows = build_rows(
        products.WORKLOAD, items, batch_id=new_batch_id(), source="sql-connector", table=table
    )
    (statement,) = insert_statements(rows, budget_bytes=SqlConnectorWriter.statement_budget_bytes)
    assert statement.rows == 3
    assert statement.sql.startswith(
        "INSERT INTO `main`.`default`.`products` (`record_id`, `product_id`, "
    )
    assert statement.sql.count("), (") == 2


class FakeConnection:
    """Counts what is done with it, like a databricks.sql Connection would be used."""

    opened = 0
    lock = threading.Lock()

    def __init__(self) -> None:
        with FakeConnection.lock:
            FakeConnection.opened += 1
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_lanes_open_one_connection_per_statement_in_flight_and_no_more():
    FakeConnection.opened = 0
    lanes = ConnectionLanes(3, FakeConnection)
    taken = [lanes.take() for _ in range(3)]
    assert len({id(c) for c in taken}) == 3 and lanes.opened == 3
    waiting: list[Any] = []
    fourth = threading.Thread(target=lambda: waiting.append(lanes.take()))
    fourth.start()
    fourth.join(timeout=0.2)
    assert waiting == []  # a fourth statement waits for a lane
    lanes.give_back(taken[0])
    fourth.join(timeout=5)
    assert waiting == [taken[0]] and FakeConnection.opened == 3
    # A broken connection is closed and its lane opens a new one.
    lanes.give_back(taken[1], broken=True)
    assert taken[1].closed and lanes.opened == 2
    replacement = lanes.take()
    assert replacement not in taken and FakeConnection.opened == 4
    for connection in (waiting[0], taken[2], replacement):
        lanes.give_back(connection)
    lanes.close()
    assert lanes.opened == 0 and all(c.closed for c in (taken[0], taken[2], replacement))


def test_a_failed_connect_frees_its_lane():
    attempts = {"n": 0}

    def connect() -> FakeConnection:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise OSError("warehouse unreachable")
        return FakeConnection()

    lanes = ConnectionLanes(1, connect)
    with pytest.raises(OSError, match="warehouse unreachable"):
        lanes.take()
    assert lanes.opened == 0
    assert isinstance(lanes.take(), FakeConnection) and lanes.opened == 1


def test_it_is_registered_and_listed(client):
    assert "sql-connector" in WRITERS
    assert writer_class("sql-connector") is SqlConnectorWriter
    meta = writer_metadata("sql-connector")
    assert meta["label"] == "SQL warehouse (SQL connector)"
    assert meta["client_distributions"] == ["databricks-sql-connector", "databricks-sdk"]
    listed = {w["name"]: w for w in client.get("/api/v1/writers").json()}
    assert listed["sql-connector"]["label"] == "SQL warehouse (SQL connector)"
    assert listed["sql-connector"]["available"] is False
    assert listed["sql-connector"]["reason"] == LOCAL_REASON
