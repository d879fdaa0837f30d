"""Merge one writer's results from K workers into one result of the same shape.

Each worker records its latencies in HDR histograms (overall and per wall-clock second, one
range and precision: bench.stats) and places its measured window on the wall clock
(`wall_start_s`, UTC epoch seconds). The merge therefore adds histograms instead of
averaging percentiles, and lines seconds up by absolute second, so workers started at
different moments, on different hosts, fall in the right seconds (to within the hosts'
clock offset, which NTP keeps to milliseconds).

Published figures of the merge:
- rows, bytes, batches, failed batches and errors by kind: the workers' sums;
- rows/s and MiB/s: over the union window, from the first worker's measure start to the
  last one's end;
- latency summaries and the percentile curve: read from the merged histograms (HDR, so
  within 0.1 % of the exact value, as every worker's own latency summary already is);
- per_second: the merged wall-clock series (t counts from the first worker's first whole
  second; p50/p99 from the merged per-second histograms, HDR precision);
- `workers` (each worker's rows/s, p50/p99, start offset) and `skew` (start and end spread,
  throughput spread).

One worker is its own merge: its result is returned unchanged, with `workers` and `skew`
added (nothing to align; its per_second keeps exact percentiles and sub-second buckets).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.quotas import project
from bench.results import (
    LatencySummary,
    SecondStats,
    VisibilitySummary,
    WireCount,
    WorkerSkew,
    WorkerStats,
    WriterResult,
)
from bench.runner import WallCount, wall_series
from bench.stats import Latencies, unsupported_percentiles
from writers.base import WIRE_STAND_IN

MAX_ERROR_SAMPLES = 5
_NOT_RUN = ("failed", "unavailable", "pending")


class MergeError(ValueError):
    """Results that cannot be merged, with the reason."""


def merge_workers(
    results: Sequence[WriterResult], *, names: Sequence[str] | None = None
) -> WriterResult:
    """One result for one writer from each worker's result of it (same writer and config).
    `names` names the workers in the breakdown (default "0", "1", ...)."""
    if not results:
        raise MergeError("no worker results to merge")
    names = list(names) if names is not None else [str(i) for i in range(len(results))]
    if len(names) != len(results):
        raise MergeError(f"{len(names)} worker names for {len(results)} results")
    writers = {r.writer for r in results}
    if len(writers) != 1:
        raise MergeError(f"results of different writers cannot merge: {sorted(writers)}")
    for name, r in zip(names, results, strict=True):
        if r.repeats:
            # Repeats are laid end to end (bench.runner._merged), not on the wall clock.
            raise MergeError(
                f"worker {name}'s result spans {len(r.repeats)} repeats, which have no one "
                "wall-clock window: merge the workers' results of each repeat instead"
            )
        if r.batches and r.wall_start_s is None:
            raise MergeError(
                f"worker {name} measured {r.batches:,} batches with no wall-clock base "
                "(wall_start_s): its seconds cannot be placed next to the others'"
            )
    window = _Window.of(results)
    breakdown = [
        _worker_stats(name, r, start)
        for name, r, start in zip(names, results, window.starts, strict=True)
    ]
    skew = _skew(breakdown, window)
    if len(results) == 1:
        return results[0].model_copy(update={"workers": breakdown, "skew": skew})
    return _merged(list(results), names, window, breakdown, skew)


@dataclass
class _Window:
    """The workers' measured windows on the wall clock: start/end per worker (None for a
    worker that measured nothing), as offsets from the earliest start."""

    origin: float | None
    starts: list[float | None]
    ends: list[float | None]

    @classmethod
    def of(cls, results: Sequence[WriterResult]) -> _Window:
        placed = [r.wall_start_s for r in results if r.wall_start_s is not None]
        origin = min(placed) if placed else None
        starts: list[float | None] = []
        ends: list[float | None] = []
        for r in results:
            if origin is None or r.wall_start_s is None:
                starts.append(None)
                ends.append(None)
                continue
            # Offsets, not epoch sums: 1.7e9 + 2.5 keeps fewer digits of the 2.5.
            start = r.wall_start_s - origin
            starts.append(start)
            ends.append(start + r.elapsed_s)
        return cls(origin, starts, ends)

    @property
    def elapsed(self) -> float:
        ends = [e for e in self.ends if e is not None]
        return max(ends) if ends else 0.0


def _worker_stats(name: str, r: WriterResult, start: float | None) -> WorkerStats:
    return WorkerStats(
        worker=name,
        status=r.status,
        rows=r.rows,
        batches=r.batches,
        failed_batches=r.failed_batches,
        errors=dict(r.errors),
        elapsed_s=r.elapsed_s,
        rows_per_s=r.rows_per_s,
        p50_ms=r.latency_ms.p50 if r.latency_ms else None,
        p99_ms=r.latency_ms.p99 if r.latency_ms else None,
        start_offset_s=round(start, 6) if start is not None else None,
    )


def _skew(workers: list[WorkerStats], window: _Window) -> WorkerSkew:
    starts = [s for s in window.starts if s is not None]
    ends = [e for e in window.ends if e is not None]
    rates = [w.rows_per_s for w in workers]
    mean = sum(rates) / len(rates)
    return WorkerSkew(
        workers=len(workers),
        start_s=round(max(starts) - min(starts), 6) if starts else None,
        end_s=round(max(ends) - min(ends), 6) if ends else None,
        rows_per_s_min=min(rates),
        rows_per_s_max=max(rates),
        rows_per_s_spread=round((max(rates) - min(rates)) / mean, 4) if mean > 0 else None,
    )


def _status(results: list[WriterResult]) -> str:
    """cancelled if any worker was; else completed if any worker completed (the others'
    failures are counted and warned about); else the first worker's (all failed alike)."""
    statuses = [r.status for r in results]
    if "cancelled" in statuses:
        return "cancelled"
    if "completed" in statuses:
        return "completed"
    return statuses[0]


def _histograms(results: list[WriterResult]) -> dict[str, Latencies]:
    merged: dict[str, Latencies] = {}
    for r in results:
        for key, encoded in r.histograms.items():
            merged.setdefault(key, Latencies()).merge(Latencies.decode(encoded))
    return merged


def _summary(latencies: Latencies | None) -> LatencySummary | None:
    values = latencies.summary() if latencies is not None else None
    if not values or latencies is None:
        return None
    return LatencySummary.model_validate(
        {**values, "unsupported": unsupported_percentiles(latencies.count)}
    )


def _seconds(results: list[WriterResult], window: _Window) -> list[SecondStats]:
    """The workers' wall-clock seconds added up by absolute second, over the union window."""
    if window.origin is None:
        return []
    counts: list[WallCount] = []
    for r in results:
        for s in r.wall_seconds or []:
            if s.epoch_s is None or s.bytes is None:
                raise MergeError(f"{r.writer}: a wall-clock second without epoch_s or bytes")
            hist = Latencies.decode(s.histogram) if s.histogram is not None else None
            counts.append(WallCount(s.epoch_s, s.rows, s.bytes, s.batches, s.errors, hist))
    return wall_series(window.origin, window.elapsed, counts)


def _visibility(results: list[WriterResult], hist: Latencies | None) -> VisibilitySummary | None:
    each = [r.visibility for r in results if r.visibility is not None]
    if not each:
        return None
    counted = hist is not None and hist.count > 0
    return VisibilitySummary(
        samples=sum(v.samples for v in each),
        timeouts=sum(v.timeouts for v in each),
        poll_interval_ms=each[0].poll_interval_ms,
        sample_interval_ms=each[0].sample_interval_ms,
        p50_ms=hist.percentile_ms(50) if counted and hist is not None else None,
        p95_ms=hist.percentile_ms(95) if counted and hist is not None else None,
        max_ms=hist.hist.get_max_value() / 1000 if counted and hist is not None else None,
    )


def _weighted(results: list[WriterResult], field: str) -> float | None:
    """A per-row figure over the workers that have it, weighted by their rows."""
    have = [(getattr(r, field), r.rows) for r in results if getattr(r, field) is not None]
    rows = sum(n for _, n in have)
    if not have or rows == 0:
        return None
    return round(sum(v * n for v, n in have) / rows, 4)


def _wire(results: list[WriterResult]) -> WireCount | None:
    """The clients' bytes on the wire (as WireCount(0, bytes, rows sent)). A stand-in's
    counter is one for every client of the interface: the bytes are its growth from the
    first reading to the last (the clients ran at once, so each one's own difference would
    count the others' bytes too). A payload count is each client's own: added up."""
    counts = [r.wire_count for r in results if r.wire_count is not None]
    if not counts or len(counts) != len([r for r in results if r.rows or r.warmup_rows]):
        return None  # a client that wrote without a count: the total is not known
    if results[0].wire_bytes_source == WIRE_STAND_IN:
        size = max(c.end for c in counts) - min(c.start for c in counts)
    else:
        size = sum(c.end - c.start for c in counts)
    sent = sum(c.rows_sent for c in counts)
    return WireCount(start=0, end=size, rows_sent=sent) if sent else None


def _merged(
    results: list[WriterResult],
    names: list[str],
    window: _Window,
    breakdown: list[WorkerStats],
    skew: WorkerSkew,
) -> WriterResult:
    first = results[0]
    rows = sum(r.rows for r in results)
    size = sum(r.bytes for r in results)
    elapsed = window.elapsed
    rows_per_s = rows / elapsed if elapsed > 0 else 0.0
    errors: dict[str, int] = {}
    for r in results:
        for kind, n in r.errors.items():
            errors[kind] = errors.get(kind, 0) + n
    # Each worker reports the writer's target (its own share is that over the clients).
    target = first.target_rows_per_s
    hists = _histograms(results)
    service = hists.get("latency")
    from_intended = hists.get("latency_from_intended")
    curve_source = from_intended if from_intended is not None else service
    cpu = [r.client_cpu_percent for r in results if r.client_cpu_percent is not None]
    pairs = list(zip(names, results, strict=True))
    warnings = [f"worker {n}: {text}" for n, r in pairs for text in r.warnings]
    failed = [f"worker {n} {r.status}: {r.error}" for n, r in pairs if r.status in _NOT_RUN]
    samples = [f"worker {n}: {text}" for n, r in pairs for text in r.error_samples]
    seconds = _seconds(results, window)
    wire = _wire(results)
    per_row = wire.end / wire.rows_sent if wire is not None else None
    projection = first.quota_projection
    if projection is not None and per_row is not None and projection.interface is not None:
        shards = first.streams * first.clients
        projection = project(
            projection.interface, per_row, projection.batch_rows or 1, rows_per_s / shards
        )
    return WriterResult(
        writer=first.writer,
        label=first.label,
        stores_rows=first.stores_rows,
        status=_status(results),  # type: ignore[arg-type]
        error=next((f"worker {n}: {r.error}" for n, r in pairs if r.error), None),
        rows=rows,
        bytes=size,
        batches=sum(r.batches for r in results),
        failed_batches=sum(r.failed_batches for r in results),
        errors=errors,
        error_samples=samples[:MAX_ERROR_SAMPLES],
        warmup_rows=sum(r.warmup_rows for r in results),
        elapsed_s=round(elapsed, 4),
        rows_per_s=round(rows_per_s, 1),
        mib_per_s=round(size / 1048576 / elapsed, 3) if elapsed > 0 else 0.0,
        target_rows_per_s=target,
        rate_ratio=round(rows_per_s / target, 4) if target and rows else None,
        latency_ms=_summary(service),
        latency_from_intended_ms=_summary(from_intended),
        send_delay_ms=_summary(hists.get("send_delay")),
        visibility=_visibility(results, hists.get("visibility")),
        bucket_s=1.0,
        percentile_curve=curve_source.curve() if curve_source is not None else [],
        histograms={key: h.encode() for key, h in hists.items()},
        # Per worker, as each reports it: the mean share of a core.
        client_cpu_percent=round(sum(cpu) / len(cpu), 1) if cpu else None,
        client_cpu_s_per_million_rows=_weighted(results, "client_cpu_s_per_million_rows"),
        wire_bytes_per_row=round(per_row, 1) if per_row is not None else None,
        wire_bytes_source=first.wire_bytes_source if wire is not None else None,
        wire_count=wire,
        quota_projection=projection if per_row is not None else None,
        streams=first.streams,
        clients=first.clients,
        per_stream=[p for r in results for p in r.per_stream],
        warnings=failed + warnings,
        # The same seconds twice, the histograms once: wall_seconds is what merges again.
        per_second=[s.model_copy(update={"histogram": None}) for s in seconds],
        wall_start_s=window.origin,
        wall_seconds=seconds,
        workers=breakdown,
        skew=skew,
    )
