"""Writers that fail one client of two (the run's batches are dealt c, c + 2, ...):
`DyingWriter`'s process dies (SIGKILL) when it is handed batch 21 or a later odd batch, so
client 1's process dies mid-run and client 0's never does; `RefusingOddWriter` refuses every
odd batch, so client 1's process lives and every batch of it fails. Registered by tests
through DWBENCH_EXTRA_WRITERS."""

from __future__ import annotations

import asyncio
import os
import signal

from dwbench.errors import WriteFailedError
from workloads.base import Rows
from writers.base import WriteReceipt
from writers.null import NullWriter

TARGET = "tests.bench.dying_writer:DyingWriter"
REFUSING = "tests.bench.dying_writer:RefusingOddWriter"


class _OddBatchWriter(NullWriter):
    """Discards rows; `on_odd` decides what becomes of an odd batch (client 1's of two)."""

    family = "test"

    async def write(self, rows: Rows) -> WriteReceipt:
        batch = int(rows.batch_id.rsplit("-", 1)[1])  # the run's batch number
        if batch % 2 == 1:
            self.on_odd(batch)
        await asyncio.sleep(0.001)
        return WriteReceipt(rows=len(rows))

    def on_odd(self, batch: int) -> None:
        raise NotImplementedError


class DyingWriter(_OddBatchWriter):
    name = "dying"
    label = "Dying writer (test-only)"

    def on_odd(self, batch: int) -> None:
        if batch >= 21:
            os.kill(os.getpid(), signal.SIGKILL)


class RefusingOddWriter(_OddBatchWriter):
    name = "refusing"
    label = "Odd-batch-refusing writer (test-only)"

    def on_odd(self, batch: int) -> None:
        raise WriteFailedError(f"batch {batch} refused (odd)", writer=self.name)
