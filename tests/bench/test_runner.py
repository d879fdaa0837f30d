"""The load generator: schedules, warm-up, errors, cancel, coordinated omission, results."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bench.config import BenchmarkConfig
from bench.results import RunResult
from bench.runner import BenchmarkRun, run_benchmark
from bench.stats import Latencies
from bench.store import ResultStore, compare, load_result
from dwbench.errors import WriterUnavailableError
from dwbench.settings import Settings
from tests.bench.fake_writers import FailingEveryNthWriter, FixedSource, StallingWriter
from tests.conftest import local_targets, products_ddl, run_sql
from writers import WriterSet
from writers.base import Targets

TARGETS = Targets(mode="local", settings=Settings(app_mode="local"))


def config(writers: list[str], **fields: Any) -> BenchmarkConfig:
    """A validated config, then pointed at test writers the registry does not know."""
    base = BenchmarkConfig(writers=["null"], **{"warmup_s": 0, **fields})
    return base.model_copy(update={"writers": writers})


async def test_stall_moves_corrected_p99_not_service_time_p99():
    writer = StallingWriter(TARGETS, normal_s=0.002, stall_at=20, stall_s=0.3)
    cfg = config(["stalling"], records=2000, batch_size=10, rate=1000, concurrency=1)
    result = await run_benchmark(cfg, FixedSource(writer))
    (w,) = result.writers
    assert w.status == "completed" and w.rows == 2000 and w.failed_batches == 0
    assert w.latency_ms and w.latency_from_intended_ms and w.send_delay_ms
    # One slow batch out of 200: service time's p99 does not see it ...
    assert w.latency_ms.p99 < 50
    assert w.latency_ms.max >= 300
    # ... but the ~30 batches due during the stall waited for it, and say so.
    assert w.latency_from_intended_ms.p99 > 150
    assert w.send_delay_ms.p99 > 100


async def test_closed_loop_writes_exactly_the_records_asked_for():
    writer = StallingWriter(TARGETS, normal_s=0.001, stall_at=-1, stall_s=0)
    cfg = config(["stalling"], records=2050, batch_size=100, concurrency=3, visibility_poll_ms=5)
    result = await run_benchmark(cfg, FixedSource(writer))
    (w,) = result.writers
    assert w.rows == 2050 and w.batches == 21
    assert sum(writer.rows.values()) == 2050
    assert sorted(set(writer.rows.values())) == [50, 100]  # the last batch is the remainder
    assert w.visibility is not None and w.visibility.samples >= 1
    assert w.latency_from_intended_ms is None  # closed loop: no schedule to be late for
    assert w.per_second and sum(s.rows for s in w.per_second) == 2050
    hist = Latencies.decode(w.histograms["latency"])
    assert hist.count == 21


async def test_warmup_is_written_but_not_measured():
    writer = StallingWriter(TARGETS, normal_s=0.005, stall_at=-1, stall_s=0)
    cfg = config(["stalling"], records=500, batch_size=50, concurrency=1, warmup_s=0.2)
    (w,) = (await run_benchmark(cfg, FixedSource(writer))).writers
    assert w.rows == 500
    assert w.warmup_rows > 0
    assert sum(writer.rows.values()) == 500 + w.warmup_rows


async def test_failures_are_counted_by_kind_and_do_not_stop_the_run():
    writer = FailingEveryNthWriter(TARGETS, every=3)
    cfg = config(["failing"], records=900, batch_size=100, concurrency=1)
    result = await run_benchmark(cfg, FixedSource(writer))
    (w,) = result.writers
    assert w.status == "completed"
    assert w.rows == 600 and w.failed_batches == 3
    assert w.errors == {"write_failed": 3}
    assert w.error_samples[0] == "write_failed: the target refused the batch"
    assert "3 batches failed (3 write_failed)" in w.warnings
    assert result.warnings[0] == "Failing test writer: 3 batches failed (3 write_failed)"


class SourceWithAnUnavailableWriter(FixedSource):
    async def get(self, name: str):
        if name == "down":
            raise WriterUnavailableError("cannot reach it", writer=name)
        return await super().get(name)


@pytest.mark.parametrize("parallel", [False, True])
async def test_one_writer_failing_does_not_stop_the_others(parallel):
    writer = StallingWriter(TARGETS, normal_s=0.001, stall_at=-1, stall_s=0)
    cfg = config(["down", "stalling"], records=300, batch_size=100, parallel=parallel)
    result = await run_benchmark(cfg, SourceWithAnUnavailableWriter(writer))
    down, up = result.writers
    assert down.status == "unavailable" and down.error == "cannot reach it" and down.rows == 0
    assert up.status == "completed" and up.rows == 300
    assert result.status == "partial" and result.partial


async def test_fixed_rate_holds_against_the_null_writer():
    source = WriterSet(TARGETS)
    cfg = BenchmarkConfig(
        writers=["null"], duration_s=2, warmup_s=0, batch_size=100, rate=20_000, concurrency=8
    )
    (w,) = (await run_benchmark(cfg, source)).writers
    # The schedule decides the count: 2 s x 20,000 rows/s.
    assert w.rows == 40_000
    assert w.rate_ratio is not None and w.rate_ratio >= 0.95
    assert w.send_delay_ms is not None


async def test_cancel_keeps_partial_results_marked_as_such():
    run = BenchmarkRun(
        BenchmarkConfig(writers=["null"], duration_s=30, warmup_s=0, batch_size=100, rate=2000)
    )
    task = asyncio.create_task(run.execute(WriterSet(TARGETS)))
    await asyncio.sleep(0.6)
    run.cancel()
    result = await asyncio.wait_for(task, 5)
    (w,) = result.writers
    assert result.status == "cancelled" and result.partial
    assert w.status == "cancelled" and 0 < w.rows < 60_000


async def test_progress_reports_once_a_second():
    messages: list[dict[str, Any]] = []
    cfg = BenchmarkConfig(writers=["null"], duration_s=2.5, warmup_s=0, batch_size=100, rate=5000)
    await run_benchmark(cfg, WriterSet(TARGETS), on_progress=messages.append)
    assert 2 <= len(messages) <= 4
    assert messages[-1]["status"] == "completed"
    assert messages[0]["writers"][0]["writer"] == "null"
    assert messages[-1]["writers"][0]["rows"] == 12_500


async def test_every_real_writer_small_run_produces_complete_result_files(local_stack, tmp_path):
    run_sql(local_stack, products_ddl("main.default.products"))
    source = WriterSet(local_targets(local_stack))
    cfg = BenchmarkConfig(
        writers=["zerobus", "sql", "lakebase", "null"],
        records=300,
        warmup_s=0,
        batch_size=50,
        concurrency=2,
        visibility_poll_ms=20,
    )
    store = ResultStore(tmp_path)
    try:
        first = await run_benchmark(cfg, source)
        second = await run_benchmark(cfg, source)
    finally:
        await source.close()
    for result in (first, second):
        path = store.save(result)
        loaded = load_result(path)  # validates against the result model
        assert loaded == RunResult.model_validate_json(path.read_text())
        assert '"p99.9"' in path.read_text()
        csv_lines = path.with_suffix(".csv").read_text().strip().splitlines()
        assert len(csv_lines) == 1 + 4
        for w in loaded.writers:
            assert w.status == "completed" and w.rows == 300, w
            assert w.latency_ms is not None
            lat = w.latency_ms
            assert lat.min <= lat.p50 <= lat.p90 <= lat.p95 <= lat.p99 <= lat.p99_9 <= lat.max
            if w.stores_rows:
                assert w.visibility is not None and w.visibility.samples >= 1
    diffs = compare(first, second)
    assert {d.writer for d in diffs} == {"zerobus", "sql", "lakebase", "null"}
    rows = next(d for d in diffs if d.writer == "null" and d.metric == "failed_batches")
    assert rows.change == 0.0 and rows.within_noise
    assert [r["id"] for r in store.history()] == [second.id, first.id]


async def test_progress_of_writers_not_started_yet_and_a_writer_that_fails_everything():
    failing = FailingEveryNthWriter(TARGETS, every=1)
    run = BenchmarkRun(config(["down", "failing"], records=300, batch_size=100))
    assert [w["status"] for w in run.progress()["writers"]] == ["pending", "pending"]
    messages: list[dict[str, Any]] = []
    result = await run.execute(SourceWithAnUnavailableWriter(failing), messages.append)
    down, failed = result.writers
    assert down.status == "unavailable"
    assert failed.status == "failed" and failed.error == "every measured batch failed"
    assert failed.failed_batches == 3 and failed.rows == 0
    assert messages[-1]["writers"][1]["status"] == "failed"
    assert result.status == "failed" and result.partial
    assert result.warnings[0] == (
        "no writer ran (down unavailable: cannot reach it; "
        "Failing test writer failed: every measured batch failed)"
    )
