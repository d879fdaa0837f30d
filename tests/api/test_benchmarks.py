"""The benchmark routes end to end: a real app on the session's local stack, real runs.

The runs go to a dedicated app with its own results directory, so that the run history
is this module's alone and no other test can be holding the one-run-at-a-time slot.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from bench.results import CSV_COLUMNS, RunResult
from bench.stats import Latencies
from tests.app_server import AppServer
from tests.conftest import app_settings

STORING = ("zerobus", "sql", "lakebase")
SMALL = {
    "writers": [*STORING, "null"],
    "records": 400,
    "batch_size": 100,
    "concurrency": 2,
    "record_bytes": 300,
    "visibility": True,
    "warmup_s": 0,
}


@pytest.fixture(scope="module")
def bench_app(local_stack: dict[str, Any]) -> Iterator[AppServer]:
    results = Path(tempfile.mkdtemp(prefix="dwbench-results-"))
    try:
        with AppServer(app_settings(local_stack, data_dir=results)) as server:
            yield server
    finally:
        shutil.rmtree(results, ignore_errors=True)


@pytest.fixture(scope="module")
def http(bench_app: AppServer) -> Iterator[httpx.Client]:
    with bench_app.client() as client:
        yield client


def ws_url(app: AppServer, run_id: str) -> str:
    return f"ws://127.0.0.1:{app.port}/ws/benchmarks/{run_id}"


def ws_connect(app: AppServer, run_id: str) -> ClientConnection:
    return connect(ws_url(app, run_id), proxy=None, open_timeout=10, close_timeout=5)


def start(http: httpx.Client, **config: Any) -> dict[str, Any]:
    resp = http.post("/api/v1/benchmarks", json={"warmup_s": 0, **config})
    assert resp.status_code == 202, resp.text
    body: dict[str, Any] = resp.json()
    return body


def wait_finished(http: httpx.Client, run_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        resp = http.get(f"/api/v1/benchmarks/{run_id}")
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        if body["status"] != "running":
            return body
        assert time.monotonic() < deadline, f"run {run_id} still running: {body['writers']}"
        time.sleep(0.2)


def receive_all(ws: ClientConnection, timeout_s: float = 60) -> list[dict[str, Any]]:
    """Every message until the server closes the socket."""
    messages = []
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            messages.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
    except ConnectionClosed:
        return messages


@pytest.fixture(scope="module")
def small_run(http: httpx.Client) -> dict[str, Any]:
    """The JSON of a finished run of the small workload through every writer."""
    started = start(http, **SMALL)
    return wait_finished(http, started["id"])


def secrets_of(local_stack: dict[str, Any]) -> list[str]:
    password = urlsplit(local_stack["postgres_dsn"]).password
    return [local_stack["token"], *([unquote(password)] if password else [])]


def test_start_answers_202_with_the_run_and_its_links(http):
    resp = http.post(
        "/api/v1/benchmarks",
        json={"writers": ["null"], "records": 100, "batch_size": 10, "warmup_s": 0},
    )
    assert resp.status_code == 202, resp.text
    body = resp.json()
    run_id = body["id"]
    assert resp.headers["location"] == f"/api/v1/benchmarks/{run_id}"
    assert body["status"] == "running" and body["partial"] is True
    assert [w["writer"] for w in body["writers"]] == ["null"]
    assert body["workload"]["records"] == 100 and body["workload"]["batch_size"] == 10
    assert body["links"] == {
        "result": f"/api/v1/benchmarks/{run_id}",
        "cancel": f"/api/v1/benchmarks/{run_id}/cancel",
        "progress": f"/ws/benchmarks/{run_id}",
        "result_json": f"/api/v1/benchmarks/{run_id}/result.json",
        "result_csv": f"/api/v1/benchmarks/{run_id}/result.csv",
    }
    assert wait_finished(http, run_id)["status"] == "completed"


def test_small_run_through_every_writer(small_run, local_stack):
    run = RunResult.model_validate(small_run)
    assert run.status == "completed" and run.partial is False and run.finished_at
    assert [w.writer for w in run.writers] == [*STORING, "null"]
    for w in run.writers:
        assert w.status == "completed", (w.writer, w.error, w.error_samples)
        assert w.rows == 400 and w.batches == 4 and w.failed_batches == 0, w.writer
        assert w.rows_per_s > 0 and w.elapsed_s > 0
        lat = w.latency_ms
        assert lat is not None and lat.count == 4
        assert lat.min <= lat.p50 <= lat.p90 <= lat.p95 <= lat.p99 <= lat.p99_9 <= lat.max
        assert w.per_second and sum(s.rows for s in w.per_second) == 400
        assert w.percentile_curve
        decoded = Latencies.decode(w.histograms["latency"])
        assert decoded.count == 4
        assert decoded.percentile_ms(99) == lat.p99
        assert w.stores_rows is (w.writer != "null")
        if w.stores_rows:
            assert w.visibility is not None and w.visibility.samples >= 1, w.writer
            assert w.visibility.p50_ms is not None and w.visibility.p50_ms >= 0
            assert Latencies.decode(w.histograms["visibility"]).count == w.visibility.samples
        else:
            assert w.visibility is None
    # The file spells p99.9 as the percentile's name.
    assert "p99.9" in small_run["writers"][0]["latency_ms"]
    env = run.environment
    assert env["cpu_count"] >= 1 and env["python"] and env["git_commit"]
    assert env["libraries"]["databricks-zerobus-ingest-sdk"]
    text = json.dumps(small_run)
    for secret in secrets_of(local_stack):
        assert secret not in text


def test_downloads_of_a_finished_run(http, small_run, local_stack):
    run_id = small_run["id"]
    resp = http.get(f"/api/v1/benchmarks/{run_id}/result.json")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    disposition = resp.headers["content-disposition"]
    assert disposition.startswith("attachment;") and f"{run_id}.json" in disposition
    assert RunResult.model_validate_json(resp.content).model_dump() == (
        RunResult.model_validate(small_run).model_dump()
    )
    assert "p99.9" in resp.text

    resp = http.get(f"/api/v1/benchmarks/{run_id}/result.csv")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/csv")
    disposition = resp.headers["content-disposition"]
    assert disposition.startswith("attachment;") and f"{run_id}.csv" in disposition
    header, *rows = list(csv.reader(io.StringIO(resp.text)))
    assert tuple(header) == CSV_COLUMNS
    assert [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows] == [
        (run_id, "local", w, "completed", "400", "4") for w in (*STORING, "null")
    ]
    # 4 batches support no percentile: said so instead of a number.
    by_column = [dict(zip(header, r, strict=True)) for r in rows]
    assert all(r["p99_ms"] == "insufficient sample" for r in by_column)
    for secret in secrets_of(local_stack):
        assert secret not in resp.text


def test_history_lists_runs_newest_first(http, small_run):
    resp = http.get("/api/v1/benchmarks")
    assert resp.status_code == 200, resp.text
    history = resp.json()
    assert small_run["id"] in [r["id"] for r in history]
    started = [r["started_at"] for r in history]
    assert started == sorted(started, reverse=True)
    entry = next(r for r in history if r["id"] == small_run["id"])
    assert entry["status"] == "completed" and entry["partial"] is False
    assert entry["mode"] == "local"
    assert [w["writer"] for w in entry["writers"]] == [*STORING, "null"]
    assert all(w["p99_ms"] is not None for w in entry["writers"])


@pytest.mark.slow
def test_websocket_streams_progress_then_finished(http, bench_app):
    started = start(http, writers=["null"], duration_s=3, rate=2000, batch_size=100)
    run_id = started["id"]
    with ws_connect(bench_app, run_id) as ws:
        # While it runs: a second run is refused, the history shows this one first, and
        # its files do not exist yet.
        resp = http.post("/api/v1/benchmarks", json={"writers": ["null"], "records": 10})
        assert resp.status_code == 409, resp.text
        assert resp.json()["error"] == "conflict" and run_id in resp.json()["message"]
        history = http.get("/api/v1/benchmarks").json()
        assert history[0]["id"] == run_id and history[0]["status"] == "running"
        for suffix in ("json", "csv"):
            resp = http.get(f"/api/v1/benchmarks/{run_id}/result.{suffix}")
            assert resp.status_code == 409, resp.text
            assert "still running" in resp.json()["message"]
        live = http.get(f"/api/v1/benchmarks/{run_id}").json()
        assert live["status"] == "running" and live["partial"] is True

        messages = receive_all(ws)
        assert ws.close_code == 1000
    progress = [m for m in messages if m["type"] == "progress"]
    assert len(progress) >= 2, messages
    for m in progress:
        assert m["run_id"] == run_id
        (writer,) = m["writers"]
        assert writer["writer"] == "null" and writer["target_rows_per_s"] == 2000
    assert any(m["status"] == "running" and m["writers"][0]["rows"] > 0 for m in progress)
    final = messages[-1]
    assert final["type"] == "finished", messages
    assert final["run"]["id"] == run_id and final["run"]["status"] == "completed"
    assert [m["type"] for m in messages].count("finished") == 1

    # A finished run: one "finished" message, then a normal close.
    with ws_connect(bench_app, run_id) as ws:
        messages = receive_all(ws)
        assert ws.close_code == 1000
    assert messages == [{"type": "finished", "run": final["run"]}]


@pytest.mark.slow
def test_cancel_stops_a_run_and_keeps_what_was_measured(http, bench_app):
    run_id = start(http, writers=["null"], duration_s=30, rate=1000, batch_size=50)["id"]
    deadline = time.monotonic() + 10
    while http.get(f"/api/v1/benchmarks/{run_id}").json()["writers"][0]["rows"] == 0:
        assert time.monotonic() < deadline, "no rows measured"
        time.sleep(0.1)

    # A watcher that leaves mid-run is unsubscribed at once, not at the next message.
    subscribers = bench_app.app.state.runtime.benchmarks._subscribers  # read, never patched
    with ws_connect(bench_app, run_id) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "progress"
        assert len(subscribers[run_id]) == 1
    deadline = time.monotonic() + 2
    while subscribers[run_id]:
        assert time.monotonic() < deadline, "the socket's queue is still subscribed"
        time.sleep(0.02)

    began = time.monotonic()
    resp = http.post(f"/api/v1/benchmarks/{run_id}/cancel")
    took = time.monotonic() - began
    assert resp.status_code == 200, resp.text
    assert took < 2.5, f"cancel took {took:.1f} s"
    run = RunResult.model_validate(resp.json())
    assert run.status == "cancelled" and run.partial is True and run.finished_at
    (writer,) = run.writers
    assert writer.status == "cancelled" and writer.rows > 0
    assert writer.elapsed_s < 10

    stored = http.get(f"/api/v1/benchmarks/{run_id}/result.json")
    assert stored.status_code == 200, stored.text
    assert stored.json()["status"] == "cancelled" and stored.json()["partial"] is True
    assert stored.json()["writers"][0]["rows"] == writer.rows
    # Cancelling a finished run changes nothing.
    again = http.post(f"/api/v1/benchmarks/{run_id}/cancel")
    assert again.status_code == 200 and again.json() == stored.json()
    # And the slot is free again.
    wait_finished(http, start(http, writers=["null"], records=10, batch_size=10)["id"])


def test_compare_two_finished_runs(http, small_run):
    other = wait_finished(http, start(http, **SMALL)["id"])
    resp = http.get("/api/v1/benchmarks/compare", params={"a": small_run["id"], "b": other["id"]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["a"] == small_run["id"] and body["b"] == other["id"]
    assert {d["writer"] for d in body["diffs"]} == {*STORING, "null"}
    for d in body["diffs"]:
        assert isinstance(d["within_noise"], bool) and d["noise"] >= 0.05
        assert d["better"] in ("a", "b", None)
        if d["within_noise"]:
            assert d["better"] is None
    metrics = {d["metric"] for d in body["diffs"]}
    assert {"rows_per_s", "p99_ms", "p99.9_ms", "visibility_p95_ms"} <= metrics


def test_unknown_run_is_404(http, bench_app):
    for path in (
        "/api/v1/benchmarks/20000101T000000Z-000000",
        "/api/v1/benchmarks/20000101T000000Z-000000/result.json",
        "/api/v1/benchmarks/20000101T000000Z-000000/result.csv",
        "/api/v1/benchmarks/a%20b",
        "/api/v1/benchmarks/...",
    ):
        resp = http.get(path)
        assert resp.status_code == 404, (path, resp.text)
        assert resp.json()["error"] == "not_found" and resp.json()["message"], path
    resp = http.post("/api/v1/benchmarks/20000101T000000Z-000000/cancel")
    assert resp.status_code == 404 and resp.json()["error"] == "not_found"
    resp = http.get("/api/v1/benchmarks/compare", params={"a": "nope", "b": "nope2"})
    assert resp.status_code == 404 and "nope" in resp.json()["message"]
    # Path traversal never reaches a file (some of these never reach the routes either).
    for path in (
        "/api/v1/benchmarks/..",
        "/api/v1/benchmarks/..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/v1/benchmarks/..%2F..%2Fsettings.py/result.json",
        "/api/v1/benchmarks/%2e%2e/result.csv",
    ):
        resp = http.get(path)
        assert resp.status_code == 404, (path, resp.text)
        assert "root:" not in resp.text

    with ws_connect(bench_app, "20000101T000000Z-000000") as ws:
        assert receive_all(ws) == []
        assert ws.close_code == 4404
        assert "no benchmark run" in (ws.close_reason or "")


def test_invalid_config_is_422_with_field_messages(http):
    resp = http.post(
        "/api/v1/benchmarks",
        json={"writers": ["zerobus", "nope"], "batch_size": 0, "records": -1, "rate": -5},
    )
    assert resp.status_code == 422, resp.text
    errors = {tuple(e["loc"]): e["msg"] for e in resp.json()["detail"]}
    assert set(errors) == {
        ("body", "writers"),
        ("body", "batch_size"),
        ("body", "records"),
        ("body", "rate"),
    }
    assert "unknown writer(s) nope" in errors[("body", "writers")]
    assert "greater than or equal to 1" in errors[("body", "batch_size")]

    invalid: tuple[dict[str, Any], ...] = (
        {"writers": []},
        {"writers": ["null", "null"]},
        {"writers": ["null"], "records": None, "duration_s": None},
        {"writers": ["null"], "surprise": 1},
        {"writers": ["null"], "duration_s": 0},
    )
    for body in invalid:
        resp = http.post("/api/v1/benchmarks", json=body)
        assert resp.status_code == 422, (body, resp.text)
        assert resp.json()["detail"][0]["msg"], body


def test_defaults_are_30_s_per_writer_after_a_5_s_warmup(http):
    resp = http.post("/api/v1/benchmarks", json={"writers": ["null"]})
    assert resp.status_code == 202, resp.text
    run_id = resp.json()["id"]
    try:
        assert resp.json()["workload"]["duration_s"] == 30
        assert resp.json()["workload"]["records"] is None
        live = http.get(f"/api/v1/benchmarks/{run_id}").json()
        assert live["config"]["warmup_s"] == 5 and live["config"]["duration_s"] == 30
    finally:
        http.post(f"/api/v1/benchmarks/{run_id}/cancel")


def test_result_json_marks_unsupported_percentiles_and_names_writers_by_label(small_run):
    zerobus = small_run["writers"][0]
    assert zerobus["latency_ms"]["unsupported"]["p99"] == "needs 1,000 batches, 4 measured"
    assert set(zerobus["latency_ms"]["unsupported"]) == {"p50", "p90", "p95", "p99", "p99.9"}
    assert small_run["environment"]["mode"] == "local"
    warned = [w for w in small_run["warnings"] if "too few batches" in w]
    assert [w.split(":")[0] for w in warned] == [
        "Zerobus Ingest (gRPC, protobuf)",
        "SQL warehouse",
        "Lakebase (Postgres)",
    ]  # the null writer is the harness ceiling: not warned about
    assert any(
        w.startswith("SQL warehouse: measured window too short") for w in small_run["warnings"]
    )


def test_a_run_in_which_no_writer_ran_is_failed_and_one_with_some_is_partial(http):
    ddl = (
        "CREATE TABLE main.default.api_bench_decimal (id BIGINT NOT NULL, total DECIMAL(10,2), "
        "batch_id STRING, source STRING)"
    )
    created = http.post(
        "/api/v1/workloads", json={"name": "api_decimal", "ddl": ddl, "id_column": "id"}
    )
    assert created.status_code == 201, created.text
    small = {"workload": "api_decimal", "records": 20, "batch_size": 10, "visibility": False}
    failed = wait_finished(http, start(http, writers=["zerobus", "zerobus-json"], **small)["id"])
    assert failed["status"] == "failed" and failed["partial"] is True
    assert [w["status"] for w in failed["writers"]] == ["unavailable", "unavailable"]
    assert failed["warnings"][0].startswith("no writer ran (Zerobus Ingest (gRPC, protobuf) ")
    partial = wait_finished(http, start(http, writers=["zerobus", "sql"], **small)["id"])
    assert partial["status"] == "partial" and partial["partial"] is True
    assert [w["status"] for w in partial["writers"]] == ["unavailable", "completed"]
    assert partial["warnings"][0].startswith("not every writer ran (")
