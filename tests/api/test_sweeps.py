"""The sweep routes end to end: a real app of its own (own results directory) on the
session's local stack, real sweeps on the null writer."""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.sweep import SweepResult
from tests.app_server import AppServer
from tests.conftest import app_settings

TINY = {
    "writers": ["null"],
    "batch_sizes": [100, 10],
    "concurrencies": [1, 2],
    "duration_s": 1,
    "warmup_s": 0,
    "visibility": False,
}


@pytest.fixture(scope="module")
def sweep_app(local_stack: dict[str, Any]) -> Iterator[AppServer]:
    results = Path(tempfile.mkdtemp(prefix="dwbench-sweeps-"))
    try:
        with AppServer(app_settings(local_stack, data_dir=results)) as server:
            yield server
    finally:
        shutil.rmtree(results, ignore_errors=True)


@pytest.fixture(scope="module")
def http(sweep_app: AppServer) -> Iterator[httpx.Client]:
    with sweep_app.client() as client:
        yield client


def poll(http: httpx.Client, sweep_id: str, timeout_s: float = 60) -> tuple[dict[str, Any], list]:
    """The finished sweep, and every progress seen while it ran."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while True:
        resp = http.get(f"/api/v1/sweeps/{sweep_id}")
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        if body["status"] != "running":
            return body, seen
        seen.append(body["progress"])
        assert time.monotonic() < deadline, "the sweep did not finish in time"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def tiny_sweep(http: httpx.Client) -> tuple[dict[str, Any], dict[str, Any], list, httpx.Response]:
    started = http.post("/api/v1/sweeps", json=TINY)
    assert started.status_code == 202, started.text
    sweep_id = started.json()["id"]
    # While it runs, a benchmark run or a second sweep would share the targets: both refused.
    busy_run = http.post("/api/v1/benchmarks", json={"writers": ["null"], "records": 10})
    finished, seen = poll(http, sweep_id)
    return started.json() | {"location": started.headers["location"]}, finished, seen, busy_run


def test_start_answers_202_with_links(tiny_sweep):
    started, _, _, _ = tiny_sweep
    sweep_id = started["id"]
    assert started["location"] == f"/api/v1/sweeps/{sweep_id}"
    assert (started["status"], started["points"]) == ("running", 4)
    assert started["links"] == {
        "result": f"/api/v1/sweeps/{sweep_id}",
        "cancel": f"/api/v1/sweeps/{sweep_id}/cancel",
        "report": f"/api/v1/sweeps/{sweep_id}/report",
    }


def test_a_run_is_refused_while_a_sweep_goes_on(tiny_sweep):
    started, _, _, busy_run = tiny_sweep
    assert busy_run.status_code == 409
    assert busy_run.json()["message"] == (
        f"sweep {started['id']} is running; cancel it or wait for it to finish"
    )


def test_progress_says_which_point_of_how_many(tiny_sweep):
    _, _, seen, _ = tiny_sweep
    assert seen, "the sweep was never seen running"
    assert {p["points"] for p in seen} == {4}
    points = [p["point"] for p in seen]
    assert points == sorted(points) and set(points) <= {0, 1, 2, 3, 4}
    grid = {1: (10, 1), 2: (10, 2), 3: (100, 1), 4: (100, 2)}
    for p in seen:
        if p["point"]:
            assert (p["batch_size"], p["concurrency"]) == grid[p["point"]]


def test_the_finished_sweep_has_every_point_and_the_best(tiny_sweep):
    _, finished, _, _ = tiny_sweep
    assert finished["progress"] is None
    sweep = SweepResult.model_validate(finished)
    assert (sweep.status, sweep.mode) == ("completed", "local")
    assert [(p.batch_size, p.concurrency, p.status) for p in sweep.points] == [
        (10, 1, "completed"),
        (10, 2, "completed"),
        (100, 1, "completed"),
        (100, 2, "completed"),
    ]
    (w,) = sweep.writers
    assert w.writer == "null" and w.best is not None
    top = max(p.writers[0].rows_per_s for p in sweep.points)
    assert w.best.rows_per_s >= 0.98 * top


def test_the_history_and_the_report(http, tiny_sweep):
    started, _, _, _ = tiny_sweep
    listed = http.get("/api/v1/sweeps").json()
    assert started["id"] in [s["id"] for s in listed]
    entry = next(s for s in listed if s["id"] == started["id"])
    assert (entry["points"], entry["batch_sizes"], entry["concurrencies"]) == (4, [10, 100], [1, 2])
    report = http.get(started["links"]["report"])
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert 'class="cell best"' in report.text
    assert not re.search(r"https?:|//[a-z]|src=|href=", report.text, re.I)


def test_unknown_sweeps_are_404(http):
    for path in ("/api/v1/sweeps/nosuch", "/api/v1/sweeps/nosuch/report"):
        resp = http.get(path)
        assert resp.status_code == 404
        assert resp.json() == {"error": "not_found", "message": "no sweep 'nosuch'", "writer": None}


def test_an_invalid_grid_is_422_with_the_reason(http):
    resp = http.post("/api/v1/sweeps", json={**TINY, "batch_sizes": [10, 10]})
    assert resp.status_code == 422
    assert "each batch size may appear once" in resp.text


def test_a_sweep_is_refused_while_a_run_goes_on_and_cancel_keeps_the_points(http, tiny_sweep):
    # At a target rate: the null writer's closed loop never waits, so it would hold the loop.
    paced = {"writers": ["null"], "duration_s": 60, "warmup_s": 0, "rate": 2000}
    run = http.post("/api/v1/benchmarks", json=paced | {"batch_size": 100}).json()
    try:
        refused = http.post("/api/v1/sweeps", json=TINY)
        assert refused.status_code == 409
        assert refused.json()["message"] == (
            f"benchmark {run['id']} is running; cancel it or wait for it to finish"
        )
    finally:
        http.post(f"/api/v1/benchmarks/{run['id']}/cancel")
    long = http.post("/api/v1/sweeps", json=TINY | paced).json()
    cancelled = http.post(long["links"]["cancel"])
    assert cancelled.status_code == 200
    body = cancelled.json()
    assert body["status"] == "cancelled"
    assert [p["status"] for p in body["points"]][1:] == ["cancelled"] * 3
