"""Deterministic batches of a workload's rows for one writer in a benchmark.

The workload's row source (generated from the schema, the telemetry fleet, or sample
rows) makes each batch as Arrow columns; ids are unique per run, writer and batch, so
writers never collide on a primary key. `bytes` counts the row size the source reports
(about what a row takes as protobuf once padded to `record_bytes`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.config import BenchmarkConfig
from workloads.base import Rows, TableRef, Workload


@dataclass(frozen=True)
class Batch:
    batch_id: str
    rows: Rows
    count: int
    bytes: int


class BatchFactory:
    def __init__(
        self,
        config: BenchmarkConfig,
        workload: Workload,
        *,
        run_id: str,
        source: str,
        table: TableRef | None = None,
    ) -> None:
        self.batch_size = config.batch_size
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
        self.measured_rows = config.records
        self.measured_batches = (
            math.ceil(config.records / config.batch_size) if config.records is not None else 0
        )
        self._last_rows = (
            config.records - (self.measured_batches - 1) * config.batch_size
            if config.records is not None
            else config.batch_size
        )

    def batch(self, k: int, *, last: bool = False) -> Batch:
        count = self._last_rows if last else self.batch_size
        batch_id = f"{self.prefix}-{k:07d}"
        data = self._make(k, count, batch_id, self.source)
        return Batch(batch_id, Rows(self.table, data, batch_id), count, count * self.record_bytes)
