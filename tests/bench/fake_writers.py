"""In-repo writers implementing the writer interface, for harness tests.

They stand in for targets, never for the real writers: the contract suite and the
benchmark tests on the local stack use the real ones.
"""

from __future__ import annotations

import asyncio

from dwbench.errors import WriteFailedError
from workloads.base import Rows, TableRef
from writers.base import Availability, DataWriterInterface, Targets, WriteReceipt


class StallingWriter(DataWriterInterface):
    """One connection (writes are serialized); every write takes `normal_s`, except the
    `stall_at`-th, which takes `stall_s`. Rows are kept in memory and counted back."""

    name = "stalling"
    label = "Stalling test writer"

    def __init__(self, targets: Targets, *, normal_s: float, stall_at: int, stall_s: float) -> None:
        super().__init__(targets)
        self.normal_s, self.stall_at, self.stall_s = normal_s, stall_at, stall_s
        self.writes = 0
        self.rows: dict[str, int] = {}
        self._connection = asyncio.Lock()

    async def open(self) -> None:
        return None

    async def availability(self) -> Availability:
        return Availability(True)

    async def write(self, rows: Rows) -> WriteReceipt:
        async with self._connection:
            self.writes += 1
            await asyncio.sleep(self.stall_s if self.writes == self.stall_at else self.normal_s)
            # Counted from the batch's own batch-id column, as a target would store them.
            for batch_id in rows.data.column("batch_id").to_pylist():
                self.rows[batch_id] = self.rows.get(batch_id, 0) + 1
        return WriteReceipt(rows=len(rows))

    async def count_rows(self, table: TableRef, batch_id: str) -> int:
        return self.rows.get(batch_id, 0)

    async def close(self) -> None:
        return None


class FailingEveryNthWriter(StallingWriter):
    """Fails every n-th write with a WriteFailedError; stores the others."""

    name = "failing"
    label = "Failing test writer"

    def __init__(self, targets: Targets, *, every: int) -> None:
        super().__init__(targets, normal_s=0.001, stall_at=-1, stall_s=0)
        self.every = every

    async def write(self, rows: Rows) -> WriteReceipt:
        if (self.writes + 1) % self.every == 0:
            self.writes += 1
            raise WriteFailedError("the target refused the batch", writer=self.name)
        return await super().write(rows)


class FixedSource:
    """A writer source that hands out the given instances by name."""

    def __init__(self, *writers: DataWriterInterface) -> None:
        self.writers = {w.name: w for w in writers}

    async def get(self, name: str) -> DataWriterInterface:
        return self.writers[name]


class StepClock:
    """An injected clock: time moves only when a writer says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ClockedWriter(StallingWriter):
    """Every write takes `step_s` on the given clock (and no real time)."""

    name = "clocked"
    label = "Clocked test writer"

    def __init__(self, targets: Targets, clock: StepClock, *, step_s: float) -> None:
        super().__init__(targets, normal_s=0, stall_at=-1, stall_s=0)
        self.clock, self.step_s = clock, step_s

    async def write(self, rows: Rows) -> WriteReceipt:
        self.clock.now += self.step_s
        await asyncio.sleep(0)
        return WriteReceipt(rows=len(rows))


class NullLikeWriter(ClockedWriter):
    """Stores nothing, as the harness baseline (null) does."""

    name = "nulllike"
    label = "Null-like test writer"
    stores_rows = False
