"""Benchmarks run in a worker process, off the app's event loop: the app answers while a
null-writer run keeps a core busy, a second start is refused, cancel keeps what was
measured, and a worker that dies or does not stop ends its run failed, saying why.

A real app (its own results directory) on the session's local stack, real worker
processes. No wall-time assertions: time only bounds the waits.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from websockets.sync.client import connect

from bench.clients import ClientsRun
from bench.manager import BenchmarkManager
from bench.results import RunResult
from tests.api.stuck_writer import TARGET as STUCK_TARGET
from tests.app_server import AppServer
from tests.conftest import app_settings, run_sql
from workloads import products
from writers import WRITERS, register_writer

pytestmark = pytest.mark.slow
# A secret in the app's environment that the worker's must not carry.
PLANTED_SECRET = "worker-must-not-see-this-8c1f"


@pytest.fixture(scope="module")
def worker_app(local_stack: dict[str, Any]) -> Iterator[AppServer]:
    results = Path(tempfile.mkdtemp(prefix="dwbench-worker-"))
    register_writer("stuck", STUCK_TARGET)
    try:
        with AppServer(app_settings(local_stack, data_dir=results)) as server:
            yield server
    finally:
        WRITERS.pop("stuck", None)
        shutil.rmtree(results, ignore_errors=True)


@pytest.fixture(scope="module")
def http(worker_app: AppServer) -> Iterator[httpx.Client]:
    with worker_app.client() as client:
        yield client


def manager_of(app: AppServer) -> BenchmarkManager:
    manager: BenchmarkManager = app.app.state.runtime.benchmarks  # read, never patched
    return manager


def start(http: httpx.Client, **config: Any) -> str:
    resp = http.post("/api/v1/benchmarks", json={"warmup_s": 0, "visibility": False, **config})
    assert resp.status_code == 202, resp.text
    run_id: str = resp.json()["id"]
    return run_id


def result_of(http: httpx.Client, run_id: str) -> dict[str, Any]:
    resp = http.get(f"/api/v1/benchmarks/{run_id}")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def wait_rows(http: httpx.Client, run_id: str, timeout_s: float = 30) -> dict[str, Any]:
    """The run's result once the worker has reported measured rows."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = result_of(http, run_id)
        assert body["status"] == "running", body["warnings"]
        if body["writers"][0]["rows"] > 0:
            return body
        assert time.monotonic() < deadline, "no rows measured"
        time.sleep(0.1)


def wait_finished(http: httpx.Client, run_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (body := result_of(http, run_id))["status"] == "running":
        assert time.monotonic() < deadline, f"run {run_id} still running"
        time.sleep(0.1)
    return body


def worker_pid_from_progress(app: AppServer, run_id: str) -> int:
    url = f"ws://127.0.0.1:{app.port}/ws/benchmarks/{run_id}"
    with connect(url, proxy=None, open_timeout=10, close_timeout=5) as ws:
        while True:
            message = json.loads(ws.recv(timeout=10))
            assert message["type"] == "progress", message
            if message.get("worker_pid") is not None:
                pid: int = message["worker_pid"]
                return pid


def test_the_app_answers_while_a_null_run_goes_on_in_its_worker(
    http: httpx.Client, worker_app: AppServer, local_stack: dict[str, Any], monkeypatch
):
    monkeypatch.setenv("DATABRICKS_CLIENT_SECRET", PLANTED_SECRET)
    # Closed loop: the null writer never waits, the run keeps its process's core busy.
    run_id = start(http, writers=["null"], duration_s=30, batch_size=100, concurrency=4)
    wait_rows(http, run_id)

    pid = worker_pid_from_progress(worker_app, run_id)
    assert pid != os.getpid()  # the app runs in this process (AppServer: a thread)
    assert manager_of(worker_app).worker_pid == pid
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"bench.worker_process" in cmdline
    # Secrets reach the worker over its socket only: not in its environment or arguments.
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    for secret in (PLANTED_SECRET, local_stack["token"]):
        assert secret.encode() not in environ
        assert secret.encode() not in b" ".join(cmdline)
    assert b"DATABRICKS_CLIENT_SECRET" not in environ

    for _ in range(20):
        resp = http.get("/health", timeout=5)
        assert resp.status_code == 200 and resp.json()["status"] == "ok", resp.text
    # ... answered while the run was going on.
    assert result_of(http, run_id)["status"] == "running"

    second = http.post("/api/v1/benchmarks", json={"writers": ["null"], "records": 10})
    assert second.status_code == 409, second.text
    assert second.json()["error"] == "conflict"
    assert second.json()["message"] == (
        f"benchmark {run_id} is running; cancel it or wait for it to finish"
    )

    resp = http.post(f"/api/v1/benchmarks/{run_id}/cancel")
    assert resp.status_code == 200, resp.text
    run = resp.json()
    assert run["status"] == "cancelled" and run["partial"] is True and run["finished_at"]
    (writer,) = run["writers"]
    assert writer["status"] == "cancelled" and writer["rows"] > 0 and writer["batches"] > 0
    assert writer["rows"] == writer["batches"] * 100
    stored = http.get(f"/api/v1/benchmarks/{run_id}/result.json")
    assert stored.status_code == 200, stored.text
    assert stored.json()["status"] == "cancelled"
    assert stored.json()["writers"][0]["rows"] == writer["rows"]
    assert manager_of(worker_app).worker_pid is None
    assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid) is False


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except FileNotFoundError:
        return False


def test_a_worker_killed_mid_run_fails_the_run_and_frees_the_slot(
    http: httpx.Client, worker_app: AppServer
):
    run_id = start(http, writers=["null"], duration_s=30, rate=20_000, batch_size=100)
    measured = wait_rows(http, run_id)
    pid = manager_of(worker_app).worker_pid
    assert pid is not None and pid != os.getpid()
    os.kill(pid, signal.SIGKILL)

    run = wait_finished(http, run_id)
    reason = f"the benchmark worker (pid {pid}) was killed by SIGKILL"
    assert run["status"] == "failed" and run["partial"] is True and run["finished_at"]
    assert run["warnings"][0] == f"the run stopped on an error: {reason}"
    (writer,) = run["writers"]
    # What its last progress showed is kept.
    assert writer["status"] == "failed" and writer["error"] == reason
    assert writer["rows"] >= measured["writers"][0]["rows"] > 0
    stored = http.get(f"/api/v1/benchmarks/{run_id}/result.json")
    assert stored.status_code == 200, stored.text
    assert stored.json()["warnings"][0] == run["warnings"][0]

    again = start(http, writers=["null"], records=200, batch_size=10)
    assert wait_finished(http, again)["status"] == "completed"


@contextlib.contextmanager
def short_cancel_grace(app: AppServer) -> Iterator[None]:
    """A 1 s grace for cancelled workers (a setting, as the runtime's poll intervals are)."""
    manager = manager_of(app)
    manager.cancel_grace_s = 1.0
    try:
        yield
    finally:
        manager.cancel_grace_s = 5.0


def killed_after_grace(pid: int) -> str:
    return f"the benchmark worker (pid {pid}) did not stop within 1 s of the cancel and was killed"


def test_a_worker_that_does_not_stop_after_cancel_is_killed(
    http: httpx.Client, worker_app: AppServer
):
    manager = manager_of(worker_app)
    with short_cancel_grace(worker_app):
        run_id = start(http, writers=["stuck"], duration_s=30, batch_size=10, concurrency=1)
        deadline = time.monotonic() + 30
        # Until its progress shows the writer running: its first write is blocked then.
        while result_of(http, run_id)["writers"][0]["status"] != "running":
            assert time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.05)
        pid = manager.worker_pid
        assert pid is not None
        resp = http.post(f"/api/v1/benchmarks/{run_id}/cancel")
    assert resp.status_code == 200, resp.text
    run = resp.json()
    reason = killed_after_grace(pid)
    assert run["status"] == "failed" and run["partial"] is True
    assert run["warnings"][0] == f"the run stopped on an error: {reason}"
    assert result_of(http, run_id)["status"] == "failed"
    again = start(http, writers=["null"], records=100, batch_size=10)
    assert wait_finished(http, again)["status"] == "completed"


# -- sweeps: each point in a worker process of its own ------------------------------------


def sweep_point_in_worker(http: httpx.Client, sweep_id: str, rows: bool) -> dict[str, Any]:
    """The sweep's progress once its first point runs in a worker (and, with `rows`, has
    measured rows)."""
    deadline = time.monotonic() + 30
    while True:
        resp = http.get(f"/api/v1/sweeps/{sweep_id}")
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["status"] == "running", body
        run = (body["progress"] or {}).get("run") or {}
        writers = run.get("writers") or [{}]
        if run.get("worker_pid") and (not rows or writers[0].get("rows", 0) > 0):
            progress: dict[str, Any] = body["progress"]
            return progress
        assert time.monotonic() < deadline, "the sweep's point did not start in a worker"
        time.sleep(0.1)


def test_a_sweep_runs_its_points_in_workers_and_the_app_answers_meanwhile(
    http: httpx.Client, worker_app: AppServer
):
    # Closed loop: each point's null writer keeps its process's core busy.
    config = {"writers": ["null"], "batch_sizes": [100], "concurrencies": [1, 4]}
    resp = http.post(
        "/api/v1/sweeps", json=config | {"duration_s": 30, "warmup_s": 0, "visibility": False}
    )
    assert resp.status_code == 202, resp.text
    sweep = resp.json()
    progress = sweep_point_in_worker(http, sweep["id"], rows=True)
    assert (progress["point"], progress["points"], progress["concurrency"]) == (1, 2, 1)
    pid = progress["run"]["worker_pid"]
    assert pid != os.getpid()
    assert b"bench.worker_process" in Path(f"/proc/{pid}/cmdline").read_bytes()

    for _ in range(20):
        health = http.get("/health", timeout=5)
        assert health.status_code == 200 and health.json()["status"] == "ok", health.text
    run = http.post("/api/v1/benchmarks", json={"writers": ["null"], "records": 10})
    assert run.status_code == 409, run.text
    assert run.json()["message"] == (
        f"sweep {sweep['id']} is running; cancel it or wait for it to finish"
    )

    resp = http.post(sweep["links"]["cancel"])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "cancelled"
    first, second = body["points"]
    assert first["status"] == "cancelled" and first["run_id"] == progress["run"]["run_id"]
    (writer,) = first["writers"]
    assert writer["rows"] > 0 and writer["rows"] == writer["batches"] * 100
    assert second["status"] == "cancelled" and second["writers"] == []
    # The point's run, as its worker returned it, is stored with the sweep.
    stored = http.get(f"/api/v1/sweeps/{sweep['id']}")
    assert stored.json()["points"][0]["writers"][0]["rows"] == writer["rows"]
    assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid) is False


def test_a_sweep_point_whose_worker_does_not_stop_after_cancel_is_killed(
    http: httpx.Client, worker_app: AppServer
):
    with short_cancel_grace(worker_app):
        resp = http.post(
            "/api/v1/sweeps",
            json={
                "writers": ["stuck"],
                "batch_sizes": [10],
                "concurrencies": [1],
                "duration_s": 30,
                "warmup_s": 0,
                "visibility": False,
            },
        )
        assert resp.status_code == 202, resp.text
        sweep = resp.json()
        deadline = time.monotonic() + 30
        while True:
            progress = sweep_point_in_worker(http, sweep["id"], rows=False)
            if progress["run"]["writers"][0]["status"] == "running":
                break  # its first write is blocked now
            assert time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.05)
        pid = progress["run"]["worker_pid"]
        resp = http.post(sweep["links"]["cancel"])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    reason = killed_after_grace(pid)
    assert body["status"] == "cancelled"
    (point,) = body["points"]
    assert point["status"] == "failed"
    assert point["writers"][0]["error"] == reason
    again = start(http, writers=["null"], records=100, batch_size=10)
    assert wait_finished(http, again)["status"] == "completed"


# -- clients: one worker process each, merged --------------------------------------------


def wait_every_client_measuring(http: httpx.Client, run_id: str, clients: int) -> None:
    """Until the run's merged result shows every client with measured rows."""
    deadline = time.monotonic() + 60
    while True:
        body = result_of(http, run_id)
        workers = body["writers"][0].get("workers") or []
        if len(workers) == clients and all(w["rows"] > 0 for w in workers):
            return
        assert body["status"] == "running" and time.monotonic() < deadline, body
        time.sleep(0.1)


def test_four_clients_of_four_streams_write_every_row_once_into_postgres_and_delta(
    http: httpx.Client, worker_app: AppServer, local_stack: dict[str, Any]
):
    run_id = start(
        http,
        writers=["lakebase", "zerobus"],
        clients=4,
        streams=4,
        records=4_000,
        batch_size=50,
        concurrency=1,
    )
    run = wait_finished(http, run_id, timeout_s=240)
    assert run["status"] == "completed", run["warnings"]
    RunResult.model_validate(run)  # the merged result is a result like any other
    table = products.WORKLOAD.table
    for writer in run["writers"]:
        assert (writer["rows"], writer["failed_batches"]) == (4_000, 0), writer
        assert (writer["clients"], writer["streams"]) == (4, 4)
        assert [w["worker"] for w in writer["workers"]] == [f"client {c}" for c in range(4)]
        assert [w["rows"] for w in writer["workers"]] == [1_000] * 4  # 80 batches, 20 each
        assert len(writer["per_stream"]) == 16
        assert sum(s["rows"] for s in writer["per_stream"]) == 4_000
    # The primary key held in Postgres, and Delta has each id once.
    with psycopg.connect(local_stack["postgres_dsn"], autocommit=True) as conn:
        count, distinct = conn.execute(
            f"SELECT count(*), count(DISTINCT record_id) FROM {table.postgres_table} "
            "WHERE batch_id LIKE %s",
            (f"{run_id}-%",),
        ).fetchone()  # type: ignore[misc]
    assert (count, distinct) == (4_000, 4_000)
    resp = run_sql(
        local_stack,
        f"SELECT count(*), count(DISTINCT record_id) FROM {table.delta_table} "
        f"WHERE batch_id LIKE '{run_id}-%'",
    )
    assert [int(v) for v in resp.result.data_array[0]] == [4_000, 4_000]


def test_a_client_killed_mid_run_leaves_the_run_partial_with_the_others_kept(
    http: httpx.Client, worker_app: AppServer
):
    run_id = start(http, writers=["null"], clients=2, duration_s=8, rate=20_000, batch_size=100)
    wait_every_client_measuring(http, run_id, 2)
    running = manager_of(worker_app).running
    assert isinstance(running, ClientsRun)
    worker = running.phases[0].clients[1].worker
    assert worker is not None
    os.kill(worker.pid, signal.SIGKILL)

    run = wait_finished(http, run_id)
    reason = f"the benchmark worker (pid {worker.pid}) was killed by SIGKILL"
    assert run["status"] == "partial" and run["partial"] is True
    assert f"client 1 was lost: {reason}" in run["warnings"]
    (writer,) = run["writers"]
    first, second = writer["workers"]
    assert first["worker"] == "client 0" and first["status"] == "completed"
    assert first["rows"] == 8 * 10_000  # client 0's share of the schedule, whole
    assert second["status"] == "failed" and second["rows"] > 0  # its last progress, kept
    assert writer["rows"] == first["rows"] + second["rows"]
    assert f"worker client 1 failed: {reason}" in writer["warnings"]


def test_cancel_stops_every_client_and_keeps_what_each_measured(
    http: httpx.Client, worker_app: AppServer
):
    run_id = start(http, writers=["null"], clients=3, duration_s=60, batch_size=100)
    wait_every_client_measuring(http, run_id, 3)
    running = manager_of(worker_app).running
    assert isinstance(running, ClientsRun)
    pids = running.worker_pids
    assert len(pids) == 3 and os.getpid() not in pids

    resp = http.post(f"/api/v1/benchmarks/{run_id}/cancel")
    assert resp.status_code == 200, resp.text
    run = resp.json()
    assert run["status"] == "cancelled" and run["partial"] is True
    (writer,) = run["writers"]
    assert writer["status"] == "cancelled"
    assert [w["status"] for w in writer["workers"]] == ["cancelled"] * 3
    assert all(w["rows"] > 0 for w in writer["workers"])
    assert writer["rows"] == sum(w["rows"] for w in writer["workers"])
    assert run["environment"]["executor"] == "processes"
    assert run["environment"]["host_load"]["cpu_count"] == os.cpu_count()
    assert manager_of(worker_app).running is None
    again = start(http, writers=["null"], records=100, batch_size=10)
    assert wait_finished(http, again)["status"] == "completed"
