"""The local stack's Arrow Flight DoPut, driven by a plain gRPC client speaking Flight.proto
(every byte under the test's control) and, for rotation, by the Zerobus SDK itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import httpx
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from google.rpc import error_details_pb2, status_pb2

from emulator.process import LocalStackProcess
from proto import arrow_flight_pb2 as fpb
from proto import arrow_flight_pb2_grpc as fpb_grpc
from tests.conftest import run_sql
from writers.zerobus_arrow import BearerToken

DDL = "id BIGINT NOT NULL, name STRING, score DOUBLE, tags ARRAY<STRING>, day DATE"
SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), False),
        pa.field("name", pa.large_string()),
        pa.field("score", pa.float64()),
        pa.field("tags", pa.list_(pa.field("item", pa.large_string()))),
        pa.field("day", pa.date32()),
    ]
)


def new_table(endpoints: dict[str, Any], ddl: str = DDL) -> str:
    name = f"main.default.flight_{secrets.token_hex(4)}"
    run_sql(endpoints, f"CREATE TABLE {name} ({ddl}) USING DELTA")
    return name


def stored(endpoints: dict[str, Any], table: str) -> list[dict[str, Any]]:
    path = Path(endpoints["data_dir"], "tables", *table.split("."))
    return sorted(DeltaTable(str(path)).to_pyarrow_table().to_pylist(), key=lambda r: r["id"])


def rows(start: int, n: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(
        [
            {"id": i, "name": f"n{i}", "score": i / 3, "tags": [f"t{i}", "x"], "day": None}
            for i in range(start, start + n)
        ],
        schema=SCHEMA,
    )


def ipc_frames(
    schema: pa.Schema, batches: list[pa.RecordBatch], compression: str | None = None
) -> list[tuple[bytes, bytes]]:
    """(header, body) of each IPC message, schema first: what FlightData carries."""
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, schema, options=options) as writer:
        for batch in batches:
            writer.write_batch(batch)
    reader = pa.ipc.MessageReader.open_stream(sink.getvalue())
    return [(m.metadata.to_pybytes(), m.body.to_pybytes() if m.body else b"") for m in reader]


def data_frame(header: bytes, body: bytes, offset: int) -> fpb.FlightData:
    metadata = json.dumps({"offset_id": offset}).encode()
    return fpb.FlightData(data_header=header, data_body=body, app_metadata=metadata)


class DoPut:
    """One DoPut call, written and read step by step."""

    def __init__(self, endpoints: dict[str, Any], table: str, token: str | None = None) -> None:
        self.channel = grpc.aio.insecure_channel(urlsplit(endpoints["zerobus_endpoint"]).netloc)
        stub = fpb_grpc.FlightServiceStub(self.channel)
        self.call = stub.DoPut(
            metadata=(
                ("authorization", f"Bearer {token or endpoints['token']}"),
                ("x-databricks-zerobus-table-name", table),
            )
        )

    async def send(self, frame: fpb.FlightData) -> None:
        # The server may have ended the call already; failure() reports how.
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self.call.write(frame)

    async def ack(self) -> dict[str, Any]:
        result = await asyncio.wait_for(self.call.read(), 10)
        assert result is not grpc.aio.EOF, "the server ended the call without an answer"
        decoded: dict[str, Any] = json.loads(result.app_metadata)
        return decoded

    async def failure(self) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            while await asyncio.wait_for(self.call.read(), 10) is not grpc.aio.EOF:
                pass
        return failed.value

    async def close(self) -> None:
        await self.channel.close()


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    trailer = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(trailer)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    info = error_details_pb2.ErrorInfo()
    assert len(status.details) == 1 and status.details[0].Unpack(info)
    return info


def schema_frame(schema: pa.Schema) -> fpb.FlightData:
    header, body = ipc_frames(schema, [])[0]
    return fpb.FlightData(data_header=header, data_body=body)


@pytest.mark.parametrize("compression", [None, "lz4", "zstd"])
async def test_frames_are_stored_and_acknowledged_by_cumulative_records(local_stack, compression):
    table = new_table(local_stack)
    first, second = rows(0, 3), rows(3, 5)
    (schema_msg, *batches) = ipc_frames(SCHEMA, [first, second], compression)
    put = DoPut(local_stack, table)
    try:
        await put.send(fpb.FlightData(data_header=schema_msg[0], data_body=schema_msg[1]))
        assert await put.ack() == {"ack_up_to_offset": -1, "ack_up_to_records": 0}
        await put.send(data_frame(*batches[0], 0))
        assert await put.ack() == {"ack_up_to_offset": 0, "ack_up_to_records": 3}
        await put.send(data_frame(*batches[1], 1))
        assert await put.ack() == {"ack_up_to_offset": 1, "ack_up_to_records": 8}
        await put.call.done_writing()
        assert await put.call.code() == grpc.StatusCode.OK
    finally:
        await put.close()
    assert stored(local_stack, table) == first.to_pylist() + second.to_pylist()


async def test_a_wrong_token_is_unauthenticated(local_stack):
    table = new_table(local_stack)
    put = DoPut(local_stack, table, token="not-the-token")
    try:
        # Refused on the headers alone, before any message is read: nothing to send (a
        # write racing the server's abort can end the call with the client's own error).
        error = await put.failure()
    finally:
        await put.close()
    assert (error.code(), error.details()) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid or missing bearer token",
    )


async def test_an_unknown_table_is_not_found(local_stack):
    put = DoPut(local_stack, "main.default.no_such_table")
    try:
        error = await put.failure()  # refused on the headers alone, as above
    finally:
        await put.close()
    assert (error.code(), error.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "table main.default.no_such_table does not exist",
    )


MISMATCHES = [
    (
        "FIELD_NOT_IN_TABLE",
        pa.schema([pa.field("id", pa.int64(), False), pa.field("colour", pa.large_string())]),
        "colour",
        "field colour is not a column of the table",
    ),
    (
        "MISSING_REQUIRED_COLUMN",
        pa.schema([pa.field("name", pa.large_string())]),
        "id",
        "column id is NOT NULL and the Arrow schema has no field for it",
    ),
    (
        "FIELD_OUT_OF_ORDER",
        pa.schema(
            [
                pa.field("id", pa.int64(), False),
                pa.field("day", pa.date32()),
                pa.field("name", pa.large_string()),
            ]
        ),
        "name",
        "field name comes after column day, and the table has it before",
    ),
    (
        "TYPE_INCOMPATIBLE",
        pa.schema([pa.field("id", pa.int32(), False)]),
        "id",
        "field id: Arrow type int32 does not fit column type int64",
    ),
    (
        "TYPE_INCOMPATIBLE",
        pa.schema([pa.field("id", pa.int64(), True)]),
        "id",
        "field id: nullability differs: the column is not nullable",
    ),
    (
        "FIELD_COUNT_MISMATCH",
        pa.schema([*SCHEMA, pa.field("extra", pa.int8())]),
        None,
        "the Arrow schema has 6 fields, the table 5 columns",
    ),
]


@pytest.mark.parametrize(("cause", "schema", "field", "message"), MISMATCHES)
async def test_a_schema_mismatch_names_its_cause_and_writes_nothing(
    local_stack, cause, schema, field, message
):
    table = new_table(local_stack)
    put = DoPut(local_stack, table)
    try:
        await put.send(schema_frame(schema))
        error = await put.failure()
    finally:
        await put.close()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == f"schema validation failed ({cause}): {message}"
    info = error_info(error)
    assert (info.reason, info.domain) == ("SCHEMA_VALIDATION_FAILED", "zerobus.databricks.com")
    assert dict(info.metadata) == ({"cause": cause, "field": field} if field else {"cause": cause})
    assert stored(local_stack, table) == []


async def test_omitted_nullable_columns_are_stored_as_null(local_stack):
    table = new_table(local_stack)
    narrow = pa.schema([pa.field("id", pa.int64(), False), pa.field("score", pa.float64())])
    batch = pa.RecordBatch.from_pylist([{"id": 7, "score": -0.5}], schema=narrow)
    schema_msg, frame = ipc_frames(narrow, [batch])
    put = DoPut(local_stack, table)
    try:
        await put.send(fpb.FlightData(data_header=schema_msg[0]))
        assert await put.ack() == {"ack_up_to_offset": -1, "ack_up_to_records": 0}
        await put.send(data_frame(*frame, 0))
        assert await put.ack() == {"ack_up_to_offset": 0, "ack_up_to_records": 1}
    finally:
        await put.close()
    assert stored(local_stack, table) == [
        {"id": 7, "name": None, "score": -0.5, "tags": None, "day": None}
    ]


@pytest.mark.parametrize(
    ("header", "body", "reason"),
    [
        (b"\x00garbage header", b"", "not a valid Arrow IPC record batch"),
        (None, b"\x01" * 8, "not a valid Arrow IPC record batch"),  # body too short
    ],
)
async def test_bad_ipc_bytes_fail_the_call_and_keep_what_was_stored(
    local_stack, header, body, reason
):
    table = new_table(local_stack)
    good = rows(0, 4)
    schema_msg, frame, later = ipc_frames(SCHEMA, [good, rows(10, 2)])
    put = DoPut(local_stack, table)
    try:
        await put.send(fpb.FlightData(data_header=schema_msg[0]))
        await put.ack()
        await put.send(data_frame(*frame, 0))
        assert await put.ack() == {"ack_up_to_offset": 0, "ack_up_to_records": 4}
        await put.send(data_frame(header if header is not None else later[0], body, 1))
        error = await put.failure()
    finally:
        await put.close()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"offset 1: {reason}: "), error.details()
    assert stored(local_stack, table) == good.to_pylist()


async def test_a_first_message_that_is_not_a_schema_is_refused(local_stack):
    table = new_table(local_stack)
    _, frame = ipc_frames(SCHEMA, [rows(0, 1)])
    put = DoPut(local_stack, table)
    try:
        await put.send(data_frame(*frame, 0))
        error = await put.failure()
    finally:
        await put.close()
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "the first FlightData is not an Arrow IPC schema message: it is a record batch message",
    )
    assert stored(local_stack, table) == []


async def test_offsets_out_of_order_are_refused(local_stack):
    table = new_table(local_stack)
    schema_msg, frame = ipc_frames(SCHEMA, [rows(0, 2)])
    put = DoPut(local_stack, table)
    try:
        await put.send(fpb.FlightData(data_header=schema_msg[0]))
        await put.ack()
        await put.send(data_frame(*frame, 1))
        error = await put.failure()
    finally:
        await put.close()
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "offset_id 1 out of order: expected 0",
    )


async def test_rotation_through_the_sdk_loses_no_row(tmp_path):
    from zerobus.sdk.aio import ZerobusSdk
    from zerobus.sdk.shared.arrow import ArrowStreamConfigurationOptions

    stack = LocalStackProcess(
        tmp_path / "data",
        token=secrets.token_urlsafe(16),
        args=["--no-postgres", "--rotation-interval", "0.7", "--rotation-grace", "0.3"],
    )
    endpoints = stack.start()
    try:
        table = new_table(endpoints)
        sdk = ZerobusSdk(endpoints["zerobus_endpoint"], endpoints["api_url"])
        await sdk._inner.set_use_tls(False)
        options = ArrowStreamConfigurationOptions(
            recovery_backoff_ms=100, recovery_timeout_ms=5000, recovery_retries=5
        )
        stream = await sdk.create_arrow_stream_with_headers_provider(
            table, SCHEMA, BearerToken(endpoints["token"]), options
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3.0
        k = 0
        while loop.time() < deadline:
            await stream.ingest_batch(rows(k * 50, 50))
            k += 1
            await asyncio.sleep(0.01)
        await stream.flush()
        await stream.close()
        status = httpx.get(
            f"{endpoints['api_url']}/api/local/status",
            headers={"Authorization": f"Bearer {endpoints['token']}"},
        ).json()
        back = stored(endpoints, table)
    finally:
        assert stack.stop() == 0
    assert status["arrow_flight"]["streams_created"] >= 3
    ids = [r["id"] for r in back]
    assert set(ids) == set(range(k * 50))  # nothing lost
    # At-least-once: a replay re-sends whole batches the server had not acknowledged.
    duplicates = len(ids) - len(set(ids))
    assert duplicates % 50 == 0
    print(f"batches={k} streams={status['arrow_flight']['streams_created']} dup={duplicates}")
