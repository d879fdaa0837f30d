"""POST /api/v1/process-structured end to end: real app, real local stack, rows read back."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import psycopg
import pytest
from deltalake import DeltaTable

from tests.conftest import DATABRICKS_ONLY
from tests.emulator.zerobus_support import table_path
from writers import WRITERS, ingest_writers
from writers.sql_connector import LOCAL_REASON

# Every writer that stores rows, from the registry; those the local stack can serve, and of
# them all but lakebase write the Delta table.
STORING = ingest_writers()
LOCAL = [w for w in STORING if w not in DATABRICKS_ONLY]
DELTA_WRITERS = [w for w in LOCAL if w != "lakebase"]

WATCH = {
    "product_id": "PROD005",
    "product_name": "Smart Watch",
    "product_price": 499.99,
    "category": "electronics",
    "sale_start_date": "2026-11-01",
    "sale_stop_date": "2026-11-30",
    "description": "O'Brien's \"best\" watch — ⌚",
}


def delta_rows(endpoints: dict[str, Any], batch_id: str, source: str) -> list[dict[str, Any]]:
    data = DeltaTable(str(table_path(endpoints, "main.default.products"))).to_pyarrow_table()
    rows = [r for r in data.to_pylist() if r["batch_id"] == batch_id and r["source"] == source]
    return sorted(rows, key=lambda r: r["record_id"])


def postgres_rows(endpoints: dict[str, Any], batch_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(endpoints["postgres_dsn"]) as conn:
        cur = conn.execute(
            "SELECT * FROM public.products WHERE batch_id = %s ORDER BY record_id", (batch_id,)
        )
        names = [c.name for c in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def expected_row(item: dict[str, Any], batch_id: str, index: int, source: str) -> dict[str, Any]:
    return {
        "record_id": f"{batch_id}-{index:06d}",
        "product_id": item["product_id"],
        "product_name": item["product_name"],
        "product_price": item["product_price"],
        "category": item["category"],
        "sale_start_date": dt.date.fromisoformat(item["sale_start_date"]),
        "sale_stop_date": dt.date.fromisoformat(item["sale_stop_date"]),
        "batch_id": batch_id,
        "source": source,
        "description": item.get("description"),
    }


def stored(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "processed_at"}


def test_one_record_through_zerobus(client, local_stack):
    resp = client.post(
        "/api/v1/process-structured",
        json={"schema_type": "products", "writer_type": "zerobus", "items": [WATCH]},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "success" and body["processed_count"] == 1
    (result,) = body["results"]
    assert result["writer"] == "zerobus" and result["rows_written"] == 1
    assert isinstance(result["details"]["offset"], int)
    rows = delta_rows(local_stack, body["batch_id"], "zerobus")
    assert [stored(r) for r in rows] == [expected_row(WATCH, body["batch_id"], 0, "zerobus")]
    assert rows[0]["processed_at"].tzinfo is not None


def test_all_writes_the_same_items_to_every_target(client, local_stack):
    items = [WATCH, {**WATCH, "product_id": "PROD006", "product_name": "Laptop"}]
    resp = client.post("/api/v1/process-structured", json={"writer_type": "all", "items": items})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    batch = body["batch_id"]
    assert [r["writer"] for r in body["results"]] == STORING
    by_writer = {r["writer"]: r for r in body["results"]}
    # Databricks mode only: unavailable on the local stack, with the reason.
    connector = by_writer.pop("sql-connector")
    assert (connector["status"], connector["rows_written"]) == ("unavailable", 0)
    assert connector["error"]["message"] == LOCAL_REASON
    assert all(r["status"] == "success" and r["rows_written"] == 2 for r in by_writer.values())
    assert body["processed_count"] == 2 * len(LOCAL)
    for source in DELTA_WRITERS:
        rows = [stored(r) for r in delta_rows(local_stack, batch, source)]
        assert rows == [expected_row(it, batch, i, source) for i, it in enumerate(items)]
    pg = [stored(r) for r in postgres_rows(local_stack, batch)]
    assert pg == [expected_row(it, batch, i, "lakebase") for i, it in enumerate(items)]


def test_unknown_writer_names_the_valid_ones(client):
    resp = client.post(
        "/api/v1/process-structured", json={"writer_type": "kafka", "items": [WATCH]}
    )
    assert resp.status_code == 400
    assert resp.json() == {
        "error": "unknown_writer",
        "message": f"unknown writer 'kafka'; writer_type must be {', '.join(STORING)} or 'all'",
        "writer": None,
    }


def test_null_writer_is_not_for_ingestion(client):
    resp = client.post("/api/v1/process-structured", json={"writer_type": "null", "items": [WATCH]})
    assert resp.status_code == 400
    assert "benchmark baseline that stores nothing" in resp.json()["message"]


NOT_A_NUMBER = "Input should be a valid number"


def _item(**changes: Any) -> dict[str, Any]:
    item = dict(WATCH)
    for key, value in changes.items():
        if value is ...:
            item.pop(key)
        else:
            item[key] = value
    return item


@pytest.mark.parametrize(
    ("items", "loc", "message"),
    [
        (
            [_item(product_price=-1)],
            ["body", "items", 0, "product_price"],
            "greater than or equal to 0",
        ),
        ([_item(product_price="12.5")], ["body", "items", 0, "product_price"], NOT_A_NUMBER),
        ([_item(product_price=True)], ["body", "items", 0, "product_price"], NOT_A_NUMBER),
        ([_item(product_id="")], ["body", "items", 0, "product_id"], "at least 1 character"),
        ([_item(product_name="x" * 257)], ["body", "items", 0, "product_name"], "at most 256"),
        ([_item(product_id=...)], ["body", "items", 0, "product_id"], "Field required"),
        (
            [_item(sale_start_date="2026-12-01")],
            ["body", "items", 0, "sale_stop_date"],
            "sale_stop_date must be on or after sale_start_date",
        ),
        (
            [_item(sale_stop_date="30/11/2026")],
            ["body", "items", 0, "sale_stop_date"],
            "valid date",
        ),
        ([_item(category="c" * 65)], ["body", "items", 0, "category"], "at most 64"),
        ([_item(colour="red")], ["body", "items", 0, "colour"], "Extra inputs are not permitted"),
        (
            [WATCH, _item(product_price=None)],
            ["body", "items", 1, "product_price"],
            "Input should be a valid number",
        ),
        ([], ["body", "items"], "at least 1 item"),
        ("PROD005", ["body", "items"], "valid array"),
    ],
)
def test_invalid_items_get_field_messages_and_write_nothing(
    client, local_stack, items, loc, message
):
    before = DeltaTable(str(table_path(local_stack, "main.default.products"))).version()
    resp = client.post("/api/v1/process-structured", json={"writer_type": "all", "items": items})
    assert resp.status_code == 422, resp.text
    errors = resp.json()["detail"]
    assert any(e["loc"] == loc and message in e["msg"] for e in errors), errors
    assert DeltaTable(str(table_path(local_stack, "main.default.products"))).version() == before


def test_nan_price_is_rejected(client):
    body = json.dumps({"writer_type": "zerobus", "items": [_item(product_price=float("nan"))]})
    resp = client.post(
        "/api/v1/process-structured", content=body, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422
    assert "finite" in json.dumps(resp.json()["detail"])


def test_wrong_schema_type(client):
    resp = client.post(
        "/api/v1/process-structured",
        json={"schema_type": "orders", "writer_type": "zerobus", "items": [WATCH]},
    )
    assert resp.status_code == 404
    body = resp.json()
    assert (body["error"], body["writer"]) == ("unknown_workload", None)
    # Other tests of the session may have registered workloads of their own.
    assert body["message"].startswith("unknown workload 'orders'; known: products, telemetry")


def test_malformed_json(client):
    resp = client.post(
        "/api/v1/process-structured",
        content=b'{"writer_type": "zerobus", "items": [',
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["type"] == "json_invalid"


def test_too_many_items_is_413(local_stack):
    from tests.app_server import AppServer
    from tests.conftest import app_settings

    server = AppServer(app_settings(local_stack, max_items_per_request=3))
    with server, server.client() as http:
        resp = http.post(
            "/api/v1/process-structured", json={"writer_type": "sql", "items": [WATCH] * 4}
        )
    assert resp.status_code == 413
    assert resp.json()["message"] == "4 items in one request; the limit is 3: split the batch"


def test_huge_body_is_413(client):
    huge = _item(description="x" * (17 * 1024 * 1024))
    resp = client.post(
        "/api/v1/process-structured", json={"writer_type": "zerobus", "items": [huge]}
    )
    assert resp.status_code == 413
    assert resp.json()["error"] == "request_too_large"


def test_debug_endpoints_mask_secrets(client, local_stack):
    zb = client.get("/debug/zerobus-availability").json()
    assert zb["zerobus_writer_available"] is True and zb["reason"] is None
    assert zb["endpoint"] == local_stack["zerobus_endpoint"]
    assert zb["table"] == "main.default.products" and zb["sdk_version"]
    writers = client.get("/debug/writers").json()
    assert [w["name"] for w in writers["writers"]] == list(WRITERS)
    text = json.dumps(zb) + json.dumps(writers)
    assert local_stack["token"] not in text
    assert client.get("/health").json() == {"status": "ok"}


def test_body_that_is_not_json_or_not_utf8(client):
    for raw in (b"\x80\xd4\xdb", b"not json", b""):
        resp = client.post(
            "/api/v1/process-structured",
            content=raw,
            headers={"content-type": "application/json"},
        )
        assert resp.status_code == 422, raw
        (error,) = resp.json()["detail"]
        assert error["type"] == "json_invalid" and error["loc"] == ["body"]


def test_categories_come_from_the_record_model(client):
    from workloads.products import CATEGORIES

    assert client.get("/api/v1/categories").json() == list(CATEGORIES)


def test_all_skips_the_writers_the_page_saw_unavailable(client, local_stack):
    resp = client.post(
        "/api/v1/process-structured",
        json={"writer_type": "all", "items": [WATCH], "skip": ["lakebase", "sql-connector"]},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "partial"
    by_writer = {r["writer"]: r for r in body["results"]}
    assert list(by_writer) == STORING
    skipped = by_writer["lakebase"]
    assert (skipped["status"], skipped["rows_written"]) == ("unavailable", 0)
    assert skipped["error"] == {
        "kind": "unavailable",
        "message": "skipped: the last availability check showed it unavailable (refresh the "
        "writers to try it again)",
    }
    assert postgres_rows(local_stack, body["batch_id"]) == []  # not tried
    assert all(by_writer[w]["status"] == "success" for w in DELTA_WRITERS)
    # skip is for "all" only: one writer named is tried.
    one = client.post(
        "/api/v1/process-structured",
        json={"writer_type": "sql", "items": [WATCH], "skip": ["sql"]},
    )
    assert one.status_code == 200 and one.json()["results"][0]["status"] == "success"


def test_mode_and_stand_ins_are_said(client):
    from bench.environment import LOCAL_NOTICE

    mode = client.get("/api/v1/mode")
    assert mode.status_code == 200, mode.text
    assert mode.json() == {"mode": "local", "notice": LOCAL_NOTICE}
    assert "stood in by the local stack on this machine" in LOCAL_NOTICE
    writers = client.get("/api/v1/writers", params={"baseline": "true"}).json()
    assert {w["name"]: w["stand_in"] for w in writers} == {
        **{w["name"]: True for w in writers if w["stores_rows"]},
        "null": False,
    }
