"""The Sweep view in a real browser (Playwright, Debian's Chromium) against the real app in
local mode: a tiny sweep of the null writer over a 2 x 2 grid, run from the form, shows a
heatmap of rows/s and one of p99 with the best cell marked where the API says it is."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.browser_support import (
    DESKTOP,
    RunningApp,
    chromium,
    js_integer,
    running_app,
    screenshot,
    watched_pages,
)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def app() -> Iterator[RunningApp]:
    with running_app("ui-sweep") as running:
        yield running


def test_a_tiny_sweep_from_the_form_shows_heatmaps_with_the_best_marked(app: RunningApp) -> None:
    with chromium() as browser, watched_pages(browser) as new_page:
        page = new_page(DESKTOP)
        page.goto(app.url + "/#sweep")
        page.wait_for_selector("#view-sweep:not([hidden])")
        page.wait_for_selector("#sweep-writer-choices input[name='sweep_writers']")
        for box in page.query_selector_all("#sweep-writer-choices input[name='sweep_writers']"):
            box.set_checked(box.get_attribute("value") == "null")
        page.fill("#sweep-batch-sizes", "100, 1000")
        page.fill("#sweep-concurrencies", "1,2")
        page.fill("#sweep-duration", "0.3")
        page.fill("#sweep-warmup", "0")
        page.click("#sweep-start")
        page.wait_for_selector("#sweep-result:not([hidden])", timeout=90_000)
        assert page.text_content("#sweep-progress").endswith(": completed.")

        sections = page.query_selector_all("#sweep-writers section.sweep-writer")
        assert [s.get_attribute("data-writer") for s in sections] == ["null"]
        sweep_id = page.get_attribute("#sweep-history-list button[data-sweep]", "data-sweep")
        sweep = httpx.get(f"{app.url}/api/v1/sweeps/{sweep_id}").json()
        best = sweep["writers"][0]["best"]
        assert sweep["status"] == "completed" and best is not None
        for metric in ("rows_per_s", "p99_ms"):
            table = f"table.sweep-heatmap[data-metric='{metric}']"
            cells = page.query_selector_all(f"{table} td.sweep-cell")
            assert sorted(
                (int(c.get_attribute("data-batch-size")), int(c.get_attribute("data-concurrency")))
                for c in cells
            ) == [(100, 1), (100, 2), (1000, 1), (1000, 2)]
            marked = page.query_selector_all(f"{table} td.sweep-cell.best")
            assert [
                (int(c.get_attribute("data-batch-size")), int(c.get_attribute("data-concurrency")))
                for c in marked
            ] == [(best["batch_size"], best["concurrency"])]
            assert "★ best" in marked[0].text_content()
        rows_cell = page.query_selector("table[data-metric='rows_per_s'] td.best .sweep-value")
        assert rows_cell.text_content() == js_integer(best["rows_per_s"])
        best_line = page.text_content("section.sweep-writer .sweep-best")
        times = "\N{MULTIPLICATION SIGN}"
        assert best_line.startswith(
            f"Best: batch size {best['batch_size']:,} {times} concurrency {best['concurrency']} — "
        )
        report = page.get_attribute("#sweep-summary a", "href")
        assert report == f"api/v1/sweeps/{sweep_id}/report"
        assert httpx.get(f"{app.url}/{report}").status_code == 200
        screenshot(page, "sweep-result")
