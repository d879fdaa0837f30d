"""A writer that exists only for the registry test: registered through
DWBENCH_EXTRA_WRITERS, it must show up in the API, the CLI's help and the UI's lists
without any other file naming it. It keeps rows in memory and counts them back."""

from __future__ import annotations

from workloads.base import Rows, TableRef
from writers.base import Availability, DataWriterInterface, WriteReceipt

ENV = "registry-check=tests.registry_writer:RegistryCheckWriter"


class RegistryCheckWriter(DataWriterInterface):
    name = "registry-check"
    label = "Registry check (test-only, in memory)"
    family = "test"
    color = "#12b886"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.batches: dict[str, int] = {}

    async def open(self) -> None:
        return None

    async def availability(self) -> Availability:
        return Availability(True, details={"in_memory": True})

    async def write(self, rows: Rows) -> WriteReceipt:
        self.batches[rows.batch_id] = self.batches.get(rows.batch_id, 0) + len(rows)
        return WriteReceipt(rows=len(rows), details={"kept_in_memory": True})

    async def count_rows(self, table: TableRef, batch_id: str) -> int:
        return self.batches.get(batch_id, 0)

    async def close(self) -> None:
        return None
