"""The load generator: schedules, warm-up, errors, cancel, coordinated omission, results."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from bench.config import BenchmarkConfig
from bench.results import LatencySummary, RunResult
from bench.runner import BenchmarkRun, run_benchmark
from bench.stats import Latencies, unsupported_percentiles
from bench.store import ResultStore, compare, load_result
from dwbench.errors import WriterUnavailableError
from dwbench.settings import Settings
from tests.bench.fake_writers import (
    FailingEveryNthWriter,
    FixedSource,
    RecordingWriter,
    ScriptedWriter,
    StallingWriter,
    StepClock,
)
from tests.conftest import local_targets, products_ddl, run_sql
from writers import WriterSet
from writers.base import Targets

TARGETS = Targets(mode="local", settings=Settings(app_mode="local"))


def config(writers: list[str], **fields: Any) -> BenchmarkConfig:
    """A validated config, then pointed at test writers the registry does not know."""
    base = BenchmarkConfig(writers=["null"], **{"warmup_s": 0, **fields})
    return base.model_copy(update={"writers": writers})


def _open_loop_schedule(
    durations: list[float], t0: float, interval: float
) -> tuple[Latencies, Latencies, Latencies]:
    """One batch in flight, batch k due at t0 + k * interval: it starts when due or when the
    one before ends, whichever is later. Service time, latency from due, send delay."""
    service, from_due, delay = Latencies(), Latencies(), Latencies()
    end = -math.inf
    for k, d in enumerate(durations):
        due = t0 + k * interval
        start = max(due, end)
        end = start + d
        service.record(d)
        from_due.record(end - due)
        delay.record(max(0.0, start - due))
    return service, from_due, delay


def _summary_of(latencies: Latencies) -> LatencySummary:
    return LatencySummary.model_validate(
        {**(latencies.summary() or {}), "unsupported": unsupported_percentiles(latencies.count)}
    )


async def test_stall_moves_corrected_p99_not_service_time_p99():
    # Time is the step clock: writes move it by their duration, the schedule's naps by theirs,
    # so the figures are the same on a loaded host as on an idle one.
    clock = StepClock()
    durations = [0.002] * 200
    durations[19] = 0.3  # the 20th batch stalls for 300 ms
    writer = ScriptedWriter(TARGETS, clock, durations)
    cfg = config(
        ["scripted"], records=2000, batch_size=10, rate=1000, concurrency=1, visibility=False
    )
    result = await run_benchmark(cfg, FixedSource(writer), clock=clock, sleep=clock.sleep)
    (w,) = result.writers
    assert w.status == "completed" and w.rows == 2000 and w.failed_batches == 0
    assert w.elapsed_s == 2.0 and w.rows_per_s == 1000.0
    service, from_due, delay = _open_loop_schedule(durations, 1000.0, 0.01)
    assert w.latency_ms == _summary_of(service)
    assert w.latency_from_intended_ms == _summary_of(from_due)
    assert w.send_delay_ms == _summary_of(delay)
    assert w.latency_ms and w.latency_from_intended_ms and w.send_delay_ms
    # One slow batch out of 200: service time's p99 does not see it ...
    assert w.latency_ms.p99 == 2.0
    assert w.latency_ms.max == Latencies.decode(w.histograms["latency"]).hist.get_max_value() / 1000
    assert 300 <= w.latency_ms.max < 300.3  # HDR: 3 significant digits
    # ... but the 37 batches due during and after the stall (the 21st to the 57th) waited for
    # it, and say so: the 21st was sent 290 ms late; from the 58th on, each goes on time.
    assert w.latency_from_intended_ms.p99 > 250
    assert w.send_delay_ms.p99 > 250
    assert w.send_delay_ms.p50 == 0.001  # half the batches went on time (0 is stored as 1 µs)


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
    clock = StepClock()
    writer = RecordingWriter(TARGETS, clock, [0.05])
    cfg = config(
        ["recording"], visibility=False, records=500, batch_size=50, concurrency=1, warmup_s=0.225
    )
    (w,) = (await run_benchmark(cfg, FixedSource(writer), clock=clock)).writers
    # Batches start at 0, 0.05, ... 0.2 s in the warm-up, then 10 are measured.
    assert (w.warmup_rows, w.rows, w.batches) == (250, 500, 10)
    assert len(writer.row_ids) == 750


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
    async def get(self, name: str, stream: int = 0):
        if name == "down":
            raise WriterUnavailableError("cannot reach it", writer=name)
        return await super().get(name, stream)


@pytest.mark.parametrize("parallel", [False, True])
async def test_one_writer_failing_does_not_stop_the_others(parallel):
    writer = StallingWriter(TARGETS, normal_s=0.001, stall_at=-1, stall_s=0)
    cfg = config(["down", "stalling"], records=300, batch_size=100, parallel=parallel)
    result = await run_benchmark(cfg, SourceWithAnUnavailableWriter(writer))
    down, up = result.writers
    assert down.status == "unavailable" and down.error == "cannot reach it" and down.rows == 0
    assert up.status == "completed" and up.rows == 300
    assert result.status == "partial" and result.partial


async def test_fixed_rate_holds_against_a_writer_faster_than_the_schedule():
    clock = StepClock()
    writer = RecordingWriter(TARGETS, clock, [0.001])  # 1 ms a batch, one due every 5 ms
    cfg = config(
        ["recording"], visibility=False, duration_s=2, batch_size=100, rate=20_000, concurrency=1
    )
    run = run_benchmark(cfg, FixedSource(writer), clock=clock, sleep=clock.sleep)
    (w,) = (await run).writers
    # The schedule decides the count: 2 s x 20,000 rows/s, each batch sent when due.
    assert (w.rows, w.batches, w.rate_ratio) == (40_000, 400, 1.0)
    # Never late: 0 s of delay, which the histogram holds as its lowest value, 1 us.
    assert w.send_delay_ms is not None and w.send_delay_ms.max == 0.001
    assert w.latency_from_intended_ms is not None
    assert w.latency_from_intended_ms.max == pytest.approx(1.0, abs=1e-6)


class CancellingWriter(RecordingWriter):
    """Cancels its run once it has written `after` batches (the user's Cancel, on cue)."""

    def __init__(self, clock: StepClock, after: int) -> None:
        super().__init__(TARGETS, clock, [0.001])
        self.after = after
        self.run: BenchmarkRun | None = None

    async def write(self, rows: Any) -> Any:
        receipt = await super().write(rows)
        if len(self.batch_ids) == self.after and self.run is not None:
            self.run.cancel()
        return receipt


async def test_cancel_keeps_partial_results_marked_as_such():
    clock = StepClock()
    writer = CancellingWriter(clock, after=12)
    cfg = config(
        ["recording"], visibility=False, duration_s=30, batch_size=100, rate=2_000, concurrency=1
    )
    run = BenchmarkRun(cfg, clock=clock, sleep=clock.sleep)
    writer.run = run
    result = await run.execute(FixedSource(writer))
    (w,) = result.writers
    assert result.status == "cancelled" and result.partial
    # The batch that saw the cancel was acked and counted; none was sent after it.
    assert w.status == "cancelled" and (w.rows, w.batches) == (1_200, 12)
    assert len(writer.batch_ids) == 12


async def test_progress_reports_once_a_second():
    clock = StepClock()
    writer = RecordingWriter(TARGETS, clock, [0.001])

    async def second_of_the_clock(seconds: float) -> None:
        """The reporter's wait, on the run's clock: until it has moved on `seconds`."""
        until = clock.now + seconds
        while clock.now < until:  # noqa: ASYNC110 - the clock moves in the writer, no event to wait on
            await asyncio.sleep(0)

    messages: list[dict[str, Any]] = []
    cfg = config(
        ["recording"], visibility=False, duration_s=2.5, batch_size=100, rate=5_000, concurrency=1
    )
    run = BenchmarkRun(cfg, clock=clock, sleep=clock.sleep, tick=second_of_the_clock)
    await run.execute(FixedSource(writer), on_progress=messages.append)
    # At 1 s and 2 s of the run's clock, then the last one with the final status.
    assert [m["status"] for m in messages] == ["running", "running", "completed"]
    assert [m["writers"][0]["rows"] for m in messages] == [5_000, 10_000, 12_500]
    assert messages[0]["writers"][0]["writer"] == "recording"


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
