"""The app's JSON routes answer malformed bodies with 400 or 422 and a reason, never 500:
a body nested 100,000 deep, a 5,000-digit number, bytes that are not UTF-8; and NUL in a
text field is refused at validation, naming the field (issue 11, finding 7)."""

from __future__ import annotations

import pytest

from workloads.inputs import NUL_RULE

DEEP = "[" * 100_000 + "]" * 100_000
JSON = {"content-type": "application/json"}


def item(**fields):
    return {
        "product_id": "P1",
        "product_name": "Watch",
        "product_price": 1.5,
        "category": "c",
        **fields,
    }


@pytest.mark.parametrize(
    ("body", "msg"),
    [
        pytest.param(
            DEEP, "Invalid JSON: recursion limit exceeded at line 1 column 202", id="deep"
        ),
        pytest.param(
            '{"writer_type": "zerobus", "items": [{"product_price": ' + "9" * 5000 + "}]}",
            "Invalid JSON: number out of range at line 1 column 4357",
            id="int",
        ),
        pytest.param(
            b'{"writer_type": "zerobus", "items": ["\xff"]}',
            "Invalid JSON: invalid unicode code point at line 1 column 39",
            id="utf8",
        ),
    ],
)
def test_process_structured_refuses_malformed_json(client, body, msg):
    resp = client.post("/api/v1/process-structured", content=body, headers=JSON)
    assert resp.status_code == 422
    (error,) = resp.json()["detail"]
    assert (error["type"], error["loc"], error["msg"]) == ("json_invalid", ["body"], msg)
    assert len(resp.content) < 2_000  # the 200,000-character body is not echoed back


def test_nul_in_text_is_refused_naming_the_field(client):
    resp = client.post(
        "/api/v1/process-structured",
        json={"writer_type": "zerobus", "items": [item(), item(product_name="a\0b")]},
    )
    assert resp.status_code == 422
    (error,) = resp.json()["detail"]
    assert (error["loc"], error["msg"]) == (
        ["body", "items", 1, "product_name"],
        f"Value error, {NUL_RULE}",
    )


@pytest.mark.parametrize("path", ["/api/v1/benchmarks", "/api/v1/sweeps", "/api/v1/workloads"])
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(DEEP, id="deep"),
        pytest.param('{"batch_size": ' + "9" * 5000 + "}", id="int"),
        pytest.param(b'{"name": "\xff"}', id="utf8"),
    ],
)
def test_other_json_routes_refuse_malformed_json(client, path, body):
    resp = client.post(path, content=body, headers=JSON)
    assert (resp.status_code, resp.json()) == (
        400,
        {"detail": "There was an error parsing the body"},
    )
