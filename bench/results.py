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
    # The wall-clock series (WriterResult.wall_seconds) fills these; per_second leaves them None.
    epoch_s: int | None = Field(
        default=None,
        description="wall_seconds only: the UTC epoch second this entry covers, [epoch_s, "
        "epoch_s + 1), so workers on different machines line up by absolute second",
    )
    bytes: int | None = Field(default=None, description="wall_seconds only: exact bytes")
    histogram: str | None = Field(
        default=None,
        description="wall_seconds only: the service latencies acked in this second, an "
        "HdrHistogram (compressed base64, microseconds; bench.stats has its range)",
    )


class WorkerStats(BaseModel):
    """One worker's own figures in a merged result (bench.merge)."""

    worker: str
    status: WriterStatus
    rows: int = 0
    batches: int = 0
    failed_batches: int = 0
    errors: dict[str, int] = Field(default_factory=dict)
    elapsed_s: float = 0.0
    rows_per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    start_offset_s: float | None = Field(
        default=None,
        description="when this worker began measuring, in seconds after the first worker did "
        "(wall clock); None for a worker with no wall-clock base",
    )


class WorkerSkew(BaseModel):
    """How far apart the workers of a merged result were (bench.merge)."""

    workers: int
    start_s: float | None = Field(
        default=None, description="latest - earliest measure start (wall clock), seconds"
    )
    end_s: float | None = Field(
        default=None, description="latest - earliest measure end (wall clock), seconds"
    )
    rows_per_s_min: float = 0.0
    rows_per_s_max: float = 0.0
    rows_per_s_spread: float | None = Field(
        default=None,
        description="(max - min) / mean of the workers' rows/s; None when the mean is 0",
    )


class StreamStats(BaseModel):
    """One stream of one client (bench.runner: each a writer instance of its own)."""

    client: int = 0
    stream: int
    rows: int = 0
    bytes: int = 0
    batches: int = 0
    failed_batches: int = 0
    rows_per_s: float = Field(default=0.0, description="over the writer's measured window")
    mb_per_s: float = Field(
        default=0.0,
        description="10^6 bytes/s of rows (the row size the source reports), as the per-stream "
        "quotas are published",
    )


class WireCount(BaseModel):
    """The raw byte counter readings behind wire_bytes_per_row, so results of clients that
    ran at once can be merged: a stand-in's counter is shared by every client of the
    interface (the merge spans the readings), a payload count is each client's own (summed)."""

    start: int
    end: int
    rows_sent: int


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
    # Mergeable across workers (bench.merge). Optional: results stored before have none.
    wall_start_s: float | None = Field(
        default=None,
        description="UTC epoch seconds (time.time()) when measuring began: the wall-clock base "
        "of wall_seconds, read once with the run's perf_counter start",
    )
    wall_seconds: list[SecondStats] | None = Field(
        default=None,
        description="the measured window by absolute wall-clock second: entry t covers "
        "[floor(wall_start_s) + t, +1) in UTC epoch seconds (epoch_s), with its latency "
        "histogram; the first and last are partial (span_s). p50/p99 here are read from the "
        "histograms (HDR, 3 significant digits); per_second's are exact",
    )
    workers: list[WorkerStats] | None = Field(
        default=None, description="a merged result only: each worker's own figures"
    )
    streams: int = Field(default=1, description="streams per client (the run's --streams)")
    clients: int = Field(default=1, description="clients (the run's --clients)")
    per_stream: list[StreamStats] = Field(
        default_factory=list,
        description="each stream of each client: rows and rows/s, next to the per-stream quotas",
    )
    wire_count: WireCount | None = Field(
        default=None, description="the counter readings wire_bytes_per_row was computed from"
    )
    skew: WorkerSkew | None = Field(
        default=None, description="a merged result only: how far apart the workers were"
    )


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
    # failed_batches by kind: a wait for a pooled connection (the writer's own backpressure),
    # the target unreachable, and every other error (refused, too large, unexpected)
    "failed_pool_wait",
    "failed_unavailable",
    "failed_error",
    "target_rows_per_s",
    "rate_ratio",
    "unsupported_percentiles",
    "client_cpu_s_per_million_rows",
    "wire_bytes_per_row",
    "quota_rows_per_s",
    # streams per client, clients, and what one stream carried on average (the quotas are
    # per stream)
    "streams",
    "clients",
    "rows_per_s_per_stream",
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
                w.errors.get("pool_wait", 0),
                w.errors.get("unavailable", 0),
                w.failed_batches - w.errors.get("pool_wait", 0) - w.errors.get("unavailable", 0),
                w.target_rows_per_s or "",
                w.rate_ratio if w.rate_ratio is not None else "",
                " ".join(lat.unsupported) if lat else "",
                w.client_cpu_s_per_million_rows
                if w.client_cpu_s_per_million_rows is not None
                else "",
                w.wire_bytes_per_row if w.wire_bytes_per_row is not None else "",
                w.quota_projection.rows_per_s if w.quota_projection else "",
                w.streams,
                w.clients,
                round(w.rows_per_s / (w.streams * w.clients), 1),
            ]
        )
    return out.getvalue()
