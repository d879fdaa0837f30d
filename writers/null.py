"""The null writer: discards rows. Only the benchmark's harness-ceiling baseline."""

from __future__ import annotations

from workloads.base import Rows
from writers.base import Availability, DataWriterInterface, WriteReceipt


class NullWriter(DataWriterInterface):
    name = "null"
    label = "Null (discards rows; harness baseline)"
    family = "baseline"
    color = "#868e96"
    stores_rows = False

    async def open(self) -> None:
        return None

    async def availability(self) -> Availability:
        return Availability(True, details={"stores_rows": False})

    async def write(self, rows: Rows) -> WriteReceipt:
        return WriteReceipt(rows=len(rows), details={"discarded": True})

    async def close(self) -> None:
        return None
