"""`dwbench` as a user runs it: `python -m dwbench` in a subprocess, on the session's local stack.

The runs use the stack of the `local_stack` fixture through LOCAL_STACK_URL, so none of them
starts a stack of its own; their Zerobus rows go to a table of their own.
"""

from __future__ import annotations

import io
import json
import os
import pty
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench.environment import LOCAL_NOTICE
from bench.results import RunResult
from dwbench.cli import ProgressDisplay, main
from tests.bench.dying_writer import REFUSING
from tests.conftest import ROOT
from writers import WRITERS

TABLE = "main.default.cli_bench"
SMALL_RUN = ("--records", "2000", "--batch-size", "200", "--concurrency", "2", "--warmup", "0")
_FOREIGN = ("DATABRICKS_", "PG", "LOCAL_STACK_", "ZEROBUS_", "SQL_", "LAKEBASE_")


def base_env(**values: str) -> dict[str, str]:
    """This process's environment without any target settings a developer's shell may hold."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN)}
    env.pop("APP_MODE", None)
    env.pop("DATA_DIR", None)
    return {**env, **values}


def stack_env(stack: dict[str, Any]) -> dict[str, str]:
    return base_env(
        APP_MODE="local",
        LOCAL_STACK_URL=stack["api_url"],
        LOCAL_STACK_TOKEN=stack["token"],
        DATA_DIR=stack["data_dir"],
        ZEROBUS_TABLE=TABLE,
        SQL_TABLE=TABLE,
    )


def dwbench(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dwbench", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The side-by-side table's rows by label: label -> cells (a best mark stays attached)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("-----"))
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        label, _, cells = line.partition("  ")
        rows[label.strip()] = cells.replace(" *", "*").split()
    return rows


@pytest.fixture(scope="module")
def two_runs(local_stack: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The same small run twice into one results dir: (dir, [(completed process, out path)])."""
    tmp = tmp_path_factory.mktemp("cli")
    results = tmp / "results"
    runs = []
    for name in ("a", "b"):
        out = tmp / name / "r.json"
        args = ("run", "--writers", "null,zerobus", *SMALL_RUN, "--out", out)
        runs.append((dwbench(*args, "--results-dir", results, env=stack_env(local_stack)), out))
    return results, runs


def test_run_prints_the_writers_side_by_side_and_saves_json_and_csv(two_runs):
    results, [(proc, out), _] = two_runs
    assert proc.returncode == 0, proc.stderr
    header = next(line for line in proc.stdout.splitlines() if "null" in line and "zerobus" in line)
    assert header.split() == ["null", "zerobus"]
    rows = table_rows(proc.stdout)
    for label in ("rows/s", "MiB/s", "p50 ms", "p95 ms", "p99 ms", "p99.9 ms", "max ms"):
        assert len(rows[label]) == 2, label
    assert rows["status"] == ["completed", "completed"]
    assert rows["rows"] == ["2,000", "2,000"]
    assert rows["errors"] == ["0", "0"]
    assert rows["visibility p95 ms"][0] == "-"  # the null writer stores nothing to see
    assert "corrected p99 ms" not in rows  # closed loop: nothing to correct
    # 10 batches of 200: a sample too small for any percentile, said so, not numbers.
    assert rows["batches"] == ["10", "10"]
    assert rows["elapsed s"][0] != "-"
    for label in ("p50 ms", "p95 ms", "p99 ms", "p99.9 ms"):
        assert rows[label] == ["n/a", "n/a"], label
    assert "n/a: too few batches for this percentile; pXX needs at least 10/(1-p)" in proc.stdout
    mode_line = f"mode: local. {LOCAL_NOTICE}"
    assert mode_line in proc.stdout.splitlines()[:3]
    assert mode_line in proc.stderr  # the run's header, before the bars
    assert "Zerobus Ingest (gRPC, protobuf): too few batches: 10 measured" in proc.stdout

    run = RunResult.model_validate_json(out.read_text())
    assert run.status == "completed" and not run.partial
    assert [(w.writer, w.rows, w.status) for w in run.writers] == [
        ("null", 2000, "completed"),
        ("zerobus", 2000, "completed"),
    ]
    csv_lines = out.with_suffix(".csv").read_text().splitlines()
    assert csv_lines[0].startswith("run_id,mode,writer,status,rows,batches,elapsed_s")
    assert len(csv_lines) == 3 and csv_lines[1].split(",")[1] == "local"
    assert (results / f"{run.id}.json").exists() and (results / f"{run.id}.csv").exists()
    for path in (out, out.with_suffix(".csv"), results / f"{run.id}.json"):
        assert f"saved {path}" in proc.stdout


def test_progress_is_plain_lines_on_stderr_when_it_is_not_a_terminal(two_runs):
    _, [(proc, _), _] = two_runs
    assert "\x1b" not in proc.stderr
    assert "using the local stack at http://127.0.0.1:" in proc.stderr
    bars = [line for line in proc.stderr.splitlines() if "[" in line and "rows" in line]
    for writer in ("null", "zerobus"):
        mine = [line for line in bars if line.startswith(f"{writer} ")]
        assert mine, proc.stderr
        assert "100%  completed" in mine[-1] and "2,000/2,000 rows" in mine[-1]


def test_fixed_rate_run_adds_the_corrected_latency_rows(local_stack, tmp_path):
    proc = dwbench(
        "run", "--writers", "null,zerobus", *SMALL_RUN, "--rate", "8000",
        "--results-dir", tmp_path, env=stack_env(local_stack),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = table_rows(proc.stdout)
    for label in ("corrected p99 ms", "send-delay p99 ms", "rate achieved"):
        assert len(rows[label]) >= 2, label
    assert "at 8,000 rows/s" in proc.stdout


def test_history_lists_the_runs(two_runs, local_stack):
    results, runs = two_runs
    ids = [RunResult.model_validate_json(out.read_text()).id for _, out in runs]
    proc = dwbench("history", "--results-dir", results, env=stack_env(local_stack))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:4] == ["id", "started", "(UTC)", "mode"]
    assert lines[2].split()[3] == "local"
    assert lines[-1] == f"local: {LOCAL_NOTICE}"
    newest_first = [line.split()[0] for line in lines[2 : 2 + len(ids)]]
    assert newest_first == ids[::-1]
    assert "null " in lines[2] and "zerobus " in lines[2] and "2,000 rows" in lines[2]

    as_json = json.loads(
        dwbench("history", "--json", "--results-dir", results, env=stack_env(local_stack)).stdout
    )
    assert [r["id"] for r in as_json] == ids[::-1]
    assert [w["writer"] for w in as_json[0]["writers"]] == ["null", "zerobus"]


def test_compare_decides_each_metric_and_prints_the_rule(two_runs, local_stack):
    results, [(_, a), (_, b)] = two_runs
    id_b = RunResult.model_validate_json(b.read_text()).id
    # A by its file, B by its id in the results dir.
    proc = dwbench("compare", a, id_b, "--results-dir", results, env=stack_env(local_stack))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "null" in lines and "zerobus" in lines  # a table per writer
    assert any(line.startswith("note: A and B are single runs: their intervals") for line in lines)
    failed = [" ".join(line.split()) for line in lines if line.startswith("failed batches")]
    assert len(failed) == 2
    assert all("within noise no batch failed in either run" in line for line in failed)
    # Two 2,000-row runs are far too small for a p99: never a verdict on it.
    p99 = [" ".join(line.split()) for line in lines if line.startswith("p99 ms")]
    assert len(p99) == 2
    assert all("not enough data A: p99 needs 1,000 batches" in line for line in p99)
    marks = ("within noise", "A better", "B better", "not comparable", "not enough data")
    rows_per_s = [line for line in lines if line.startswith("rows/s")]
    assert all(any(m in line for m in marks) for line in rows_per_s)
    assert lines[-1].startswith("decision rule (bench.store.compare)")

    body = json.loads(
        dwbench(
            "compare", a, id_b, "--json", "--results-dir", results, env=stack_env(local_stack)
        ).stdout
    )
    assert body["b"] == id_b
    assert {d["writer"] for d in body["diffs"]} == {"null", "zerobus"}
    assert body["only_in_a"] == [] and body["only_in_b"] == []
    decisions = {"within noise", "a better", "b better", "not comparable", "not enough data"}
    assert all(d["decision"] in decisions for d in body["diffs"])


def test_an_unavailable_writer_exits_1_with_the_table_and_the_reason(tmp_path):
    # Databricks mode with nothing configured: every writer but null is unavailable.
    env = base_env(APP_MODE="databricks", DATA_DIR=str(tmp_path))
    proc = dwbench("run", "--writers", "null,zerobus", *SMALL_RUN, env=env)
    assert proc.returncode == 1, proc.stderr
    assert table_rows(proc.stdout)["status"] == ["completed", "unavailable"]
    assert (
        "Zerobus Ingest (gRPC, protobuf): unavailable: ZEROBUS_ENDPOINT is not set" in proc.stdout
    )
    assert "run " in proc.stdout and ": partial" in proc.stdout
    assert "mode: databricks. Databricks mode: workspace unknown" in proc.stdout
    assert list((tmp_path / "results").glob("*.json"))  # saved all the same


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--writers", "nosuch,null"], "--writers: unknown writer(s) nosuch"),
        (["--batch-size", "0"], "--batch-size: Input should be greater than or equal to 1"),
        (["--duration", "5x"], "argument --duration: invalid duration '5x'"),
        (["--records", "10", "--duration", "5s"], "not allowed with argument --records"),
        (
            ["--clients", "2", "--executor", "inline"],
            "2 clients need an executor that runs them apart: executor processes",
        ),
        (["--streams", "0"], "--streams: Input should be greater than or equal to 1"),
        (["--executor", "dask"], "argument --executor: invalid choice: 'dask'"),
    ],
)
def test_bad_arguments_exit_2_naming_the_problem(args, message, capsys):
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err
    assert "dwbench run: error:" in err and message in err


def test_bad_arguments_exit_2_from_the_command_line_too():
    proc = dwbench("run", "--batch-size", "0", env=base_env())
    assert proc.returncode == 2
    assert "--batch-size: Input should be greater than or equal to 1" in proc.stderr


def _read_until(proc: subprocess.Popen[str], done: Callable[[str], bool], timeout: float) -> str:
    """stderr of a running process, line by line, until a line satisfies `done`."""
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stderr, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=deadline - time.monotonic()):
                continue
            line = proc.stderr.readline()
            if not line:
                break
            seen += line
            if done(line):
                return seen
    raise AssertionError(f"no such line within {timeout} s:\n{seen}")


def test_ctrl_c_cancels_the_run_and_keeps_the_partial_result(local_stack, tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dwbench", "run", "--writers", "null", "--duration", "30s",
         "--rate", "5000", "--out", str(out), "--results-dir", str(tmp_path / "results")],
        cwd=ROOT, env=stack_env(local_stack), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,  # a process group of its own, as a terminal's job is
    )  # fmt: skip
    try:
        # The run is under way once the null writer has rows (the first bar has none).
        _read_until(proc, lambda line: line.startswith("null ") and "  0 rows" not in line, 30)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        sent = time.monotonic()
        stdout, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert took < 5
    assert "cancelling" in stderr
    assert "cancelled (partial)" in stdout
    run = RunResult.model_validate_json(out.read_text())
    assert run.status == "cancelled" and run.partial
    assert run.writers[0].status == "cancelled" and 0 < run.writers[0].rows < 50_000


def test_progress_redraws_in_place_on_a_terminal(local_stack, tmp_path):
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dwbench", "run", "--writers", "null,zerobus", *SMALL_RUN,
         "--results-dir", str(tmp_path)],
        cwd=ROOT, env=stack_env(local_stack), stdout=subprocess.PIPE, stderr=terminal,
    )  # fmt: skip
    os.close(terminal)
    seen = b""
    try:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's other end closed
                break
            if not chunk:
                break
            seen += chunk
        proc.wait(timeout=60)
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    text = seen.decode()
    assert "\x1b[2Knull " in text and "\x1b[2Kzerobus " in text
    assert "\x1b[2F" in text  # back up over the two bars to redraw them


def test_progress_display_on_a_terminal_redraws_and_keeps_notes_above_the_bars():
    stream = io.StringIO()
    display = ProgressDisplay(stream, tty=True, duration_s=None)
    writer = {
        "writer": "zerobus", "status": "running", "phase": "measuring", "rows": 500,
        "target_rows": 1000, "rows_per_s_last_second": 500, "p50_ms": 3.2, "p99_ms": 9.9,
        "failed_batches": 0, "elapsed_s": 1.0, "target_rows_per_s": None,
    }  # fmt: skip
    display.update({"writers": [writer, {**writer, "writer": "sql", "rows": 0}]})
    display.update({"writers": [{**writer, "rows": 1000}, {**writer, "writer": "sql"}]})
    display.note("cancelling")
    first, second, note = stream.getvalue().split("\x1b[2F")
    assert "50%" in first and "\x1b[2Kzerobus " in first and "\x1b[2Ksql " in first
    assert "100%" in second and "1,000/1,000 rows" in second
    assert note.startswith("\x1b[2Kcancelling\n") and note.count("\x1b[2K") == 3


def test_schema_prints_the_result_json_schema(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "writers" in schema["properties"]
    assert "p99.9" in schema["$defs"]["LatencySummary"]["properties"]


# -- workloads ------------------------------------------------------------------------------


def test_telemetry_through_every_storing_writer(local_stack, tmp_path):
    out = tmp_path / "t.json"
    proc = dwbench(
        "run",
        "--workload",
        "telemetry",
        "--writers",
        "zerobus,zerobus-json,sql,lakebase,null",
        "--records",
        "1000",
        "--batch-size",
        "250",
        "--drivers",
        "50",
        "--warmup",
        "0",
        "--no-visibility",
        "--out",
        out,
        "--results-dir",
        tmp_path / "results",
        env=stack_env(local_stack),
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "; telemetry, 1,000 rows per writer" in proc.stderr
    assert "(14 columns into main.default.telemetry)" in proc.stderr
    assert "workload: telemetry, 1,000 rows per writer" in proc.stdout
    run = RunResult.model_validate_json(out.read_text())
    assert run.config.workload == "telemetry" and run.config.drivers == 50
    assert run.workload is not None and run.workload["name"] == "telemetry"
    assert [(w.writer, w.status, w.rows) for w in run.writers] == [
        (name, "completed", 1000) for name in ("zerobus", "zerobus-json", "sql", "lakebase", "null")
    ]
    from deltalake import DeltaTable

    delta = DeltaTable(
        f"{local_stack['data_dir']}/tables/main/default/telemetry"
    ).to_pyarrow_table()
    sources = delta.filter(pc_equal(delta, "batch_id", run.id)).column("source").to_pylist()
    assert sources == []  # batch ids are <run>-<writer>-<n>, never the bare run id
    mine = [
        s
        for s, b in zip(
            delta.column("source").to_pylist(), delta.column("batch_id").to_pylist(), strict=True
        )
        if b.startswith(run.id)
    ]
    assert sorted(set(mine)) == ["sql", "zerobus", "zerobus-json"] and len(mine) == 3000


def pc_equal(table: Any, column: str, value: str) -> Any:
    import pyarrow.compute as pc

    return pc.equal(table.column(column), value)


def test_a_ddl_with_decimal_runs_where_it_can_and_says_why_not(local_stack, tmp_path):
    schema = tmp_path / "orders.sql"
    schema.write_text(
        "CREATE TABLE main.default.cli_orders (id BIGINT NOT NULL, total DECIMAL(10,2), "
        "tags ARRAY<STRING>, batch_id STRING, source STRING)"
    )
    out = tmp_path / "o.json"
    proc = dwbench(
        "run",
        "--schema-file",
        schema,
        "--id-column",
        "id",
        "--writers",
        "zerobus,sql,lakebase",
        "--records",
        "400",
        "--warmup",
        "0",
        "--batch-size",
        "100",
        "--no-visibility",
        "--out",
        out,
        "--results-dir",
        tmp_path / "results",
        env=stack_env(local_stack),
    )
    assert proc.returncode == 1, proc.stderr  # a writer was unavailable
    run = RunResult.model_validate_json(out.read_text())
    by_name = {w.writer: w for w in run.writers}
    assert by_name["zerobus"].status == "unavailable" and by_name["zerobus"].rows == 0
    assert "column total is DECIMAL(10,2): the Zerobus SDK's generate_proto maps no DECIMAL" in (
        by_name["zerobus"].error or ""
    )
    assert (by_name["sql"].status, by_name["sql"].rows) == ("completed", 400)
    assert (by_name["lakebase"].status, by_name["lakebase"].rows) == ("completed", 400)


def test_table_and_rows_from_replay_the_users_rows(local_stack, tmp_path):
    from tests.conftest import run_sql

    run_sql(
        local_stack,
        "CREATE TABLE IF NOT EXISTS main.default.cli_events (id BIGINT NOT NULL, "
        "kind STRING, at TIMESTAMP, batch_id STRING, source STRING)",
    )
    rows = tmp_path / "events.jsonl"
    rows.write_text(
        '{"id": 1, "kind": "click", "at": "2026-05-01T10:00:00Z"}\n'
        '{"id": 2, "kind": "view", "at": "2026-05-01T10:00:01.5Z"}\n'
    )
    out = tmp_path / "e.json"
    proc = dwbench(
        "run",
        "--table",
        "main.default.cli_events",
        "--rows-from",
        rows,
        "--id-column",
        "id",
        "--writers",
        "sql",
        "--records",
        "10",
        "--warmup",
        "0",
        "--batch-size",
        "5",
        "--no-visibility",
        "--out",
        out,
        "--results-dir",
        tmp_path / "results",
        env=stack_env(local_stack),
    )
    assert proc.returncode == 0, proc.stderr
    from deltalake import DeltaTable

    table = DeltaTable(
        f"{local_stack['data_dir']}/tables/main/default/cli_events"
    ).to_pyarrow_table()
    kinds = sorted(table.column("kind").to_pylist())
    assert kinds == ["click"] * 5 + ["view"] * 5
    assert len(set(table.column("id").to_pylist())) == 10


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--schema", "id FOO"), "column id: unknown column type 'FOO'"),
        (("--schema", "a INT, a STRING"), "duplicate column 'a'"),
        (("--schema", "a DECIMAL(40,1)"), "precision must be 1 to 38"),
        (("--workload", "orders"), "unknown workload 'orders'; known: products, telemetry"),
        (("--rows-from", "x.jsonl"), "--rows-from needs the rows' schema"),
    ],
)
def test_bad_schemas_exit_2_before_anything_starts(args, message, tmp_path):
    proc = dwbench("run", *args, "--writers", "null", env=base_env(DATA_DIR=str(tmp_path)))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not (tmp_path / "local-stack").exists()  # nothing was started or created


def test_a_bad_sample_row_names_its_line(tmp_path):
    rows = tmp_path / "bad.jsonl"
    rows.write_text('{"id": 1}\n{"id": "x"}\n')
    proc = dwbench(
        "run",
        "--schema",
        "id BIGINT",
        "--rows-from",
        rows,
        "--writers",
        "null",
        env=base_env(DATA_DIR=str(tmp_path)),
    )
    assert proc.returncode == 2
    assert "bad.jsonl line 2: column id: Input should be a valid integer" in proc.stderr


def test_measured_seconds_keep_their_digits_when_short():
    from dwbench.cli import fmt_seconds

    assert [fmt_seconds(v) for v in (None, 0.0049, 0.58, 12.345)] == [
        "-",
        "0.005",
        "0.580",
        "12.35",
    ]


def test_a_client_whose_writer_failed_leaves_the_run_partial(local_stack, tmp_path, monkeypatch):
    # Client 1 lives and every batch of it fails: the writer measured client 0 only, and the
    # run says so rather than reporting the half it wrote as the run asked for.
    monkeypatch.setitem(WRITERS, "refusing", REFUSING)  # to read the result here
    out = tmp_path / "refused.json"
    env = {**stack_env(local_stack), "DWBENCH_EXTRA_WRITERS": f"refusing={REFUSING}"}
    proc = dwbench(
        "run", "--writers", "refusing", "--clients", "2", "--records", "1000",
        "--batch-size", "100", "--concurrency", "1", "--warmup", "0", "--out", out, env=env,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    run = RunResult.model_validate_json(out.read_text())
    assert run.status == "partial" and run.partial is True
    (w,) = run.writers
    assert (w.status, w.rows, w.failed_batches) == ("completed", 500, 5)
    assert [(c.worker, c.status, c.rows) for c in w.workers or []] == [
        ("client 0", "completed", 500),
        ("client 1", "failed", 0),
    ]
    assert "worker client 1 failed: every measured batch failed" in w.warnings


def test_clients_and_streams_run_as_worker_processes_merged_into_one_result(local_stack, tmp_path):
    out = tmp_path / "scale.json"
    proc = dwbench(
        "run", "--writers", "zerobus", "--clients", "2", "--streams", "2", *SMALL_RUN,
        "--out", out, env=stack_env(local_stack),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "2 streams x 2 clients (processes)" in proc.stdout
    assert table_rows(proc.stdout)["rows"] == ["2,000"]
    run = RunResult.model_validate_json(out.read_text())
    (w,) = run.writers
    assert (w.rows, w.failed_batches, w.streams, w.clients) == (2_000, 0, 2, 2)
    assert [c.worker for c in w.workers or []] == ["client 0", "client 1"]
    assert [c.rows for c in w.workers or []] == [1_000, 1_000]  # 10 batches, 5 each
    assert [(p.client, p.stream) for p in w.per_stream] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert run.environment["executor"] == "processes"
