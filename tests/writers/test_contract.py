"""One contract suite, run against every writer on the local stack."""

from __future__ import annotations

import pytest

from tests.conftest import DATABRICKS_ONLY, local_targets, products_ddl, run_sql
from workloads import products
from workloads.base import Rows
from workloads.inputs import build_rows, new_batch_id
from workloads.products import sample_items
from writers import WRITERS, writer_class
from writers.base import DataWriterInterface

ITEMS = sample_items(40, seed=7)
TABLE = products.WORKLOAD.table


def build_records(items, *, batch_id: str, source: str) -> Rows:
    return build_rows(products.WORKLOAD, items, batch_id=batch_id, source=source)


@pytest.fixture(params=[name for name in WRITERS if name not in DATABRICKS_ONLY])
async def writer(request, local_stack):
    run_sql(local_stack, products_ddl("main.default.products"))  # IF NOT EXISTS
    instance: DataWriterInterface = writer_class(request.param)(local_targets(local_stack))
    await instance.open()
    yield instance
    await instance.close()
    await instance.close()  # closing twice is harmless


async def test_available_with_details(writer):
    availability = await writer.availability()
    assert availability.available, availability.reason
    assert availability.reason is None
    assert isinstance(availability.details, dict) and availability.details


async def test_write_is_durable_and_counted_once(writer):
    batch_id = new_batch_id()
    receipt = await writer.write(build_records(ITEMS, batch_id=batch_id, source=writer.name))
    assert receipt.rows == len(ITEMS)
    if writer.stores_rows:
        # Returned means durable: the rows are readable at once, exactly once.
        assert await writer.count_rows(TABLE, batch_id) == len(ITEMS)
        assert await writer.count_rows(TABLE, new_batch_id()) == 0


async def test_batches_stay_apart(writer):
    first, second = new_batch_id(), new_batch_id()
    await writer.write(build_records(ITEMS[:3], batch_id=first, source=writer.name))
    await writer.write(build_records(ITEMS[3:10], batch_id=second, source=writer.name))
    if writer.stores_rows:
        assert await writer.count_rows(TABLE, first) == 3
        assert await writer.count_rows(TABLE, second) == 7


async def test_concurrent_writes_all_land(writer):
    import asyncio

    batches = [new_batch_id() for _ in range(6)]
    receipts = await asyncio.gather(
        *(writer.write(build_records(ITEMS[:5], batch_id=b, source=writer.name)) for b in batches)
    )
    assert [r.rows for r in receipts] == [5] * 6
    if writer.stores_rows:
        assert [await writer.count_rows(TABLE, b) for b in batches] == [5] * 6


async def test_empty_write_writes_nothing(writer):
    empty = build_records([], batch_id=new_batch_id(), source=writer.name)
    receipt = await writer.write(empty)
    assert receipt.rows == 0


async def test_wire_bytes_count_what_was_sent(writer):
    before = await writer.wire_bytes(TABLE)
    if before is None:
        # Nothing meters this path: the writer neither counts payloads nor has a stand-in.
        assert not writer.counts_payload and writer.wire_interface is None
        return
    sent_before = writer.payload_bytes.get(TABLE.delta_table, 0)
    if writer.name == "zerobus-kafka":
        # Framing is counted per Produce request: a linger long enough that each write goes
        # out as one request however slowly a loaded machine queues its 15 records (at the
        # default 5 ms a busy CI machine split them into several requests).
        writer.config = writer.config.model_copy(update={"linger_ms": 1000.0})
    await writer.write(build_records(ITEMS[:15], batch_id=new_batch_id(), source=writer.name))
    await writer.write(build_records(ITEMS[15:], batch_id=new_batch_id(), source=writer.name))
    after = await writer.wire_bytes(TABLE)
    assert after is not None and after.source == before.source
    payload = writer.payload_bytes[TABLE.delta_table] - sent_before
    wire = after.bytes - before.bytes
    assert payload > 0
    if writer.wire_interface is None or writer.name == "zerobus-rest":
        assert wire == payload  # the payloads themselves, or a REST body counted as sent
    else:
        # The stand-in saw the payloads plus their framing: a few bytes per message and
        # per record (gRPC prefix, protobuf tags and lengths, Flight's offset metadata);
        # Arrow's count is the IPC size as pyarrow frames it, and the SDK pads buffers
        # differently (up to 64 bytes per column and batch).
        # An MQTT PUBLISH carries its topic (the table's name) with every record; a Kafka
        # Produce request its header, the topic and a record batch header (61 bytes) per
        # request, a length-prefixed record header per record.
        per_batch = {"zerobus-arrow": 64 * len(TABLE.schema.columns), "zerobus-kafka": 256}.get(
            writer.name, 64
        )
        per_record = {"zerobus-mqtt": 16 + len(TABLE.delta_table), "zerobus-kafka": 16}.get(
            writer.name, 8
        )
        assert abs(wire - payload) <= 2 * per_batch + per_record * len(ITEMS), (wire, payload)
