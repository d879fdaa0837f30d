"""A writer whose every write blocks for an hour: a worker running it cannot finish a cancel
in time, so the app must kill it (tests/api/test_benchmark_worker.py registers it)."""

from __future__ import annotations

import asyncio

from workloads.base import Rows
from writers.base import Availability, DataWriterInterface, WriteReceipt

TARGET = "tests.api.stuck_writer:StuckWriter"


class StuckWriter(DataWriterInterface):
    name = "stuck"
    label = "Stuck writer (test-only)"
    family = "test"
    stores_rows = False

    async def open(self) -> None:
        return None

    async def availability(self) -> Availability:
        return Availability(True)

    async def write(self, rows: Rows) -> WriteReceipt:
        await asyncio.sleep(3600)
        return WriteReceipt(rows=len(rows))

    async def close(self) -> None:
        return None
