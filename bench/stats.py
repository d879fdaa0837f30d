"""Latency statistics on HDR histograms (microsecond resolution, reported in milliseconds).

A fixed-rate run records two latencies per batch: service time (from when it was actually
sent) and latency from when it was *due*. When the system stalls, batches queue up behind
the stall; their service time looks normal, but their latency from the intended start
grows — the second one is what a user waiting on the schedule sees (coordinated omission,
as wrk2 corrects it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from hdrh.histogram import HdrHistogram

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
# A percentile p is reported only when the sample has at least 10 / (1 - p) batches: about
# ten batches lie beyond it, so one outlier more or less does not move it to another value.
# p50 needs 20, p90 100, p95 200, p99 1,000, p99.9 10,000.
TAIL_BATCHES = 10


def min_batches(p: float) -> int:
    """The fewest batches that support percentile `p` (in percent): 10 / (1 - p)."""
    return math.ceil(round(TAIL_BATCHES / (1 - p / 100), 6))


def percentile_name(p: float) -> str:
    return f"p{p:g}"


def unsupported_percentiles(count: int) -> dict[str, str]:
    """The reported percentiles `count` batches cannot support, each with the reason."""
    return {
        percentile_name(p): f"needs {min_batches(p):,} batches, {count:,} measured"
        for p in PERCENTILES
        if count < min_batches(p)
    }


# The one range and precision of every latency histogram in a result (overall and per
# second), so any two can be added: 1 µs to one hour, 3 significant digits (a value is stored
# to within 0.1 %). Values outside the range are clamped to it.
_LOWEST_US = 1
_HIGHEST_US = 3_600_000_000  # one hour
_DIGITS = 3


class Latencies:
    """An HDR histogram of durations given in seconds, stored in microseconds.

    Every latency summary of a result (latency_ms, ...) is read from one of these; only
    per_second's p50/p99 are exact (bench.stats.exact_percentile over that second's list)."""

    def __init__(self) -> None:
        self.hist = HdrHistogram(_LOWEST_US, _HIGHEST_US, _DIGITS)

    def record(self, seconds: float) -> None:
        micros = round(seconds * 1_000_000)
        self.hist.record_value(min(max(micros, _LOWEST_US), _HIGHEST_US))

    @property
    def count(self) -> int:
        return int(self.hist.get_total_count())

    def percentile_ms(self, p: float) -> float:
        return self.hist.get_value_at_percentile(p) / 1000.0

    def summary(self) -> dict[str, float] | None:
        """min, mean, p50, p90, p95, p99, p99.9, max (ms) and count; None when empty."""
        if self.count == 0:
            return None
        out: dict[str, float] = {"count": self.count}
        out["min"] = self.hist.get_min_value() / 1000.0
        out["mean"] = round(self.hist.get_mean_value() / 1000.0, 3)
        for p in PERCENTILES:
            out[f"p{p:g}"] = self.percentile_ms(p)
        out["max"] = self.hist.get_max_value() / 1000.0
        return out

    def curve(self, points_per_decade: int = 10) -> list[tuple[float, float]]:
        """(percentile, ms) pairs evenly spaced on a 1/(1-p) axis, up to the last recorded."""
        if self.count == 0:
            return []
        out: list[tuple[float, float]] = []
        # 1/(1-p) from 1 (p=0) up to count (the last value resolves to the max).
        top = math.log10(max(self.count, 10))
        steps = max(1, int(top * points_per_decade))
        for i in range(steps + 1):
            p = 100.0 * (1.0 - 10 ** (-top * i / steps))
            out.append((round(p, 6), self.percentile_ms(p)))
        out.append((100.0, self.hist.get_max_value() / 1000.0))
        return out

    def merge(self, other: Latencies) -> None:
        self.hist.add(other.hist)

    def encode(self) -> str:
        """The histogram in HdrHistogram's compressed base64 form (readable by any HDR tool)."""
        encoded: bytes = self.hist.encode()
        return encoded.decode()

    @classmethod
    def decode(cls, encoded: str) -> Latencies:
        latencies = cls()
        latencies.hist = HdrHistogram.decode(encoded.encode())
        return latencies

    @classmethod
    def merged(cls, parts: Iterable[Latencies]) -> Latencies:
        total = cls()
        for part in parts:
            total.merge(part)
        return total


def exact_percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of a small list (per-second series)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]
