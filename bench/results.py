"""The result of a benchmark run: one versioned JSON document, plus a CSV summary.

`RunResult.model_json_schema()` is the result schema (`make` writes nothing: the tests
validate files against the model, and `dwbench` can print the schema).
"""

from __future__ import annotations

import csv
import io
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bench.config import BenchmarkConfig
from bench.quotas import QuotaProjection

SCHEMA_VERSION = 1

# completed: every writer ran; partial: some writers did not (unavailable or failed);
# failed: none did, or the harness stopped on an error; cancelled: stopped by the user.
RunStatus = Literal["running", "completed", "partial", "cancelled", "failed"]
WriterStatus = Literal["pending", "running", "completed", "cancelled", "failed", "unavailable"]


class LatencySummary(BaseModel):
    """Milliseconds. p99.9 is spelled p99_9 in Python and "p99.9" in the file."""

    model_config = ConfigDict(populate_by_name=True)

    count: int
    min: float
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    p99_9: float = Field(alias="p99.9")
    max: float
    unsupported: dict[str, str] = Field(
        default_factory=dict,
        description="percentiles the sample is too small for, with the reason (rule: pXX needs "
        "at least 10 / (1 - p) batches: p50 20, p90 100, p95 200, p99 1,000, p99.9 10,000); "
        "their values are not to be read as measurements",
    )

    def supports(self, name: str) -> bool:
        """Whether percentile `name` ("p99", "p99.9") rests on enough batches."""
        return name not in self.unsupported


class VisibilitySummary(BaseModel):
    """Ack -> rows readable in the target: one batch at a time, a new one at most every
    `sample_interval_ms`, polled every `poll_interval_ms` (values are exact to within it)."""

    samples: int
    timeouts: int
    poll_interval_ms: int
    sample_interval_ms: int = 1000
    p50_ms: float | None
    p95_ms: float | None
    max_ms: float | None


class Interval(BaseModel):
    """A metric as the median of its samples with a 95 % confidence interval of that median.

    method "repeats": the samples are the repeats of the run (--repeat N), the interval a
    two-level bootstrap (repeats, then seconds or batches within each). method "bootstrap":
    a single run, the interval a bootstrap over its seconds (throughput) or batches
    (latency). low/high are None, with the reason, when the sample cannot support one."""

    median: float
    low: float | None = None
    high: float | None = None
    n: int = Field(description="repeats the median is taken over (1: a single run)")
    method: Literal["repeats", "bootstrap"]
    reason: str | None = Field(default=None, description="why there is no interval")


class RepeatStats(BaseModel):
    """One repeat of one writer: its own measured window (see WriterResult for the whole)."""

    repeat: int = Field(description="0-based: the order the repeats ran in")
    status: WriterStatus
    rows: int = 0
    batches: int = 0
    failed_batches: int = 0
    elapsed_s: float = 0.0
    rows_per_s: float = 0.0
    mib_per_s: float = 0.0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    visibility_p95_ms: float | None = None


class SecondStats(BaseModel):
    t: int = Field(
        description="second since measuring began; with repeats, of the repeats' measured "
        "windows laid end to end"
    )
    repeat: int = Field(default=0, description="the repeat this second belongs to")
    at_s: float | None = Field(
        default=None,
        description="where this entry starts, in seconds since measuring began: whole seconds, "
        "or bucket starts when the writer's bucket_s is under a second (t is then the second "
        "it falls in)",
    )
    span_s: float = Field(
        default=1.0,
        description="seconds of the window this entry covers: its bucket's width (the last: less)",
    )
    rows_per_s: float | None = Field(
        default=None, description="rows / span_s: the series averages to the summary's rows/s"
    )
    rows: int
    mib: float
    batches: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None


class WriterResult(BaseModel):
    writer: str
    label: str
    stores_rows: bool
    status: WriterStatus
    error: str | None = None
    rows: int = 0
    bytes: int = 0
    batches: int = 0
    failed_batches: int = 0
    errors: dict[str, int] = Field(default_factory=dict, description="failed batches by kind")
    error_samples: list[str] = Field(default_factory=list)
    warmup_rows: int = 0
    elapsed_s: float = 0.0
    rows_per_s: float = 0.0
    mib_per_s: float = 0.0
    target_rows_per_s: int | None = None
    rate_ratio: float | None = Field(default=None, description="achieved / target rows/s")
    latency_ms: LatencySummary | None = Field(
        default=None, description="per batch, from send to acknowledgement (service time)"
    )
    latency_from_intended_ms: LatencySummary | None = Field(
        default=None, description="fixed rate only: from the batch's scheduled start"
    )
    send_delay_ms: LatencySummary | None = Field(
        default=None, description="fixed rate only: actual send - scheduled start"
    )
    visibility: VisibilitySummary | None = None
    per_second: list[SecondStats] = Field(
        default_factory=list,
        description="throughput over time, in buckets of bucket_s (1 s; narrower for a "
        "measured window under 10 s, so a short run is not one or two points)",
    )
    bucket_s: float = Field(default=1.0, description="the width of per_second's buckets")
    percentile_curve: list[tuple[float, float]] = Field(
        default_factory=list, description="(percentile, ms) for a log 1/(1-p) chart"
    )
    histograms: dict[str, str] = Field(
        default_factory=dict, description="HdrHistogram compressed base64, microseconds"
    )
    client_cpu_percent: float | None = None
    client_cpu_s_per_million_rows: float | None = Field(
        default=None,
        description="CPU seconds of the benchmarking process per million rows acknowledged, "
        "from the first measured send to the end (the visibility sampler's queries included); "
        "the null writer's figure is the harness's own share; none when writers ran in parallel",
    )
    wire_bytes_per_row: float | None = Field(
        default=None,
        description="bytes the client put on the wire per row, over every batch it sent "
        "(warm-up and failed ones included): the local stand-in's byte counter where one "
        "meters the interface, else the encoded payloads (see wire_bytes_source)",
    )
    wire_bytes_source: str | None = None
    quota_projection: QuotaProjection | None = Field(
        default=None,
        description="Zerobus only: the rows/s the published quotas allow one stream (or REST "
        "client) at the measured bytes per row; a projection, not a measurement",
    )
    repeats: list[RepeatStats] = Field(
        default_factory=list, description="each repeat's own figures (empty for a single run)"
    )
    intervals: dict[str, Interval] = Field(
        default_factory=dict,
        description="per metric (rows_per_s, mib_per_s, p50_ms, p95_ms, p99_ms, "
        "visibility_p95_ms): the median with its 95 % confidence interval",
    )
    warnings: list[str] = Field(default_factory=list)


class RunResult(BaseModel):
    schema_version: int = SCHEMA_VERSION
    id: str
    label: str | None = Field(default=None, description="a name the user gave the run")
    status: RunStatus
    partial: bool = Field(
        default=False,
        description="cancelled or failed before the end, or some writers did not run",
    )
    started_at: str
    finished_at: str | None = None
    config: BenchmarkConfig
    workload: dict[str, Any] | None = Field(
        default=None, description="the workload's name, columns and target tables"
    )
    environment: dict[str, Any] = Field(default_factory=dict)
    writers: list[WriterResult] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)

    @property
    def mode(self) -> str:
        """local or databricks, as the environment recorded it ("unknown" for old files)."""
        return str(self.environment.get("mode") or "unknown")


CSV_COLUMNS = (
    "run_id",
    "mode",
    "writer",
    "status",
    "rows",
    "batches",
    "elapsed_s",
    "rows_per_s",
    "mib_per_s",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "p99.9_ms",
    "max_ms",
    "corrected_p99_ms",
    "send_delay_p99_ms",
    "visibility_p95_ms",
    "failed_batches",
    "target_rows_per_s",
    "rate_ratio",
    "unsupported_percentiles",
    "client_cpu_s_per_million_rows",
    "wire_bytes_per_row",
    "quota_rows_per_s",
)
INSUFFICIENT = "insufficient sample"


def to_csv(run: RunResult) -> str:
    """One row per writer: the numbers of the side-by-side table."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for w in run.writers:
        lat = w.latency_ms
        corrected = w.latency_from_intended_ms

        def pct(summary: LatencySummary | None, name: str) -> float | str:
            if summary is None:
                return ""
            return (
                getattr(summary, name.replace(".", "_"))
                if summary.supports(name)
                else (INSUFFICIENT)
            )

        writer.writerow(
            [
                run.id,
                run.mode,
                w.writer,
                w.status,
                w.rows,
                w.batches,
                w.elapsed_s,
                round(w.rows_per_s, 1),
                round(w.mib_per_s, 3),
                pct(lat, "p50"),
                pct(lat, "p90"),
                pct(lat, "p95"),
                pct(lat, "p99"),
                pct(lat, "p99.9"),
                lat.max if lat else "",
                pct(corrected, "p99"),
                pct(w.send_delay_ms, "p99"),
                w.visibility.p95_ms if w.visibility else "",
                w.failed_batches,
                w.target_rows_per_s or "",
                w.rate_ratio if w.rate_ratio is not None else "",
                " ".join(lat.unsupported) if lat else "",
                w.client_cpu_s_per_million_rows
                if w.client_cpu_s_per_million_rows is not None
                else "",
                w.wire_bytes_per_row if w.wire_bytes_per_row is not None else "",
                w.quota_projection.rows_per_s if w.quota_projection else "",
            ]
        )
    return out.getvalue()
