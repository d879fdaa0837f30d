"""Deterministic batches of a workload's rows for one writer in a benchmark.

The workload's row source (generated from the schema, the telemetry fleet, or sample
rows) makes each batch as Arrow columns; ids are unique per run, writer and batch, so
writers never collide on a primary key. `bytes` counts the row size the source reports
(about what a row takes as protobuf once padded to `record_bytes`).

A big batch is built in a worker thread (`BatchFactory.build`), one thread per factory so
batches are still made one after another in order of k: building 100,000 rows takes
~0.1 s of CPU, and on the event loop that would stall every request of the app.
`row_footprint` measures what a row of the run holds in memory, for the budget
(`bench.config.in_flight_memory`).
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bench.config import BenchmarkConfig, MemoryEstimate, check_memory
from workloads.base import Rows, TableRef, Workload

# A batch whose Arrow form is at least this big is built off the event loop (~4 ms of
# building at products' ~100 B/row); smaller ones are quicker to build than a thread hop.
OFF_LOOP_BYTES = 512 * 1024
FOOTPRINT_SAMPLE_ROWS = 256
_POINTER = 8  # a list slot (CPython, 64-bit)


@dataclass(frozen=True)
class Batch:
    batch_id: str
    rows: Rows
    count: int
    bytes: int


@dataclass(frozen=True)
class RowFootprint:
    """Bytes per row a batch in flight holds: its Arrow columns (measured on a sample batch)
    and a writer's encoded copy: the rows as Python values (what every writer but null
    builds: COPY rows, SQL literals, protobuf and JSON records) plus the serialized payload
    (about the row size the source reports)."""

    arrow: float
    encoded: float


class BatchFactory:
    def __init__(
        self,
        config: BenchmarkConfig,
        workload: Workload,
        *,
        run_id: str,
        source: str,
        table: TableRef | None = None,
        client: int = 0,
    ) -> None:
        if not 0 <= client < config.clients:
            raise ValueError(f"client {client} of a run with {config.clients} clients")
        self.batch_size = config.batch_size
        # Client c of n builds batches c, c + n, c + 2n, ... of the run: together the
        # clients write the batches one client would, and no two share a batch (or row) id.
        self.client = client
        self.clients = config.clients
        self.prefix = f"{run_id}-{source}"
        self.source = source
        self.table = table or workload.table
        options = {"drivers": config.drivers} if config.drivers is not None else {}
        self._make = workload.batches(
            seed=config.seed,
            record_bytes=config.record_bytes,
            pad_column=config.pad_column,
            **options,
        )
        self.record_bytes = int(getattr(self._make, "record_bytes", config.record_bytes))
        # A records run: the run's measured batches are dealt out as the batches are, and
        # the short last one (if any) is built by the client it falls to.
        total = math.ceil(config.records / config.batch_size) if config.records is not None else 0
        self.measured_batches = len(range(client, total, self.clients))
        self._last_rows = (
            config.records - (total - 1) * config.batch_size
            if config.records is not None and (total - 1) % self.clients == client
            else config.batch_size
        )
        self.measured_rows = (
            (self.measured_batches - 1) * config.batch_size + self._last_rows
            if self.measured_batches
            else (0 if config.records is not None else None)
        )
        self.off_loop = config.batch_size * max(self.record_bytes, 1) >= OFF_LOOP_BYTES
        self._thread: ThreadPoolExecutor | None = None

    def batch(self, k: int, *, last: bool = False) -> Batch:
        """This client's k-th batch: the run's batch k x clients + client."""
        count = self._last_rows if last else self.batch_size
        k = k * self.clients + self.client
        batch_id = f"{self.prefix}-{k:07d}"
        data = self._make(k, count, batch_id, self.source)
        return Batch(batch_id, Rows(self.table, data, batch_id), count, count * self.record_bytes)

    async def build(self, k: int, *, last: bool = False) -> Batch:
        """Batch k, built in this factory's worker thread when it is big (OFF_LOOP_BYTES).
        Calls are queued in the order made, so batches are built in order of k as on the
        loop; a caller holds at most the one batch it awaits (the memory budget counts on
        it)."""
        if not self.off_loop:
            return self.batch(k, last=last)
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"batches-{self.source}")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: self.batch(k, last=last))

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=False, cancel_futures=True)
            self._thread = None

    def footprint(self) -> RowFootprint:
        """What a row of this run holds in memory, measured on a small sample batch."""
        n = FOOTPRINT_SAMPLE_ROWS
        data = self._make(0, n, f"{self.prefix}-{0:07d}", self.source)
        python = sum(_python_size(v) + _POINTER for col in data.columns for v in col.to_pylist())
        return RowFootprint(arrow=data.nbytes / n, encoded=python / n + self.record_bytes)


def _python_size(value: Any) -> int:
    """Bytes of a Python value with what it holds (lists and dicts of nested types)."""
    size = sys.getsizeof(value)
    if isinstance(value, list | tuple):
        size += sum(_python_size(v) for v in value)
    elif isinstance(value, dict):
        size += sum(_python_size(k) + _python_size(v) for k, v in value.items())
    return size


def row_footprint(config: BenchmarkConfig, workload: Workload) -> RowFootprint:
    """The footprint of a row of `config` on `workload` (blocking: builds the row source)."""
    return BatchFactory(config, workload, run_id="footprint", source="footprint").footprint()


def memory_check(
    configs: Sequence[BenchmarkConfig], workload: Workload, budget_mib: int
) -> MemoryEstimate:
    """`bench.config.check_memory` of a run (or a sweep's points, which share the workload
    and row settings) on `workload`; ResourceLimitError (422) over the budget. Blocking:
    builds the row source and a sample batch (~0.2 s), so the app calls it in a thread."""
    return check_memory(configs, row_footprint(configs[0], workload), budget_mib)
