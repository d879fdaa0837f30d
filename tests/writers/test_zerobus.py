"""The Zerobus writer when the service stops answering: a clear error, in bounded time."""

from __future__ import annotations

import os
import secrets
import signal
import time

import pytest

from dwbench.errors import WriteFailedError
from emulator.process import LocalStackProcess
from tests.conftest import local_targets, products_ddl, run_sql
from workloads import products
from workloads.base import Rows
from workloads.inputs import build_rows, new_batch_id
from workloads.products import sample_items
from writers.zerobus import CLOSE_TIMEOUT_S, ZerobusSettings, ZerobusWriter

TABLE = "main.default.products"
REF = products.WORKLOAD.table


def build_records(items, *, batch_id: str, source: str) -> Rows:
    return build_rows(products.WORKLOAD, items, batch_id=batch_id, source=source)


@pytest.fixture
def own_stack(tmp_path):
    """A local stack of this test's own: it gets frozen."""
    stack = LocalStackProcess(
        tmp_path / "data", token=secrets.token_urlsafe(16), args=["--no-postgres"]
    )
    endpoints = stack.start()
    try:
        run_sql(endpoints, products_ddl(TABLE))
        yield endpoints
    finally:
        os.kill(endpoints["pid"], signal.SIGCONT)
        assert stack.stop() == 0


async def test_an_unacknowledged_batch_fails_in_bounded_time_and_is_not_resent(own_stack):
    writer = ZerobusWriter(local_targets(own_stack, zerobus=ZerobusSettings(ack_timeout_s=1.0)))
    await writer.open()
    try:
        first = build_records(sample_items(3, seed=1), batch_id=new_batch_id(), source="zerobus")
        assert (await writer.write(first)).rows == 3

        os.kill(own_stack["pid"], signal.SIGSTOP)  # takes the batch, never acknowledges it
        unacked = build_records(sample_items(4, seed=2), batch_id=new_batch_id(), source="zerobus")
        started = time.perf_counter()
        with pytest.raises(WriteFailedError) as failed:
            await writer.write(unacked)
        took = time.perf_counter() - started
        assert failed.value.message == (
            "no durability acknowledgement within 1 s; the rows are not counted as written "
            "(the service may still commit them)"
        )
        # One ack timeout plus the bounded close of the abandoned stream; no second attempt.
        assert took < 1.0 + CLOSE_TIMEOUT_S + 2.0
        assert writer.streams_created == 1
        assert writer.describe()["stream_state"] == "not opened"
        assert writer.last_error == failed.value.message

        os.kill(own_stack["pid"], signal.SIGCONT)
        after = build_records(sample_items(5, seed=3), batch_id=new_batch_id(), source="zerobus")
        receipt = await writer.write(after)
        assert receipt.rows == 5 and writer.streams_created == 2
        assert await writer.count_rows(REF, after.batch_id) == 5
        assert await writer.count_rows(REF, first.batch_id) == 3
    finally:
        await writer.close()
