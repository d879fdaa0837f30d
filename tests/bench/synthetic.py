"""Results built from chosen numbers, for tests of what is computed from results: the noise
in them is known, so what intervals and comparisons decide can be checked against it."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from bench.config import BenchmarkConfig
from bench.intervals import Sample, intervals
from bench.results import LatencySummary, RepeatStats, RunResult, SecondStats, WriterResult
from bench.stats import Latencies, unsupported_percentiles

ROW_BYTES = 1024


def latencies(values_ms: Sequence[float]) -> Latencies:
    hist = Latencies()
    for value in values_ms:
        hist.record(value / 1000)
    return hist


def lognormal_ms(median_ms: float, count: int, seed: int, sigma: float = 0.5) -> list[float]:
    rnd = random.Random(seed)
    return [median_ms * rnd.lognormvariate(0, sigma) for _ in range(count)]


def summary(hist: Latencies) -> LatencySummary | None:
    values = hist.summary()
    if values is None:
        return None
    return LatencySummary.model_validate(
        {**values, "unsupported": unsupported_percentiles(hist.count)}
    )


def sample(second_rows: Sequence[float], latency_ms: Sequence[float]) -> Sample:
    return Sample(
        list(second_rows),
        [r * ROW_BYTES for r in second_rows],
        [1.0] * len(second_rows),
        latencies(latency_ms) if latency_ms else None,
    )


def writer(
    name: str,
    second_rows: Sequence[int],
    latency_ms: Sequence[float],
    *,
    failed: int = 0,
    stores_rows: bool = True,
) -> WriterResult:
    """A single run of `name`: `second_rows` rows acked in each whole second, one batch per
    latency value."""
    hist = latencies(latency_ms)
    rows = sum(second_rows)
    elapsed = float(len(second_rows))
    return WriterResult(
        writer=name,
        label=f"{name} label",
        stores_rows=stores_rows,
        status="completed",
        rows=rows,
        bytes=rows * ROW_BYTES,
        batches=hist.count,
        failed_batches=failed,
        elapsed_s=elapsed,
        rows_per_s=round(rows / elapsed, 1),
        mib_per_s=round(rows * ROW_BYTES / 1048576 / elapsed, 3),
        latency_ms=summary(hist),
        per_second=[
            SecondStats(
                t=t,
                rows=r,
                mib=round(r * ROW_BYTES / 1048576, 4),
                batches=0,
                errors=0,
                p50_ms=None,
                p99_ms=None,
            )
            for t, r in enumerate(second_rows)
        ],
        histograms={"latency": hist.encode()} if hist.count else {},
    )


def repeated(name: str, repeats: Sequence[tuple[Sequence[int], Sequence[float]]]) -> WriterResult:
    """`name` over several repeats: each (rows per second, latencies), merged as the runner
    merges them, with the repeats' figures and intervals."""
    parts = [writer(name, rows, lat) for rows, lat in repeats]
    merged_hist = Latencies.merged(latencies(lat) for _, lat in repeats)
    rows = sum(p.rows for p in parts)
    elapsed = sum(p.elapsed_s for p in parts)
    return parts[0].model_copy(
        update={
            "rows": rows,
            "bytes": rows * ROW_BYTES,
            "batches": merged_hist.count,
            "elapsed_s": elapsed,
            "rows_per_s": round(rows / elapsed, 1),
            "mib_per_s": round(rows * ROW_BYTES / 1048576 / elapsed, 3),
            "latency_ms": summary(merged_hist),
            "histograms": {"latency": merged_hist.encode()},
            "repeats": [
                RepeatStats(repeat=i, status="completed", rows=p.rows, rows_per_s=p.rows_per_s)
                for i, p in enumerate(parts)
            ],
            "intervals": intervals([sample(r, lat) for r, lat in repeats]),
        }
    )


def run(run_id: str, writers: Sequence[WriterResult], **config: Any) -> RunResult:
    cfg = BenchmarkConfig(writers=["null"], warmup_s=0, **config)
    cfg = cfg.model_copy(update={"writers": [w.writer for w in writers]})
    return RunResult(
        id=run_id,
        status="completed",
        started_at="2026-12-01T00:00:00+00:00",
        config=cfg,
        environment={"mode": "local"},
        writers=list(writers),
    )


def steady(rate: float, seconds: int, seed: int, spread: float = 0.05) -> list[int]:
    """Rows per second around `rate`, Gaussian with a relative spread."""
    rnd = random.Random(seed)
    return [max(0, round(rnd.gauss(rate, rate * spread))) for _ in range(seconds)]
