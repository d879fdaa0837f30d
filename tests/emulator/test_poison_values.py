"""A value Databricks cannot store (a DATE of 2^31-1 days, a TIMESTAMP of int64-max µs) is
refused where it is decoded, on every interface of the local stack, with that interface's
own error, while 8 concurrent writers of valid rows on the same table all succeed; their
rows read back exactly and `SELECT *` of the table still works (issue 11, finding 3)."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import secrets
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from databricks.sdk.service.sql import StatementState
from kafka.protocol.producer.produce import ProduceResponse
from zerobus.sdk.shared import ZerobusException

from proto import arrow_flight_pb2 as fpb
from tests.conftest import products_ddl, run_sql, workspace_client
from tests.emulator import test_flight as flight
from tests.emulator import test_kafka as kafka
from tests.emulator import test_mqtt as mqtt
from tests.emulator.test_rest_route import body_of, post
from tests.emulator.test_zerobus import assert_invalid_argument
from tests.emulator.zerobus_support import (
    async_stream,
    product,
    read_rows,
    to_json,
    to_proto,
)

WRITERS = 8
ROWS = 20  # per valid writer
DATE_DAYS = 2**31 - 1
TIMESTAMP_US = 2**63 - 1
DATE_PROBLEM = (
    f"record 0: field 'sale_start_date': {DATE_DAYS} days since 1970-01-01 is outside the "
    "range of DATE (0001-01-01 to 9999-12-31)"
)
TIMESTAMP_PROBLEM = (
    f"record 0: field 'processed_at': {TIMESTAMP_US} µs since 1970-01-01 is outside the "
    "range of TIMESTAMP (0001-01-01 00:00:00 to 9999-12-31 23:59:59.999999)"
)
PROBLEMS = {"date": DATE_PROBLEM, "timestamp": TIMESTAMP_PROBLEM}


def rows_of(writer: int) -> list[dict[str, Any]]:
    return [product(writer * 1000 + i, prefix=f"w{writer}") for i in range(ROWS)]


def poison_json(kind: str) -> str:
    fields = json.loads(to_json(product(0, prefix="poison")))
    if kind == "date":
        fields["sale_start_date"] = DATE_DAYS
    else:
        fields["processed_at"] = TIMESTAMP_US
    return json.dumps(fields)


def poison_proto(kind: str) -> bytes:
    from proto import product_record_pb2

    msg = product_record_pb2.ProductRecord.FromString(to_proto(product(0, prefix="poison")))
    if kind == "date":
        msg.sale_start_date = DATE_DAYS
    else:
        msg.processed_at = TIMESTAMP_US
    return msg.SerializeToString()


@pytest.fixture
def table(local_stack: dict[str, Any]) -> str:
    name = f"main.default.poison_{secrets.token_hex(4)}"
    run_sql(local_stack, products_ddl(name))
    return name


def in_threads(valid: Callable[[int], None], poison: Callable[[str], Any]) -> dict[str, Any]:
    """Run the 8 valid writers and the two poison writers at once; the poisons' answers."""
    answers: dict[str, Any] = {}
    failures: list[BaseException] = []
    start = threading.Barrier(WRITERS + 2)

    def run(target: Callable[[], Any], key: str | None) -> None:
        try:
            start.wait()
            result = target()
            if key is not None:
                answers[key] = result
        except BaseException as exc:  # reported below, with the writer's failure
            failures.append(exc)

    threads = [
        threading.Thread(target=run, args=(lambda w=w: valid(w), None)) for w in range(WRITERS)
    ]
    threads += [
        threading.Thread(target=run, args=(lambda k=k: poison(k), k)) for k in ("date", "timestamp")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures
    return answers


def assert_table_intact(endpoints: dict[str, Any], table: str) -> None:
    """Exactly the valid writers' rows, and a warehouse SELECT * that works."""
    expected = sorted((r for w in range(WRITERS) for r in rows_of(w)), key=lambda r: r["record_id"])
    assert read_rows(endpoints, table) == expected
    resp = run_sql(endpoints, f"SELECT * FROM {table}")
    assert resp.manifest.total_row_count == WRITERS * ROWS


# -- Zerobus gRPC (proto and JSON records, the official SDK) ---------------------------------


@pytest.mark.parametrize("record_type", ["proto", "json"])
async def test_zerobus_grpc(local_stack, table, record_type):
    encode: Callable[[dict[str, Any]], Any] = to_proto if record_type == "proto" else to_json
    descriptor: dict[str, Any] = {} if record_type == "proto" else {"descriptor": None}

    async def valid(writer: int) -> None:
        stream = await async_stream(local_stack, table, **descriptor)
        await stream.ingest_records_offset([encode(r) for r in rows_of(writer)])
        await stream.flush()
        await stream.close()

    async def poison(kind: str) -> ZerobusException:
        stream = await async_stream(local_stack, table, **descriptor)
        record = poison_proto(kind) if record_type == "proto" else poison_json(kind)
        with pytest.raises(ZerobusException) as err:
            await stream.ingest_records_offset([record])
            await stream.flush()
        return err.value

    results = await asyncio.gather(
        *(valid(w) for w in range(WRITERS)), poison("date"), poison("timestamp")
    )
    assert_invalid_argument(results[-2], f"offset 0: {DATE_PROBLEM}")
    assert_invalid_argument(results[-1], f"offset 0: {TIMESTAMP_PROBLEM}")
    assert_table_intact(local_stack, table)


# -- Zerobus Arrow Flight ---------------------------------------------------------------------

ARROW = pa.schema(
    [
        pa.field("record_id", pa.string(), False),
        pa.field("product_id", pa.string(), False),
        pa.field("product_name", pa.string(), False),
        pa.field("product_price", pa.float64(), False),
        pa.field("category", pa.string(), False),
        pa.field("sale_start_date", pa.date32()),
        pa.field("sale_stop_date", pa.date32()),
        pa.field("processed_at", pa.timestamp("us", tz="UTC")),
        pa.field("batch_id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("description", pa.string()),
    ]
)


def arrow_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=ARROW)


def arrow_poison(kind: str) -> pa.RecordBatch:
    batch = arrow_batch([product(0, prefix="poison")])
    position = ARROW.get_field_index("sale_start_date" if kind == "date" else "processed_at")
    # Arrow holds both: a date32 reaches 5.8 million years, a timestamp[us] 292,000.
    if kind == "date":
        poisoned = pa.array([DATE_DAYS], pa.int32()).view(pa.date32())
    else:
        poisoned = pa.array([TIMESTAMP_US], pa.int64()).view(pa.timestamp("us", tz="UTC"))
    columns = list(batch.columns)
    columns[position] = poisoned
    return pa.RecordBatch.from_arrays(columns, schema=ARROW)


async def test_arrow_flight(local_stack, table):
    async def put(batch: pa.RecordBatch) -> Any:
        call = flight.DoPut(local_stack, table)
        try:
            (schema_header, schema_body), (header, body) = flight.ipc_frames(ARROW, [batch])
            await call.send(fpb.FlightData(data_header=schema_header, data_body=schema_body))
            assert (await call.ack())["ack_up_to_offset"] == -1
            await call.send(flight.data_frame(header, body, 0))
            if batch.num_rows == ROWS:
                assert await call.ack() == {"ack_up_to_offset": 0, "ack_up_to_records": ROWS}
                await call.call.done_writing()
                return None
            return await call.failure()
        finally:
            await call.close()

    results = await asyncio.gather(
        *(put(arrow_batch(rows_of(w))) for w in range(WRITERS)),
        put(arrow_poison("date")),
        put(arrow_poison("timestamp")),
    )
    for error, problem in zip(results[-2:], (DATE_PROBLEM, TIMESTAMP_PROBLEM), strict=True):
        assert error.code().name == "INVALID_ARGUMENT"
        assert error.details() == f"offset 0: {problem}"
    assert_table_intact(local_stack, table)


# -- Zerobus REST -----------------------------------------------------------------------------


def test_zerobus_rest(local_stack, table):
    def valid(writer: int) -> None:
        resp = post(local_stack, table, body_of(rows_of(writer)))
        assert resp.status_code == 200, resp.text

    def poison(kind: str) -> httpx.Response:
        return post(local_stack, table, f"[{poison_json(kind)}]")

    answers = in_threads(valid, poison)
    for kind, problem in PROBLEMS.items():
        assert answers[kind].status_code == 400
        assert answers[kind].json() == {"error_code": "INVALID_PARAMETER_VALUE", "message": problem}
    assert_table_intact(local_stack, table)


# -- Kafka ------------------------------------------------------------------------------------


def test_kafka(local_stack, table):
    def valid(writer: int) -> None:
        p = kafka.producer(local_stack)
        reports = kafka.deliver(p, table, [to_json(r).encode() for r in rows_of(writer)])
        assert [err for err, _ in reports] == [None] * ROWS

    def poison(kind: str) -> Any:
        c = kafka.RawClient(local_stack)
        try:
            assert c.authenticate(local_stack["token"]).error_code == 0
            request = kafka.produce(table, kafka.records([poison_json(kind).encode()]))
            return kafka.partition_of(c.call(request, ProduceResponse))
        finally:
            c.close()

    answers = in_threads(valid, poison)
    for kind, problem in PROBLEMS.items():
        refused = answers[kind]
        assert (refused.error_code, refused.error_message) == (kafka.INVALID_RECORD, problem)
        assert [(e.batch_index, e.batch_index_error_message) for e in refused.record_errors] == [
            (0, problem)
        ]
    assert_table_intact(local_stack, table)


# -- MQTT -------------------------------------------------------------------------------------


def test_mqtt(local_stack, table):
    def valid(writer: int) -> None:
        client = mqtt.Client(local_stack, table)
        try:
            mids = client.publish(table, [to_json(r) for r in rows_of(writer)])
            assert client.wait_acks(mids) == [(0, None)] * ROWS
        finally:
            client.close()

    def poison(kind: str) -> list[tuple[int, str | None]]:
        client = mqtt.Client(local_stack, table)
        try:
            return client.wait_acks(client.publish(table, [poison_json(kind)]))
        finally:
            client.close()

    answers = in_threads(valid, poison)
    for kind, problem in PROBLEMS.items():
        assert answers[kind] == [(0x99, problem)]
    assert_table_intact(local_stack, table)


# -- the Statement Execution API: INSERT and COPY INTO ----------------------------------------


def sql_value(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, dt.datetime):
        return f"TIMESTAMP'{value.isoformat()}'"
    if isinstance(value, dt.date):
        return f"DATE'{value.isoformat()}'"
    if isinstance(value, str):
        return "'" + value.replace("'", "\\'") + "'"
    return repr(value)


def insert_sql(table: str, rows: list[dict[str, Any]]) -> str:
    tuples = ", ".join("(" + ", ".join(sql_value(v) for v in r.values()) + ")" for r in rows)
    return f"INSERT INTO {table} VALUES {tuples}"


def execute(endpoints: dict[str, Any], statement: str) -> Any:
    w = workspace_client(endpoints)
    return w.statement_execution.execute_statement(
        statement=statement, warehouse_id=endpoints["warehouse_id"], wait_timeout="30s"
    )


# The DATE of year 10000 from a SELECT that DuckDB evaluates (its range is wider); the
# TIMESTAMP a VALUES literal the local stack reads itself: 9999-12-31 23:59:59 at UTC-1 is
# 10000-01-01 00:59:59 UTC. (A DATE literal of year 10000 is already malformed there.)
SQL_POISON = {
    "date": ("SELECT", "sale_start_date", "DATE'10000-01-01'"),
    "timestamp": ("VALUES", "processed_at", "TIMESTAMP'9999-12-31 23:59:59-01:00'"),
}
SQL_PROBLEMS = {
    "date": (
        "[DATETIME_OVERFLOW] Datetime operation overflow: Row 1 of the rows, column "
        "`sale_start_date` of `main`.`default`.`{table}`: 2932897 days since 1970-01-01 is "
        "outside the range of DATE (0001-01-01 to 9999-12-31). SQLSTATE: 22008"
    ),
    "timestamp": (
        "[DATETIME_OVERFLOW] Datetime operation overflow: Row 1 of the rows, column "
        "`processed_at` of `main`.`default`.`{table}`: 253402304399000000 µs since 1970-01-01 "
        "is outside the range of TIMESTAMP (0001-01-01 00:00:00 to 9999-12-31 23:59:59.999999)."
        " SQLSTATE: 22008"
    ),
}


def test_sql_insert(local_stack, table):
    def valid(writer: int) -> None:
        resp = execute(local_stack, insert_sql(table, rows_of(writer)))
        assert resp.status.state == StatementState.SUCCEEDED, resp.status

    def poison(kind: str) -> Any:
        form, column, literal = SQL_POISON[kind]
        row = product(0, prefix="poison")
        values = ", ".join(literal if n == column else sql_value(v) for n, v in row.items())
        source = f"SELECT {values}" if form == "SELECT" else f"VALUES ({values})"
        return execute(local_stack, f"INSERT INTO {table} {source}")

    answers = in_threads(valid, poison)
    short = table.rsplit(".", 1)[1]
    for kind, resp in answers.items():
        assert resp.status.state == StatementState.FAILED
        assert resp.status.error.message == SQL_PROBLEMS[kind].format(table=short)
    assert_table_intact(local_stack, table)


def test_copy_into_parquet(local_stack, table):
    w = workspace_client(local_stack)
    stage = f"/Volumes/main/default/stage/poison_{secrets.token_hex(4)}"

    def upload(name: str, batch: pa.RecordBatch) -> str:
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_batches([batch]), sink)
        sink.seek(0)
        w.files.upload(f"{stage}/{name}", sink, overwrite=True)
        return name

    def copy(name: str) -> Any:
        return execute(
            local_stack,
            f"COPY INTO {table} FROM '{stage}' FILEFORMAT = PARQUET FILES = ('{name}')",
        )

    def valid(writer: int) -> None:
        resp = copy(upload(f"valid_{writer}.parquet", arrow_batch(rows_of(writer))))
        assert resp.status.state == StatementState.SUCCEEDED, resp.status

    def poison(kind: str) -> Any:
        return copy(upload(f"poison_{kind}.parquet", arrow_poison(kind)))

    answers = in_threads(valid, poison)
    short = table.rsplit(".", 1)[1]
    for kind, resp in answers.items():
        assert resp.status.state == StatementState.FAILED
        problem = PROBLEMS[kind].removeprefix("record 0: field ")
        column, _, text = problem.partition(": ")
        assert resp.status.error.message == (
            f"[DATETIME_OVERFLOW] Datetime operation overflow: Row 1 of {stage}/poison_{kind}"
            f".parquet, column `{column.strip(chr(39))}` of `main`.`default`.`{short}`: {text}."
            " SQLSTATE: 22008"
        )
    assert_table_intact(local_stack, table)
