"""Result files on disk: `<dir>/<run id>.json` and `.csv`, the run history, and comparisons."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bench.config import BenchmarkConfig
from bench.intervals import of_result
from bench.results import Interval, RunResult, WriterResult, to_csv

_ID = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")
NOISE_FLOOR = 0.05  # relative differences below 5 % are never called a change
LABEL_MAX = 200  # characters of a run's label


class ResultStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._summaries: dict[Path, tuple[int, dict[str, Any]]] = {}

    def path(self, run_id: str, suffix: str = ".json") -> Path:
        if not _ID.match(run_id):
            raise KeyError(run_id)
        return self.directory / f"{run_id}{suffix}"

    def save(self, run: RunResult) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(run.id)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(run.to_json())
        tmp.replace(path)  # readers never see half a file
        self.path(run.id, ".csv").write_text(to_csv(run))
        return path

    def load(self, run_id: str) -> RunResult:
        path = self.path(run_id)
        if not path.exists():
            raise KeyError(run_id)
        return load_result(path)

    def set_label(self, run_id: str, label: str | None) -> RunResult:
        """Name a stored run (None or blank: no name); the file is replaced atomically."""
        label = label.strip() if label is not None else None
        if label is not None and len(label) > LABEL_MAX:
            raise ValueError(f"a label has at most {LABEL_MAX} characters, not {len(label)}")
        run = self.load(run_id)
        run.label = label or None
        self.save(run)
        return run

    def delete(self, run_id: str) -> None:
        """Remove a stored run's result file and CSV; KeyError when there is none."""
        path = self.path(run_id)
        try:
            path.unlink()
        except FileNotFoundError:
            raise KeyError(run_id) from None
        self.path(run_id, ".csv").unlink(missing_ok=True)
        self._summaries.pop(path, None)

    def history(self) -> list[dict[str, Any]]:
        """Every stored run, newest first, as a one-line summary each."""
        if not self.directory.exists():
            return []
        out = []
        for path in self.directory.glob("*.json"):
            try:
                mtime = path.stat().st_mtime_ns
                cached = self._summaries.get(path)
                if cached is None or cached[0] != mtime:
                    cached = (mtime, summary(load_result(path)))
                    self._summaries[path] = cached
            except (ValueError, OSError):
                continue  # not a result file of ours
            out.append(cached[1])
        return sorted(out, key=lambda r: r["started_at"], reverse=True)


def load_result(path: Path) -> RunResult:
    return RunResult.model_validate_json(path.read_text())


def summary(run: RunResult) -> dict[str, Any]:
    cfg = run.config
    return {
        "id": run.id,
        "label": run.label,
        "mode": run.mode,
        "status": run.status,
        "partial": run.partial,
        "started_at": run.started_at,
        "writers": [
            {
                "writer": w.writer,
                "status": w.status,
                "rows_per_s": w.rows_per_s,
                "p99_ms": w.latency_ms.p99 if w.latency_ms else None,
            }
            for w in run.writers
        ],
        "workload": {
            "name": cfg.workload,
            "drivers": cfg.drivers,
            "pad_column": cfg.pad_column,
            "records": cfg.records,
            "duration_s": cfg.duration_s,
            "batch_size": cfg.batch_size,
            "concurrency": cfg.concurrency,
            "rate": cfg.rate,
            "record_bytes": cfg.record_bytes,
            "repeat": cfg.repeat,
        },
    }


@dataclass(frozen=True)
class MetricDiff:
    writer: str
    metric: str
    a: float | None
    b: float | None
    change: float | None  # relative, (b - a) / a
    better: str | None  # "a" or "b"; None for every other decision
    within_noise: bool
    noise: float
    decision: Decision = "not comparable"
    reason: str | None = None
    a_interval: tuple[float, float] | None = None  # 95 % interval of a's median
    b_interval: tuple[float, float] | None = None


Decision = Literal["a better", "b better", "within noise", "not enough data", "not comparable"]

_METRICS: tuple[tuple[str, bool], ...] = (
    # (name, higher is better)
    ("rows_per_s", True),
    ("mib_per_s", True),
    ("p50_ms", False),
    ("p95_ms", False),
    ("p99_ms", False),
    ("p99.9_ms", False),
    ("max_ms", False),
    ("visibility_p95_ms", False),
    ("failed_batches", False),
)
_THROUGHPUT = ("rows_per_s", "mib_per_s")
Z_95 = 1.959964


def _writer(run: RunResult, writer: str) -> WriterResult | None:
    return next((w for w in run.writers if w.writer == writer), None)


def _metric(w: WriterResult, name: str) -> float | None:
    lat = w.latency_ms
    values: dict[str, float | None] = {
        "rows_per_s": w.rows_per_s,
        "mib_per_s": w.mib_per_s,
        "p50_ms": lat.p50 if lat else None,
        "p95_ms": lat.p95 if lat else None,
        "p99_ms": lat.p99 if lat else None,
        "p99.9_ms": lat.p99_9 if lat else None,
        "max_ms": lat.max if lat else None,
        "visibility_p95_ms": w.visibility.p95_ms if w.visibility else None,
        "failed_batches": float(w.failed_batches),
    }
    return values[name]


def _bounds(interval: Interval | None) -> tuple[float, float] | None:
    if interval is None or interval.low is None or interval.high is None:
        return None
    return (interval.low, interval.high)


def _rate_note(a: RunResult, b: RunResult) -> str | None:
    capped = [
        f"{name} at {run.config.rate:,} rows/s"
        for name, run in (("A", a), ("B", b))
        if run.config.rate is not None
    ]
    if not capped:
        return None
    return (
        f"rate-capped ({', '.join(capped)}): throughput follows the target rate, not what "
        "the writer can do"
    )


def _failures(wa: WriterResult, wb: WriterResult) -> tuple[Decision, str]:
    """Failed batches as a share of the batches sent, by a two-proportion z-test at 95 %."""
    na, nb = wa.batches + wa.failed_batches, wb.batches + wb.failed_batches
    fa, fb = wa.failed_batches, wb.failed_batches
    if fa == fb == 0:
        return "within noise", "no batch failed in either run"
    if na == 0 or nb == 0:
        return "not enough data", "a run sent no batch"
    pooled = (fa + fb) / (na + nb)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))
    z = (fb / nb - fa / na) / spread if spread > 0 else 0.0
    shares = f"{fa / na:.2%} of {na:,} batches vs {fb / nb:.2%} of {nb:,}"
    if abs(z) < Z_95:
        return "within noise", f"failure shares {shares} (two-proportion test, 95 %)"
    return ("a better" if z > 0 else "b better"), f"failure shares {shares}"


def _decide(
    metric: str,
    higher_is_better: bool,
    wa: WriterResult,
    wb: WriterResult,
    ia: dict[str, Interval],
    ib: dict[str, Interval],
    rate_note: str | None,
) -> tuple[Decision, str | None]:
    va, vb = _metric(wa, metric), _metric(wb, metric)
    if va is None or vb is None:
        missing = " and ".join(n for n, v in (("A", va), ("B", vb)) if v is None)
        return "not comparable", f"not measured in {missing}"
    if metric in _THROUGHPUT and rate_note is not None:
        return "not comparable", rate_note
    if metric == "failed_batches":
        return _failures(wa, wb)
    if metric == "max_ms":
        return "not enough data", "a maximum is a single batch: it has no interval"
    name = metric.removesuffix("_ms")
    for side, w in (("A", wa), ("B", wb)):
        if name.startswith("p") and w.latency_ms is not None and not w.latency_ms.supports(name):
            return "not enough data", f"{side}: {name} {w.latency_ms.unsupported[name]}"
    bounds_a, bounds_b = _bounds(ia.get(metric)), _bounds(ib.get(metric))
    if bounds_a is None or bounds_b is None:
        side, intervals_ = ("A", ia) if bounds_a is None else ("B", ib)
        found = intervals_.get(metric)
        return "not enough data", f"{side}: {found.reason if found else 'no interval'}"
    change = (vb - va) / va if va else 0.0
    if bounds_a[0] <= bounds_b[1] and bounds_b[0] <= bounds_a[1]:
        return "within noise", "the 95 % intervals overlap"
    if abs(change) < NOISE_FLOOR:
        return "within noise", f"the intervals are apart but the change is under {NOISE_FLOOR:.0%}"
    improved = change > 0 if higher_is_better else change < 0
    return ("b better" if improved else "a better"), "the 95 % intervals do not overlap"


def compare(a: RunResult, b: RunResult) -> list[MetricDiff]:
    """Per writer in both runs, per metric: the change from a to b and a decision.

    A difference counts when the two medians' 95 % intervals (bench.intervals: over the
    repeats, or a bootstrap over a single run's seconds and batches) do not overlap and the
    change is at least 5 %. No interval (too few seconds, repeats or batches for the
    percentile) is "not enough data"; throughput between rate-capped runs is "not
    comparable" (it follows the target rate); failed batches are compared as shares of the
    batches sent (two-proportion test); a maximum, one batch, is never decided."""
    diffs: list[MetricDiff] = []
    rate_note = _rate_note(a, b)
    for wa in a.writers:
        wb = _writer(b, wa.writer)
        if wb is None:
            continue
        ia, ib = of_result(wa), of_result(wb)
        for metric, higher_is_better in _METRICS:
            va, vb = _metric(wa, metric), _metric(wb, metric)
            if metric in ia and metric in ib and wa.repeats and wb.repeats:
                va, vb = ia[metric].median, ib[metric].median  # repeats: the medians
            change = None
            if va is not None and vb is not None and va != 0:
                change = (vb - va) / va
            elif va == 0 and vb == 0:
                change = 0.0
            decision, reason = _decide(metric, higher_is_better, wa, wb, ia, ib, rate_note)
            better = {"a better": "a", "b better": "b"}.get(decision)
            diffs.append(
                MetricDiff(
                    wa.writer,
                    metric,
                    va,
                    vb,
                    change,
                    better,
                    decision == "within noise",
                    NOISE_FLOOR,
                    decision,
                    reason,
                    _bounds(ia.get(metric)),
                    _bounds(ib.get(metric)),
                )
            )
    return diffs


def config_differences(a: BenchmarkConfig, b: BenchmarkConfig) -> str:
    """The settings two runs differ in, "name A vs B" each (the writers aside)."""
    da, db = a.model_dump(exclude={"writers"}), b.model_dump(exclude={"writers"})
    return ", ".join(f"{k} {da[k]} vs {db[k]}" for k in da if da[k] != db.get(k))


def compare_notes(a: RunResult, b: RunResult) -> list[str]:
    """What a reader must know before trusting the comparison, for the CLI and the UI alike."""
    notes = []
    if a.mode != b.mode:
        notes.append(f"the runs are from different modes: A {a.mode}, B {b.mode}")
    differ = config_differences(a.config, b.config)
    if differ:
        notes.append(f"the workloads differ ({differ})")
    rate = _rate_note(a, b)
    if rate:
        notes.append(f"{rate}; no throughput verdict is given")
    single = [name for name, run in (("A", a), ("B", b)) if run.config.repeat == 1]
    if single:
        who = "A is a single run: its" if single == ["A"] else "B is a single run: its"
        if len(single) == 2:
            who = "A and B are single runs: their"
        notes.append(
            f"{who} intervals come from a bootstrap over the run's own seconds and batches, "
            "which sees the noise within a run but not between runs; --repeat 3 or more "
            "measures both"
        )
    return notes


def only_in(run: RunResult, other: RunResult) -> list[dict[str, Any]]:
    """The writers of `run` that `other` does not have: not compared, but not hidden."""
    names = {w.writer for w in other.writers}
    return [
        {"writer": w.writer, "label": w.label, "status": w.status}
        for w in run.writers
        if w.writer not in names
    ]


def compare_json(a: RunResult, b: RunResult) -> dict[str, Any]:
    return {
        "a": a.id,
        "b": b.id,
        "notes": compare_notes(a, b),
        "only_in_a": only_in(a, b),
        "only_in_b": only_in(b, a),
        "diffs": [d.__dict__ for d in compare(a, b)],
    }
