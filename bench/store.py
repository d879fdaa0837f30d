"""Result files on disk: `<dir>/<run id>.json` and `.csv`, the run history, and comparisons."""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.results import RunResult, to_csv

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
        },
    }


@dataclass(frozen=True)
class MetricDiff:
    writer: str
    metric: str
    a: float | None
    b: float | None
    change: float | None  # relative, (b - a) / a
    better: str | None  # "a", "b", or None within noise / not comparable
    within_noise: bool
    noise: float


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


def _metric(run: RunResult, writer: str, name: str) -> float | None:
    w = next((w for w in run.writers if w.writer == writer), None)
    if w is None:
        return None
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


def run_noise(run: RunResult, writer: str) -> float:
    """Relative run-to-run noise estimated from the run itself: the coefficient of variation
    of its per-second throughput (whole seconds only)."""
    w = next((w for w in run.writers if w.writer == writer), None)
    if w is None or len(w.per_second) < 3:
        return 0.0
    rows = [s.rows for s in w.per_second[:-1]]  # the last second is usually partial
    mean = statistics.fmean(rows)
    if mean <= 0 or len(rows) < 2:
        return 0.0
    return statistics.stdev(rows) / mean


def compare(a: RunResult, b: RunResult) -> list[MetricDiff]:
    """Per writer in both runs, per metric: the change from a to b, and whether it is within
    noise: max(5 %, 2 x the larger per-second throughput variation of the two runs)."""
    diffs: list[MetricDiff] = []
    names = [w.writer for w in a.writers if any(x.writer == w.writer for x in b.writers)]
    for writer in names:
        noise = max(NOISE_FLOOR, 2 * max(run_noise(a, writer), run_noise(b, writer)))
        for metric, higher_is_better in _METRICS:
            va, vb = _metric(a, writer, metric), _metric(b, writer, metric)
            change = None
            if va is not None and vb is not None and va != 0:
                change = (vb - va) / va
            elif va == 0 and vb == 0:
                change = 0.0
            within = change is not None and abs(change) < noise
            better = None
            if change is not None and not within and not math.isclose(change, 0.0):
                improved = change > 0 if higher_is_better else change < 0
                better = "b" if improved else "a"
            diffs.append(MetricDiff(writer, metric, va, vb, change, better, within, noise))
    return diffs


def compare_json(a: RunResult, b: RunResult) -> dict[str, Any]:
    return {
        "a": a.id,
        "b": b.id,
        "diffs": [d.__dict__ for d in compare(a, b)],
    }
