"""Each metric as a median with a 95 % confidence interval, from repeats or from one run.

A run's rows/s is one number, but the same run again gives another. How far apart two
figures must be before they say anything is what this module estimates, with a bootstrap
(resample what was measured, recompute the metric, read the spread of the recomputations):

- **One run** (`--repeat 1`): resample its measured seconds (throughput: rows and bytes per
  second, each second a block of consecutive batches) or its batches (latency percentiles).
  This is the noise *within* a run; the noise between runs is usually larger, so a single
  run's interval is a lower bound on the real uncertainty, and the result says so.
- **Repeats** (`--repeat N`, N >= 3): a two-level bootstrap. Draw N repeats with
  replacement, for each drawn repeat draw its metric from its own within-run bootstrap, and
  take the median of the N draws. The spread of those medians is the interval of the
  median: it holds both the run-to-run noise and each run's own sampling noise.

Two repeats are not enough: one difference is all the between-run noise they show. An
interval is also refused when the sample cannot support it: fewer than MIN_SECONDS measured
seconds for throughput, or a percentile the batches cannot support (bench.stats.min_batches:
p99 needs 1,000) in any repeat. Such a metric keeps its median, gets no interval and a reason:
compare then answers "not enough data" for it.

Latency percentiles are resampled through the law of the resampled percentile's rank: in a
resample of n batches the p-quantile lands at rank fraction p + z * sqrt(p (1 - p) / n)
of the original sorted batches (z standard normal), read off the HDR histogram's cumulative
counts. It is the normal approximation of the exact binomial law and needs no per-batch list.

The generator is seeded: the same measurements always give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.results import Interval, WriterResult
from bench.stats import Latencies, min_batches

ITERATIONS = 2000
CONFIDENCE = 0.95
MIN_REPEATS = 3
MIN_SECONDS = 5
SEED = 20261201
# (metric, percentile, which histogram): the latency-like metrics with an interval
_PERCENTILE_METRICS = (
    ("p50_ms", 50.0, "latency"),
    ("p95_ms", 95.0, "latency"),
    ("p99_ms", 99.0, "latency"),
    ("p99.9_ms", 99.9, "latency"),
    ("visibility_p95_ms", 95.0, "visibility"),
)
INTERVAL_METRICS = ("rows_per_s", "mib_per_s", *(m for m, _, _ in _PERCENTILE_METRICS))


@dataclass
class Sample:
    """What one repeat of one writer measured."""

    second_rows: Sequence[float]
    second_bytes: Sequence[float]
    second_spans: Sequence[float]
    latency: Latencies | None = None
    visibility: Latencies | None = None

    @property
    def seconds(self) -> int:
        return len(self.second_spans)

    def rate(self) -> tuple[float, float]:
        span = float(sum(self.second_spans))
        if span <= 0:
            return 0.0, 0.0
        return float(sum(self.second_rows)) / span, float(sum(self.second_bytes)) / span


class _Cumulative:
    """A histogram's values (ms) against the fraction of batches at or below each."""

    def __init__(self, latencies: Latencies) -> None:
        values, counts = [], []
        for item in latencies.hist.get_recorded_iterator():
            values.append(item.value_iterated_to / 1000.0)
            counts.append(item.count_at_value_iterated_to)
        self.values = np.asarray(values, dtype=float)
        cumulative = np.cumsum(np.asarray(counts, dtype=float))
        self.count = int(cumulative[-1]) if len(cumulative) else 0
        self.fractions = cumulative / max(self.count, 1)

    def at(self, fractions: np.ndarray) -> np.ndarray:
        index = np.searchsorted(self.fractions, np.clip(fractions, 0.0, 1.0), side="left")
        return self.values[np.minimum(index, len(self.values) - 1)]


def _bounds(draws: np.ndarray) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def _two_level(inner: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """inner: (repeats, ITERATIONS) within-run draws. One repeat: those draws; several: the
    median over `repeats` repeats drawn with replacement, each contributing one of its own
    draws."""
    repeats = inner.shape[0]
    if repeats == 1:
        return inner[0]
    picks = rng.integers(0, repeats, size=(ITERATIONS, repeats))
    which = rng.integers(0, ITERATIONS, size=(ITERATIONS, repeats))
    return np.median(inner[picks, which], axis=1)


def _method(samples: Sequence[Sample]) -> str:
    return "bootstrap" if len(samples) == 1 else "repeats"


def _refusal(samples: Sequence[Sample]) -> str | None:
    if len(samples) == 2:
        return f"an interval needs at least {MIN_REPEATS} repeats (2 ran)"
    return None


def _throughput(
    samples: Sequence[Sample], rng: np.random.Generator
) -> tuple[Interval, Interval] | None:
    if not samples:
        return None
    rates = [s.rate() for s in samples]
    medians = (
        float(np.median([r for r, _ in rates])),
        float(np.median([b for _, b in rates])) / 1048576,
    )
    method, n = _method(samples), len(samples)
    reason = _refusal(samples)
    fewest = min(s.seconds for s in samples)
    if reason is None and fewest < MIN_SECONDS:
        reason = (
            f"an interval needs at least {MIN_SECONDS} measured seconds per run, {fewest} measured"
        )
    if reason is not None:
        return tuple(  # type: ignore[return-value]
            Interval(median=m, n=n, method=method, reason=reason)  # type: ignore[arg-type]
            for m in medians
        )
    inner_rows = np.empty((n, ITERATIONS))
    inner_bytes = np.empty((n, ITERATIONS))
    for j, s in enumerate(samples):
        rows = np.asarray(s.second_rows, dtype=float)
        size = np.asarray(s.second_bytes, dtype=float)
        spans = np.asarray(s.second_spans, dtype=float)
        for start in range(0, ITERATIONS, 250):  # in chunks: a long run has many seconds
            stop = min(start + 250, ITERATIONS)
            idx = rng.integers(0, len(spans), size=(stop - start, len(spans)))
            span = spans[idx].sum(axis=1)
            inner_rows[j, start:stop] = rows[idx].sum(axis=1) / span
            inner_bytes[j, start:stop] = size[idx].sum(axis=1) / span / 1048576
    out = []
    for median, inner in zip(medians, (inner_rows, inner_bytes), strict=True):
        low, high = _bounds(_two_level(inner, rng))
        out.append(Interval(median=median, low=low, high=high, n=n, method=method))  # type: ignore[arg-type]
    return out[0], out[1]


def _percentile(
    samples: Sequence[Sample],
    p: float,
    histogram: str,
    rng: np.random.Generator,
    cache: dict[int, _Cumulative],
) -> Interval | None:
    hists = [getattr(s, histogram) for s in samples]
    if not hists or any(h is None or h.count == 0 for h in hists):
        return None
    method, n = _method(samples), len(samples)
    median = float(np.median([h.percentile_ms(p) for h in hists]))
    reason = _refusal(samples)
    fewest = min(h.count for h in hists)
    if reason is None and fewest < min_batches(p):
        what = "batches" if histogram == "latency" else "visibility samples"
        reason = (
            f"p{p:g} needs {min_batches(p):,} {what} per run, {fewest:,} measured"
            if n > 1
            else f"p{p:g} needs {min_batches(p):,} {what}, {fewest:,} measured"
        )
    if reason is not None:
        return Interval(median=median, n=n, method=method, reason=reason)  # type: ignore[arg-type]
    q = p / 100
    inner = np.empty((n, ITERATIONS))
    for j, h in enumerate(hists):
        cumulative = cache.get(id(h))
        if cumulative is None:
            cumulative = cache[id(h)] = _Cumulative(h)
        z = rng.standard_normal(ITERATIONS)
        inner[j] = cumulative.at(q + z * np.sqrt(q * (1 - q) / cumulative.count))
    low, high = _bounds(_two_level(inner, rng))
    return Interval(median=median, low=low, high=high, n=n, method=method)  # type: ignore[arg-type]


def intervals(samples: Sequence[Sample]) -> dict[str, Interval]:
    """Per metric (INTERVAL_METRICS), the median over `samples` (the repeats, or the one run)
    and its 95 % interval; a metric nothing was measured for is left out."""
    rng = np.random.default_rng(SEED)
    out: dict[str, Interval] = {}
    throughput = _throughput(samples, rng)
    if throughput is not None:
        out["rows_per_s"], out["mib_per_s"] = throughput
    cache: dict[int, _Cumulative] = {}
    for metric, p, histogram in _PERCENTILE_METRICS:
        found = _percentile(samples, p, histogram, rng, cache)
        if found is not None:
            out[metric] = found
    return {metric: _rounded(found, _DIGITS.get(metric, 3)) for metric, found in out.items()}


# As the result rounds the same figures: rows/s to 0.1, MiB/s to 0.001, ms to the microsecond.
_DIGITS = {"rows_per_s": 1, "mib_per_s": 3}


def _rounded(interval: Interval, digits: int) -> Interval:
    def r(value: float | None) -> float | None:
        return None if value is None else round(value, digits)

    return interval.model_copy(
        update={"median": r(interval.median), "low": r(interval.low), "high": r(interval.high)}
    )


def seconds_of(
    per_second: Sequence[tuple[int, float, float]], elapsed: float
) -> tuple[list[float], list[float], list[float]]:
    """(t, rows, bytes) per second with completions -> rows, bytes and span of *every* second
    of the window: a second without completions counts as 0 rows (SQL's 2.5 s batches leave
    such gaps), and the last, cut short by the window's end, as its real span."""
    if elapsed <= 0:
        return [], [], []
    count = max(1, math.ceil(round(elapsed, 6)))
    rows = [0.0] * count
    size = [0.0] * count
    for t, r, b in per_second:
        index = min(max(t, 0), count - 1)
        rows[index] += r
        size[index] += b
    spans = [1.0] * count
    spans[-1] = max(elapsed - (count - 1), 1e-6)
    return rows, size, spans


def from_result(w: WriterResult) -> Sample | None:
    """A single run's sample rebuilt from its result (results saved before intervals were
    stored, or any single run): None for repeats, whose histograms are merged."""
    if w.repeats or not w.batches:
        return None
    rows, size, spans = seconds_of(
        [(s.t, s.rows, s.mib * 1048576) for s in w.per_second], w.elapsed_s
    )
    return Sample(
        rows,
        size,
        spans,
        Latencies.decode(w.histograms["latency"]) if "latency" in w.histograms else None,
        Latencies.decode(w.histograms["visibility"]) if "visibility" in w.histograms else None,
    )


def of_result(w: WriterResult) -> dict[str, Interval]:
    """The result's intervals: stored ones, else computed from its own seconds and batches."""
    if w.intervals:
        return w.intervals
    sample = from_result(w)
    return intervals([sample]) if sample is not None else {}


def overlap(a: Interval, b: Interval) -> bool:
    """Whether two intervals (both with bounds) share any value."""
    assert a.low is not None and a.high is not None and b.low is not None and b.high is not None
    return a.low <= b.high and b.low <= a.high
