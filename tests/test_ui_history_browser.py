"""The history's report downloads, labels, removal and permalinks in a real browser: Debian's
Chromium driven by Playwright against the real app in local mode, on two small runs of the
null writer. Screenshots go to test-artifacts/history-*.png.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser_support import DESKTOP, RunningApp, chromium, running_app, screenshot
from tests.browser_support import watched_pages as watched

pytestmark = pytest.mark.browser

API = "/api/v1/benchmarks"
NULL_RUN = {"writers": ["null"], "records": 2000, "batch_size": 100, "warmup_s": 0}


@pytest.fixture(scope="module")
def app() -> Iterator[RunningApp]:
    with running_app("ui-history") as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def new_page(browser: Any) -> Iterator[Any]:
    with watched(browser) as pages:
        yield lambda: pages(DESKTOP)


def finished_run(app: RunningApp) -> str:
    """A small null-writer run through the API, waited for; its id."""
    started = httpx.post(app.url + API, json=NULL_RUN, timeout=30)
    assert started.status_code == 202, started.text
    run_id: str = started.json()["id"]
    deadline = time.monotonic() + 60
    while httpx.get(f"{app.url}{API}/{run_id}", timeout=30).json()["status"] == "running":
        assert time.monotonic() < deadline, f"run {run_id} did not finish"
        time.sleep(0.2)
    return run_id


@pytest.fixture(scope="module")
def runs(app: RunningApp) -> list[str]:
    return [finished_run(app), finished_run(app)]


def row(run_id: str) -> str:
    return f"#bench-history-rows tr[data-run-id='{run_id}']"


def open_history(page: Any, app: RunningApp, run_id: str) -> None:
    page.goto(app.url + "/#benchmark")
    page.wait_for_selector(f"{row(run_id)}[data-status='completed']")


def test_a_finished_run_offers_its_report(new_page, app, runs):
    page = new_page()
    run_id = runs[0]
    open_history(page, app, run_id)
    assert page.text_content(f"{row(run_id)} [data-cell='mode']") == "local"
    page.click(f"{row(run_id)} button[data-open='{run_id}']")
    page.wait_for_selector(f"#bench-result:not([hidden])[data-run-id='{run_id}']")

    report = page.locator("#bench-downloads a[data-download='report']")
    assert report.text_content() == "Download report"
    with page.expect_download() as download:
        report.click()
    assert download.value.suggested_filename == f"dwbench-{run_id}-report.html"
    html = Path(download.value.path()).read_text()
    assert html.startswith("<!DOCTYPE html>") and f"<code>{run_id}</code>" in html
    assert "Mode: local." in html

    href = page.get_attribute("#bench-downloads a[data-download='markdown']", "href")
    assert page.text_content("#bench-downloads a[data-download='markdown']") == "Markdown"
    md = httpx.get(f"{app.url}/{href}", timeout=30)
    assert md.status_code == 200 and md.text.startswith(f"### Direct Write Bench run `{run_id}`")
    screenshot(page, "history-report")


def test_rename_shows_the_label(new_page, app, runs):
    page = new_page()
    run_id = runs[0]
    open_history(page, app, run_id)
    page.click(f"{row(run_id)} button[data-rename='{run_id}']")
    field = page.locator(f"{row(run_id)} form[data-rename-form] input[name='label']")
    assert field.evaluate("e => e === document.activeElement")
    field.fill("baseline <before> the change")
    page.click(f"{row(run_id)} form[data-rename-form] button[type='submit']")
    page.wait_for_function(
        f'document.querySelector("{row(run_id)} .label-text")?.textContent === '
        "'baseline <before> the change'"
    )
    assert "labelled “baseline <before> the change”" in page.text_content("#bench-history-status")
    entry = next(r for r in httpx.get(app.url + API, timeout=30).json() if r["id"] == run_id)
    assert entry["label"] == "baseline <before> the change"
    assert page.text_content(f"{row(run_id)} button[data-rename]") == "Rename"
    screenshot(page, "history-renamed")

    # Cancel leaves the label as it was.
    page.click(f"{row(run_id)} button[data-rename='{run_id}']")
    page.fill(f"{row(run_id)} form[data-rename-form] input[name='label']", "not this")
    page.click(f"{row(run_id)} button[data-rename-cancel]")
    page.wait_for_selector(f"{row(run_id)} .label-text")
    assert page.text_content(f"{row(run_id)} .label-text") == "baseline <before> the change"


def test_the_permalink_opens_the_run(new_page, app, runs):
    first, second = runs
    named = httpx.patch(f"{app.url}{API}/{second}", json={"label": "the second run"}, timeout=30)
    assert named.status_code == 200, named.text
    page = new_page()
    page.goto(f"{app.url}/#run={first}")
    page.wait_for_selector(f"#bench-result:not([hidden])[data-run-id='{first}']")
    assert page.locator("#view-benchmark").is_visible()
    assert page.text_content("#bench-result-heading") == f"Result of run {first}"

    # The row's link, and a change of address in the same page, open another run.
    link = page.get_attribute(f"{row(second)} a[data-permalink='{second}']", "href")
    assert link == f"#run={second}"
    page.click(f"{row(second)} a[data-permalink='{second}']")
    page.wait_for_selector(f"#bench-result:not([hidden])[data-run-id='{second}']")
    assert page.url.endswith(f"#run={second}")
    assert page.text_content("#bench-result-meta [data-field='label']") == "the second run"
    page.evaluate(f"location.hash = 'run={first}'")
    page.wait_for_selector(f"#bench-result:not([hidden])[data-run-id='{first}']")


def test_delete_asks_then_removes_the_row(new_page, app):
    page = new_page()
    run_id = finished_run(app)  # its own: the other tests keep theirs
    open_history(page, app, run_id)
    page.click(f"{row(run_id)} button[data-open='{run_id}']")
    page.wait_for_selector(f"#bench-result:not([hidden])[data-run-id='{run_id}']")

    asked: list[str] = []

    def dismiss(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    page.click(f"{row(run_id)} button[data-delete='{run_id}']")
    assert asked == [f"Delete run {run_id}? Its result file and CSV are removed for good."]
    assert page.locator(row(run_id)).count() == 1
    assert httpx.get(f"{app.url}{API}/{run_id}", timeout=30).status_code == 200

    page.once("dialog", lambda dialog: dialog.accept())
    page.click(f"{row(run_id)} button[data-delete='{run_id}']")
    page.wait_for_selector(row(run_id), state="detached")
    assert page.text_content("#bench-history-status") == f"Deleted run {run_id}."
    assert page.locator("#bench-result").is_hidden()  # it was the run shown
    assert httpx.get(f"{app.url}{API}/{run_id}", timeout=30).status_code == 404
    assert run_id not in [r["id"] for r in httpx.get(app.url + API, timeout=30).json()]
    screenshot(page, "history-deleted")
