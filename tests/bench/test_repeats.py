"""--repeat N: the rounds interleave the writers, each repeat is its own measured window, and
the result carries the repeats' figures and each metric's median with its interval."""

from __future__ import annotations

import asyncio
from typing import Any

from bench.config import BenchmarkConfig
from bench.runner import BenchmarkRun
from dwbench.settings import Settings
from tests.bench.fake_writers import ClockedWriter, FixedSource, StepClock
from writers.base import Targets, WriteReceipt

TARGETS = Targets(mode="local", settings=Settings(app_mode="local"))


class Named(ClockedWriter):
    """A clocked writer under a name of its own, remembering the order writes came in."""

    def __init__(self, name: str, clock: StepClock, step_s: float, log: list[str]) -> None:
        super().__init__(TARGETS, clock, step_s=step_s)
        self.name = self.label = name
        self.log = log

    async def write(self, rows: Any) -> Any:
        repeat = rows.batch_id.rsplit("-", 3)[1]  # <run>-r<k>-<writer>-<n>
        if f"{self.name} {repeat}" not in self.log:
            self.log.append(f"{self.name} {repeat}")
        for batch_id in rows.data.column("batch_id").to_pylist():
            self.rows[batch_id] = self.rows.get(batch_id, 0) + 1
        return await super().write(rows)


def config(**fields: Any) -> BenchmarkConfig:
    base = BenchmarkConfig(writers=["null"], **{"warmup_s": 0, "visibility": False, **fields})
    return base.model_copy(update={"writers": ["one", "two"]})


async def test_three_repeats_interleave_and_report_medians_with_intervals():
    clock, order = StepClock(), []
    # Steps a float holds exactly: every repeat's window ends on the same batch.
    one, two = Named("one", clock, 0.125, order), Named("two", clock, 0.0625, order)
    run = BenchmarkRun(config(duration_s=10, batch_size=100, concurrency=1, repeat=3), clock=clock)
    result = await run.execute(FixedSource(one, two))
    assert result.status == "completed"
    # Round r starts with writer r mod 2.
    # Batch ids are unique across repeats: r0, r1, r2 each wrote its own.
    assert order == ["one r0", "two r0", "two r1", "one r1", "one r2", "two r2"]
    w1, w2 = result.writers
    assert [r.repeat for r in w1.repeats] == [0, 1, 2]
    assert all(r.rows == 8_000 and r.elapsed_s == 10.0 for r in w1.repeats)  # 8 batches/s
    assert w1.rows == 24_000 and w1.elapsed_s == 30.0 and w1.rows_per_s == 800.0
    assert w1.batches == 240 and w1.latency_ms is not None and w1.latency_ms.count == 240
    # The per-second series lays the repeats end to end (the batch acked at exactly 10 s
    # counts in each repeat's 10th second: no second of zero span).
    assert [s.t for s in w1.per_second] == list(range(30))
    assert [s.repeat for s in w1.per_second] == [0] * 10 + [1] * 10 + [2] * 10
    assert all(s.span_s == 1.0 for s in w1.per_second)
    assert sum(s.rows for s in w1.per_second) == 24_000
    rows = w1.intervals["rows_per_s"]
    assert (rows.method, rows.n, rows.median) == ("repeats", 3, 800.0)
    # Seconds hold 7, 8 or 9 batches (acks on the second's boundary): a narrow interval.
    assert rows.low is not None and rows.high is not None
    assert 760 <= rows.low < 800 < rows.high <= 840
    assert w2.intervals["rows_per_s"].median == 1600.0
    assert w2.intervals["p50_ms"].median == 62.527  # 62.5 ms in an HDR bucket
    assert w1.intervals["p99_ms"].reason == "p99 needs 1,000 batches per run, 80 measured"


async def test_progress_names_the_repeat():
    clock, order = StepClock(), []
    one, two = Named("one", clock, 0.1, order), Named("two", clock, 0.1, order)
    run = BenchmarkRun(config(duration_s=1, batch_size=10, concurrency=1, repeat=2), clock=clock)
    assert run.progress()["repeat"] == 0 and run.progress()["repeats"] == 2
    await run.execute(FixedSource(one, two))
    progress = run.progress()
    assert progress["repeat"] == 1
    assert [w["writer"] for w in progress["writers"]] == ["one", "two"]
    assert all(w["repeat"] == 1 for w in progress["writers"])


async def test_a_single_run_has_intervals_from_its_own_seconds_and_no_repeats():
    clock, order = StepClock(), []
    one, two = Named("one", clock, 0.1, order), Named("two", clock, 0.1, order)
    result = await BenchmarkRun(
        config(duration_s=10, batch_size=100, concurrency=1), clock=clock
    ).execute(FixedSource(one, two))
    w1 = result.writers[0]
    assert w1.repeats == []
    assert w1.intervals["rows_per_s"].method == "bootstrap"
    assert w1.intervals["rows_per_s"].median == w1.rows_per_s == 1000.0


async def test_sample_size_warnings_are_said_once_for_the_smallest_repeat():
    clock, order = StepClock(), []
    one, two = Named("one", clock, 0.125, order), Named("two", clock, 0.125, order)
    run = BenchmarkRun(config(duration_s=2, batch_size=10, concurrency=1, repeat=3), clock=clock)
    w1 = (await run.execute(FixedSource(one, two))).writers[0]
    assert [t for t in w1.warnings if "per repeat" in t] == [
        "too few batches: per repeat, fewest 16 measured, so p50, p90, p95, p99, p99.9 cannot be "
        "read from this sample (pXX needs 10/(1-p) batches: p95 200, p99 1,000, p99.9 "
        "10,000); run longer",
        "measured window too short: per repeat, fewest 2.00 s (under 10 s), too short to "
        "judge steady throughput; run longer (default 30 s)",
    ]
    assert not any(t.startswith("repeat ") for t in w1.warnings)


async def test_client_cpu_per_million_rows_counts_the_measured_window_only():
    # The CPU clock is the step clock: the "CPU" spent is the time the writes took.
    clock, order = StepClock(), []
    one, two = Named("one", clock, 0.125, order), Named("two", clock, 0.0625, order)
    cfg = config(duration_s=10, batch_size=100, concurrency=1, warmup_s=2)
    result = await BenchmarkRun(cfg, clock=clock, cpu_clock=clock).execute(FixedSource(one, two))
    w1, w2 = result.writers
    # 10 s of measured writes for 8,000 rows (the 2 s warm-up is not counted).
    assert (w1.rows, w1.client_cpu_s_per_million_rows) == (8_000, 1250.0)
    assert (w2.rows, w2.client_cpu_s_per_million_rows) == (16_000, 625.0)
    repeated = await BenchmarkRun(
        cfg.model_copy(update={"repeat": 2}), clock=clock, cpu_clock=clock
    ).execute(FixedSource(one, two))
    assert repeated.writers[0].client_cpu_s_per_million_rows == 1250.0
    parallel = await BenchmarkRun(
        cfg.model_copy(update={"parallel": True}), clock=clock, cpu_clock=clock
    ).execute(FixedSource(one, two))
    assert parallel.writers[0].client_cpu_s_per_million_rows is None  # one process, two writers


class NeverSuspends(Named):
    """Returns at once, as the null writer does. Its first write schedules other work on
    the loop; each write notes whether that work has run yet."""

    def __init__(self, clock: StepClock) -> None:
        super().__init__("one", clock, 0.001, [])
        self.ran_other: list[bool] = []
        self.other_done = False

    def _other(self) -> None:
        self.other_done = True

    async def write(self, rows: Any) -> Any:
        if not self.ran_other:
            asyncio.get_running_loop().call_soon(self._other)
        self.clock.now += self.step_s
        self.ran_other.append(self.other_done)
        return WriteReceipt(rows=len(rows))


async def test_a_writer_that_never_suspends_still_lets_the_event_loop_run_others():
    clock = StepClock()
    writer = NeverSuspends(clock)
    base = BenchmarkConfig(
        writers=["null"], warmup_s=0, visibility=False, records=10_000, batch_size=10,
        concurrency=1,
    )  # fmt: skip
    await BenchmarkRun(base.model_copy(update={"writers": ["one"]}), clock=clock).execute(
        FixedSource(writer)
    )
    assert len(writer.ran_other) == 1000
    assert writer.ran_other.index(True) <= 32  # the other work ran within 32 batches
