"""In-repo writers implementing the writer interface, for harness tests.

They stand in for targets, never for the real writers: the contract suite and the
benchmark tests on the local stack use the real ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

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
    """A writer source that hands out the given instances by name: instances of one name
    are its streams 0, 1, ... in the order given."""

    def __init__(self, *writers: DataWriterInterface) -> None:
        self.streams: dict[str, list[DataWriterInterface]] = {}
        for w in writers:
            self.streams.setdefault(w.name, []).append(w)
        self.writers = {name: ws[0] for name, ws in self.streams.items()}

    async def get(self, name: str, stream: int = 0) -> DataWriterInterface:
        return self.streams[name][stream]


class StepClock:
    """An injected clock: time moves only when a writer says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        """The runner's nap until a batch is due (`sleep=clock.sleep`): the tasks ready now
        run first (a ScriptedWriter's write runs to its end in that one step, moving the
        clock by its duration), then time moves to the end of the nap, unless a write
        already took it past. Exact with one batch in flight (concurrency 1): the write and
        the nap overlap as they would in real time."""
        until = self.now + seconds
        await asyncio.sleep(0)
        self.now = max(self.now, until)


class WallClock:
    """An injected wall clock (time.time()): a fixed UTC epoch instant, read once per run."""

    def __init__(self, epoch_s: float) -> None:
        self.epoch_s = epoch_s

    def __call__(self) -> float:
        return self.epoch_s


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


class ScriptedWriter(StallingWriter):
    """Write n takes durations[n % len] on the given clock, and no real time: the clock moves
    inside write, which never suspends, so a batch's start, its duration and its ack happen in
    one step of the event loop and every figure is exact. With `fail_every` = k, every k-th
    write fails (WriteFailedError) after its duration."""

    name = "scripted"
    label = "Scripted test writer"

    def __init__(
        self,
        targets: Targets,
        clock: StepClock,
        durations: Sequence[float],
        *,
        fail_every: int = 0,
    ) -> None:
        super().__init__(targets, normal_s=0, stall_at=-1, stall_s=0)
        self.clock, self.durations, self.fail_every = clock, list(durations), fail_every

    async def write(self, rows: Rows) -> WriteReceipt:
        self.clock.now += self.durations[self.writes % len(self.durations)]
        self.writes += 1
        if self.fail_every and self.writes % self.fail_every == 0:
            raise WriteFailedError("the target refused the batch", writer=self.name)
        return WriteReceipt(rows=len(rows))


class RecordingWriter(ScriptedWriter):
    """A ScriptedWriter that keeps every batch id and row id it was given, in order."""

    name = "recording"
    label = "Recording test writer"

    def __init__(
        self,
        targets: Targets,
        clock: StepClock,
        durations: Sequence[float],
        *,
        suspend: bool = False,
    ) -> None:
        super().__init__(targets, clock, durations)
        self.batch_ids: list[str] = []
        self.row_ids: list[str] = []
        # `suspend`: each write lets the loop run once after it starts, so writes overlap;
        # the most in flight at once is kept.
        self.suspend = suspend
        self.in_flight = self.most_in_flight = 0

    async def write(self, rows: Rows) -> WriteReceipt:
        if self.suspend:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            await asyncio.sleep(0)
            self.in_flight -= 1
        receipt = await super().write(rows)
        self.batch_ids.append(rows.batch_id)
        self.row_ids.extend(rows.data.column("record_id").to_pylist())
        return receipt
