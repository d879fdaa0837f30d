"""Timing one write through one writer: the measurement the ingestion API reports.

Writers never time themselves; this is where a write's clock starts and stops, and
where its failure becomes an outcome instead of an exception.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from dwbench.errors import DirectWriteError, WriterUnavailableError
from workloads.base import Rows
from writers.base import DataWriterInterface

Clock = Callable[[], float]


@dataclass(frozen=True)
class WriteOutcome:
    writer: str
    status: Literal["success", "failed", "unavailable"]
    rows_written: int
    elapsed_s: float
    details: dict[str, Any] = field(default_factory=dict)
    error: DirectWriteError | None = None

    @property
    def rows_per_s(self) -> float:
        return self.rows_written / self.elapsed_s if self.elapsed_s > 0 else 0.0


async def measured_write(
    writer: DataWriterInterface,
    rows: Rows,
    clock: Clock = time.perf_counter,
) -> WriteOutcome:
    """Write and time one batch; a DirectWriteError becomes a failed outcome with 0 rows."""
    started = clock()
    try:
        receipt = await writer.write(rows)
    except DirectWriteError as exc:
        status: Literal["failed", "unavailable"] = (
            "unavailable" if isinstance(exc, WriterUnavailableError) else "failed"
        )
        return WriteOutcome(writer.name, status, 0, clock() - started, error=exc)
    return WriteOutcome(writer.name, "success", receipt.rows, clock() - started, receipt.details)
