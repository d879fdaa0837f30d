"""Batches above a Zerobus interface's message limit are split by the writer or refused
before anything is sent, the limit named (issue 11, finding 7): the SDK's 10,420,224 bytes of
records per message (below the app's 16 MiB request limit) for proto and JSON, a 10 MiB body
for REST, message.max.bytes per record for Kafka. The real clients against the local stack."""

from __future__ import annotations

import pytest

from dwbench.errors import WriteFailedError
from tests.api.test_ingest import delta_rows
from tests.conftest import local_targets, products_ddl, run_sql
from workloads import products
from workloads.inputs import build_rows, new_batch_id
from workloads.products import sample_items
from workloads.wire import json_rows
from writers.zerobus import SDK_MAX_MESSAGE_BYTES, ZerobusJsonWriter, ZerobusWriter
from writers.zerobus_kafka import ZerobusKafkaWriter
from writers.zerobus_rest import REST_MAX_BODY_BYTES, ZerobusRestWriter

REF = products.WORKLOAD.table


def rows_of(count: int, description_bytes: int, source: str):
    items = sample_items(count, seed=7, description_bytes=description_bytes)
    return build_rows(products.WORKLOAD, items, batch_id=new_batch_id(), source=source)


@pytest.mark.slow
@pytest.mark.parametrize("writer_class", [ZerobusWriter, ZerobusJsonWriter])
async def test_a_batch_past_the_sdk_limit_is_split_and_lands_whole(local_stack, writer_class):
    run_sql(local_stack, products_ddl(REF.delta_table))  # IF NOT EXISTS: shared, counted by batch
    writer = writer_class(local_targets(local_stack))
    rows = rows_of(60, 200_000, writer_class.name)  # ~12 MB encoded, one request's worth
    await writer.open()
    try:
        _, size = writer._encode(writer._state(rows.table), rows)
        assert SDK_MAX_MESSAGE_BYTES < size < 16 * 1024 * 1024
        receipt = await writer.write(rows)
        assert receipt.rows == 60
        assert receipt.details["messages"] == 2
        assert await writer.count_rows(rows.table, rows.batch_id) == 60
    finally:
        await writer.close()


async def test_a_row_past_the_sdk_limit_is_refused_before_sending(local_stack):
    run_sql(local_stack, products_ddl(REF.delta_table))
    writer = ZerobusWriter(local_targets(local_stack))
    rows = rows_of(3, 100, "zerobus")
    big = oversized("zerobus", SDK_MAX_MESSAGE_BYTES + 10)
    await writer.open()
    try:
        state = writer._state(rows.table)
        sizes = [len(p) for p in writer._encode(state, big)[0]]
        with pytest.raises(WriteFailedError) as failed:
            await writer.write(big)
        assert failed.value.message == (
            f"row 0 encodes to {sizes[0]:,} bytes; the Zerobus SDK takes at most "
            f"{SDK_MAX_MESSAGE_BYTES:,} bytes per message: nothing was sent"
        )
        assert writer.streams_created == 0  # refused before a stream was opened
        assert (await writer.write(rows)).rows == 3
    finally:
        await writer.close()


@pytest.mark.slow
@pytest.mark.parametrize("writer_type", ["zerobus", "zerobus-json"])
def test_the_app_writes_a_request_the_sdk_alone_would_refuse(local_stack, client, writer_type):
    """12 items of 1,000,000 characters: a 12 MB body, under the app's 16 MiB limit, and
    past the SDK's per-message limit once encoded."""
    items = [
        {**item.model_dump(mode="json"), "description": "y" * 1_000_000}
        for item in sample_items(12, seed=3)
    ]
    resp = client.post(
        "/api/v1/process-structured",
        json={"writer_type": writer_type, "items": items},
        timeout=120,
    )
    assert resp.status_code == 200, resp.text[:500]
    body = resp.json()
    assert (body["status"], body["processed_count"]) == ("success", 12)
    (result,) = body["results"]
    assert (result["status"], result["rows_written"]) == ("success", 12)
    assert result["details"]["messages"] == 2
    stored = delta_rows(local_stack, body["batch_id"], writer_type)
    assert sorted(r["product_name"] for r in stored) == sorted(i["product_name"] for i in items)
    assert {len(r["description"]) for r in stored} == {1_000_000}


def oversized(source: str, description_bytes: int):
    """One row with a description past the input model's limit (rows from a --rows-from
    file's wide column can be this large)."""
    item = sample_items(1)[0]
    big = type(item).model_construct(
        **{**item.model_dump(), "description": "x" * description_bytes}
    )
    return build_rows(products.WORKLOAD, [big], batch_id=new_batch_id(), source=source)


@pytest.mark.slow
async def test_zerobus_rest_sends_a_batch_past_its_body_limit_as_several_requests(local_stack):
    run_sql(local_stack, products_ddl(REF.delta_table))
    writer = ZerobusRestWriter(local_targets(local_stack))
    rows = rows_of(60, 200_000, "zerobus-rest")  # ~12 MB of JSON: past the 10 MiB body cap
    await writer.open()
    try:
        receipt = await writer.write(rows)
        assert receipt.rows == 60
        assert receipt.details["requests"] == 2 and writer.requests == 2
        # Two bodies: the records, a comma between neighbours and a pair of brackets each.
        records = [r.encode() for r in json_rows(rows.data, rows.table.schema)]
        assert receipt.details["bytes"] == sum(map(len, records)) + len(records) - 2 + 4
        assert await writer.count_rows(rows.table, rows.batch_id) == 60
    finally:
        await writer.close()


async def test_zerobus_rest_refuses_a_row_past_its_body_limit_before_sending(local_stack):
    run_sql(local_stack, products_ddl(REF.delta_table))
    writer = ZerobusRestWriter(local_targets(local_stack))
    big = oversized("zerobus-rest", REST_MAX_BODY_BYTES)
    await writer.open()
    try:
        with pytest.raises(WriteFailedError) as failed:
            await writer.write(big)
        length = len(next(iter(json_rows(big.data, big.table.schema))).encode())
        assert failed.value.message == (
            f"row 0 encodes to {length:,} bytes of JSON; a Zerobus REST request carries at "
            f"most {REST_MAX_BODY_BYTES:,} bytes: nothing was sent"
        )
        assert writer.requests == 0
    finally:
        await writer.close()


async def test_zerobus_kafka_refuses_a_record_past_message_max_bytes_before_sending(
    local_stack,
):
    run_sql(local_stack, products_ddl(REF.delta_table))
    writer = ZerobusKafkaWriter(local_targets(local_stack))
    big = oversized("zerobus-kafka", 1_000_000)
    await writer.open()
    try:
        with pytest.raises(WriteFailedError) as failed:
            await writer.write(big)
        length = len(next(iter(json_rows(big.data, big.table.schema))).encode())
        assert failed.value.message == (
            f"row 0 encodes to {length:,} bytes of JSON; a Kafka record takes at most "
            "999,964 (message.max.bytes 1,000,000 less the record's framing): nothing was sent"
        )
        assert writer.records == 0 and writer.producers_created == 0
        assert (await writer.write(rows_of(3, 100, "zerobus-kafka"))).rows == 3
    finally:
        await writer.close()
