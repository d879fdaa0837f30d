"""What a benchmark run is asked to do."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from writers import WRITERS

MAX_BATCH_BYTES = 64 * 1024 * 1024
# Long enough for p95/p99 of most writers to rest on enough batches (bench.stats), and for
# per-second variation to be judged; the warm-up lets connections, JITs and caches settle.
DEFAULT_DURATION_S = 30.0
DEFAULT_WARMUP_S = 5.0


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

    @property
    def closed_loop(self) -> bool:
        return self.rate is None
