"""What a benchmark run is asked to do."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dwbench.errors import ResourceLimitError
from writers import WRITERS

if TYPE_CHECKING:
    from bench.workload import RowFootprint

MAX_BATCH_BYTES = 64 * 1024 * 1024
# Long enough for p95/p99 of most writers to rest on enough batches (bench.stats), and for
# per-second variation to be judged; the warm-up lets connections, JITs and caches settle.
DEFAULT_DURATION_S = 30.0
DEFAULT_WARMUP_S = 5.0
BUDGET_SETTING = "BENCHMARK_MEMORY_BUDGET_MIB"


class BenchmarkConfig(BaseModel):
    """A workload, run through each writer named (one after another unless `parallel`)."""

    model_config = ConfigDict(extra="forbid")

    workload: str = Field(
        default="products",
        min_length=1,
        max_length=64,
        description="the workload: products, telemetry, or one registered from a schema",
    )
    writers: list[str] = Field(default=["zerobus", "sql", "lakebase"], min_length=1)
    records: int | None = Field(
        default=None,
        ge=1,
        le=100_000_000,
        description="rows per writer (after warm-up), instead of duration_s",
    )
    duration_s: float | None = Field(
        default=DEFAULT_DURATION_S,
        gt=0,
        le=86_400,
        description="seconds measured per writer (default 30, after the warm-up); a run given "
        "only records writes that many rows instead",
    )
    batch_size: int = Field(default=1000, ge=1, le=100_000)
    concurrency: int = Field(
        default=4,
        ge=1,
        le=256,
        description="batches in flight (closed loop); at a target rate, the most in flight: a "
        "batch due while that many are in flight is sent late, its delay measured",
    )
    record_bytes: int = Field(
        default=1024,
        ge=0,
        le=1_000_000,
        description="approximate row size, padded on one string column (0: no padding)",
    )
    warmup_s: float = Field(
        default=DEFAULT_WARMUP_S, ge=0, le=3600, description="written first, not measured"
    )
    seed: int = Field(default=0, ge=0)
    drivers: int | None = Field(
        default=None, ge=1, le=1_000_000, description="telemetry: drivers in the fleet"
    )
    pad_column: str | None = Field(
        default=None,
        max_length=255,
        description="the string column that carries padding to record_bytes (default: the "
        "workload's choice, else the widest string column)",
    )
    rate: int | None = Field(
        default=None, ge=1, le=100_000_000, description="target rows/s (open loop); none = max"
    )
    streams: int = Field(
        default=1,
        ge=1,
        le=64,
        description="independent streams per writer in each client: SDK streams, producers, "
        "connections or request lanes, each a writer instance of its own, batches spread "
        "round-robin; concurrency is batches in flight per stream",
    )
    clients: int = Field(
        default=1,
        ge=1,
        le=32,
        description="client processes, each with its own writers and SDK instances; records "
        "and rate are totals over every client and stream",
    )
    executor: Literal["inline", "processes", "spark", "databricks-job"] | None = Field(
        default=None,
        description="where clients run: inline (this process, one client), processes (one "
        "worker process per client), spark (one Spark task per client, local[clients]) or "
        "databricks-job (one Spark task per client on a job cluster, databricks mode); "
        "default inline for one client, processes for more",
    )
    parallel: bool = Field(default=False, description="run the writers at the same time")
    repeat: int = Field(
        default=1,
        ge=1,
        le=100,
        description="run the workload this many times, the writers interleaved (round r "
        "starts with writer r mod n); each metric is then a median with a 95 % interval",
    )
    visibility: bool = Field(default=True, description="measure ack -> rows readable")
    visibility_poll_ms: int = Field(default=50, ge=5, le=10_000)
    visibility_sample_ms: int = Field(
        default=1000,
        ge=50,
        le=60_000,
        description="start a visibility sample at most this often: each poll is a query on the "
        "target, and on a shared machine its load shows in the numbers being measured",
    )

    @field_validator("writers")
    @classmethod
    def _known_writers(cls, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in WRITERS]
        if unknown:
            raise ValueError(f"unknown writer(s) {', '.join(unknown)}; valid: {', '.join(WRITERS)}")
        if len(set(names)) != len(names):
            raise ValueError("each writer may appear once")
        return names

    @model_validator(mode="after")
    def _batch_fits(self) -> Self:
        if self.batch_size * self.record_bytes > MAX_BATCH_BYTES:
            raise ValueError(
                f"batch_size x record_bytes is {self.batch_size * self.record_bytes:,} bytes; "
                f"keep a batch under {MAX_BATCH_BYTES:,} (64 MiB)"
            )
        return self

    @model_validator(mode="after")
    def _records_or_duration(self) -> Self:
        # Records given (and no duration asked for by name) make a records run; otherwise
        # the duration, 30 s by default, decides.
        asked_duration = "duration_s" in self.model_fields_set and self.duration_s is not None
        if self.records is not None and not asked_duration:
            self.duration_s = None
        elif self.duration_s is not None:
            self.records = None
        else:
            raise ValueError("give records or duration_s")
        return self

    @model_validator(mode="after")
    def _executor_fits(self) -> Self:
        if self.executor is None:
            self.executor = "inline" if self.clients == 1 else "processes"
        elif self.executor == "inline" and self.clients > 1:
            raise ValueError(
                f"{self.clients} clients need an executor that runs them apart: "
                "executor processes or spark (the inline executor runs one client)"
            )
        if self.clients > 1 and self.repeat > 1:
            raise ValueError(
                "repeat with more than one client is not supported yet: run the repeats "
                "one after another"
            )
        return self

    @property
    def shards(self) -> int:
        """How many lanes of the schedule there are: streams of every client."""
        return self.streams * self.clients

    @property
    def closed_loop(self) -> bool:
        return self.rate is None


@dataclass(frozen=True)
class MemoryEstimate:
    """What a run holds in memory at once, by `in_flight_memory`."""

    bytes: int
    batches: int  # in flight at once, over the writers that run at once
    batch_rows: int
    writers_at_once: int
    arrow_row: float
    encoded_row: float

    def text(self) -> str:
        at_once = f", {self.writers_at_once} writers at once" if self.writers_at_once > 1 else ""
        return (
            f"in-flight memory {size_text(self.bytes)} ({self.batches:,} batches{at_once} of "
            f"{self.batch_rows:,} rows x {self.arrow_row + self.encoded_row:,.0f} B: "
            f"{self.arrow_row:,.0f} B as Arrow + {self.encoded_row:,.0f} B as the writer's "
            "encoded copy)"
        )


def in_flight_memory(
    config: BenchmarkConfig, footprint: RowFootprint, stores_rows: Callable[[str], bool]
) -> MemoryEstimate:
    """The most a run holds at once: each stream of each client of a writer running keeps
    `concurrency` batches in flight, and each batch is held twice while it is written, as
    the Arrow batch built for it and as the writer's encoded copy (its Python values and
    serialized payload; the null writer, which stores nothing, holds only the Arrow batch).
    Writers run one after another, or all at once when `parallel`. At a target rate the
    next batch is built before a slot frees, so one more Arrow batch is held:

        bytes = sum or max over the writers of
                streams x clients x concurrency x batch_size
                    x (arrow bytes/row + encoded bytes/row)
                (+ clients x batch_size x arrow bytes/row at a target rate)
    """
    ahead = 0 if config.closed_loop else 1
    # Every stream of every client holds its own batches in flight (the clients' processes
    # share this host), and each client builds its next batch ahead at a target rate.
    lanes = config.streams * config.clients
    per_writer = [
        config.batch_size
        * (
            lanes
            * config.concurrency
            * (footprint.arrow + (footprint.encoded if stores_rows(name) else 0.0))
            + ahead * config.clients * footprint.arrow
        )
        for name in config.writers
    ]
    at_once = len(config.writers) if config.parallel else 1
    stores = any(stores_rows(name) for name in config.writers)
    return MemoryEstimate(
        bytes=round(sum(per_writer) if config.parallel else max(per_writer)),
        batches=(lanes * config.concurrency + ahead * config.clients) * at_once,
        batch_rows=config.batch_size,
        writers_at_once=at_once,
        arrow_row=footprint.arrow,
        encoded_row=footprint.encoded if stores else 0.0,
    )


def check_memory(
    configs: Sequence[BenchmarkConfig],
    footprint: RowFootprint,
    budget_mib: int,
    stores_rows: Callable[[str], bool] | None = None,
) -> MemoryEstimate:
    """The largest estimate of `configs` (a run, or a sweep's points); ResourceLimitError
    (422) when it passes the budget."""
    if stores_rows is None:
        from writers import writer_metadata

        def stores_rows(name: str) -> bool:
            return bool(writer_metadata(name)["stores_rows"])

    largest = max((in_flight_memory(c, footprint, stores_rows) for c in configs), key=_bytes)
    budget = budget_mib * 1024 * 1024
    if largest.bytes > budget:
        raise ResourceLimitError(
            f"{largest.text()} exceeds the {size_text(budget)} budget ({BUDGET_SETTING}); "
            "lower batch_size or concurrency, or raise the budget"
        )
    return largest


def _bytes(estimate: MemoryEstimate) -> int:
    return estimate.bytes


def size_text(n: float) -> str:
    """Bytes in binary units: 512 MiB, 2.4 GiB, 800 KiB."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            value = n / scale
            return (
                f"{value:.0f} {unit}"
                if value == int(value) or value >= 100
                else f"{value:.1f} {unit}"
            )
    return f"{n:.0f} B"
