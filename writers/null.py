"""The null writer: discards records. Only the benchmark's harness-ceiling baseline."""

from __future__ import annotations

from collections.abc import Sequence

from workloads.products import ProductRecord
from writers.base import Availability, DataWriterInterface, WriteReceipt


class NullWriter(DataWriterInterface):
    name = "null"
    label = "Null (discards rows; harness baseline)"
    stores_rows = False

    async def open(self) -> None:
        return None

    async def availability(self) -> Availability:
        return Availability(True, details={"stores_rows": False})

    async def write(self, records: Sequence[ProductRecord]) -> WriteReceipt:
        return WriteReceipt(rows=len(records), details={"discarded": True})

    async def close(self) -> None:
        return None
