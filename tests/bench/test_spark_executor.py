"""The spark executor end to end: `dwbench run --executor spark` runs each client as a task
of a Spark job (pyspark, local[2], Debian's OpenJDK from `make java`) against the local
stack, and merges what the tasks return into one result file."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bench.config import BenchmarkConfig
from bench.results import RunResult
from bench.runner import BenchmarkRun
from bench.spark_driver import SparkRun, spark_problem
from bench.worker_process import make_job
from tests.bench.dying_writer import TARGET as DYING
from tests.bench.gated_writer import TARGET as GATED
from tests.conftest import local_targets, run_sql
from tests.test_cli import SMALL_RUN, TABLE, dwbench, stack_env
from writers import WRITERS

pytestmark = pytest.mark.slow


def test_spark_tasks_write_their_shares_and_merge_into_one_result(local_stack, tmp_path):
    out = tmp_path / "spark.json"
    proc = dwbench(
        "run", "--writers", "zerobus", "--executor", "spark", "--clients", "2",
        "--streams", "2", *SMALL_RUN, "--out", out, env=stack_env(local_stack),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "2 streams x 2 clients (spark)" in proc.stdout
    run = RunResult.model_validate_json(out.read_text())  # one merged result that validates
    assert run.status == "completed", run.warnings
    assert run.environment["executor"] == "spark"
    assert run.environment["spark"]["master"] == "local[2]"
    (w,) = run.writers
    assert (w.rows, w.failed_batches) == (2_000, 0)
    assert [c.worker for c in w.workers or []] == ["client 0", "client 1"]
    assert [c.rows for c in w.workers or []] == [1_000, 1_000]
    assert [(p.client, p.stream) for p in w.per_stream] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # Both tasks measured on the wall clock, so the merge placed them (how close they
    # started is a figure of bench.scale_bench, not a test: it moves with the machine's load).
    assert w.skew is not None and w.skew.start_s is not None
    resp = run_sql(
        local_stack,
        f"SELECT count(*), count(DISTINCT record_id) FROM {TABLE} WHERE batch_id LIKE '{run.id}-%'",
    )
    assert [int(v) for v in resp.result.data_array[0]] == [2_000, 2_000]


def test_a_task_that_dies_fails_its_phase_and_keeps_the_phases_before(
    local_stack: dict[str, Any], tmp_path, monkeypatch
):
    monkeypatch.setitem(WRITERS, "dying", DYING)  # to read the result here
    out = tmp_path / "dying.json"
    env = {**stack_env(local_stack), "DWBENCH_EXTRA_WRITERS": f"dying={DYING}"}
    proc = dwbench(
        "run", "--writers", "null,dying", "--executor", "spark", "--clients", "2",
        "--records", "4000", "--batch-size", "100", "--concurrency", "1", "--warmup", "0",
        "--out", out, env=env,
    )  # fmt: skip
    run = RunResult.model_validate_json(out.read_text())
    assert proc.returncode == 1, proc.stderr
    null, dying = run.writers
    assert null.status == "completed" and null.rows == 4_000  # the phase before, kept
    # A barrier stage runs all its tasks or none: both clients of the phase are lost, with
    # Spark's reason.
    lost = [text for text in run.warnings if text.startswith("client ")]
    reason = lost[0].removeprefix("client 0 was lost: ")
    assert reason.startswith(
        "the Spark job failed: org.apache.spark.SparkException: Job aborted due to stage failure"
    ), lost
    assert lost == [f"client {c} was lost: {reason}" for c in (0, 1)]
    # The writer failed with it: as it is when no task had put its progress yet, or, when
    # one had (its rows so far are kept), as the merge names the first client's.
    assert dying.status == "failed"
    assert dying.error in (reason, f"worker client 0: {reason}"), dying.error
    assert run.status == "partial"


def test_the_spark_executor_says_what_it_needs(monkeypatch, tmp_path):
    assert spark_problem() is None  # this machine has both (make test installs them)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))  # no bin/java there
    assert spark_problem() == (
        "the spark executor needs Java 17 or later (Debian: apt-get install "
        "openjdk-17-jre-headless; make test installs it)"
    )


async def test_spark_tasks_show_their_progress_while_they_run(local_stack, tmp_path, monkeypatch):
    # Each task writes 5 batches, then holds until the gate exists: the coordinator must show
    # both clients at exactly 500 rows before any task has returned.
    monkeypatch.setitem(WRITERS, "gated", GATED)
    gate = tmp_path / "gate"
    monkeypatch.setenv("GATED_GATE", str(gate))
    config = BenchmarkConfig(
        writers=["gated"], clients=2, executor="spark", records=2_000, batch_size=100,
        concurrency=1, warmup_s=0, visibility=False,
    )  # fmt: skip
    template = BenchmarkRun(config, environment={})
    run = SparkRun(template)
    job = make_job(template, local_targets(local_stack))
    going = asyncio.create_task(run.execute(job))
    try:
        deadline = time.monotonic() + 120
        while True:
            (writer,) = run.progress()["writers"]
            rows = [c["rows"] for c in writer["clients"]]
            if rows == [500, 500]:
                break
            assert not going.done() and time.monotonic() < deadline, (rows, writer)
            await asyncio.sleep(0.1)
        assert writer["status"] == "running" and writer["rows"] == 1_000
        assert [c["client"] for c in writer["clients"]] == [0, 1]
        (partial,) = run.result().writers  # the merged result so far, from the progress
        assert [w.rows for w in partial.workers or []] == [500, 500]
    finally:
        gate.touch()
        result = await going
    assert result.status == "completed", result.warnings
    (w,) = result.writers
    assert [c.rows for c in w.workers or []] == [1_000, 1_000]
