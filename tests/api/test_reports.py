"""Reports, labels and removal of stored runs over HTTP: a real app with its own results
directory, on the session's local stack; stored results written by the real ResultStore."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.report import render_html, render_markdown
from bench.results import RunResult
from bench.store import ResultStore
from tests.app_server import AppServer
from tests.bench.test_report import parse, run_result
from tests.conftest import app_settings

API = "/api/v1/benchmarks"


@pytest.fixture(scope="module")
def results_app(local_stack: dict[str, Any]) -> Iterator[tuple[AppServer, ResultStore]]:
    data = Path(tempfile.mkdtemp(prefix="dwbench-reports-"))
    try:
        with AppServer(app_settings(local_stack, data_dir=data)) as server:
            yield server, ResultStore(data / "results")
    finally:
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def http(results_app: tuple[AppServer, ResultStore]) -> Iterator[httpx.Client]:
    with results_app[0].client() as client:
        yield client


@pytest.fixture
def stored(results_app: tuple[AppServer, ResultStore], request: pytest.FixtureRequest) -> RunResult:
    """A synthetic finished run saved in the app's results directory, under a fresh id."""
    run = run_result()
    run.id = f"20261201-120000-{request.node.name[5:25].replace('_', '-')}"
    results_app[1].save(run)
    return run


def error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


def test_html_report_is_an_attachment_that_loads_nothing(http, stored):
    resp = http.get(f"{API}/{stored.id}/report", params={"format": "html"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "text/html; charset=utf-8"
    assert resp.headers["content-disposition"] == (
        f'attachment; filename="dwbench-{stored.id}-report.html"'
    )
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["content-security-policy"].startswith("default-src 'none'")
    assert resp.text == render_html(stored)
    parse(resp.text)
    # The default format is html.
    assert http.get(f"{API}/{stored.id}/report").text == resp.text


def test_markdown_report(http, stored):
    resp = http.get(f"{API}/{stored.id}/report", params={"format": "md"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "text/markdown; charset=utf-8"
    assert resp.headers["content-disposition"] == (
        f'attachment; filename="dwbench-{stored.id}-report.md"'
    )
    assert resp.text == render_markdown(stored)
    assert "| Zerobus (proto) | completed | 250,000 | 2,500 | 4.32 | 123,457 |" in resp.text


def test_report_errors(http, stored):
    body = error(http.get(f"{API}/no-such-run/report"), 404)
    assert body == {
        "error": "not_found",
        "message": "no benchmark run 'no-such-run'",
        "writer": None,
    }
    body = error(http.get(f"{API}/{stored.id}/report", params={"format": "pdf"}), 422)
    assert body["detail"][0]["loc"] == ["query", "format"]
    assert body["detail"][0]["input"] == "pdf"


def test_label_is_stored_and_shown_in_the_history(http, stored, results_app):
    resp = http.patch(f"{API}/{stored.id}", json={"label": "  before <the> change  "})
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == stored.id and resp.json()["label"] == "before <the> change"
    # In the result file itself, the rest of it unchanged.
    on_disk = results_app[1].load(stored.id)
    assert on_disk.label == "before <the> change"
    assert on_disk.model_dump(exclude={"label"}) == stored.model_dump(exclude={"label"})
    assert not list(results_app[1].directory.glob("*.tmp"))
    entry = next(r for r in http.get(API).json() if r["id"] == stored.id)
    assert entry["label"] == "before <the> change"
    assert http.get(f"{API}/{stored.id}").json()["label"] == "before <the> change"
    assert "before &lt;the&gt; change" in http.get(f"{API}/{stored.id}/report").text

    # null, or blank, removes it.
    assert http.patch(f"{API}/{stored.id}", json={"label": " "}).json()["label"] is None
    assert results_app[1].load(stored.id).label is None


def test_label_errors(http, stored):
    body = error(http.patch(f"{API}/{stored.id}", json={"label": "x" * 201}), 422)
    assert body["detail"][0]["loc"] == ["body", "label"]
    assert body["detail"][0]["msg"] == "String should have at most 200 characters"
    assert http.patch(f"{API}/{stored.id}", json={"label": "x" * 200}).status_code == 200
    body = error(http.patch(f"{API}/{stored.id}", json={"name": "x"}), 422)
    assert {tuple(d["loc"]) for d in body["detail"]} == {("body", "label"), ("body", "name")}
    body = error(http.patch(f"{API}/no-such-run", json={"label": "x"}), 404)
    assert body["message"] == "no benchmark run 'no-such-run'"


def test_delete_removes_the_json_and_the_csv(http, stored, results_app):
    store = results_app[1]
    assert store.path(stored.id).is_file() and store.path(stored.id, ".csv").is_file()
    resp = http.delete(f"{API}/{stored.id}")
    assert resp.status_code == 204 and resp.content == b""
    assert not store.path(stored.id).exists() and not store.path(stored.id, ".csv").exists()
    assert stored.id not in [r["id"] for r in http.get(API).json()]
    assert error(http.get(f"{API}/{stored.id}"), 404)["error"] == "not_found"
    # A second time: nothing to delete.
    body = error(http.delete(f"{API}/{stored.id}"), 404)
    assert body["message"] == f"no benchmark run {stored.id!r}"


def test_a_running_run_cannot_be_labelled_deleted_or_reported(http, results_app):
    started = http.post(
        API,
        json={"writers": ["null"], "duration_s": 60, "rate": 100, "batch_size": 10, "warmup_s": 0},
    )
    assert started.status_code == 202, started.text
    run_id = started.json()["id"]
    try:
        body = error(http.delete(f"{API}/{run_id}"), 409)
        assert body == {
            "error": "conflict",
            "message": f"benchmark {run_id} is running; delete it once it has finished",
            "writer": None,
        }
        body = error(http.patch(f"{API}/{run_id}", json={"label": "x"}), 409)
        assert body["message"] == f"benchmark {run_id} is running; name it once it has finished"
        body = error(http.get(f"{API}/{run_id}/report"), 409)
        assert body["message"] == (
            f"benchmark {run_id} is still running; its report is ready when it finishes"
        )
    finally:
        assert http.post(f"{API}/{run_id}/cancel").status_code == 200
    # Finished (cancelled, partial): now it can be named and removed.
    deadline = time.monotonic() + 30
    while not results_app[1].path(run_id).exists():
        assert time.monotonic() < deadline, "the cancelled run was not saved"
        time.sleep(0.1)
    assert http.patch(f"{API}/{run_id}", json={"label": "cut short"}).json()["label"] == (
        "cut short"
    )
    report = http.get(f"{API}/{run_id}/report", params={"format": "md"})
    assert report.status_code == 200 and "**cut short**" in report.text
    assert http.delete(f"{API}/{run_id}").status_code == 204
