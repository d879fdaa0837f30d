"""The local stack's Zerobus REST route: rows land exactly, and each bad request gets its
documented error body with nothing of it written."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import httpx
import pytest

from tests.conftest import run_sql
from tests.emulator.zerobus_support import (
    nested_ddl,
    nested_row,
    nested_to_json,
    product,
    read_nested,
    read_rows,
    to_json,
)


def insert_url(endpoints: dict[str, Any], table: str) -> str:
    return f"{endpoints['zerobus_rest_url']}/zerobus/v1/tables/{table}/insert"


def bearer(endpoints: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {endpoints['token']}"}


def body_of(rows: list[dict[str, Any]]) -> str:
    return "[" + ",".join(to_json(r) for r in rows) + "]"


def post(
    endpoints: dict[str, Any], table: str, body: str | bytes, **headers: str
) -> httpx.Response:
    return httpx.post(
        insert_url(endpoints, table),
        content=body,
        headers={**bearer(endpoints), "Content-Type": "application/json", **headers},
        timeout=30,
    )


def test_the_endpoint_is_published(local_stack):
    url = local_stack["zerobus_rest_url"]
    assert url.startswith("http://127.0.0.1:") and url != local_stack["api_url"]
    published = httpx.get(
        f"{local_stack['api_url']}/api/local/endpoints", headers=bearer(local_stack)
    ).json()
    assert published["zerobus_rest_url"] == url


def test_rows_land_exactly_and_only_once_committed(local_stack, products_table):
    rows = [product(i, prefix="rest") for i in range(25)]
    resp = post(local_stack, products_table, body_of(rows))
    assert (resp.status_code, resp.json()) == (200, {})
    # 200 means committed: the Delta table holds them now.
    assert read_rows(local_stack, products_table) == rows
    status = httpx.get(f"{local_stack['api_url']}/api/local/status", headers=bearer(local_stack))
    assert status.json()["tables"][products_table]["rows_committed"] == 25
    assert status.json()["zerobus_rest"]["rows_committed"] >= 25


def test_nested_rows_land_exactly(local_stack):
    table = f"main.default.rest_nested_{secrets.token_hex(3)}"
    run_sql(local_stack, nested_ddl(table))
    rows = [nested_row(i) for i in range(4)]
    resp = post(local_stack, table, "[" + ",".join(nested_to_json(r) for r in rows) + "]")
    assert resp.status_code == 200, resp.text
    assert read_nested(local_stack, table) == rows


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}, {"Authorization": ""}],
)
def test_a_wrong_token_is_unauthenticated(local_stack, products_table, headers):
    resp = post(local_stack, products_table, body_of([product(1)]), **headers)
    assert resp.status_code == 401
    assert resp.json() == {
        "error_code": "UNAUTHENTICATED",
        "message": "invalid or missing bearer token",
    }
    assert read_rows(local_stack, products_table) == []


def test_an_unknown_table_is_not_found(local_stack):
    resp = post(local_stack, "main.default.no_such_table", body_of([product(1)]))
    assert resp.status_code == 404
    assert resp.json() == {
        "error_code": "NOT_FOUND",
        "message": "table main.default.no_such_table does not exist",
    }


def test_a_malformed_table_name_is_invalid(local_stack):
    resp = post(local_stack, "products", body_of([product(1)]))
    assert resp.status_code == 400
    assert resp.json() == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "invalid table name 'products': expected catalog.schema.table with "
        "letters, digits and underscores",
    }


def _bad_price(rows: list[dict[str, Any]], index: int) -> str:
    objects = [json.loads(to_json(r)) for r in rows]
    objects[index]["product_price"] = "cheap"
    return json.dumps(objects)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "[{",
            "the body is not valid JSON: Expecting property name enclosed in double quotes: "
            "line 1 column 3 (char 2)",
        ),
        ("", "the body is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        (
            b"\xff\xfe[",
            "the body is not valid JSON: 'utf-16-le' codec can't decode byte 0x5b "
            "in position 2: truncated data",
        ),
        ('{"record_id": "a"}', "the body must be a JSON array of row objects"),
        ("[]", "the body is an empty array: there are no rows to insert"),
        ('[{"record_id": "x"}, 5]', "record 1 is not a JSON object"),
        (
            _bad_price([product(0), product(1), product(2)], 1),
            "record 1: field 'product_price': expected DOUBLE, got str 'cheap'",
        ),
        (
            json.dumps([{**json.loads(to_json(product(0))), "colour": "red"}]),
            "record 0: field 'colour' is not a column of the table (columns: record_id, "
            "product_id, product_name, product_price, category, sale_start_date, "
            "sale_stop_date, processed_at, batch_id, source, description)",
        ),
        (
            json.dumps([{"record_id": "only"}]),
            "column product_id is NOT NULL but record 0 has no value for it",
        ),
    ],
    ids=[
        "truncated",
        "empty-body",
        "not-utf8",
        "object",
        "empty-array",
        "not-an-object",
        "wrong-type",
        "unknown-column",
        "missing-not-null",
    ],
)
def test_bad_bodies_are_invalid_and_write_nothing(local_stack, products_table, body, message):
    resp = post(local_stack, products_table, body)
    assert resp.status_code == 400
    assert resp.json() == {"error_code": "INVALID_PARAMETER_VALUE", "message": message}
    assert read_rows(local_stack, products_table) == []


def test_a_nested_mismatch_names_its_path(local_stack):
    table = f"main.default.rest_nested_{secrets.token_hex(3)}"
    run_sql(local_stack, nested_ddl(table))
    bad = json.loads(nested_to_json(nested_row(1)))
    bad["route"]["stops"][2]["lat"] = "x"
    resp = post(local_stack, table, json.dumps([json.loads(nested_to_json(nested_row(0))), bad]))
    assert resp.status_code == 400
    assert resp.json() == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "record 1: field 'route.stops[2].lat': expected DOUBLE, got str 'x'",
    }
    assert read_nested(local_stack, table) == []


def test_an_oversize_body_is_refused_and_writes_nothing(local_stack, products_table):
    rows = [product(0, description_bytes=10 * 1024 * 1024)]
    resp = post(local_stack, products_table, body_of(rows))
    assert resp.status_code == 413
    assert resp.json() == {
        "error_code": "REQUEST_LIMIT_EXCEEDED",
        "message": "the request body exceeds the limit of 10485760 bytes",
    }
    # Chunked, without a Content-Length: counted as it arrives.
    chunk = body_of(rows).encode()

    def chunks():
        yield chunk[: len(chunk) // 2]
        yield chunk[len(chunk) // 2 :]

    resp = httpx.post(
        insert_url(local_stack, products_table),
        content=chunks(),
        headers=bearer(local_stack),
        timeout=30,
    )
    assert resp.status_code == 413 and resp.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert read_rows(local_stack, products_table) == []
    # The table takes rows again at once.
    assert post(local_stack, products_table, body_of([product(1)])).status_code == 200
    assert [r["record_id"] for r in read_rows(local_stack, products_table)] == ["rec-00000001"]


def test_other_methods_are_not_implemented(local_stack, products_table):
    resp = httpx.get(insert_url(local_stack, products_table), headers=bearer(local_stack))
    assert resp.status_code == 501
    assert resp.json() == {
        "error_code": "NOT_IMPLEMENTED",
        "message": "GET is not implemented here",
    }


async def test_a_bad_request_does_not_disturb_concurrent_good_ones(local_stack, products_table):
    good = [[product(i, prefix=f"c{k}") for i in range(20)] for k in range(6)]
    bad = _bad_price([product(i, prefix="bad") for i in range(20)], 19)
    async with httpx.AsyncClient(headers=bearer(local_stack), timeout=30) as client:
        url = insert_url(local_stack, products_table)
        answers = await asyncio.gather(
            *(client.post(url, content=body_of(rows)) for rows in good[:3]),
            client.post(url, content=bad),
            *(client.post(url, content=body_of(rows)) for rows in good[3:]),
        )
    assert [a.status_code for a in answers] == [200, 200, 200, 400, 200, 200, 200]
    assert answers[3].json()["message"] == (
        "record 19: field 'product_price': expected DOUBLE, got str 'cheap'"
    )
    stored = read_rows(local_stack, products_table)
    assert stored == sorted((r for rows in good for r in rows), key=lambda r: r["record_id"])


def test_the_wire_byte_counter_counts_each_body_and_needs_the_token(local_stack, products_table):
    url = f"{local_stack['api_url']}/api/local/wire-bytes"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    bodies = [body_of([product(i, prefix=f"w{k}") for i in range(5)]) for k in range(3)]
    bodies.append("[{not json")  # refused, but its bytes were sent all the same
    for body in bodies:
        post(local_stack, products_table, body)
    counted = httpx.get(url, headers=bearer(local_stack)).json()
    assert counted["zerobus-rest"][products_table] == sum(len(b.encode()) for b in bodies)
