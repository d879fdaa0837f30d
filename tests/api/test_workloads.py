"""Workloads over HTTP: listed with their JSON Schema, registered from DDL, columns or a
table, and written through the ingestion API."""

from __future__ import annotations

import secrets
from typing import Any

from deltalake import DeltaTable

from tests.conftest import run_sql


def test_builtins_are_listed_with_their_input_schema(client) -> None:
    workloads = {w["name"]: w for w in client.get("/api/v1/workloads").json()}
    assert list(workloads)[:2] == ["products", "telemetry"]
    products = workloads["products"]
    assert products["input_schema"]["title"] == "ProductItem"
    assert products["input_schema"]["required"] == [
        "product_id",
        "product_name",
        "product_price",
        "category",
    ]
    telemetry = workloads["telemetry"]
    assert (
        telemetry["delta_table"] == "main.default.telemetry"
        and telemetry["id_column"] == "event_id"
    )
    assert telemetry["delta_ddl"].startswith(
        "CREATE TABLE IF NOT EXISTS `main`.`default`.`telemetry`"
    )
    assert 'PRIMARY KEY ("event_id")' in telemetry["postgres_ddl"]
    assert telemetry["parameters"] == {"drivers": 500}
    props = telemetry["input_schema"]["properties"]
    assert props["event_time"]["format"] == "date-time" and props["latitude"]["type"] == "number"
    assert "event_id" not in props and "batch_id" not in props  # the harness fills them
    items = client.get("/api/v1/workloads/telemetry/sample-items?count=3&seed=2").json()
    assert len(items) == 3 and all(i["driver_id"].startswith("driver-") for i in items)
    # Deterministic from the seed, event times included.
    assert client.get("/api/v1/workloads/telemetry/sample-items?count=3&seed=2").json() == items
    assert items[0]["event_time"].startswith("2027-01-01T00:00:00")


def test_telemetry_items_are_written_exactly(client, local_stack: dict[str, Any]) -> None:
    items = client.get("/api/v1/workloads/telemetry/sample-items?count=4&seed=5").json()
    resp = client.post(
        "/api/v1/process-structured",
        json={"schema_type": "telemetry", "writer_type": "zerobus", "items": items},
    )
    assert resp.status_code == 200, resp.text
    batch = resp.json()["batch_id"]
    table = DeltaTable(
        f"{local_stack['data_dir']}/tables/main/default/telemetry"
    ).to_pyarrow_table()
    rows = [r for r in table.to_pylist() if r["batch_id"] == batch]
    assert [r["event_id"] for r in rows] == [f"{batch}-{i:06d}" for i in range(4)]
    assert [r["driver_id"] for r in rows] == [i["driver_id"] for i in items]
    assert [r["latitude"] for r in rows] == [i["latitude"] for i in items]


def test_telemetry_items_are_validated_by_their_own_model(client) -> None:
    resp = client.post(
        "/api/v1/process-structured",
        json={"schema_type": "telemetry", "writer_type": "zerobus", "items": [{"driver_id": "d1"}]},
    )
    assert resp.status_code == 422
    missing = {tuple(e["loc"])[-1] for e in resp.json()["detail"] if e["type"] == "missing"}
    assert {"event_time", "latitude", "longitude", "status"} <= missing


def test_register_from_ddl_then_write_where_each_path_can(
    client, local_stack: dict[str, Any]
) -> None:
    name = f"orders_{secrets.token_hex(3)}"
    ddl = (
        f"CREATE TABLE main.default.{name} (id BIGINT NOT NULL, total DECIMAL(10,2) NOT NULL, "
        "tags ARRAY<STRING>, batch_id STRING, source STRING)"
    )
    created = client.post("/api/v1/workloads", json={"ddl": ddl, "id_column": "id"})
    assert created.status_code == 201, created.text
    assert created.json()["name"] == name
    assert created.json()["input_schema"]["required"] == ["total"]
    item = {"total": "19.99", "tags": ["a"]}
    resp = client.post(
        "/api/v1/process-structured",
        json={"schema_type": name, "writer_type": "all", "items": [item]},
    )
    assert resp.status_code == 200, resp.text
    results = {r["writer"]: r for r in resp.json()["results"]}
    for zerobus in ("zerobus", "zerobus-json"):
        assert results[zerobus]["status"] == "unavailable"
        assert "column total is DECIMAL(10,2)" in results[zerobus]["error"]["message"]
    assert results["sql"]["status"] == results["lakebase"]["status"] == "success"
    only = client.post(
        "/api/v1/process-structured",
        json={"schema_type": name, "writer_type": "zerobus", "items": [item]},
    )
    assert only.status_code == 422 and only.json()["error"] == "schema_not_supported"


def test_register_from_an_existing_table(client, local_stack: dict[str, Any]) -> None:
    name = f"events_{secrets.token_hex(3)}"
    run_sql(
        local_stack,
        f"CREATE TABLE main.default.{name} "
        "(id BIGINT NOT NULL, at TIMESTAMP_NTZ, m MAP<STRING, INT>)",
    )
    resp = client.post(
        "/api/v1/workloads", json={"table": f"main.default.{name}", "id_column": "id"}
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["columns"] == [
        {"name": "id", "type": "BIGINT", "nullable": False, "comment": None},
        {"name": "at", "type": "TIMESTAMP_NTZ", "nullable": True, "comment": None},
        {"name": "m", "type": "MAP<STRING,INT>", "nullable": True, "comment": None},
    ]
    missing = client.post("/api/v1/workloads", json={"table": "main.default.no_such_table"})
    assert missing.status_code == 400
    assert missing.json()["message"] == "table main.default.no_such_table does not exist"


def test_bad_schemas_are_4xx_with_the_reason_and_nothing_is_created(client, local_stack) -> None:
    before = [w["name"] for w in client.get("/api/v1/workloads").json()]
    cases = [
        ("CREATE TABLE main.default.bad1 (id FOO)", "column id: unknown column type 'FOO'"),
        ("CREATE TABLE main.default.bad2 (a INT, A STRING)", "duplicate column 'A'"),
        ("CREATE TABLE main.default.bad3 ()", "a table needs at least one column"),
        ("CREATE TABLE main.default.bad4 (p DECIMAL(39,2))", "precision must be 1 to 38"),
    ]
    for ddl, message in cases:
        resp = client.post("/api/v1/workloads", json={"ddl": ddl})
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"] == "invalid_schema" and message in resp.json()["message"]
    builtin = client.post("/api/v1/workloads", json={"name": "products", "ddl": "a INT"})
    assert builtin.status_code == 400 and "is a built-in workload" in builtin.json()["message"]
    assert client.post("/api/v1/workloads", json={}).status_code == 422
    assert [w["name"] for w in client.get("/api/v1/workloads").json()] == before
    from tests.conftest import workspace_client

    names = [t.name for t in workspace_client(local_stack).tables.list("main", "default")]
    assert names and not any(n.startswith("bad") for n in names)
