"""Sweeps: grid validation, the best point and the knee on synthetic numbers, a sweep run."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from bench.results import RunResult
from bench.sweep import (
    Cell,
    SweepConfig,
    SweepResult,
    SweepRun,
    SweepStore,
    analyse,
    best_cell,
    find_knee,
)
from dwbench.settings import Settings
from tests.bench.fake_writers import ClockedWriter, FailingEveryNthWriter, StepClock
from writers import WRITERS
from writers.base import DataWriterInterface, Targets

TARGETS = Targets(mode="local", settings=Settings(app_mode="local"))


def sweep(**fields: Any) -> SweepConfig:
    return SweepConfig(**{"writers": ["null"], "warmup_s": 0, "duration_s": 1, **fields})


def error(**fields: Any) -> str:
    with pytest.raises(ValidationError) as info:
        sweep(**{"batch_sizes": [100], "concurrencies": [1], **fields})
    (only,) = info.value.errors()
    return str(only["msg"]).removeprefix("Value error, ")


# -- validation ----------------------------------------------------------------------------


def test_grid_runs_batch_sizes_then_concurrencies_ascending():
    cfg = sweep(batch_sizes=[1000, 100], concurrencies=[4, 1])
    assert cfg.grid() == [(100, 1), (100, 4), (1000, 1), (1000, 4)]
    point = cfg.point_config(1000, 4)
    assert (point.batch_size, point.concurrency, point.duration_s, point.writers) == (
        1000,
        4,
        1,
        ["null"],
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"batch_sizes": []}, "give at least one batch size"),
        ({"concurrencies": []}, "give at least one concurrency"),
        ({"batch_sizes": [0]}, "batch size 0: Input should be greater than or equal to 1"),
        (
            {"batch_sizes": [100, 200_000]},
            "batch size 200000: Input should be less than or equal to 100000",
        ),
        (
            {"concurrencies": [1, 257]},
            "concurrency 257: Input should be less than or equal to 256",
        ),
        ({"batch_sizes": [100, 100]}, "each batch size may appear once"),
        ({"concurrencies": [4, 4]}, "each concurrency may appear once"),
        (
            {"batch_sizes": list(range(1, 10)), "concurrencies": list(range(1, 9))},
            "the grid has 9 batch sizes x 8 concurrencies = 72 points; at most 64",
        ),
        (
            {"batch_sizes": [100, 100_000], "record_bytes": 1000},
            "batch size 100,000 x concurrency 1: batch_size x record_bytes is 100,000,000 "
            "bytes; keep a batch under 67,108,864 (64 MiB)",
        ),
        (
            {"writers": ["nosuch"]},
            f"unknown writer(s) nosuch; valid: {', '.join(WRITERS)}",
        ),
    ],
)
def test_invalid_grids_are_refused_with_the_reason(fields, message):
    assert error(**fields) == message


def test_a_sweep_has_every_benchmark_setting_but_the_varied_ones():
    from bench.config import BenchmarkConfig
    from bench.sweep import NOT_IN_SWEEPS, VARIED

    shared = set(BenchmarkConfig.model_fields) - set(VARIED) - set(NOT_IN_SWEEPS)
    assert set(SweepConfig.model_fields) == shared | {"batch_sizes", "concurrencies"}
    for name in shared:
        mine, theirs = SweepConfig.model_fields[name], BenchmarkConfig.model_fields[name]
        assert (mine.default, mine.metadata, mine.description) == (
            theirs.default,
            theirs.metadata,
            theirs.description,
        )


def test_a_records_sweep_runs_each_point_for_that_many_rows():
    cfg = SweepConfig(writers=["null"], batch_sizes=[10], concurrencies=[1], records=500)
    assert (cfg.records, cfg.duration_s) == (500, None)
    assert cfg.point_config(10, 1).records == 500


# -- best and knee on synthetic numbers ----------------------------------------------------


def cell(b: int, c: int, rows: float, p99: float | None, status: str = "completed", **kw: Any):
    return Cell(b, c, status, rows, p99, **kw)


def test_best_is_the_highest_throughput():
    grid = [cell(100, 1, 1000, 5), cell(100, 4, 3000, 8), cell(100, 16, 2000, 30)]
    assert best_cell(grid) == grid[1]


def test_a_near_tie_goes_to_the_lower_p99():
    # 2,990 is within 2 % of 3,000: the point with a third of the p99 wins.
    grid = [cell(100, 4, 2990, 4), cell(100, 16, 3000, 12), cell(100, 1, 1000, 1)]
    assert best_cell(grid) == grid[0]
    # 2,900 is not a near-tie: throughput decides.
    grid[0] = cell(100, 4, 2900, 4)
    assert best_cell(grid) == grid[1]


def test_an_unsupported_p99_never_wins_a_near_tie_on_latency():
    grid = [cell(100, 4, 3000, None), cell(100, 16, 2995, 40)]
    assert best_cell(grid) == grid[1]
    # With no supported p99 among the near-ties, the higher rows/s.
    assert best_cell([cell(100, 4, 3000, None), cell(100, 16, 2995, None)]) == Cell(
        100, 4, "completed", 3000, None
    )


def test_failed_points_and_points_with_failed_batches_are_never_best():
    grid = [
        cell(100, 1, 1000, 5),
        cell(100, 4, 9000, 5, status="failed"),
        cell(100, 16, 8000, 5, failed_batches=3),
        cell(1000, 1, 7000, 5, status="unavailable"),
    ]
    assert best_cell(grid) == grid[0]
    assert best_cell(grid[1:]) is None


def test_knee_is_where_p99_climbs_and_throughput_stops_growing():
    line = [
        cell(100, 1, 1000, 2.0),
        cell(100, 2, 1900, 2.5),  # p99 x1.25: no
        cell(100, 4, 3500, 4.5),  # p99 x1.8 but rows +84 %: still buying throughput
        cell(100, 8, 3700, 9.0),  # p99 x2, rows +5.7 %: the knee
        cell(100, 16, 3600, 30.0),
    ]
    found = find_knee(line)
    assert found.knee == line[3]
    assert found.p99_ratio == pytest.approx(2.0)
    assert found.rows_gain == pytest.approx(3700 / 3500 - 1)
    assert (found.steps, found.not_judged) == (4, 0)


def test_no_knee_when_latency_grows_slowly():
    line = [cell(100, 1, 1000, 2.0), cell(100, 2, 1020, 2.9), cell(100, 4, 1030, 4.2)]
    found = find_knee(line)
    assert found.knee is None and (found.steps, found.not_judged) == (2, 0)


def test_steps_with_an_unsupported_p99_or_a_failed_point_are_not_judged():
    line = [
        cell(100, 1, 1000, None),  # too few batches
        cell(100, 2, 1000, 2.0),
        cell(100, 4, 1000, 9.0, status="failed"),
        cell(100, 8, 1010, 3.5),
    ]
    found = find_knee(line)
    # 1->2 and 2->4 and 4->8 all touch an unusable point: nothing is compared.
    assert found.knee is None and (found.steps, found.not_judged) == (3, 3)


def test_analyse_names_knees_along_both_axes_and_says_why_not():
    from bench.sweep import PointWriter, SweepPoint

    def point(b: int, c: int, rows: float, p99: float | None) -> SweepPoint:
        reason = None if p99 is not None else "needs 1,000 batches, 400 measured"
        w = PointWriter(
            writer="null",
            label="Null",
            status="completed",
            rows=1,
            batches=1000,
            rows_per_s=rows,
            p99_ms=p99,
            p99_unsupported=reason,
        )
        return SweepPoint(batch_size=b, concurrency=c, status="completed", writers=[w])

    points = [
        point(100, 1, 1000, 1.0),
        point(100, 4, 1050, 2.0),
        point(1000, 1, 5000, None),
        point(1000, 4, 5020, None),
    ]
    result = analyse(points, "null", "Null")
    assert result.best is not None
    assert (result.best.batch_size, result.best.concurrency) == (1000, 4)
    assert (
        result.best_note == "highest rows/s; no p99 to weigh (fewer than 1,000 batches per point)"
    )
    notes = {(k.along, k.fixed): k.note for k in result.knees}
    assert notes == {
        ("concurrency", 100): "knee at concurrency 4: p99 2.00x the previous point's while "
        "rows/s changed +5%",
        ("concurrency", 1000): "no knee can be named: none of the 1 step(s) could be judged "
        "(a point failed, or its p99 rests on fewer than 1,000 batches)",
        ("batch_size", 1): "no knee can be named: none of the 1 step(s) could be judged (a "
        "point failed, or its p99 rests on fewer than 1,000 batches)",
        ("batch_size", 4): "no knee can be named: none of the 1 step(s) could be judged (a "
        "point failed, or its p99 rests on fewer than 1,000 batches)",
    }
    knee = next(k.knee for k in result.knees if k.knee is not None)
    assert (knee.batch_size, knee.concurrency, knee.p99_ratio) == (100, 4, 2.0)


# -- a sweep run ---------------------------------------------------------------------------


def clocked_sweep(**fields: Any) -> SweepConfig:
    values: dict[str, Any] = {"writers": ["null", "sql"], "warmup_s": 0, "records": 2000}
    return SweepConfig(**(values | fields), visibility=False)


class NamedSource:
    """Hands out test writers under registry names (the sweep's config names real ones)."""

    def __init__(self, **writers: DataWriterInterface) -> None:
        self.writers = writers

    async def get(self, name: str, stream: int = 0) -> DataWriterInterface:
        assert stream == 0, "a sweep's points here run one stream"
        return self.writers[name]


async def test_a_sweep_runs_every_point_through_every_writer_and_saves_one_file(tmp_path):
    clock = StepClock()
    clocked = ClockedWriter(TARGETS, clock, step_s=0.001)
    failing = FailingEveryNthWriter(TARGETS, every=10)
    cfg = clocked_sweep(batch_sizes=[2, 4], concurrencies=[1, 2])
    store = SweepStore(tmp_path)
    saved: list[RunResult] = []
    progress: list[dict[str, Any]] = []
    run = SweepRun(cfg, environment={"mode": "local"}, clock=clock, host_probe=dict)

    def keep(point: Any, result: RunResult) -> None:
        saved.append(result)
        store.save_point(run.id, result)

    source = NamedSource(null=clocked, sql=failing)
    result = await run.execute(source, progress.append, keep)
    path = store.save(result)
    assert path == tmp_path / "sweeps" / f"{run.id}.json"
    loaded = SweepResult.model_validate_json(path.read_text())
    assert loaded.kind == "sweep" and loaded.mode == "local" and loaded.status == "completed"
    grid = [(p.batch_size, p.concurrency, p.status) for p in loaded.points]
    assert grid == [
        (2, 1, "completed"),
        (2, 2, "completed"),
        (4, 1, "completed"),
        (4, 2, "completed"),
    ]
    for p in loaded.points:
        clocked_w, failing_w = p.writers
        assert (
            clocked_w.writer == "null"
            and clocked_w.label == "Clocked test writer"
            and clocked_w.rows == 2000
        )
        assert clocked_w.batches == 2000 // p.batch_size and clocked_w.failed_batches == 0
        # 1,000 batches just support a p99; 500 do not: no number, the reason instead.
        if p.batch_size == 2:
            assert clocked_w.p99_ms is not None and clocked_w.p99_unsupported is None
        else:
            assert clocked_w.p99_ms is None
            assert clocked_w.p99_unsupported == "needs 1,000 batches, 500 measured"
        assert failing_w.failed_batches > 0
        assert p.run_id == f"{run.id}-b{p.batch_size}-c{p.concurrency}"
        stored = store.points(run.id).load(p.run_id)
        assert stored.label == (
            f"sweep {run.id}: batch size {p.batch_size:,} x concurrency {p.concurrency}"
        )
    by_writer = {w.writer: w for w in loaded.writers}
    assert by_writer["null"].best is not None
    # Every point of the failing writer had failed batches: it has no best point.
    assert by_writer["sql"].best is None
    assert by_writer["sql"].best_note == "no point completed without failed batches"
    assert [s["id"] for s in store.list()] == [run.id]
    assert len(saved) == 4
    assert progress and {m["points"] for m in progress} == {4}
    assert {m["point"] for m in progress} <= {1, 2, 3, 4}


async def test_a_cancelled_sweep_skips_the_points_left():
    clock = StepClock()
    writer = ClockedWriter(TARGETS, clock, step_s=0.001)
    cfg = clocked_sweep(writers=["null"], batch_sizes=[1, 2], concurrencies=[1])
    run = SweepRun(cfg, clock=clock, host_probe=dict)

    def stop_after_first(point: Any, result: RunResult) -> None:
        run.cancel()

    result = await run.execute(NamedSource(null=writer), on_point=stop_after_first)
    assert result.status == "cancelled"
    assert [p.status for p in result.points] == ["completed", "cancelled"]


class CancelledWhileBuilt(SweepRun):
    """A cancel that lands while a point's run is still being built (in its thread)."""

    def _point_run(self, point: Any) -> Any:
        run = super()._point_run(point)
        self.cancel()
        return run


async def test_a_cancel_while_a_point_is_being_built_runs_nothing():
    clock = StepClock()
    writer = ClockedWriter(TARGETS, clock, step_s=0.001)
    cfg = clocked_sweep(writers=["null"], batch_sizes=[1, 2], concurrencies=[1])
    run = CancelledWhileBuilt(cfg, clock=clock, host_probe=dict)
    points: list[Any] = []
    result = await run.execute(NamedSource(null=writer), on_point=lambda p, r: points.append(p))
    assert result.status == "cancelled"
    assert [p.status for p in result.points] == ["cancelled", "cancelled"]
    assert points == [] and clock.now == 1000.0  # no write moved the clock
