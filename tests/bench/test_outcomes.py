"""A run's outcome from its writers' (failed when none ran, partial when some did), and
failed batches counted by kind: a pool wait is not the target being unavailable."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from bench.config import BenchmarkConfig
from bench.manager import BenchmarkManager
from bench.results import to_csv
from bench.runner import run_benchmark
from bench.store import ResultStore, summary
from dwbench.cli import _exit_code, results_table
from dwbench.errors import PoolWaitError, WriteFailedError, WriterUnavailableError
from dwbench.settings import Settings
from tests.bench.fake_writers import FixedSource, StallingWriter
from workloads.base import Rows
from writers.base import Targets, WriteReceipt

TARGETS = Targets(mode="local", settings=Settings(app_mode="local"))


class KindsWriter(StallingWriter):
    """Raises, write after write, the errors given in turn (None: stores the batch)."""

    def __init__(self, name: str, errors: list[Exception | None]) -> None:
        super().__init__(TARGETS, normal_s=0, stall_at=-1, stall_s=0)
        self.name = name  # type: ignore[misc]
        self.label = f"{name} writer"  # type: ignore[misc]
        self.errors = errors

    async def write(self, rows: Rows) -> WriteReceipt:
        error = self.errors[self.writes % len(self.errors)]
        if error is not None:
            self.writes += 1
            raise error
        return await super().write(rows)


POOL = PoolWaitError("copy waited for a pooled connection: all 4 in use", writer="a")
DOWN = WriterUnavailableError("cannot connect to 127.0.0.1:5432", writer="a")
BAD = WriteFailedError("copy into t failed", writer="a")


def config(writers: list[str], **fields: Any) -> BenchmarkConfig:
    base = BenchmarkConfig(writers=["null"], **{"warmup_s": 0, "visibility": False, **fields})
    return base.model_copy(update={"writers": writers})


async def test_every_batch_of_every_writer_failed_is_a_failed_run():
    a, b = KindsWriter("a", [POOL]), KindsWriter("b", [BAD])
    result = await run_benchmark(config(["a", "b"], records=40, batch_size=10), FixedSource(a, b))
    assert result.status == "failed" and result.partial is True
    assert [(w.status, w.error) for w in result.writers] == [
        ("failed", "every measured batch failed"),
        ("failed", "every measured batch failed"),
    ]
    assert result.warnings[0] == (
        "no writer ran (a writer failed: every measured batch failed; "
        "b writer failed: every measured batch failed)"
    )
    assert _exit_code(result) == 1
    assert f"run {result.id}: failed" in results_table(result)


async def test_one_writer_whose_every_batch_failed_makes_the_run_partial():
    a, b = KindsWriter("a", [DOWN]), KindsWriter("b", [None])
    result = await run_benchmark(config(["a", "b"], records=40, batch_size=10), FixedSource(a, b))
    assert result.status == "partial" and result.partial is True
    assert [w.status for w in result.writers] == ["failed", "completed"]
    assert result.writers[1].rows == 40
    assert result.warnings[0].startswith("not every writer ran (a writer failed: ")
    assert _exit_code(result) == 1
    assert f"run {result.id}: partial" in results_table(result)


async def test_failures_in_the_warm_up_and_after_still_fail_the_writer():
    a = KindsWriter("a", [DOWN])
    cfg = config(["a"], duration_s=0.05, warmup_s=0.05, batch_size=10)
    result = await run_benchmark(cfg, FixedSource(a))
    (w,) = result.writers
    assert w.status == "failed" and w.rows == 0 and w.failed_batches > 0
    assert result.status == "failed" and result.partial is True


async def test_failed_batches_are_counted_by_kind_in_the_json_and_the_csv():
    # 12 batches: per 6, a pool wait, two unavailable, an error, two stored.
    a = KindsWriter("a", [POOL, DOWN, DOWN, BAD, None, None])
    result = await run_benchmark(
        config(["a"], records=120, batch_size=10, concurrency=1), FixedSource(a)
    )
    (w,) = result.writers
    assert w.status == "completed" and w.rows == 40 and w.failed_batches == 8
    assert w.errors == {"pool_wait": 2, "unavailable": 4, "write_failed": 2}
    assert w.error_samples[0] == "pool_wait: copy waited for a pooled connection: all 4 in use"
    assert "8 batches failed (2 pool_wait, 4 unavailable, 2 write_failed)" in w.warnings
    assert result.status == "completed" and result.partial is False
    assert _exit_code(result) == 1  # failed batches: not a clean run
    (row,) = list(csv.DictReader(io.StringIO(to_csv(result))))
    assert row["failed_batches"] == "8"
    assert (row["failed_pool_wait"], row["failed_unavailable"], row["failed_error"]) == (
        "2",
        "4",
        "2",
    )


async def test_the_app_s_manager_stores_and_lists_the_outcome(tmp_path: Path):
    # Registered names: a stored result names writers the registry knows.
    a, b = KindsWriter("sql", [BAD]), KindsWriter("lakebase", [None])
    manager = BenchmarkManager(FixedSource(a, b), ResultStore(tmp_path))
    run = await manager.start(config(["sql", "lakebase"], records=20, batch_size=10))
    assert manager._task is not None
    await manager._task
    stored = manager.get(run.id)
    assert stored.status == "partial" and stored.partial is True
    assert summary(stored)["status"] == "partial" and summary(stored)["partial"] is True
    assert [h["status"] for h in manager.history()] == ["partial"]


class SlowFailingWriter(StallingWriter):
    """Every write fails after `after_s` (a target that blocks, then answers 503)."""

    name = "slowfail"
    label = "Slow failing writer"

    def __init__(self, after_s: float) -> None:
        super().__init__(TARGETS, normal_s=0, stall_at=-1, stall_s=0)
        self.after_s = after_s

    async def write(self, rows: Rows) -> WriteReceipt:
        import asyncio

        await asyncio.sleep(self.after_s)
        raise WriterUnavailableError("no Postgres connection from the pool", writer=self.name)


async def test_a_writer_whose_batches_all_failed_in_the_warm_up_is_failed_not_completed():
    # Each batch blocks longer than warm-up and window together, then fails: no batch is
    # ever measured, and the run used to end "completed", partial false.
    writer = SlowFailingWriter(after_s=0.3)
    cfg = config(["slowfail"], duration_s=0.1, warmup_s=0.1, batch_size=10, concurrency=2)
    result = await run_benchmark(cfg, FixedSource(writer))
    (w,) = result.writers
    assert w.status == "failed" and w.rows == 0
    assert w.error == "every batch failed (2 in the warm-up, none measured)"
    assert w.error_samples == ["unavailable: no Postgres connection from the pool"]
    assert result.status == "failed" and result.partial is True
    assert _exit_code(result) == 1


class SmallPoolWriter(KindsWriter):
    """Says, as Lakebase does, that its pool is smaller than the concurrency asked for."""

    async def reserve(self, concurrency: int) -> str | None:
        self.reserved = concurrency
        return f"pool of 2 connections (LAKEBASE_POOL_MAX_SIZE) for concurrency {concurrency}"


async def test_the_writer_is_told_the_concurrency_and_its_note_is_a_warning():
    writer = SmallPoolWriter("a", [None])
    result = await run_benchmark(
        config(["a"], records=40, batch_size=10, concurrency=3), FixedSource(writer)
    )
    assert writer.reserved == 3
    (w,) = result.writers
    assert w.warnings[0] == "pool of 2 connections (LAKEBASE_POOL_MAX_SIZE) for concurrency 3"
    assert "a writer: pool of 2 connections" in result.warnings[0]
