"""The fleet: N drivers at a fixed rate through a Zerobus writer into the bronze table.

Open loop, as the benchmark runner schedules: batch k is due at t0 + k * tick and carries
`rate * tick` events (the fraction carried over), made at its due time, so event times
are the phones' clock when the fix was taken. Up to `concurrency` batches are in flight;
a writer that falls behind shows as growing ack lag, never as a slower schedule. Each
acknowledged batch is handed on (`on_acked`, with the ack time): the real-time path in
local mode, and the "ack" hop of freshness.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pyarrow as pa
import structlog

from dwbench.errors import DirectWriteError
from workloads.base import Rows, TableRef
from workloads.telemetry import Fleet, FleetRows
from writers.base import DataWriterInterface

log = structlog.get_logger(__name__)

Acked = Callable[[pa.RecordBatch, int], Awaitable[None]]
MAX_ERROR_SAMPLES = 5


def wall_us() -> int:
    return time.time_ns() // 1000


@dataclass
class FleetCounters:
    produced: int = 0
    acked: int = 0
    failed: int = 0
    batches: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)


class FleetDriver:
    def __init__(
        self,
        writer: DataWriterInterface,
        table: TableRef,
        *,
        drivers: int,
        rate: float,
        on_acked: Acked,
        tick_s: float = 0.05,
        concurrency: int = 8,
        seed: int = 0,
        batch_prefix: str | None = None,
        clock_us: Callable[[], int] = wall_us,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.writer = writer
        self.table = table
        self.rate = rate
        self.tick_s = tick_s
        self.on_acked = on_acked
        self.clock_us = clock_us
        self.rows = FleetRows(table, Fleet(drivers, seed=seed), clock=clock_us)
        self.counters = FleetCounters()
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        # Batch ids are `<prefix>-<k>`: a run's rows can be told apart in any table.
        self._prefix = batch_prefix or uuid.uuid4().hex[:8]

    async def run(self, duration_s: float, stop: asyncio.Event) -> None:
        """Send until `duration_s` has passed or `stop` is set, then wait for what is in flight."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        k = 0
        carry = 0.0
        while not stop.is_set():
            due = t0 + k * self.tick_s
            if due - t0 >= duration_s:
                break
            while (delay := due - loop.time()) > 0 and not stop.is_set():  # noqa: ASYNC110
                await asyncio.sleep(min(delay, 0.25))
            if stop.is_set():
                break
            want = self.rate * self.tick_s + carry
            n = int(want)
            carry = want - n
            k += 1
            if n == 0:
                continue
            batch = self.rows(k, n, f"{self._prefix}-{k}", "fleet")
            await self._slots.acquire()
            self._spawn(batch)
        await self.drain()

    async def submit(self, batch: pa.RecordBatch) -> None:
        """Write a batch from elsewhere (checked external events) the same way, within the
        same bound on batches in flight."""
        await self._slots.acquire()
        self._spawn(batch)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks))

    def _spawn(self, batch: pa.RecordBatch) -> None:
        task = asyncio.create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: pa.RecordBatch) -> None:
        c = self.counters
        c.produced += batch.num_rows
        batch_id = batch.column("batch_id")[0].as_py() if batch.num_rows else ""
        try:
            await self.writer.write(Rows(self.table, batch, batch_id))
        except Exception as exc:  # every failure is counted; none stops the fleet
            c.failed += batch.num_rows
            kind = type(exc).__name__
            c.errors[kind] = c.errors.get(kind, 0) + 1
            if len(c.error_samples) < MAX_ERROR_SAMPLES:
                text = exc.message if isinstance(exc, DirectWriteError) else repr(exc)
                c.error_samples.append(f"{kind}: {text}"[:300])
            return
        finally:
            self._slots.release()
        acked_us = self.clock_us()
        c.acked += batch.num_rows
        c.batches += 1
        await self.on_acked(batch, acked_us)
