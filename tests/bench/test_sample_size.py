"""Enough samples: duration defaults, percentiles a sample cannot support, sample-size
warnings, run status when writers did not run, and per-second rates that match the summary."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from bench.config import BenchmarkConfig
from bench.results import to_csv
from bench.runner import run_benchmark
from bench.stats import PERCENTILES, min_batches, unsupported_percentiles
from dwbench.settings import Settings
from tests.bench.fake_writers import ClockedWriter, FixedSource, NullLikeWriter, StepClock
from writers.base import Targets

TARGETS = Targets(mode="local", settings=Settings(app_mode="local"))


class HostProbe:
    """An injected host: the given samples in turn (before the run, after it)."""

    def __init__(self, *samples: dict[str, Any]) -> None:
        self.samples = list(samples)

    def __call__(self) -> dict[str, Any]:
        return self.samples.pop(0)


def quiet() -> HostProbe:
    idle = {"cpu_count": 2, "loadavg": [0.1, 0.1, 0.1], "cpu_ticks": {"total": 1000, "steal": 0}}
    return HostProbe(idle, {**idle, "cpu_ticks": {"total": 2000, "steal": 0}})


def config(writers: list[str], **fields: Any) -> BenchmarkConfig:
    base = BenchmarkConfig(writers=["null"], **{"warmup_s": 0, "visibility": False, **fields})
    return base.model_copy(update={"writers": writers})


def test_defaults_are_30_s_per_writer_after_a_5_s_warmup():
    cfg = BenchmarkConfig()
    assert (cfg.duration_s, cfg.warmup_s, cfg.records) == (30.0, 5.0, None)
    by_records = BenchmarkConfig(records=500)
    assert (by_records.records, by_records.duration_s, by_records.warmup_s) == (500, None, 5.0)
    # An explicit duration wins; a stored file with records and duration null stays a
    # records run.
    assert BenchmarkConfig(records=500, duration_s=3).records is None
    assert BenchmarkConfig.model_validate({"records": 7, "duration_s": None}).records == 7


def test_the_percentile_rule_is_ten_batches_beyond_it():
    assert [min_batches(p) for p in PERCENTILES] == [20, 100, 200, 1000, 10_000]
    assert unsupported_percentiles(999) == {
        "p99": "needs 1,000 batches, 999 measured",
        "p99.9": "needs 10,000 batches, 999 measured",
    }
    assert unsupported_percentiles(10_000) == {}


async def _clocked_run(batches: int, step_s: float, **fields: Any):
    clock = StepClock()
    writer = ClockedWriter(TARGETS, clock, step_s=step_s)
    cfg = config(["clocked"], records=batches * 10, batch_size=10, concurrency=1, **fields)
    return await run_benchmark(cfg, FixedSource(writer), clock=clock, host_probe=quiet())


async def test_a_small_sample_marks_the_percentiles_it_cannot_support_everywhere():
    result = await _clocked_run(150, 0.01)
    (w,) = result.writers
    assert w.batches == 150 and w.elapsed_s == pytest.approx(1.5)
    assert w.latency_ms is not None
    assert set(w.latency_ms.unsupported) == {"p95", "p99", "p99.9"}
    assert w.latency_ms.supports("p90") and not w.latency_ms.supports("p99")
    doc = result.to_json()
    assert '"p99": "needs 1,000 batches, 150 measured"' in doc
    row = next(csv.DictReader(io.StringIO(to_csv(result))))
    assert row["batches"] == "150" and row["elapsed_s"] == "1.5"
    assert float(row["p90_ms"]) == pytest.approx(10.0, rel=0.01)
    assert row["p95_ms"] == row["p99_ms"] == row["p99.9_ms"] == "insufficient sample"
    assert row["unsupported_percentiles"] == "p95 p99 p99.9"


async def test_sample_warnings_name_the_writer_by_label():
    result = await _clocked_run(150, 0.01)
    assert result.warnings == [
        "Clocked test writer: too few batches: 150 measured, so p95, p99, p99.9 cannot be read "
        "from this sample (pXX needs 10/(1-p) batches: p95 200, p99 1,000, p99.9 10,000); run "
        "longer",
        "Clocked test writer: measured window too short: 1.50 s (under 10 s), too short to "
        "judge steady throughput; run longer (default 30 s)",
    ]


async def test_enough_batches_over_a_long_window_warn_of_nothing():
    result = await _clocked_run(1200, 0.01)  # 12 s on the injected clock
    (w,) = result.writers
    assert w.latency_ms is not None and set(w.latency_ms.unsupported) == {"p99.9"}
    assert result.warnings == []


async def test_a_5_ms_null_run_is_not_warned_about():
    clock = StepClock()
    writer = NullLikeWriter(TARGETS, clock, step_s=0.001)
    cfg = config(["nulllike"], records=50, batch_size=10, concurrency=1)
    result = await run_benchmark(cfg, FixedSource(writer), clock=clock, host_probe=quiet())
    (w,) = result.writers
    assert w.elapsed_s == pytest.approx(0.005) and not w.stores_rows
    assert result.warnings == [] and result.status == "completed"


async def test_a_short_run_is_charted_in_sub_second_buckets_that_agree_with_the_summary():
    result = await _clocked_run(25, 0.02)  # 250 rows in 0.5 s
    (w,) = result.writers
    assert w.rows_per_s == pytest.approx(500.0)
    # 0.5 s in buckets of 0.02 s (the narrowest round width giving at most 40): 25 points,
    # not one partial second.
    assert w.bucket_s == 0.02
    assert [s.at_s for s in w.per_second] == pytest.approx([i * 0.02 for i in range(25)])
    assert all(s.t == 0 for s in w.per_second)  # all in the first second
    assert all(s.rows_per_s == pytest.approx(500.0) for s in w.per_second)
    longer = (await _clocked_run(250, 0.01)).writers[0]  # 2.5 s
    assert longer.bucket_s == 0.1
    spans = [s.span_s for s in longer.per_second]
    assert spans == pytest.approx([0.1] * 25)
    rows = sum(s.rows for s in longer.per_second)
    assert rows / sum(spans) == pytest.approx(longer.rows_per_s)


async def test_a_window_of_10_s_or_more_is_charted_in_whole_seconds():
    w = (await _clocked_run(1050, 0.01)).writers[0]  # 10.5 s
    assert w.bucket_s == 1.0
    assert [s.span_s for s in w.per_second] == pytest.approx([1.0] * 10 + [0.5])
    assert [s.at_s for s in w.per_second] == [float(t) for t in range(11)]


async def test_progress_inside_the_first_second_is_a_rate_over_the_real_window():
    clock = StepClock()
    writer = ClockedWriter(TARGETS, clock, step_s=0.01)
    messages: list[dict[str, Any]] = []
    cfg = config(["clocked"], records=400, batch_size=10, concurrency=1)
    result = await run_benchmark(cfg, FixedSource(writer), clock=clock, on_progress=messages.append)
    (w,) = result.writers
    (last,) = messages[-1]["writers"]
    # 400 rows in 0.4 s: 1,000 rows/s, not "400 rows in the last second".
    assert last["rows_per_s_last_second"] == 1000
    assert last["rows_per_s"] == w.rows_per_s == pytest.approx(1000.0)


async def test_host_load_and_steal_are_recorded_and_flagged_when_high():
    busy = HostProbe(
        {"cpu_count": 2, "loadavg": [3.5, 2.0, 1.0], "cpu_ticks": {"total": 10_000, "steal": 100}},
        {"cpu_count": 2, "loadavg": [1.0, 1.5, 1.0], "cpu_ticks": {"total": 12_000, "steal": 300}},
    )
    result = await run_benchmark(
        config(["clocked"], duration_s=12, batch_size=10, concurrency=1),
        FixedSource(ClockedWriter(TARGETS, clock := StepClock(), step_s=0.01)),
        clock=clock,
        host_probe=busy,
    )
    assert result.environment["host_load"] == {
        "loadavg_before": [3.5, 2.0, 1.0],
        "loadavg_after": [1.0, 1.5, 1.0],
        "cpu_count": 2,
        "steal_percent": 10.0,
    }
    assert result.warnings == [
        "host busy before the run: 1-minute load average 3.50 on 2 cores; other work on this "
        "machine shows in these figures",
        "CPU steal 10.0 % during the run: the hypervisor gave this machine's CPU time to other "
        "guests",
    ]
    quiet_run = await _clocked_run(1200, 0.01)
    assert quiet_run.environment["host_load"]["steal_percent"] == 0.0


def test_the_host_sample_reads_this_machine():
    from bench.environment import host_sample

    sample = host_sample()
    assert sample["cpu_count"] >= 1 and len(sample["loadavg"]) == 3
    assert sample["cpu_ticks"]["total"] > 0 and sample["cpu_ticks"]["steal"] >= 0
