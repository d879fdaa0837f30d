"""Malformed input on every interface of the local stack gets that interface's documented
error (gRPC INVALID_ARGUMENT, HTTP 400, Kafka INVALID_RECORD, MQTT 0x99), never gRPC
UNKNOWN or HTTP 500: JSON nested 100,000 deep, a 5,000-digit integer, bytes that are not
the message they claim to be, invalid UTF-8 (issue 11, finding 7)."""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from typing import Any
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
from kafka.protocol.producer.produce import ProduceResponse

from proto import zerobus_service_pb2 as pb
from tests.conftest import products_ddl, run_sql
from tests.emulator import test_flight as flight
from tests.emulator import test_kafka as kafka
from tests.emulator import test_mqtt as mqtt
from tests.emulator.test_rest_route import post
from tests.emulator.zerobus_support import product, read_rows, to_json

DEEP = "[" * 100_000 + "]" * 100_000
DIGITS = sys.get_int_max_str_digits()
HUGE = to_json(product(1)).replace('"product_price": 1.75', '"product_price": ' + "9" * 5000)
NOT_UTF8 = to_json(product(1)).encode().replace(b"Smart Watch", b"Smart \xff Watch")
DEEP_PROBLEM = "is not valid JSON: it is nested too deeply"
HUGE_PROBLEM = f"is not valid JSON: a number has more than {DIGITS} digits"


@pytest.fixture
def table(local_stack: dict[str, Any]) -> str:
    name = f"main.default.malformed_{secrets.token_hex(4)}"
    run_sql(local_stack, products_ddl(name))
    return name


# -- Zerobus gRPC, raw bytes on the wire --------------------------------------------------------


async def raw_stream(
    endpoints: dict[str, Any],
    table: str,
    messages: list[bytes],
    method: str = "/databricks.zerobus.Zerobus/EphemeralStream",
) -> grpc.aio.AioRpcError:
    """Send serialized request messages of `method` (a stream on the Zerobus port) as they
    are; the error the call ends with."""
    async with grpc.aio.insecure_channel(urlsplit(endpoints["zerobus_endpoint"]).netloc) as ch:
        call = ch.stream_stream(
            method,
            request_serializer=lambda data: data,
            response_deserializer=lambda data: data,
        )(
            metadata=(
                ("authorization", f"Bearer {endpoints['token']}"),
                ("x-databricks-zerobus-table-name", table),
            )
        )
        for data in messages:
            try:
                await call.write(data)
            except grpc.aio.AioRpcError:
                break
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            while await asyncio.wait_for(call.read(), 10) is not grpc.aio.EOF:
                pass
        return failed.value


def field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field, bytes as they are (what a client may send and
    protobuf-python would not build: invalid UTF-8 in a string)."""
    size, length = len(payload), b""
    while True:
        byte, size = size & 0x7F, size >> 7
        length += bytes([byte | (0x80 if size else 0)])
        if not size:
            break
    return bytes([number << 3 | 2]) + length + payload


def number_of(message: Any, name: str) -> int:
    return int(message.DESCRIPTOR.fields_by_name[name].number)


def create(table: str | bytes, record_type: int = pb.JSON) -> bytes:
    name = table.encode() if isinstance(table, str) else table
    rest = pb.CreateIngestStreamRequest(record_type=record_type).SerializeToString()
    inner = field(number_of(pb.CreateIngestStreamRequest, "table_name"), name) + rest
    return field(number_of(pb.EphemeralStreamRequest, "create_stream"), inner)


def json_record(payload: bytes, offset: int = 0) -> bytes:
    rest = pb.IngestRecordRequest(offset_id=offset).SerializeToString()
    inner = rest + field(number_of(pb.IngestRecordRequest, "json_record"), payload)
    return field(number_of(pb.EphemeralStreamRequest, "ingest_record"), inner)


def json_batch(payload: str) -> bytes:
    return pb.EphemeralStreamRequest(
        ingest_record_batch=pb.IngestRecordBatchRequest(
            offset_id=0, json_batch=pb.JsonRecordBatch(records=[payload])
        )
    ).SerializeToString()


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        pytest.param(
            lambda t: [create(t), json_batch(DEEP)], f"offset 0: record 0 {DEEP_PROBLEM}", id="deep"
        ),
        pytest.param(
            lambda t: [create(t), json_batch(HUGE)], f"offset 0: record 0 {HUGE_PROBLEM}", id="int"
        ),
        pytest.param(
            lambda t: [b"\x0a\xff\xff\xff"],
            "the first message: it is not a valid EphemeralStreamRequest message "
            "(Error parsing message with type 'databricks.zerobus.EphemeralStreamRequest')",
            id="undecodable-first",
        ),
        pytest.param(
            lambda t: [create(t), b"\x12\x05\x08"],
            "offset 0: it is not a valid EphemeralStreamRequest message "
            "(Error parsing message with type 'databricks.zerobus.EphemeralStreamRequest')",
            id="undecodable-later",
        ),
        pytest.param(
            lambda t: [create(t.encode().replace(b"main", b"ma\xffn"))],
            "create_stream.table_name is not valid UTF-8",
            id="table-name-utf8",
        ),
        pytest.param(
            lambda t: [create(t), json_record(b'{"record_id": "\xff"}')],
            "offset 0: record 0 is not valid JSON: 'utf-8' codec can't decode byte 0xff in "
            "position 15: invalid start byte",
            id="record-utf8",
        ),
    ],
)
async def test_zerobus_grpc(local_stack, table, messages, message):
    error = await raw_stream(local_stack, table, messages(table))
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    assert read_rows(local_stack, table) == []


# -- Arrow Flight -------------------------------------------------------------------------------


async def test_flight_undecodable_frames_and_metadata(local_stack):
    name = flight.new_table(local_stack)
    cases = [
        ([b"\x0a\xff\xff"], "the first FlightData: it is not a valid FlightData message"),
        (
            [flight.schema_frame(flight.SCHEMA).SerializeToString(), b"\x1a\xff\xff"],
            "frame 0: it is not a valid FlightData message",
        ),
        (
            [
                flight.schema_frame(flight.SCHEMA).SerializeToString(),
                flight.data_frame(b"", b"", 0)
                .SerializeToString()
                .replace(b'{"offset_id": 0}', b"[" * 16),
            ],
            'frame 0: app_metadata must be JSON {"offset_id": N} (Expecting value',
        ),
    ]
    for frames, start in cases:
        failed = await raw_stream(
            local_stack, name, frames, "/arrow.flight.protocol.FlightService/DoPut"
        )
        assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT, failed.details()
        assert (failed.details() or "").startswith(start), failed.details()
    assert flight.stored(local_stack, name) == []


# -- Zerobus REST -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(DEEP, f"the body {DEEP_PROBLEM}", id="deep"),
        pytest.param(f"[{HUGE}]", f"the body {HUGE_PROBLEM}", id="int"),
        pytest.param(b"[" + NOT_UTF8 + b"]", "", id="utf8"),
    ],
)
def test_zerobus_rest(local_stack, table, body, message):
    resp = post(local_stack, table, body)
    assert resp.status_code == 400
    assert resp.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    if message:
        assert resp.json()["message"] == message
    else:
        assert resp.json()["message"].startswith("the body is not valid JSON: 'utf-8' codec")
    assert read_rows(local_stack, table) == []


# -- Kafka and MQTT -----------------------------------------------------------------------------


def test_kafka(local_stack, table):
    c = kafka.RawClient(local_stack)
    try:
        assert c.authenticate(local_stack["token"]).error_code == 0
        for value, problem in ((DEEP, DEEP_PROBLEM), (HUGE, HUGE_PROBLEM)):
            request = kafka.produce(table, kafka.records([value.encode()]))
            refused = kafka.partition_of(c.call(request, ProduceResponse))
            expected = f"record 0 {problem}"
            assert (refused.error_code, refused.error_message) == (kafka.INVALID_RECORD, expected)
    finally:
        c.close()
    assert read_rows(local_stack, table) == []


def test_mqtt(local_stack, table):
    client = mqtt.Client(local_stack, table)
    try:
        answers = client.wait_acks(client.publish(table, [DEEP, HUGE, to_json(product(2))]))
    finally:
        client.close()
    assert answers == [
        (0x99, f"record 0 {DEEP_PROBLEM}"),
        (0x99, f"record 0 {HUGE_PROBLEM}"),
        (0, None),
    ]
    assert [r["record_id"] for r in read_rows(local_stack, table)] == ["rec-00000002"]


# -- the Statement Execution API ----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(DEEP, id="deep"),
        pytest.param('{"statement": "SELECT 1", "warehouse_id": ' + "9" * 5000 + "}", id="int"),
        pytest.param(b'{"statement": "SELECT \xff"}', id="utf8"),
    ],
)
def test_statement_api(local_stack, body):
    resp = httpx.post(
        f"{local_stack['api_url']}/api/2.0/sql/statements",
        content=body,
        headers={"Authorization": f"Bearer {local_stack['token']}"},
    )
    assert resp.status_code == 400
    assert resp.json() == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "Malformed request: the body is not valid JSON.",
    }


def test_a_statement_nested_deeply_is_a_parse_error(local_stack):
    """The statement text itself, nested far beyond any parser's depth: FAILED, with the
    warehouse's error class, not a crash."""
    resp = httpx.post(
        f"{local_stack['api_url']}/api/2.0/sql/statements",
        json={
            "statement": "SELECT " + "(" * 100_000 + "1" + ")" * 100_000,
            "warehouse_id": local_stack["warehouse_id"],
            "wait_timeout": "30s",
        },
        headers={"Authorization": f"Bearer {local_stack['token']}"},
        timeout=60,
    )
    assert resp.status_code == 200
    assert resp.json()["status"]["state"] == "FAILED"
    assert resp.json()["status"]["error"]["message"].startswith("[PARSE_SYNTAX_ERROR]")
    assert json.dumps(resp.json()).count("/") < 20  # no paths in the message


def test_oauth_authorization_details_with_a_huge_number(local_stack):
    resp = httpx.post(
        f"{local_stack['api_url']}/oidc/v1/token",
        data={
            "grant_type": "client_credentials",
            "scope": "all-apis",
            "authorization_details": "[" + "9" * 5000 + "]",
        },
        auth=(local_stack["oauth_client_id"], local_stack["oauth_client_secret"]),
    )
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_request"
    assert resp.json()["error_description"].startswith(
        "authorization_details is not JSON: Exceeds the limit (4300 digits)"
    )
