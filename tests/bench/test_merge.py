"""Merging one writer's results from several workers (bench.merge): histograms add exactly,
seconds line up by wall clock. Every worker runs on its own injected clocks."""

from __future__ import annotations

from typing import Any

import pytest

from bench.config import BenchmarkConfig
from bench.merge import MergeError, merge_workers
from bench.results import LatencySummary, RepeatStats, RunResult, WriterResult
from bench.runner import run_benchmark
from bench.stats import Latencies, unsupported_percentiles
from dwbench.settings import Settings
from tests.bench.fake_writers import FixedSource, ScriptedWriter, StepClock, WallClock
from writers.base import Targets

TARGETS = Targets(mode="local", settings=Settings(app_mode="local"))
EPOCH = 1_700_000_000  # a whole UTC second


def config(**fields: Any) -> BenchmarkConfig:
    base = BenchmarkConfig(
        writers=["null"], **{"warmup_s": 0, "visibility": False, "concurrency": 1, **fields}
    )
    return base.model_copy(update={"writers": ["scripted"]})


async def worker(
    durations: list[float], wall_s: float, *, batches: int, fail_every: int = 0
) -> WriterResult:
    """One worker's result: `batches` closed-loop batches of 10 rows, write n taking
    durations[n % len], on a step clock whose run began at wall-clock `wall_s`."""
    clock = StepClock()
    writer = ScriptedWriter(TARGETS, clock, durations, fail_every=fail_every)
    result = await run_benchmark(
        config(records=batches * 10, batch_size=10),
        FixedSource(writer),
        clock=clock,
        wall_clock=WallClock(wall_s),
    )
    (w,) = result.writers
    return w


def hist(encoded: str) -> Latencies:
    return Latencies.decode(encoded)


async def test_merged_histogram_equals_recording_everything_in_one():
    scripts = [
        [0.0011, 0.0023, 0.0507],
        [0.0042, 0.0009, 0.313, 0.0042],
        [0.0171, 0.0019],
    ]
    batches = [300, 400, 250]
    workers = [
        await worker(s, EPOCH + 0.25 * i, batches=n)
        for i, (s, n) in enumerate(zip(scripts, batches, strict=True))
    ]
    merged = merge_workers(workers)

    one = Latencies()
    every: list[float] = []
    for script, n in zip(scripts, batches, strict=True):
        for k in range(n):
            one.record(script[k % len(script)])
            every.append(script[k % len(script)])
    got = hist(merged.histograms["latency"])
    assert got.count == one.count == 950 == merged.batches
    for value in set(every):
        micros = round(value * 1_000_000)
        assert got.hist.get_count_at_value(micros) == one.hist.get_count_at_value(micros) > 0
    assert got.summary() == one.summary()
    assert merged.latency_ms is not None
    assert merged.latency_ms == LatencySummary.model_validate(
        {**(one.summary() or {}), "unsupported": unsupported_percentiles(950)}
    )
    assert set(merged.latency_ms.unsupported) == {"p99", "p99.9"}  # 950 batches
    # The per-second histograms hold the same batches, none twice, none lost.
    assert merged.wall_seconds is not None
    per_second = [hist(s.histogram) for s in merged.wall_seconds if s.histogram]
    assert sum(h.count for h in per_second) == 950
    assert Latencies.merged(per_second).summary() == one.summary()
    assert sum(s.rows for s in merged.per_second) == merged.rows == 9500


async def test_per_second_merge_aligns_by_wall_clock():
    # A: batches of 0.5 s from wall .2 (acks at .7, 1.2, 1.7, 2.2); B: of 0.25 s from wall
    # 1.5, 1.3 s later (acks at 1.75, 2.0, 2.25, ..., 3.5).
    a = await worker([0.5], EPOCH + 0.2, batches=4)
    b = await worker([0.25], EPOCH + 1.5, batches=8)
    assert a.wall_start_s == EPOCH + 0.2 and b.wall_start_s == EPOCH + 1.5
    assert a.wall_seconds is not None and b.wall_seconds is not None
    assert [(s.epoch_s, s.batches) for s in a.wall_seconds] == [
        (EPOCH, 1),
        (EPOCH + 1, 2),
        (EPOCH + 2, 1),
    ]
    assert [(s.epoch_s, s.batches) for s in b.wall_seconds] == [
        (EPOCH + 1, 1),
        (EPOCH + 2, 4),  # 2.0 is the first instant of second 2
        (EPOCH + 3, 3),  # 3.5, the window's end, counts in its last second
    ]
    merged = merge_workers([a, b], names=["a", "b"])
    assert merged.wall_start_s == EPOCH + 0.2
    seconds = merged.wall_seconds
    assert seconds is not None
    assert [s.t for s in seconds] == [0, 1, 2, 3]
    assert [s.epoch_s for s in seconds] == [EPOCH, EPOCH + 1, EPOCH + 2, EPOCH + 3]
    assert [s.batches for s in seconds] == [1, 3, 5, 3]
    assert [s.rows for s in seconds] == [10, 30, 50, 30]
    # The first second begins at .2, the last ends at 3.5 (B's end).
    assert [s.span_s for s in seconds] == pytest.approx([0.8, 1.0, 1.0, 0.5])
    assert [s.rows_per_s for s in seconds] == pytest.approx([12.5, 30.0, 50.0, 60.0])
    # Second 1 holds A's two 500 ms batches and B's first 250 ms one.
    one = hist(seconds[1].histogram or "")
    assert one.count == 3
    assert one.hist.get_count_at_value(500_000) == 2
    assert one.hist.get_count_at_value(250_000) == 1
    assert seconds[1].p50_ms == pytest.approx(500, rel=1e-3)  # HDR: 3 significant digits
    assert [s.model_copy(update={"histogram": None}) for s in seconds] == merged.per_second
    # Summary over the union window, .2 to 3.5.
    assert merged.rows == 120 and merged.batches == 12
    assert merged.elapsed_s == pytest.approx(3.3)
    assert merged.rows_per_s == round(120 / 3.3, 1)
    # The breakdown and the skew between the workers.
    assert merged.workers is not None and merged.skew is not None
    assert [(w.worker, w.rows_per_s) for w in merged.workers] == [("a", 20.0), ("b", 40.0)]
    assert [w.p50_ms for w in merged.workers] == pytest.approx([500, 250], rel=1e-3)
    assert [w.start_offset_s for w in merged.workers] == [0.0, 1.3]
    assert merged.skew.workers == 2
    assert merged.skew.start_s == 1.3 and merged.skew.end_s == 1.3
    assert (merged.skew.rows_per_s_min, merged.skew.rows_per_s_max) == (20.0, 40.0)
    assert merged.skew.rows_per_s_spread == round(20 / 30, 4)


async def test_merging_one_worker_is_the_identity_for_the_published_fields():
    w = await worker([0.0011, 0.0023, 0.0507], EPOCH + 0.4, batches=300)
    merged = merge_workers([w], names=["only"])
    assert merged.model_dump(exclude={"workers", "skew"}) == w.model_dump(
        exclude={"workers", "skew"}
    )
    assert merged.workers is not None and merged.skew is not None
    (only,) = merged.workers
    assert only.worker == "only" and only.rows == w.rows and only.start_offset_s == 0.0
    assert merged.skew.start_s == 0.0 and merged.skew.rows_per_s_spread == 0.0


async def test_a_worker_with_errors_keeps_its_error_counts_in_the_merge():
    ok = await worker([0.01], EPOCH, batches=100)
    failing = await worker([0.01], EPOCH + 0.5, batches=90, fail_every=3)
    assert failing.errors == {"write_failed": 30} and failing.rows == 600
    merged = merge_workers([ok, failing], names=["ok", "failing"])
    assert merged.status == "completed"
    assert merged.failed_batches == 30 and merged.errors == {"write_failed": 30}
    assert merged.rows == 1000 + 600 and merged.batches == 100 + 60
    assert merged.error_samples[0] == "worker failing: write_failed: the target refused the batch"
    assert "worker failing: 30 batches failed (30 write_failed)" in merged.warnings
    assert merged.wall_seconds is not None
    assert sum(s.errors for s in merged.wall_seconds) == 30
    assert merged.workers is not None
    assert [(w.worker, w.failed_batches, w.errors) for w in merged.workers] == [
        ("ok", 0, {}),
        ("failing", 30, {"write_failed": 30}),
    ]


async def test_a_merged_result_merges_again_and_round_trips_through_the_file():
    a = await worker([0.002, 0.004], EPOCH + 0.1, batches=50)
    b = await worker([0.003], EPOCH + 0.6, batches=50)
    c = await worker([0.005], EPOCH + 1.1, batches=50)
    flat = merge_workers([a, b, c])
    nested = merge_workers([merge_workers([a, b]), c])
    assert nested.histograms == flat.histograms
    assert nested.wall_seconds == flat.wall_seconds
    assert (nested.rows, nested.elapsed_s, nested.rows_per_s) == (
        flat.rows,
        flat.elapsed_s,
        flat.rows_per_s,
    )
    run = RunResult(
        id="merged",
        status="completed",
        started_at="now",
        config=BenchmarkConfig(writers=["null"], records=1000),
        writers=[flat],
    )
    assert RunResult.model_validate_json(run.to_json()) == run


def test_results_stored_before_wall_clocks_still_load_and_cannot_merge_blind():
    old = WriterResult.model_validate(
        {
            "writer": "null",
            "label": "Null",
            "stores_rows": False,
            "status": "completed",
            "rows": 100,
            "batches": 1,
            "elapsed_s": 1.0,
        }
    )
    assert old.wall_start_s is None and old.wall_seconds is None and old.workers is None
    with pytest.raises(MergeError, match="worker 1 measured 1 batches with no wall-clock base"):
        merge_workers([old.model_copy(update={"wall_start_s": 1.0}), old])
    other = old.model_copy(update={"writer": "sql", "wall_start_s": 1.0})
    with pytest.raises(MergeError, match=r"different writers cannot merge: \['null', 'sql'\]"):
        merge_workers([old.model_copy(update={"wall_start_s": 1.0}), other])
    repeated = old.model_copy(
        update={"wall_start_s": 1.0, "repeats": [RepeatStats(repeat=0, status="completed")]}
    )
    with pytest.raises(MergeError, match="worker 0's result spans 1 repeats"):
        merge_workers([repeated])
