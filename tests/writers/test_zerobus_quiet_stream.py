"""A Zerobus SDK stream quiet for QUIET_STREAM_RENEW_S is replaced before its next batch:
the SDK's lack-of-ack timer restarts every window while a stream is quiet, and a batch
sent near a window's end would be taken for unacknowledged and committed twice (seen once
in CI: 10 rows of a 12-row request stored twice). The clock is injected; the stream, the
SDK and the stand-in are real."""

from __future__ import annotations

import pytest

from tests.bench.fake_writers import StepClock
from tests.conftest import local_targets, products_ddl, run_sql
from workloads import products
from workloads.inputs import build_rows, new_batch_id
from workloads.products import sample_items
from writers.zerobus import QUIET_STREAM_RENEW_S, ZerobusJsonWriter, ZerobusWriter
from writers.zerobus_arrow import ZerobusArrowWriter

REF = products.WORKLOAD.table


@pytest.mark.parametrize("writer_class", [ZerobusWriter, ZerobusJsonWriter, ZerobusArrowWriter])
async def test_a_quiet_stream_is_renewed_before_its_next_batch_and_every_row_lands_once(
    local_stack, writer_class
):
    run_sql(local_stack, products_ddl(REF.delta_table))
    clock = StepClock()
    writer = writer_class(local_targets(local_stack), clock=clock)
    batches = [
        build_rows(
            products.WORKLOAD,
            sample_items(3, seed=n),
            batch_id=new_batch_id(),
            source=writer_class.name,
        )
        for n in range(3)
    ]
    await writer.open()
    try:
        await writer.write(batches[0])
        clock.now += QUIET_STREAM_RENEW_S - 0.5  # quiet, not for long enough
        await writer.write(batches[1])
        assert writer.streams_created == 1
        clock.now += QUIET_STREAM_RENEW_S  # counted from the last acknowledgement
        receipt = await writer.write(batches[2])
        assert writer.streams_created == 2
        assert receipt.details["stream"] == 2
        assert [await writer.count_rows(REF, b.batch_id) for b in batches] == [3, 3, 3]
    finally:
        await writer.close()
