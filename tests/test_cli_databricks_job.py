"""The databricks-job executor end to end, as far as the local stack allows: `dwbench run
--executor databricks-job` in databricks mode builds the project's wheel, puts it and the
run's spec into a UC Volume, checks the secret scope and submits a one-time job run with
the SDK (`w.jobs.submit`); the stack's Jobs API stand-in runs the wheel's own task entry point
with the cluster's environment (secret references resolved from the scope) on Spark
`local[N]`; the task writes each phase's client results into the Volume, which the CLI merges.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import secrets
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import InvalidParameterValue
from databricks.sdk.service import compute, jobs

from bench.databricks_job import JobProblem, VolumeSink, task_environment
from bench.results import RunResult
from tests.conftest import ROOT, run_sql
from tests.test_cli import dwbench, stack_env
from tests.test_cli_databricks_mode import TABLE, databricks_env
from tests.test_cli_databricks_mode import table as table

VOLUME = "/Volumes/main/default/dwbench_jobs"
pytestmark = pytest.mark.usefixtures("table")  # the products table the runs write into


def workspace(stack: dict[str, Any]) -> WorkspaceClient:
    return WorkspaceClient(host=stack["api_url"], token=stack["token"], auth_type="pat")


def new_scope(stack: dict[str, Any], **values: str) -> str:
    w = workspace(stack)
    scope = f"dwbench-{secrets.token_hex(3)}"
    w.secrets.create_scope(scope)
    for key, value in values.items():
        w.secrets.put_secret(scope, key, string_value=value)
    return scope


def principal_scope(stack: dict[str, Any]) -> str:
    """A scope holding the stack's service principal under the names the task reads."""
    return new_scope(
        stack,
        DATABRICKS_CLIENT_ID=stack["oauth_client_id"],
        DATABRICKS_CLIENT_SECRET=stack["oauth_client_secret"],
    )


def job_env(stack: dict[str, Any], data_dir: Path, scope: str, auth: str) -> dict[str, str]:
    return {
        **databricks_env(stack, data_dir, auth),
        "DWBENCH_JOB_VOLUME": VOLUME,
        "DWBENCH_JOB_SECRET_SCOPE": scope,
        "DWBENCH_JOB_NODE_TYPE_ID": "local",
        "DWBENCH_JOB_POLL_INTERVAL_S": "0.5",
    }


def volume_dir(stack: dict[str, Any]) -> Path:
    return Path(stack["data_dir"]) / "volumes" / "main" / "default" / "dwbench_jobs"


@pytest.mark.slow
def test_a_job_run_of_two_spark_tasks_writes_through_the_warehouse_and_merges(
    local_stack: dict[str, Any], tmp_path: Path
) -> None:
    scope = principal_scope(local_stack)
    client_id, client_secret = local_stack["oauth_client_id"], local_stack["oauth_client_secret"]
    out = tmp_path / "run.json"
    proc = dwbench(
        "run", "--writers", "sql", "--clients", "2", "--executor", "databricks-job",
        "--records", "2000", "--batch-size", "200", "--concurrency", "2", "--warmup", "0",
        "--out", out, env=job_env(local_stack, tmp_path, scope, "oauth-m2m"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "1 stream x 2 clients (databricks-job)" in proc.stdout
    text = out.read_text()
    assert client_secret not in text and local_stack["token"] not in text
    run = RunResult.model_validate_json(text)
    assert run.status == "completed", run.warnings
    assert run.environment["executor"] == "databricks-job"
    job = run.environment["databricks_job"]
    assert job["state"] == {
        "life_cycle_state": "TERMINATED",
        "result_state": "SUCCESS",
        "state_message": "",
    }
    (w,) = run.writers
    assert (w.writer, w.rows, w.failed_batches) == ("sql", 2_000, 0)
    assert [(c.worker, c.rows) for c in w.workers or []] == [
        ("client 0", 1_000),
        ("client 1", 1_000),
    ]
    resp = run_sql(
        local_stack,
        f"SELECT count(*), count(DISTINCT record_id) FROM {TABLE} WHERE batch_id LIKE '{run.id}-%'",
    )
    assert [int(v) for v in resp.result.data_array[0]] == [2_000, 2_000]

    # What went to the Volume: the wheel with the task's entry point, a spec with no secret.
    files = volume_dir(local_stack) / "dwbench-jobs"
    assert job["spec"] == f"{VOLUME}/dwbench-jobs/runs/{run.id}/spec.json"
    spec_text = (files / "runs" / run.id / "spec.json").read_text()
    assert client_secret not in spec_text and client_id not in spec_text
    spec = json.loads(spec_text)
    assert (spec["run_id"], spec["workload"], spec["clients"]) == (run.id, "products", 2)
    assert spec["phases"] == [["sql"]]
    wheel = files / Path(job["wheel"]).relative_to(f"{VOLUME}/dwbench-jobs")
    with zipfile.ZipFile(wheel) as zf:
        (entry_points,) = [n for n in zf.namelist() if n.endswith("entry_points.txt")]
        assert "dwbench-job-task = bench.databricks_job:task_main" in zf.read(entry_points).decode()
    phase = json.loads((files / "runs" / run.id / "results" / "phase-0.json").read_text())
    assert phase["index"] == 0 and len(phase["results"]) == 2


def test_a_secret_the_tasks_would_need_and_the_scope_lacks_refuses_the_run(
    local_stack: dict[str, Any], tmp_path: Path
) -> None:
    # A user's token in the environment, an empty scope: nothing is uploaded or submitted.
    scope = new_scope(local_stack)
    out = tmp_path / "run.json"
    proc = dwbench(
        "run", "--writers", "sql", "--clients", "2", "--executor", "databricks-job",
        "--records", "400", "--batch-size", "200", "--warmup", "0", "--out", out,
        env=job_env(local_stack, tmp_path, scope, "pat"),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    run = RunResult.model_validate_json(out.read_text())
    assert run.status == "failed"
    reason = (
        "the job's tasks need DATABRICKS_TOKEN, which this process has in its environment: "
        f"put each into secret scope {scope} under its own name (databricks secrets "
        "put-secret <scope> <NAME>)"
    )
    assert run.warnings[0] == f"the run stopped on an error: {reason}"  # then the host's load
    (w,) = run.writers
    assert (w.status, w.error, w.rows) == ("failed", reason, 0)
    assert "databricks_job" not in run.environment
    assert not (volume_dir(local_stack) / "dwbench-jobs" / "runs" / run.id).exists()


def test_the_executor_runs_in_databricks_mode_only(local_stack: dict[str, Any], tmp_path: Path):
    out = tmp_path / "run.json"
    proc = dwbench(
        "run", "--writers", "null", "--clients", "2", "--executor", "databricks-job",
        "--records", "400", "--batch-size", "200", "--warmup", "0", "--out", out,
        env=stack_env(local_stack),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    run = RunResult.model_validate_json(out.read_text())
    assert (
        "the run stopped on an error: the databricks-job executor submits a job run to a "
        "workspace: it runs in databricks mode (the local stack has no clusters; use "
        "--executor spark)"
    ) in run.warnings


def upload_wheel(w: WorkspaceClient, name: str, code: str, entry_points: str = "") -> str:
    """A one-module wheel `name` of `code` (and the dist-info's `entry_points` when given),
    in the Volume."""
    path = f"{VOLUME}/tests/{name}-{secrets.token_hex(3)}/{name}-0.0.0-py3-none-any.whl"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(f"{name}/__init__.py", code)
        if entry_points:
            zf.writestr(f"{name}-0.0.0.dist-info/entry_points.txt", entry_points)
    w.files.upload(path, io.BytesIO(buffer.getvalue()), overwrite=True)
    return path


def interrupt_when(
    args: list[str], env: dict[str, str], ready: Callable[[], bool], timeout_s: float
) -> tuple[int, str, str]:
    """`dwbench ARGS` in a session of its own, sent SIGINT (Ctrl-C) once `ready()`: its exit
    code, stdout and stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dwbench", *args], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, proc.poll()
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stdout, stderr


def wheel_task(wheel: str, package: str, env: dict[str, str] | None = None) -> jobs.SubmitTask:
    return jobs.SubmitTask(
        task_key="t",
        python_wheel_task=jobs.PythonWheelTask(package_name=package, entry_point="main"),
        libraries=[compute.Library(whl=wheel)],
        new_cluster=compute.ClusterSpec(
            spark_version="16.4.x-scala2.12", num_workers=1, spark_env_vars=env
        ),
    )


def wait_state(w: WorkspaceClient, run_id: int, *states: str) -> jobs.Run:
    deadline = time.monotonic() + 60
    while True:
        run = w.jobs.get_run(run_id)
        assert run.state is not None and run.state.life_cycle_state is not None
        if run.state.life_cycle_state.value in states:
            return run
        assert time.monotonic() < deadline, run.state
        time.sleep(0.1)


def test_the_stand_in_resolves_secret_references_as_the_cluster_starts(
    local_stack: dict[str, Any],
) -> None:
    w = workspace(local_stack)
    scope = new_scope(local_stack)
    wheel = upload_wheel(w, "empty", "")
    ref = {"DATABRICKS_TOKEN": f"{{{{secrets/{scope}/DATABRICKS_TOKEN}}}}"}
    with pytest.raises(InvalidParameterValue) as caught:
        w.jobs.submit(run_name="missing secret", tasks=[wheel_task(wheel, "empty", ref)])
    assert (
        str(caught.value) == f"Secret does not exist with scope: {scope} and key: DATABRICKS_TOKEN"
    )


def test_a_job_run_ends_failed_with_the_tasks_last_words_or_cancelled(
    local_stack: dict[str, Any],
) -> None:
    w = workspace(local_stack)
    failing = upload_wheel(w, "failing", "def main():\n    raise SystemExit('no rows today')\n")
    run_id = w.jobs.submit(run_name="fails", tasks=[wheel_task(failing, "failing")]).run_id
    run = wait_state(w, run_id, "TERMINATED")
    assert run.state is not None and run.state.result_state is not None
    assert run.state.result_state.value == "FAILED"
    assert run.state.state_message == "Workload failed (exit code 1): no rows today"

    code = "def main():\n    import time\n    print('started', flush=True)\n    time.sleep(120)\n"
    sleeping = upload_wheel(w, "sleeping", code)
    run_id = w.jobs.submit(run_name="sleeps", tasks=[wheel_task(sleeping, "sleeping")]).run_id
    wait_state(w, run_id, "RUNNING")
    w.jobs.cancel_run(run_id)
    run = wait_state(w, run_id, "TERMINATED")
    assert run.state is not None and run.state.result_state is not None
    assert (run.state.result_state.value, run.state.state_message) == ("CANCELED", "Run cancelled.")


def test_the_clusters_environment_holds_values_and_references_never_secrets() -> None:
    environ = {
        "DATABRICKS_HOST": "https://adb-1.azuredatabricks.net",
        "DATABRICKS_CLIENT_ID": "sp-id",
        "DATABRICKS_CLIENT_SECRET": "sp-secret",
        "ZEROBUS_TABLE": "main.bench.products",
        "PGPASSWORD": "pg-secret",  # the lakebase writer's: the run below does not use it
        "DATA_DIR": "/tmp/here",  # this machine's, not the cluster's
        "UNRELATED": "x",
    }
    host = environ["DATABRICKS_HOST"]
    env = task_environment(["sql"], "sc", {"DATABRICKS_CLIENT_SECRET"}, host, environ)
    assert env == {
        "APP_MODE": "databricks",
        "DATABRICKS_HOST": host,
        "DATABRICKS_CLIENT_ID": "sp-id",
        "DATABRICKS_CLIENT_SECRET": "{{secrets/sc/DATABRICKS_CLIENT_SECRET}}",
        "ZEROBUS_TABLE": "main.bench.products",
    }
    with pytest.raises(JobProblem) as caught:
        task_environment(["lakebase"], "sc", {"DATABRICKS_CLIENT_SECRET"}, host, environ)
    assert str(caught.value) == (
        "the job's tasks need PGPASSWORD, which this process has in its environment: put "
        "each into secret scope sc under its own name (databricks secrets put-secret <scope> "
        "<NAME>)"
    )
    # Signed in from a profile here: the scope must hold credentials of its own.
    with pytest.raises(JobProblem) as caught:
        task_environment(["sql"], "sc", set(), host, {"ZEROBUS_TABLE": "main.bench.products"})
    assert str(caught.value) == (
        "the job's tasks need workspace credentials: put DATABRICKS_TOKEN, or "
        "DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET (a service principal), into "
        "secret scope sc"
    )


def test_a_stack_started_without_jobs_runs_none(tmp_path: Path) -> None:
    # A job run executes the code it names: `make run`'s stack (no --jobs) refuses them all.
    from emulator.jobs import JobRuns, Secrets
    from emulator.volumes import FilesApiError, Volumes

    runs = JobRuns(tmp_path, Volumes(tmp_path), Secrets())
    with pytest.raises(FilesApiError) as caught:
        runs.submit({"tasks": [{"task_key": "t"}]})
    assert (caught.value.status, caught.value.error_code) == (501, "NOT_IMPLEMENTED")
    assert caught.value.message == (
        "This local stack runs no jobs: a run executes the code of the wheel it names on this "
        "machine, so job runs are served only by a stack started with --jobs."
    )


def test_a_volume_sink_carries_a_tasks_progress_to_the_coordinator(
    local_stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The task's copy travels pickled, without the coordinator's client, and signs in with
    # the credentials of its own environment (the cluster's spark_env_vars).
    for name, value in {
        "APP_MODE": "databricks",
        "DATABRICKS_HOST": local_stack["api_url"],
        "DATABRICKS_TOKEN": local_stack["token"],
    }.items():
        monkeypatch.setenv(name, value)
    sink = VolumeSink(f"{VOLUME}/tests/progress-{secrets.token_hex(3)}", workspace(local_stack))
    assert sink.get(0, 1) is None
    task_side = pickle.loads(pickle.dumps(sink))
    assert task_side._workspace is None
    document = {"progress": {"writers": []}, "result": "{}"}
    task_side.put(0, 1, document)
    deadline = time.monotonic() + 30
    while (found := sink.get(0, 1)) is None:
        assert time.monotonic() < deadline, "the uploader thread did not upload"
        time.sleep(0.05)
    assert found == document


def measured(progress: Path) -> bool:
    """Whether a task's progress file (written whole by the Files API) shows rows."""
    if not progress.exists():
        return False
    (writer,) = json.loads(progress.read_text())["progress"]["writers"]
    return bool(writer["rows"] > 0)


@pytest.mark.slow
def test_ctrl_c_cancels_the_job_run_and_keeps_each_clients_progress(
    local_stack: dict[str, Any], tmp_path: Path
) -> None:
    scope = principal_scope(local_stack)
    runs = volume_dir(local_stack) / "dwbench-jobs" / "runs"
    before = set(runs.iterdir()) if runs.exists() else set()
    out = tmp_path / "run.json"

    def both_measuring() -> bool:
        # Under way once both tasks have put rows into their progress in the run's Volume.
        new = set(runs.iterdir()) - before if runs.exists() else set()
        progress = [d / "progress" / f"phase-0-client-{c}.json" for d in new for c in (0, 1)]
        return bool(progress) and all(measured(p) for p in progress)

    code, stdout, stderr = interrupt_when(
        ["run", "--writers", "null", "--clients", "2", "--executor", "databricks-job",
         "--duration", "300s", "--rate", "2000", "--batch-size", "100", "--warmup", "0",
         "--no-visibility", "--out", str(out), "--results-dir", str(tmp_path / "results")],
        job_env(local_stack, tmp_path, scope, "oauth-m2m"), both_measuring, 180,
    )  # fmt: skip
    assert code == 130, stderr
    assert "cancelled (partial)" in stdout
    run = RunResult.model_validate_json(out.read_text())
    assert run.status == "cancelled" and run.partial
    assert run.environment["databricks_job"]["state"] == {
        "life_cycle_state": "TERMINATED",
        "result_state": "CANCELED",
        "state_message": "Run cancelled.",
    }
    (w,) = run.writers
    assert w.status == "cancelled"
    assert [c.status for c in w.workers or []] == ["cancelled", "cancelled"]
    assert all(c.rows > 0 for c in w.workers or [])  # each client's last progress, kept


def test_a_cancel_answers_while_the_cluster_is_still_stopping(
    local_stack: dict[str, Any], tmp_path: Path
) -> None:
    # A task that ignores SIGTERM: the stand-in kills it only after its 10 s grace. The
    # coordinator follows a cancelled run for 3 s at most, then saves what it has and says
    # the job run was still stopping.
    w = workspace(local_stack)
    stubborn = (
        "import signal, sys, time\n"
        "def main():\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "    print('stubborn task started', flush=True)\n"
        "    time.sleep(60)\n"
    )
    path = upload_wheel(
        w, "stubborn", stubborn, "[console_scripts]\ndwbench-job-task = stubborn:main\n"
    )
    jobs_dir = Path(local_stack["data_dir"]) / "jobs"
    before = set(jobs_dir.iterdir()) if jobs_dir.exists() else set()
    env = {**job_env(local_stack, tmp_path, principal_scope(local_stack), "oauth-m2m")}
    env["DWBENCH_JOB_WHEEL"] = path
    out = tmp_path / "run.json"

    def started() -> bool:
        new = set(jobs_dir.iterdir()) - before if jobs_dir.exists() else set()
        logs = [d / "task.log" for d in new if (d / "task.log").exists()]
        return any("stubborn task started" in log.read_text() for log in logs)

    code, _, stderr = interrupt_when(
        ["run", "--writers", "null", "--clients", "2", "--executor", "databricks-job",
         "--records", "1000", "--warmup", "0", "--no-visibility", "--out", str(out),
         "--results-dir", str(tmp_path / "results")],
        env, started, 60,
    )  # fmt: skip
    assert code == 130, stderr
    run = RunResult.model_validate_json(out.read_text())
    assert run.status == "cancelled"
    job = run.environment["databricks_job"]
    assert job["note"] == (
        "cancel_run was requested; the job run was TERMINATING when this result was saved"
    )
    (w_result,) = run.writers
    assert w_result.status == "cancelled" and w_result.rows == 0
