"""The local Zerobus service, driven by the official SDK over real sockets.

Every test checks the rows in the Delta table with an independent reader.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import httpx
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from zerobus.sdk.shared import NonRetriableException, ZerobusException

from proto import product_record_pb2
from tests.conftest import products_ddl, run_sql
from tests.emulator.zerobus_support import (
    async_stream,
    product,
    read_rows,
    sync_stream,
    to_json,
    to_proto,
)

# How the SDK (tonic underneath) renders the gRPC status codes in its errors.
INVALID_ARGUMENT = "code: 'Client specified an invalid argument'"
UNAUTHENTICATED = "code: 'The request does not have valid authentication credentials'"
PERMISSION_DENIED = "code: 'The caller does not have permission to execute the specified operation'"
NOT_FOUND = "code: 'Some requested entity was not found'"


def assert_invalid_argument(error: BaseException, message: str) -> None:
    """The SDK reports an in-stream INVALID_ARGUMENT one of two ways, depending on whether the
    ack path or the closed stream sees it first; both carry the server's message."""
    text = str(error)
    assert text in (
        f"Invalid argument: {message}.",
        f'Stream is closed: {INVALID_ARGUMENT}, message: "{message}"',
    ), text


def status(endpoints: dict[str, Any]) -> dict[str, Any]:
    resp = httpx.get(
        f"{endpoints['api_url']}/api/local/status",
        headers={"Authorization": f"Bearer {endpoints['token']}"},
    )
    resp.raise_for_status()
    return resp.json()


def expected(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: r["record_id"])


async def test_async_proto_batches_land_exactly(local_stack, products_table):
    rows = [product(i) for i in range(2500)]
    stream = await async_stream(local_stack, products_table)
    offsets = []
    for start in range(0, len(rows), 1000):
        chunk = rows[start : start + 1000]
        offsets.append(await stream.ingest_records_offset([to_proto(r) for r in chunk]))
    await stream.flush()
    await stream.close()
    # One offset per batch message, counted from 0.
    assert offsets == [0, 1, 2]
    assert read_rows(local_stack, products_table) == expected(rows)


async def test_async_proto_single_records_and_wait_for_offset(local_stack, products_table):
    rows = [product(i, prefix="single") for i in range(50)]
    stream = await async_stream(local_stack, products_table)
    offsets = [await stream.ingest_record_offset(to_proto(r)) for r in rows]
    await stream.wait_for_offset(offsets[-1])
    await stream.close()
    assert offsets == list(range(50))
    assert read_rows(local_stack, products_table) == expected(rows)


async def test_async_json_records_and_batches(local_stack, products_table):
    rows = [product(i, prefix="json") for i in range(30)]
    stream = await async_stream(local_stack, products_table, descriptor=None)
    for r in rows[:10]:
        await stream.ingest_record_offset(to_json(r))
    await stream.ingest_records_offset([to_json(r) for r in rows[10:]])
    await stream.flush()
    await stream.close()
    assert read_rows(local_stack, products_table) == expected(rows)


def test_sync_sdk_proto_and_json(local_stack, products_table):
    proto_rows = [product(i, prefix="sync-proto") for i in range(120)]
    stream = sync_stream(local_stack, products_table)
    for r in proto_rows[:20]:
        stream.ingest_record_offset(to_proto(r))
    last = stream.ingest_records_offset([to_proto(r) for r in proto_rows[20:]])
    assert last == 20
    stream.flush()
    stream.close()

    json_rows = [product(i, prefix="sync-json") for i in range(40)]
    stream = sync_stream(local_stack, products_table, descriptor=None)
    stream.ingest_records_offset([to_json(r) for r in json_rows])
    stream.flush()
    stream.close()
    assert read_rows(local_stack, products_table) == expected(proto_rows + json_rows)


def _descriptor(mutate) -> Any:
    """A copy of ProductRecord's descriptor changed by `mutate`, as a message Descriptor."""
    file_proto = descriptor_pb2.FileDescriptorProto(
        name=f"t_{secrets.token_hex(4)}.proto", package=f"t{secrets.token_hex(4)}", syntax="proto2"
    )
    msg = file_proto.message_type.add()
    product_record_pb2.ProductRecord.DESCRIPTOR.CopyToProto(msg)
    mutate(msg)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return pool.FindMessageTypeByName(f"{file_proto.package}.{msg.name}")


def _add_unknown(msg):
    msg.field.add(name="colour", number=12, type=9, label=1)


def _price_as_string(msg):
    next(f for f in msg.field if f.name == "product_price").type = 9


def _drop_product_name(msg):
    keep = [f for f in msg.field if f.name != "product_name"]
    del msg.field[:]
    msg.field.extend(keep)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_add_unknown, "field colour of ProductRecord is not a column of the table"),
        (
            _price_as_string,
            "field product_price has proto type string, but column product_price is DOUBLE",
        ),
        (_drop_product_name, "column product_name is NOT NULL but ProductRecord has no field"),
    ],
    ids=["unknown-field", "wrong-type", "missing-not-null-column"],
)
async def test_descriptor_mismatch_is_invalid_argument(
    local_stack, products_table, mutate, message
):
    with pytest.raises(NonRetriableException) as err:
        await async_stream(local_stack, products_table, descriptor=_descriptor(mutate))
    assert INVALID_ARGUMENT in str(err.value)
    assert message in str(err.value)
    assert read_rows(local_stack, products_table) == []


async def test_record_missing_not_null_value_writes_nothing(local_stack, products_table):
    # product_name optional in the descriptor, so the descriptor passes; the record does not.
    def optional_name(msg):
        next(f for f in msg.field if f.name == "product_name").label = 1

    descriptor = _descriptor(optional_name)
    cls = message_factory.GetMessageClass(descriptor)
    good = [product(i, prefix="ok") for i in range(3)]
    stream = await async_stream(local_stack, products_table, descriptor=descriptor)
    await stream.ingest_records_offset([to_proto(r) for r in good])
    await stream.flush()
    bad = cls(record_id="bad", product_id="p", product_price=1.0, category="c")
    with pytest.raises(ZerobusException) as err:
        await stream.ingest_records_offset([to_proto(product(9)), bad.SerializeToString()])
        await stream.flush()
    assert_invalid_argument(
        err.value, "offset 1: column product_name is NOT NULL but record 1 has no value for it"
    )
    # The good batch before is there; nothing of the rejected batch is.
    assert read_rows(local_stack, products_table) == expected(good)


async def test_json_record_type_mismatch(local_stack, products_table):
    stream = await async_stream(local_stack, products_table, descriptor=None)
    row = to_json(product(1)).replace('"product_price": 1.75', '"product_price": "cheap"')
    with pytest.raises(ZerobusException) as err:
        await stream.ingest_record_offset(row)
        await stream.flush()
    assert_invalid_argument(
        err.value, "offset 0: record 0: field 'product_price': expected DOUBLE, got str 'cheap'"
    )
    assert read_rows(local_stack, products_table) == []


async def test_wrong_token_is_unauthenticated(local_stack, products_table):
    with pytest.raises(NonRetriableException) as err:
        await async_stream(local_stack, products_table, token="not-the-token")
    assert UNAUTHENTICATED in str(err.value)
    assert "invalid or missing bearer token" in str(err.value)
    assert "not-the-token" not in str(err.value)


async def test_table_header_must_match(local_stack, products_table):
    with pytest.raises(NonRetriableException) as err:
        await async_stream(local_stack, products_table, header_table="main.default.other")
    assert PERMISSION_DENIED in str(err.value)
    assert "x-databricks-zerobus-table-name names main.default.other" in str(err.value)


async def test_unknown_table_is_not_found(local_stack):
    with pytest.raises(NonRetriableException) as err:
        await async_stream(local_stack, "main.default.no_such_table")
    assert NOT_FOUND in str(err.value)
    assert "table main.default.no_such_table does not exist" in str(err.value)


async def test_ten_mib_message_is_accepted(local_stack, products_table):
    # The SDK refuses payloads over 10 MiB - 64 KiB; the largest it sends must pass.
    big = product(1, prefix="big", description_bytes=10_420_224 - 400)
    batch = [to_proto(product(i, prefix="big", description_bytes=1_000_000)) for i in range(2, 11)]
    stream = await async_stream(local_stack, products_table)
    await stream.ingest_record_offset(to_proto(big))
    await stream.ingest_records_offset(batch)
    await stream.flush()
    await stream.close()
    rows = read_rows(local_stack, products_table)
    assert [len(r["description"]) for r in rows] == [10_420_224 - 400] + [1_000_000] * 9


async def test_sql_and_zerobus_write_one_table_together(local_stack, products_table):
    stream = await async_stream(local_stack, products_table)
    zb_rows = [product(i, prefix="zb") for i in range(4000)]

    async def zerobus() -> None:
        for start in range(0, len(zb_rows), 200):
            await stream.ingest_records_offset([to_proto(r) for r in zb_rows[start : start + 200]])
        await stream.flush()

    def sql() -> int:
        n = 0
        for k in range(20):
            values = ", ".join(
                f"('sql-{k:02d}-{j:02d}', 'P', 'n', 1.5, 'c', NULL, NULL, NULL, NULL, 'sql', NULL)"
                for j in range(10)
            )
            run_sql(local_stack, f"INSERT INTO {products_table} VALUES {values}")
            n += 10
        return n

    sql_rows, _ = await asyncio.gather(asyncio.to_thread(sql), zerobus())
    await stream.close()
    rows = read_rows(local_stack, products_table)
    assert len(rows) == len(zb_rows) + sql_rows
    assert len({r["record_id"] for r in rows}) == len(rows)


async def test_stream_is_counted_at_the_local_stack(local_stack, products_table):
    before = status(local_stack)["zerobus"]["streams_created"]
    stream = await async_stream(local_stack, products_table)
    for i in range(5):
        await stream.ingest_record_offset(to_proto(product(i)))
    await stream.flush()
    during = status(local_stack)
    await stream.close()
    assert during["zerobus"]["streams_created"] == before + 1
    assert during["tables"][products_table]["rows_committed"] == 5


def test_ddl_creates_the_products_table_once(local_stack):
    name = f"main.default.ddl_{secrets.token_hex(3)}"
    run_sql(local_stack, products_ddl(name))
    run_sql(local_stack, products_ddl(name))  # IF NOT EXISTS: a second run is harmless
    assert status(local_stack)["tables"][name]["columns"].startswith("record_id STRING NOT NULL")
