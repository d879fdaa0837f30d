"""Sweeps: one workload run over a grid of batch sizes x concurrencies, to find the best setting.

Every point of the grid is a full benchmark run (`BenchmarkRun`) over all the writers asked
for. Points run in grid order: batch sizes ascending, and for each of them concurrencies
ascending, so a line of the grid (one batch size, concurrency rising) is measured back to
back under the same conditions, lightest load first.

Per writer, two readings of the grid (pure functions, below):

**Best point** (`best_cell`): among the points where the writer *completed* with no failed
batches, those within `NEAR_TIE` (2 %) of the highest rows/s are near-ties; of them the one
with the lowest p99 wins. A p99 the sample cannot support (fewer than 1,000 batches, see
`bench.stats`) is not a number to compare: near-ties with a supported p99 come first, and
when none has one the highest rows/s wins (grid order breaks exact ties).

**Knee** (`find_knee`): along one line of the grid — concurrency rising at a fixed batch
size, or batch size rising at a fixed concurrency — the knee is the first point whose p99
is more than `KNEE_P99_FACTOR` (1.5) times the previous point's while its rows/s is less
than `KNEE_ROWS_GAIN` (10 %) above the previous point's: past it, more load buys latency,
not throughput. Only adjacent points are compared, and only when both completed without
failed batches and both p99s are supported; other steps are counted as not judged and
said so, never guessed.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import itertools
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from bench.config import BenchmarkConfig
from bench.environment import host_sample
from bench.results import RunResult, WriterResult, WriterStatus
from bench.runner import BenchmarkRun, Clock, ProgressCallback, WriterSource
from bench.store import ResultStore
from workloads.registry import WorkloadRegistry

MAX_POINTS = 64
NEAR_TIE = 0.02
KNEE_P99_FACTOR = 1.5
KNEE_ROWS_GAIN = 0.10
SCHEMA_VERSION = 1

# A sweep has every BenchmarkConfig field, defined as there (bounds, default, description),
# but the two it varies and `repeat` (a sweep runs each point once); the tests hold the
# field list to that.
VARIED = ("batch_size", "concurrency")
# A sweep runs in the app's process (one client): its points are not spread over clients.
NOT_IN_SWEEPS = ("repeat", "clients", "executor")


def _shared(name: str) -> Any:
    """BenchmarkConfig's own definition of a field (bounds, default, description)."""
    info: FieldInfo = BenchmarkConfig.model_fields[name]
    return copy.copy(info)


def _value_checker(name: str) -> TypeAdapter[Any]:
    """Validates one value as BenchmarkConfig validates field `name` (its bounds)."""
    info = BenchmarkConfig.model_fields[name]
    checked: Any = Annotated[info.annotation, *info.metadata]
    return TypeAdapter(checked)


_CHECK = {name: _value_checker(name) for name in VARIED}


class SweepConfig(BaseModel):
    """A benchmark's settings, with lists of batch sizes and concurrencies to run each of."""

    model_config = ConfigDict(extra="forbid")

    batch_sizes: list[int] = Field(description="rows per batch, one grid line each")
    concurrencies: list[int] = Field(description="batches in flight, one grid column each")
    workload: str = _shared("workload")
    writers: list[str] = _shared("writers")
    records: int | None = _shared("records")
    duration_s: float | None = _shared("duration_s")
    record_bytes: int = _shared("record_bytes")
    warmup_s: float = _shared("warmup_s")
    seed: int = _shared("seed")
    drivers: int | None = _shared("drivers")
    pad_column: str | None = _shared("pad_column")
    rate: int | None = _shared("rate")
    streams: int = _shared("streams")
    parallel: bool = _shared("parallel")
    visibility: bool = _shared("visibility")
    visibility_poll_ms: int = _shared("visibility_poll_ms")
    visibility_sample_ms: int = _shared("visibility_sample_ms")

    @field_validator("writers")
    @classmethod
    def _known_writers(cls, names: list[str]) -> list[str]:
        return BenchmarkConfig._known_writers(names)

    @field_validator("batch_sizes", "concurrencies")
    @classmethod
    def _each_valid(cls, values: list[int], info: Any) -> list[int]:
        what = "batch size" if info.field_name == "batch_sizes" else "concurrency"
        field = "batch_size" if info.field_name == "batch_sizes" else "concurrency"
        if not values:
            raise ValueError(f"give at least one {what}")
        for value in values:
            try:
                _CHECK[field].validate_python(value)
            except ValidationError as exc:
                raise ValueError(f"{what} {value}: {exc.errors()[0]['msg']}") from None
        if len(set(values)) != len(values):
            raise ValueError(f"each {what} may appear once")
        return sorted(values)

    @model_validator(mode="after")
    def _grid_fits(self) -> Self:
        points = len(self.batch_sizes) * len(self.concurrencies)
        if points > MAX_POINTS:
            raise ValueError(
                f"the grid has {len(self.batch_sizes)} batch sizes x {len(self.concurrencies)} "
                f"concurrencies = {points} points; at most {MAX_POINTS}"
            )
        # Each point must be a valid benchmark on its own (batch x record bytes, records or
        # duration ...): BenchmarkConfig decides, and says why not.
        resolved: BenchmarkConfig | None = None
        for b, c in self.grid():
            try:
                resolved = BenchmarkConfig(**self._shared_values(), batch_size=b, concurrency=c)
            except ValidationError as exc:
                reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
                raise ValueError(f"batch size {b:,} x concurrency {c}: {reason}") from None
        assert resolved is not None
        self.records, self.duration_s = resolved.records, resolved.duration_s
        return self

    def _shared_values(self) -> dict[str, Any]:
        return self.model_dump(exclude={"batch_sizes", "concurrencies"}, exclude_unset=True)

    def grid(self) -> list[tuple[int, int]]:
        """(batch size, concurrency) in the order the points run."""
        return list(itertools.product(self.batch_sizes, self.concurrencies))

    def point_config(self, batch_size: int, concurrency: int) -> BenchmarkConfig:
        """The benchmark of one point (every point was validated with the sweep)."""
        values = self.model_dump(exclude={"batch_sizes", "concurrencies"})
        return BenchmarkConfig.model_construct(
            **values, batch_size=batch_size, concurrency=concurrency, executor="inline"
        )


# -- the result ----------------------------------------------------------------------------

SweepStatus = Literal["running", "completed", "partial", "cancelled", "failed"]
PointStatus = Literal["pending", "running", "completed", "partial", "cancelled", "failed"]


class PointWriter(BaseModel):
    """One writer at one point of the grid: the figures a sweep compares."""

    writer: str
    label: str
    status: WriterStatus
    error: str | None = None
    rows: int = 0
    batches: int = 0
    failed_batches: int = 0
    rows_per_s: float = 0.0
    p50_ms: float | None = Field(default=None, description="None when the sample cannot support")
    p99_ms: float | None = Field(default=None, description="None when the sample cannot support")
    p99_unsupported: str | None = Field(
        default=None, description="why there is no p99 (too few batches, or none measured)"
    )

    @classmethod
    def from_result(cls, w: WriterResult) -> PointWriter:
        lat = w.latency_ms
        p99_reason = None
        if lat is None:
            p99_reason = "no batch measured"
        elif not lat.supports("p99"):
            p99_reason = lat.unsupported["p99"]
        return cls(
            writer=w.writer,
            label=w.label,
            status=w.status,
            error=w.error,
            rows=w.rows,
            batches=w.batches,
            failed_batches=w.failed_batches,
            rows_per_s=w.rows_per_s,
            p50_ms=lat.p50 if lat is not None and lat.supports("p50") else None,
            p99_ms=lat.p99 if p99_reason is None and lat is not None else None,
            p99_unsupported=p99_reason,
        )


class SweepPoint(BaseModel):
    batch_size: int
    concurrency: int
    status: PointStatus = "pending"
    run_id: str | None = Field(default=None, description="the point's full run, in sweeps/<id>/")
    writers: list[PointWriter] = Field(default_factory=list)


class GridPosition(BaseModel):
    batch_size: int
    concurrency: int
    rows_per_s: float
    p99_ms: float | None


class Knee(GridPosition):
    p99_ratio: float = Field(description="this point's p99 / the previous point's")
    rows_gain: float = Field(description="this point's rows/s / the previous point's - 1")


class KneeLine(BaseModel):
    """One line of the grid for one writer, and its knee if it has one."""

    along: Literal["concurrency", "batch_size"]
    fixed: int = Field(description="the batch size (along concurrency) or the concurrency")
    knee: Knee | None
    steps: int
    not_judged: int = Field(description="steps with a failed point or an unsupported p99")
    note: str


class WriterSweep(BaseModel):
    writer: str
    label: str
    best: GridPosition | None
    best_note: str
    knees: list[KneeLine]


class SweepResult(BaseModel):
    schema_version: int = SCHEMA_VERSION
    kind: Literal["sweep"] = "sweep"
    id: str
    status: SweepStatus
    started_at: str
    finished_at: str | None = None
    config: SweepConfig
    environment: dict[str, Any] = Field(default_factory=dict)
    points: list[SweepPoint]
    writers: list[WriterSweep] = Field(default_factory=list)
    rules: dict[str, float] = Field(
        default_factory=lambda: {
            "near_tie": NEAR_TIE,
            "knee_p99_factor": KNEE_P99_FACTOR,
            "knee_rows_gain": KNEE_ROWS_GAIN,
        },
        description="best: within near_tie of the top rows/s, lowest p99; knee: p99 > "
        "knee_p99_factor x the previous point's while rows/s gains < knee_rows_gain",
    )
    warnings: list[str] = Field(default_factory=list)

    @property
    def mode(self) -> str:
        return str(self.environment.get("mode") or "unknown")

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def point(self, batch_size: int, concurrency: int) -> SweepPoint:
        return next(
            p for p in self.points if (p.batch_size, p.concurrency) == (batch_size, concurrency)
        )


# -- best and knee (pure) ------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One writer at one grid point, as best_cell and find_knee read it."""

    batch_size: int
    concurrency: int
    status: str
    rows_per_s: float
    p99_ms: float | None  # None: unsupported or not measured
    failed_batches: int = 0

    @property
    def usable(self) -> bool:
        return self.status == "completed" and self.failed_batches == 0 and self.rows_per_s > 0


def best_cell(cells: Sequence[Cell], near_tie: float = NEAR_TIE) -> Cell | None:
    """The best point (see the module docstring); None when no point is usable."""
    usable = [c for c in cells if c.usable]
    if not usable:
        return None
    top = max(c.rows_per_s for c in usable)
    near = [c for c in usable if c.rows_per_s >= (1 - near_tie) * top]
    measured = [c for c in near if c.p99_ms is not None]
    if measured:
        return min(measured, key=lambda c: (c.p99_ms, -c.rows_per_s))
    return max(near, key=lambda c: c.rows_per_s)  # max keeps the first of exact ties


@dataclass(frozen=True)
class KneeFinding:
    knee: Cell | None
    p99_ratio: float | None
    rows_gain: float | None
    steps: int
    not_judged: int


def find_knee(
    line: Sequence[Cell],
    p99_factor: float = KNEE_P99_FACTOR,
    rows_gain: float = KNEE_ROWS_GAIN,
) -> KneeFinding:
    """The first point of `line` (cells in rising order of the varied setting) where p99
    grows by more than `p99_factor` while rows/s grows by less than `rows_gain`."""
    steps = max(len(line) - 1, 0)
    not_judged = 0
    for prev, cur in itertools.pairwise(line):
        if not (prev.usable and cur.usable) or prev.p99_ms is None or cur.p99_ms is None:
            not_judged += 1
            continue
        if prev.p99_ms <= 0:
            not_judged += 1
            continue
        ratio = cur.p99_ms / prev.p99_ms
        gain = cur.rows_per_s / prev.rows_per_s - 1
        if ratio > p99_factor and gain < rows_gain:
            return KneeFinding(cur, ratio, gain, steps, not_judged)
    return KneeFinding(None, None, None, steps, not_judged)


def _knee_note(finding: KneeFinding, along: str) -> str:
    name = "concurrency" if along == "concurrency" else "batch size"
    if finding.knee is not None:
        value = finding.knee.concurrency if along == "concurrency" else finding.knee.batch_size
        assert finding.p99_ratio is not None and finding.rows_gain is not None
        return (
            f"knee at {name} {value:,}: p99 {finding.p99_ratio:.2f}x the previous point's "
            f"while rows/s changed {finding.rows_gain:+.0%}"
        )
    judged = finding.steps - finding.not_judged
    if finding.steps and not judged:
        return (
            f"no knee can be named: none of the {finding.steps} step(s) could be judged "
            "(a point failed, or its p99 rests on fewer than 1,000 batches)"
        )
    text = (
        f"no knee: p99 never grew more than {KNEE_P99_FACTOR:g}x while rows/s grew less "
        f"than {KNEE_ROWS_GAIN:.0%}"
    )
    if finding.not_judged:
        text += f" ({finding.not_judged} of {finding.steps} step(s) not judged)"
    return text


def cells(points: Sequence[SweepPoint], writer: str) -> list[Cell]:
    out = []
    for p in points:
        w = next((w for w in p.writers if w.writer == writer), None)
        if w is None:
            continue
        out.append(
            Cell(p.batch_size, p.concurrency, w.status, w.rows_per_s, w.p99_ms, w.failed_batches)
        )
    return out


def analyse(points: Sequence[SweepPoint], writer: str, label: str) -> WriterSweep:
    """The best point and the knees of one writer over the grid."""
    grid = cells(points, writer)
    best = best_cell(grid)
    if best is None:
        note = "no point completed without failed batches"
    elif best.p99_ms is None:
        note = "highest rows/s; no p99 to weigh (fewer than 1,000 batches per point)"
    else:
        note = f"the lowest p99 of the points within {NEAR_TIE:.0%} of the highest rows/s"
    knees: list[KneeLine] = []
    batch_sizes = sorted({c.batch_size for c in grid})
    concurrencies = sorted({c.concurrency for c in grid})
    if len(concurrencies) > 1:
        for b in batch_sizes:
            line = sorted((c for c in grid if c.batch_size == b), key=lambda c: c.concurrency)
            knees.append(_line("concurrency", b, find_knee(line)))
    if len(batch_sizes) > 1:
        for conc in concurrencies:
            line = sorted((c for c in grid if c.concurrency == conc), key=lambda c: c.batch_size)
            knees.append(_line("batch_size", conc, find_knee(line)))
    return WriterSweep(
        writer=writer,
        label=label,
        best=_position(best) if best else None,
        best_note=note,
        knees=knees,
    )


def _position(c: Cell) -> GridPosition:
    return GridPosition(
        batch_size=c.batch_size, concurrency=c.concurrency, rows_per_s=c.rows_per_s, p99_ms=c.p99_ms
    )


def _line(along: Literal["concurrency", "batch_size"], fixed: int, f: KneeFinding) -> KneeLine:
    knee = None
    if f.knee is not None:
        assert f.p99_ratio is not None and f.rows_gain is not None
        knee = Knee(
            **_position(f.knee).model_dump(),
            p99_ratio=round(f.p99_ratio, 3),
            rows_gain=round(f.rows_gain, 4),
        )
    return KneeLine(
        along=along,
        fixed=fixed,
        knee=knee,
        steps=f.steps,
        not_judged=f.not_judged,
        note=_knee_note(f, along),
    )


# -- running -------------------------------------------------------------------------------


def new_sweep_id() -> str:
    return (
        "sweep-" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


PointCallback = Callable[[SweepPoint, RunResult], None]


class PointElsewhere(Protocol):
    """A point's run executing elsewhere (the app: a worker process of its own)."""

    def cancel(self) -> None: ...

    async def execute(self, on_progress: ProgressCallback | None) -> RunResult: ...


# Given a point's run as built here, where it runs instead.
Elsewhere = Callable[[BenchmarkRun], PointElsewhere]


class SweepRun:
    """A sweep in progress: every grid point a BenchmarkRun, one after another."""

    def __init__(
        self,
        config: SweepConfig,
        *,
        sweep_id: str | None = None,
        environment: dict[str, Any] | None = None,
        clock: Clock = time.perf_counter,
        workloads: WorkloadRegistry | None = None,
        host_probe: Callable[[], dict[str, Any]] = host_sample,
    ) -> None:
        self.config = config
        self.id = sweep_id or new_sweep_id()
        self.environment = environment or {}
        self.clock = clock
        self.workloads = workloads or WorkloadRegistry()
        self.workloads.get(config.workload)  # unknown: KeyError-like error now, not mid-sweep
        self.host_probe = host_probe
        self.points = [SweepPoint(batch_size=b, concurrency=c) for b, c in config.grid()]
        self.started_at = _now()
        self.finished_at: str | None = None
        self.status: SweepStatus = "running"
        self.current: BenchmarkRun | PointElsewhere | None = None
        self.index = -1
        self._cancelled = False
        self._labels: dict[str, str] = {}
        self.warnings: list[str] = []  # said by whoever runs the sweep (tables not prepared)

    def cancel(self) -> None:
        self._cancelled = True
        if self.current is not None:
            self.current.cancel()

    async def execute(
        self,
        source: WriterSource,
        on_progress: ProgressCallback | None = None,
        on_point: PointCallback | None = None,
        *,
        elsewhere: Elsewhere | None = None,
    ) -> SweepResult:
        """Every point in turn, each run by `source`'s writers here, or, given `elsewhere`,
        where that puts it."""
        try:
            for index, point in enumerate(self.points):
                if self._cancelled:
                    point.status = "cancelled"
                    continue
                self.index = index
                # In a thread: building each writer's row source takes a while (~0.1-0.5 s),
                # and the event loop has requests to answer.
                run = await asyncio.to_thread(self._point_run, point)
                if self._cancelled:  # cancelled while the run was built: nothing to stop yet
                    point.status = "cancelled"
                    continue
                point.status = "running"
                point.run_id = run.id
                forward = self._forward(on_progress) if on_progress is not None else None
                if elsewhere is None:
                    self.current = run
                    result = await run.execute(source, forward)
                else:
                    away = self.current = elsewhere(run)
                    result = await away.execute(forward)
                result = result.model_copy(
                    update={
                        "label": f"sweep {self.id}: batch size {point.batch_size:,} x "
                        f"concurrency {point.concurrency}"
                    }
                )
                point.status = result.status
                point.writers = [PointWriter.from_result(w) for w in result.writers]
                for w in result.writers:
                    self._labels[w.writer] = w.label
                if on_point is not None:
                    on_point(point, result)
            self.status = self._outcome()
        except asyncio.CancelledError:
            self.status = "cancelled"
            raise
        finally:
            self.current = None
            self.finished_at = _now()
        return self.result()

    def _point_run(self, point: SweepPoint) -> BenchmarkRun:
        return BenchmarkRun(
            self.config.point_config(point.batch_size, point.concurrency),
            run_id=f"{self.id}-b{point.batch_size}-c{point.concurrency}",
            environment=self.environment,
            clock=self.clock,
            workloads=self.workloads,
            host_probe=self.host_probe,
        )

    def _forward(self, report: ProgressCallback) -> ProgressCallback:
        """A point's run progress, passed on wrapped in the sweep's."""
        return lambda progress: report(self.progress(progress))

    def _outcome(self) -> SweepStatus:
        if self._cancelled:
            return "cancelled"
        done = [p.status == "completed" for p in self.points]
        if all(done):
            return "completed"
        ran = any(p.status in ("completed", "partial") for p in self.points)
        return "partial" if ran else "failed"

    def progress(self, run_progress: dict[str, Any] | None = None) -> dict[str, Any]:
        """Which point is running, of how many, and that point's own progress."""
        point = self.points[self.index] if self.index >= 0 else None
        return {
            "sweep_id": self.id,
            "status": self.status,
            "point": self.index + 1 if point else 0,
            "points": len(self.points),
            "batch_size": point.batch_size if point else None,
            "concurrency": point.concurrency if point else None,
            "run": run_progress,
        }

    def result(self) -> SweepResult:
        writers = [
            analyse(self.points, name, self._labels.get(name, name)) for name in self.config.writers
        ]
        warnings = list(self.warnings)
        unsupported = sum(1 for p in self.points for w in p.writers if w.p99_unsupported and w.rows)
        if unsupported:
            warnings.append(
                f"{unsupported} writer-point(s) have no p99: fewer than 1,000 batches were "
                "measured there; run longer for latency to weigh in the best point and the knee"
            )
        if self.environment.get("mode") == "local":
            warnings.append(
                "local mode: the local stack stands in for the services; the best setting here "
                "is the client side's, not a workspace's"
            )
        return SweepResult(
            id=self.id,
            status=self.status,
            started_at=self.started_at,
            finished_at=self.finished_at,
            config=self.config,
            environment=self.environment,
            points=[p.model_copy(deep=True) for p in self.points],
            writers=writers,
            warnings=warnings,
        )


# -- storage -------------------------------------------------------------------------------


class SweepStore:
    """`<results>/sweeps/<id>.json`, and each point's full run in `<results>/sweeps/<id>/`
    (apart from the run history, which lists single runs)."""

    def __init__(self, results_dir: Path) -> None:
        self.directory = results_dir / "sweeps"

    def path(self, sweep_id: str) -> Path:
        ResultStore(self.directory).path(sweep_id)  # KeyError for an id that is not a name
        return self.directory / f"{sweep_id}.json"

    def points(self, sweep_id: str) -> ResultStore:
        self.path(sweep_id)
        return ResultStore(self.directory / sweep_id)

    def save(self, sweep: SweepResult) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(sweep.id)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(sweep.to_json())
        tmp.replace(path)
        return path

    def save_point(self, sweep_id: str, run: RunResult) -> Path:
        return self.points(sweep_id).save(run)

    def load(self, sweep_id: str) -> SweepResult:
        path = self.path(sweep_id)
        if not path.exists():
            raise KeyError(sweep_id)
        return SweepResult.model_validate_json(path.read_text())

    def list(self) -> list[dict[str, Any]]:
        """Every stored sweep, newest first, one line each."""
        if not self.directory.exists():
            return []
        out = []
        for path in self.directory.glob("*.json"):
            try:
                sweep = SweepResult.model_validate_json(path.read_text())
            except (ValueError, OSError):
                continue
            out.append(sweep_summary(sweep))
        return sorted(out, key=lambda s: s["started_at"], reverse=True)


def sweep_summary(sweep: SweepResult) -> dict[str, Any]:
    return {
        "id": sweep.id,
        "kind": "sweep",
        "mode": sweep.mode,
        "status": sweep.status,
        "started_at": sweep.started_at,
        "writers": sweep.config.writers,
        "batch_sizes": sweep.config.batch_sizes,
        "concurrencies": sweep.config.concurrencies,
        "points": len(sweep.points),
        "best": {w.writer: w.best.model_dump() if w.best else None for w in sweep.writers},
    }
