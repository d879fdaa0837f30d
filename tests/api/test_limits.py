"""Resource limits through the app: a benchmark or sweep whose in-flight memory passes the
budget is refused with 422 and the figure, and the app keeps answering meanwhile."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.app_server import AppServer
from tests.conftest import app_settings

# The config: accepted before, it blocked the event loop ~55 s and took the app
# past 6.3 GB.
OVERSIZED = {
    "writers": ["lakebase"],
    "concurrency": 256,
    "batch_size": 100_000,
    "record_bytes": 0,
    "records": 1_000_000,
}


@pytest.fixture(scope="module")
def limits_app(local_stack: dict[str, Any]) -> Iterator[AppServer]:
    results = Path(tempfile.mkdtemp(prefix="dwbench-limits-"))
    try:
        with AppServer(app_settings(local_stack, data_dir=results)) as server:
            yield server
    finally:
        shutil.rmtree(results, ignore_errors=True)


def _refused_while_health_answers(app: AppServer, path: str, body: dict[str, Any]) -> Any:
    """POST `body` in a thread; meanwhile /health is asked again and again. Returns the
    POST's response and the /health statuses answered before it came back."""
    answer: dict[str, httpx.Response] = {}

    def post() -> None:
        with app.client() as c:
            answer["resp"] = c.post(path, json=body)

    health: list[int] = []
    with app.client() as c:
        c.get("/health")  # the connection is up before the POST starts
        thread = threading.Thread(target=post)
        thread.start()
        while thread.is_alive():
            health.append(c.get("/health").status_code)
        thread.join()
    return answer["resp"], health


def test_the_oversized_benchmark_is_422_with_the_figure_and_health_answers(limits_app):
    resp, health = _refused_while_health_answers(limits_app, "/api/v1/benchmarks", OVERSIZED)
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["error"] == "over_budget"
    assert body["message"].startswith("in-flight memory ")
    assert "(256 batches of 100,000 rows x " in body["message"]
    assert "exceeds the 512 MiB budget (BENCHMARK_MEMORY_BUDGET_MIB)" in body["message"]
    assert health and set(health) == {200}  # answered while the request was handled
    with limits_app.client() as c:  # nothing started
        assert c.get("/api/v1/benchmarks").json() == []


def test_a_sweep_with_one_oversized_point_is_422(limits_app):
    sweep = {
        **{k: v for k, v in OVERSIZED.items() if k not in ("batch_size", "concurrency")},
        "batch_sizes": [1000, 100_000],
        "concurrencies": [1, 256],
    }
    resp, health = _refused_while_health_answers(limits_app, "/api/v1/sweeps", sweep)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"] == "over_budget"
    assert "(256 batches of 100,000 rows x " in resp.json()["message"]
    assert health and set(health) == {200}
    with limits_app.client() as c:
        assert c.get("/api/v1/sweeps").json() == []
