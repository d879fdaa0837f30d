"""Freshness per path and hop: the time from an event's event_time to each hop.

Every hop is an HDR histogram (`bench.stats.Latencies`, µs resolution), so the app's own
hops and the ones the local stack stamps (bronze, silver, the synced table's Postgres
commit, sent as HdrHistogram's standard encoding) merge into one view, and a result file
keeps them encoded. A negative lag (a clock behind the event's) counts as 1 µs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bench.stats import Latencies

PATHS = ("realtime", "synced")
# The hops of each path, in order. In local mode the real-time writer is fed the fleet's
# acknowledged batches (the local stack acknowledges after the bronze commit), so its
# path has no separate bronze hop; silver is the synced path's only.
HOPS: dict[str, tuple[str, ...]] = {
    "realtime": ("ack", "postgres", "ws_sent", "browser"),
    "synced": ("ack", "bronze", "silver", "postgres", "ws_sent", "browser"),
}
REPORTED = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0))


class Freshness:
    """Histograms by path and hop, in microseconds; `merged_with` adds encoded ones."""

    def __init__(self) -> None:
        self.hops: dict[str, dict[str, Latencies]] = {
            path: {hop: Latencies() for hop in hops} for path, hops in HOPS.items()
        }

    def record_us(self, path: str, hop: str, lags_us: Iterable[int]) -> None:
        hist = self.hops[path][hop].hist
        for lag in lags_us:
            hist.record_value(min(max(int(lag), 1), 3_600_000_000))

    def merged_with(self, encoded: Mapping[str, Mapping[str, str | None]]) -> Freshness:
        """A copy with histograms from elsewhere (path -> hop -> encoded) added in."""
        out = Freshness()
        for path, hops in self.hops.items():
            for hop, latencies in hops.items():
                out.hops[path][hop].merge(latencies)
        for path, texts in encoded.items():
            for hop, text in texts.items():
                if text:
                    out.hops[path][hop].merge(Latencies.decode(text))
        return out

    def summary(self) -> dict[str, dict[str, dict[str, float | int]]]:
        """path -> hop -> p50, p95, p99, max (ms) and count; hops without data left out."""
        out: dict[str, dict[str, dict[str, float | int]]] = {}
        for path, hops in self.hops.items():
            out[path] = {}
            for hop, latencies in hops.items():
                if latencies.count == 0:
                    continue
                # One pass over the counts for all percentiles.
                values = latencies.hist.get_percentile_to_value_dict([p for _, p in REPORTED])
                stats: dict[str, float | int] = {
                    name: round(values[p] / 1000.0, 3) for name, p in REPORTED
                }
                stats["max"] = latencies.hist.get_max_value() / 1000.0
                stats["count"] = latencies.count
                out[path][hop] = stats
        return out

    def encoded(self) -> dict[str, dict[str, str]]:
        return {
            path: {hop: h.encode() for hop, h in hops.items() if h.count}
            for path, hops in self.hops.items()
        }


def waterfall(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """The per-path waterfall as text: each hop's p50/p95/p99/max and count."""
    lines = []
    for path in PATHS:
        hops = summary.get(path, {})
        lines.append(f"{path} path (ms from event time)")
        lines.append(f"  {'hop':<10}{'p50':>10}{'p95':>10}{'p99':>10}{'max':>10}{'count':>10}")
        for hop in HOPS[path]:
            s = hops.get(hop)
            if s is None:
                lines.append(f"  {hop:<10}{'-':>10}{'-':>10}{'-':>10}{'-':>10}{0:>10}")
                continue
            lines.append(
                f"  {hop:<10}{s['p50']:>10.1f}{s['p95']:>10.1f}{s['p99']:>10.1f}"
                f"{s['max']:>10.1f}{s['count']:>10,}"
            )
    return "\n".join(lines)
