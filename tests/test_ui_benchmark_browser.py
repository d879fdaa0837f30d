"""The Benchmark view in a real browser: Debian's Chromium driven by Playwright, against the
real app in local mode (its own local stack). Runs benchmarks through every writer, watches
the live chart fill from the WebSocket, reads the side-by-side table, the percentile chart,
the history, a comparison and the downloads. Screenshots go to test-artifacts/bench-*.png.

The tests share one app and run in order: later ones use the runs earlier ones made.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

from tests.browser_support import (
    DESKTOP,
    PHONE,
    RunningApp,
    chromium,
    js_integer,
    running_app,
    screenshot,
    watched_pages,
)
from tests.conftest import DATABRICKS_ONLY

pytestmark = pytest.mark.browser

ALL_WRITERS = ("zerobus", "sql", "lakebase", "null")  # the form's order
RANKED = ("zerobus", "sql", "lakebase")  # the null baseline is never ranked
RUN_TIMEOUT_MS = 120_000
COLUMNS = (
    "batches",
    "elapsed_s",
    "rows_per_s",
    "mib_per_s",
    "p50",
    "p95",
    "p99",
    "p99.9",
    "max",
    "errors",
    "visibility_p95",
    "cpu_per_m_rows",
    "wire_bytes_per_row",
    "stream_rows_per_s",
    "quota_rows_per_s",
)
RATE_COLUMNS = ("corrected_p99", "send_delay_p99")


@pytest.fixture(scope="module")
def app() -> Iterator[RunningApp]:
    with running_app("ui-bench") as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def open_bench(browser: Any, app: RunningApp) -> Iterator[Any]:
    """Opens the Benchmark view at a viewport size; fails the test on any script error or
    failed request outside the API (whose 4xx answers the page shows)."""
    with watched_pages(browser) as new_page:

        def _open(viewport: dict[str, int] = DESKTOP, *, via_tab: bool = False) -> Any:
            page = new_page(viewport)
            if via_tab:
                page.goto(app.url + "/")
                page.wait_for_selector("#writer-status li[data-writer]")
                page.click("nav[aria-label='Views'] a[data-view='benchmark']")
            else:
                page.goto(app.url + "/#benchmark")
            page.wait_for_selector("#view-benchmark:not([hidden])")
            page.wait_for_selector("#bench-history-rows tr")  # the history has loaded
            return page

        yield _open


# -- page helpers -------------------------------------------------------------------------


def fill_form(
    page: Any,
    *,
    writers: tuple[str, ...],
    records: int | None = None,
    duration_s: float | None = None,
    batch_size: int = 100,
    concurrency: int = 4,
    record_bytes: int = 512,
    rate: int | None = None,
    parallel: bool = False,
) -> None:
    for box in page.query_selector_all("#bench-form input[name='writers']"):
        want = box.get_attribute("value") in writers
        if box.is_checked() != want:
            box.click()
    if duration_s is not None:
        page.check("#bench-form input[name='length_kind'][value='duration']")
        page.fill("#bench-duration_s", str(duration_s))
    else:
        page.check("#bench-form input[name='length_kind'][value='records']")
        page.fill("#bench-records", str(records))
    page.fill("#bench-batch_size", str(batch_size))
    page.fill("#bench-concurrency", str(concurrency))
    page.fill("#bench-record_bytes", str(record_bytes))
    page.fill("#bench-rate", "" if rate is None else str(rate))
    page.fill("#bench-warmup_s", "0")
    page.set_checked("#bench-parallel", parallel)
    page.set_checked("#bench-visibility", True)


def live_points(page: Any) -> int:
    return int(page.get_attribute("#bench-live-chart", "data-points") or 0)


def wait_for_result(page: Any, run_id: str) -> None:
    page.wait_for_selector(
        f"#bench-result:not([hidden])[data-run-id='{run_id}']", timeout=RUN_TIMEOUT_MS
    )
    page.wait_for_function("!document.querySelector('#bench-start').disabled")


def table(page: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """The side-by-side table as shown: writer -> column -> {text, best}."""
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#bench-table tbody tr')]
            .map(tr => [tr.dataset.writer, Object.fromEntries(
                [...tr.querySelectorAll('td[data-col]')].map(td => [td.dataset.col, {
                    text: td.textContent,
                    best: td.dataset.best === 'true',
                    bold: !!td.querySelector('strong'),
                    badge: td.querySelector('.best-badge')?.textContent ?? null,
                    title: td.title,
                }]))]))"""
    )


def column_values(run: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """The table's numbers from the API's RunResult: column -> writer -> value."""

    def lat(w: dict[str, Any], key: str, field: str = "latency_ms") -> float | None:
        summary = w.get(field)
        if not summary or key in summary.get("unsupported", {}):
            return None  # too few batches: shown as n/a, never ranked
        return summary[key]

    out: dict[str, dict[str, float | None]] = {c: {} for c in COLUMNS + RATE_COLUMNS}
    for w in run["writers"]:
        name = w["writer"]
        out["batches"][name] = None  # facts about the sample, not ranked
        out["elapsed_s"][name] = None
        out["rows_per_s"][name] = w["rows_per_s"]
        out["mib_per_s"][name] = w["mib_per_s"]
        for key in ("p50", "p95", "p99", "p99.9", "max"):
            out[key][name] = lat(w, key)
        out["errors"][name] = w["failed_batches"]
        out["visibility_p95"][name] = w["visibility"]["p95_ms"] if w.get("visibility") else None
        out["cpu_per_m_rows"][name] = w["client_cpu_s_per_million_rows"]
        out["wire_bytes_per_row"][name] = None  # facts about the path, not ranked
        out["stream_rows_per_s"][name] = None
        out["quota_rows_per_s"][name] = None
        out["corrected_p99"][name] = lat(w, "p99", "latency_from_intended_ms")
        out["send_delay_p99"][name] = lat(w, "p99", "send_delay_ms")
    return out


def expected_best(values: dict[str, float | None], higher: bool) -> set[str]:
    ranked = {w: v for w, v in values.items() if w in RANKED and v is not None}
    if len(ranked) < 2 or len(set(ranked.values())) == 1:
        return set()
    best = max(ranked.values()) if higher else min(ranked.values())
    return {w for w, v in ranked.items() if v == best}


def check_table_marks(page: Any, run: dict[str, Any], columns: tuple[str, ...]) -> None:
    shown = table(page)
    assert list(shown) == [w["writer"] for w in run["writers"]]
    values = column_values(run)
    for column in columns:
        want = expected_best(values[column], higher=column in ("rows_per_s", "mib_per_s"))
        got = {w for w, cells in shown.items() if cells[column]["best"]}
        assert got == want, (column, values[column], shown)
        for writer in got:  # bold and a "best" badge a screen reader reads out
            cell = shown[writer][column]
            assert cell["bold"] and cell["badge"] == "best", cell
    # The null baseline is shown but never wins.
    if "null" in shown:
        assert not any(cell["best"] for cell in shown["null"].values())


def history_ids(page: Any) -> list[str]:
    return page.eval_on_selector_all(
        "#bench-history-rows tr[data-run-id]", "rows => rows.map(r => r.dataset.runId)"
    )


def get_json(app: RunningApp, path: str) -> Any:
    resp = httpx.get(app.url + path, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


# -- tests --------------------------------------------------------------------------------


def test_fixed_rate_run_through_every_writer(open_bench: Any, app: RunningApp) -> None:
    page = open_bench(via_tab=True)
    assert page.url.endswith("#benchmark")
    tab = page.locator("nav[aria-label='Views'] a[data-view='benchmark']")
    assert tab.get_attribute("aria-current") == "page"
    assert page.locator("#view-write").is_hidden()

    # Every visible control of the view has a label naming it.
    unlabeled = page.evaluate(
        """() => [...document.querySelectorAll('#view-benchmark input, #view-benchmark button')]
            .filter(e => e.offsetParent !== null)
            .filter(e => !(e.labels && e.labels.length && e.labels[0].textContent.trim())
                         && !e.getAttribute('aria-label') && !e.textContent.trim())
            .map(e => e.outerHTML)"""
    )
    assert unlabeled == []
    assert page.get_attribute("#bench-status", "aria-live") == "polite"
    assert page.is_disabled("#bench-cancel")

    # A fixed rate, so the null baseline lasts as long as the others: 3 s per writer.
    fill_form(page, writers=ALL_WRITERS, duration_s=3, rate=2000, batch_size=100)
    page.click("#bench-start")
    page.wait_for_selector("#bench-live:not([hidden])")
    run_id = page.get_attribute("#bench-live", "data-run-id")
    assert run_id
    assert not page.is_disabled("#bench-cancel")
    assert page.is_disabled("#bench-start")

    # The live chart fills from the WebSocket, a point per writer measuring each second.
    page.wait_for_function(
        "Number(document.querySelector('#bench-live-chart').dataset.points) >= 2"
    )
    first = live_points(page)
    page.wait_for_function(
        f"Number(document.querySelector('#bench-live-chart').dataset.points) >= {first + 3}"
    )
    assert page.locator("#bench-live-chart canvas").count() >= 1
    progress = page.eval_on_selector_all(
        "#bench-progress li", "items => items.map(li => li.dataset.writer)"
    )
    assert progress == list(ALL_WRITERS)
    assert "rows" in page.text_content("#bench-progress li[data-status='running']")
    screenshot(page, "bench-desktop-running")

    wait_for_result(page, run_id)
    run = get_json(app, f"/api/v1/benchmarks/{run_id}")
    assert run["status"] == "completed"
    assert run["config"]["workload"] == "products"  # the form's first workload
    assert page.text_content("#bench-live-badge") == "completed"
    workload = page.locator("#bench-result-meta [data-field='workload']")
    assert workload.get_attribute("data-workload") == "products"
    assert "completed" in page.text_content("#bench-status")
    # Every writer measured something, and the live chart has a series for each.
    assert all(w["rows"] > 0 for w in run["writers"]), run["writers"]
    assert page.get_attribute("#bench-live-chart", "data-writers") == " ".join(ALL_WRITERS)
    assert live_points(page) >= 6

    # The side-by-side table, with the fixed-rate columns and the winner of each column.
    headers = page.eval_on_selector_all(
        "#bench-table thead th[data-col]", "ths => ths.map(th => th.dataset.col)"
    )
    assert headers == [*COLUMNS, *RATE_COLUMNS]
    check_table_marks(page, run, COLUMNS + RATE_COLUMNS)
    marked = page.eval_on_selector_all(
        "#bench-table td[data-best='true']", "tds => tds.map(td => td.dataset.col)"
    )
    for column in ("rows_per_s", "p50", "max"):
        assert column in marked, (column, marked)
    # 3 s at 2,000 rows/s in batches of 100: 60 batches each, too few for p95 and above.
    cells = table(page)
    for writer in RANKED:
        w = next(x for x in run["writers"] if x["writer"] == writer)
        assert cells[writer]["batches"]["text"] == f"{w['batches']:,}"
        assert cells[writer]["elapsed_s"]["text"] == f"{w['elapsed_s']:.2f}"
        for key in ("p95", "p99", "p99.9"):
            assert key in w["latency_ms"]["unsupported"], w["latency_ms"]
            assert cells[writer][key]["text"].startswith("n/a (too few batches: needs ")
            assert not cells[writer][key]["best"]
    assert "baseline, not ranked" in page.text_content("#bench-table tr[data-writer='null']")
    # Wire bytes per row from the stand-in's counter, and Zerobus's quota ceiling with what
    # binds in its tooltip; neither for the null baseline.
    zb = next(x for x in run["writers"] if x["writer"] == "zerobus")
    assert cells["zerobus"]["wire_bytes_per_row"]["text"] == js_integer(zb["wire_bytes_per_row"])
    assert cells["zerobus"]["wire_bytes_per_row"]["title"] == zb["wire_bytes_source"]
    quota = zb["quota_projection"]
    assert cells["zerobus"]["quota_rows_per_s"]["text"] == js_integer(quota["rows_per_s"])
    assert quota["limited_by"] in cells["zerobus"]["quota_rows_per_s"]["title"]
    assert "not a measurement" in cells["zerobus"]["quota_rows_per_s"]["title"]
    assert cells["null"]["wire_bytes_per_row"]["text"] == cells["null"]["quota_rows_per_s"]["text"]
    assert cells["sql"]["quota_rows_per_s"]["title"] == ""

    # Warnings of the run, as the API gives them.
    if run["warnings"]:
        shown = page.text_content("#bench-warnings")
        assert all(text in shown for text in run["warnings"])

    # The percentile chart: one series per writer, on canvas, with a text alternative.
    assert page.get_attribute("#bench-pct-chart", "data-writers") == " ".join(ALL_WRITERS)
    assert int(page.get_attribute("#bench-pct-chart", "data-points")) > 10
    assert page.locator("#bench-pct-chart canvas").count() >= 1
    assert page.get_attribute("#bench-pct-chart", "role") == "img"
    assert "p99" in page.get_attribute("#bench-pct-chart", "aria-label")
    assert int(page.get_attribute("#bench-tput-chart", "data-points")) >= 8

    # Downloads answer 200 with the run's JSON and CSV.
    for kind in ("json", "csv"):
        href = page.get_attribute(f"#bench-downloads a[data-download='{kind}']", "href")
        resp = httpx.get(urljoin(app.url + "/", href), timeout=30)
        assert resp.status_code == 200, (href, resp.text)
        if kind == "json":
            assert resp.json()["id"] == run_id
        else:
            rows = list(csv.DictReader(io.StringIO(resp.text)))
            assert [r["writer"] for r in rows] == list(ALL_WRITERS)
    screenshot(page, "bench-desktop-result")

    # The run heads the history.
    page.click("#bench-history-refresh")
    page.wait_for_selector(f"#bench-history-rows tr[data-run-id='{run_id}'][data-status]")
    assert history_ids(page)[0] == run_id


def test_invalid_config_shows_errors_at_the_fields(open_bench: Any, app: RunningApp) -> None:
    page = open_bench(PHONE)
    before = len(get_json(app, "/api/v1/benchmarks"))
    for box in page.query_selector_all("#bench-form input[name='writers']:checked"):
        box.click()
    page.fill("#bench-batch_size", "0")
    page.fill("#bench-record_bytes", "-1")
    page.click("#bench-start")
    page.wait_for_selector("#bench-alert:not([hidden])")

    assert "did not start" in page.text_content("#bench-alert")
    batch_error = page.locator("#bench-batch_size-error")
    assert batch_error.is_visible() and "greater than or equal to 1" in batch_error.text_content()
    assert page.text_content("#bench-writers-error") == "Choose at least one writer."
    assert page.get_attribute("#bench-batch_size", "aria-invalid") == "true"
    assert page.get_attribute("#bench-record_bytes", "aria-invalid") == "true"
    assert page.locator("#bench-writers-error").is_visible()
    assert page.get_attribute("#bench-form input[name='writers'] >> nth=0", "aria-invalid") == (
        "true"
    )
    # Fields without a problem are not marked; focus goes to the first field with one.
    assert page.get_attribute("#bench-concurrency", "aria-invalid") is None
    assert page.evaluate("document.activeElement.name") in ("writers", "batch_size")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(page, "bench-375-invalid")
    assert len(get_json(app, "/api/v1/benchmarks")) == before

    # Editing a field clears its message.
    page.fill("#bench-batch_size", "100")
    assert not batch_error.is_visible()
    assert page.get_attribute("#bench-batch_size", "aria-invalid") is None


def test_a_second_start_is_refused_then_the_page_joins_and_cancels(
    open_bench: Any, app: RunningApp
) -> None:
    page = open_bench()
    # A run started elsewhere (the API, as the CLI or another tab would).
    started = httpx.post(
        f"{app.url}/api/v1/benchmarks",
        json={"writers": ["zerobus"], "duration_s": 60, "rate": 500, "batch_size": 50},
        timeout=30,
    )
    assert started.status_code == 202, started.text
    other = started.json()["id"]

    fill_form(page, writers=("null",), records=1000)
    page.click("#bench-start")
    page.wait_for_selector("#bench-alert:not([hidden])")
    alert = page.text_content("#bench-alert")
    assert "Another benchmark is running (HTTP 409)" in alert
    assert other in alert

    # The page joins the running run: live progress, and Cancel stops it.
    page.wait_for_selector(f"#bench-live:not([hidden])[data-run-id='{other}']")
    page.wait_for_function(
        "Number(document.querySelector('#bench-live-chart').dataset.points) >= 1"
    )
    page.wait_for_function("!document.querySelector('#bench-cancel').disabled")
    page.click("#bench-cancel")
    wait_for_result(page, other)
    assert page.text_content("#bench-result-badge") == "cancelled partial"
    run = get_json(app, f"/api/v1/benchmarks/{other}")
    assert run["status"] == "cancelled" and run["partial"] is True
    assert "cancelled" in page.text_content("#bench-status")


def test_history_compare_and_open_a_past_run(open_bench: Any, app: RunningApp) -> None:
    page = open_bench()
    # A quick closed-loop run of the same writers, to compare with the fixed-rate one.
    fill_form(page, writers=ALL_WRITERS, records=2000, batch_size=200)
    page.click("#bench-start")
    page.wait_for_selector("#bench-live:not([hidden])")
    run_id = page.get_attribute("#bench-live", "data-run-id")
    wait_for_result(page, run_id)
    run = get_json(app, f"/api/v1/benchmarks/{run_id}")
    assert run["status"] == "completed"
    # Closed loop: no corrected-latency columns.
    headers = page.eval_on_selector_all(
        "#bench-table thead th[data-col]", "ths => ths.map(th => th.dataset.col)"
    )
    assert headers == list(COLUMNS)
    check_table_marks(page, run, COLUMNS)

    # History: newest first, each with its status and writers' rows/s.
    history = get_json(app, "/api/v1/benchmarks")
    page.wait_for_selector(f"#bench-history-rows tr[data-run-id='{run_id}']")
    ids = history_ids(page)
    assert ids == [r["id"] for r in history]
    assert ids[0] == run_id and len(ids) >= 3
    first_row = page.text_content(f"#bench-history-rows tr[data-run-id='{run_id}']")
    assert "completed" in first_row and "rows/s" in first_row and "Zerobus Ingest" in first_row
    # Each run names its workload.
    page.wait_for_selector(
        f"#bench-history-rows tr[data-run-id='{run_id}'] .workload-name[data-workload='products']"
    )
    fixed_rate = next(
        r["id"] for r in history if r["workload"]["rate"] == 2000 and r["status"] == "completed"
    )

    # Compare two runs: A is the older, B the newer.
    assert page.is_disabled("#bench-compare")
    page.check(f"#bench-history-rows tr[data-run-id='{fixed_rate}'] input[name='compare']")
    assert page.is_disabled("#bench-compare")
    page.check(f"#bench-history-rows tr[data-run-id='{run_id}'] input[name='compare']")
    page.click("#bench-compare")
    page.wait_for_selector("#bench-compare-result:not([hidden])")
    assert page.get_attribute("#bench-compare-result", "data-a") == fixed_rate
    assert page.get_attribute("#bench-compare-result", "data-b") == run_id
    diffs = get_json(app, f"/api/v1/benchmarks/compare?a={fixed_rate}&b={run_id}")["diffs"]
    rows = page.eval_on_selector_all(
        "#bench-compare-table tbody tr",
        "rows => rows.map(r => [r.dataset.writer, r.dataset.metric, r.dataset.verdict,"
        " r.lastElementChild.textContent])",
    )
    assert len(rows) == len(diffs) == len(ALL_WRITERS) * 9
    shown = {
        "b better": "B better",
        "a better": "B worse",
        "within noise": "within noise",
        "not enough data": "not enough data",
        "not comparable": "not comparable",
    }
    for (writer, metric, verdict, text), diff in zip(rows, diffs, strict=True):
        assert (writer, metric) == (diff["writer"], diff["metric"])
        assert verdict == diff["decision"] and shown[verdict] in text
        assert (diff["reason"] or "") in text
        if metric == "rows_per_s":
            # A fixed-rate run against a max-rate one: never a throughput verdict.
            assert verdict == "not comparable" and "rate-capped (A at 2,000 rows/s)" in text
    # The workload mismatch is said in the UI as in the CLI.
    notes = page.eval_on_selector_all(
        "#bench-compare-notes .compare-note", "items => items.map(i => i.textContent)"
    )
    body = get_json(app, f"/api/v1/benchmarks/compare?a={fixed_rate}&b={run_id}")
    assert notes == body["notes"] and any(n.startswith("the workloads differ (") for n in notes)
    assert any(n.endswith("no throughput verdict is given") for n in notes)
    assert page.evaluate("document.activeElement.id") == "bench-compare-heading"
    screenshot(page, "bench-desktop-compare")

    # Open the fixed-rate run from the history: its table and charts.
    page.click(f"#bench-history-rows button[data-open='{fixed_rate}']")
    page.wait_for_selector(f"#bench-result[data-run-id='{fixed_rate}']")
    assert page.evaluate("document.activeElement.id") == "bench-result-heading"
    assert fixed_rate in page.text_content("#bench-result-heading")
    headers = page.eval_on_selector_all(
        "#bench-table thead th[data-col]", "ths => ths.map(th => th.dataset.col)"
    )
    assert headers == [*COLUMNS, *RATE_COLUMNS]
    check_table_marks(page, get_json(app, f"/api/v1/benchmarks/{fixed_rate}"), COLUMNS)
    assert int(page.get_attribute("#bench-pct-chart", "data-points")) > 10
    for link in page.query_selector_all(f"#bench-history-rows tr[data-run-id='{fixed_rate}'] a"):
        resp = httpx.get(urljoin(app.url + "/", link.get_attribute("href")), timeout=30)
        assert resp.status_code == 200


def test_phone_width_past_run(open_bench: Any, app: RunningApp) -> None:
    page = open_bench(PHONE)
    history = get_json(app, "/api/v1/benchmarks")
    fixed_rate = next(r["id"] for r in history if r["workload"]["rate"] == 2000)
    page.click(f"#bench-history-rows button[data-open='{fixed_rate}']")
    page.wait_for_selector(f"#bench-result[data-run-id='{fixed_rate}']")
    page.wait_for_selector("#bench-pct-chart canvas")
    # Nothing wider than the screen (the wide table scrolls inside its own box).
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    box = page.locator("#bench-pct-chart").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    screenshot(page, "bench-375-result")

    # The comparison stacks as one card per metric.
    for run_id in [r["id"] for r in history if r["status"] == "completed"][:2]:
        page.check(f"#bench-history-rows tr[data-run-id='{run_id}'] input[name='compare']")
    page.click("#bench-compare")
    page.wait_for_selector("#bench-compare-result:not([hidden]) tbody tr[data-metric]")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(page, "bench-375-compare")


def test_defaults_are_30_s_after_a_5_s_warmup_and_the_banner_says_local(
    open_bench: Any,
) -> None:
    from bench.environment import LOCAL_NOTICE

    page = open_bench()
    assert page.is_checked("#bench-form input[name='length_kind'][value='duration']")
    assert page.input_value("#bench-duration_s") == "30"
    assert page.input_value("#bench-warmup_s") == "5"
    assert page.is_disabled("#bench-records")
    page.wait_for_selector("#mode-banner:not([hidden])")
    assert page.text_content("#mode-banner") == f"Local stand-ins. {LOCAL_NOTICE}"
    options = page.eval_on_selector_all(
        "#bench-form label.check[data-writer]",
        "ls => ls.filter(l => l.dataset.writer !== 'null').map(l => l.textContent)",
    )
    writers = page.eval_on_selector_all(
        "#bench-form label.check[data-writer]",
        "ls => ls.filter(l => l.dataset.writer !== 'null').map(l => l.dataset.writer)",
    )
    assert options and all(
        ("unavailable" if w in DATABRICKS_ONLY else "available (local stand-in)") in text
        for w, text in zip(writers, options, strict=True)
    ), options


def test_live_chart_axis_is_blank_before_data_and_short_writers_are_plotted(
    open_bench: Any, app: RunningApp
) -> None:
    page = open_bench()
    # Quick writers: each finishes well inside a second, after a 2 s warm-up with no data.
    fill_form(page, writers=("zerobus", "null"), records=400, batch_size=50)
    page.fill("#bench-warmup_s", "2")
    page.click("#bench-start")
    page.wait_for_selector("#bench-live:not([hidden])")
    run_id = page.get_attribute("#bench-live", "data-run-id")
    page.wait_for_function(
        "document.querySelector('#bench-live-chart').dataset.yTicks !== undefined"
    )
    if live_points(page) == 0:  # still warming up: no numbers on an empty axis
        ticks = page.get_attribute("#bench-live-chart", "data-y-ticks") or ""
        assert set(ticks.split(",")) == {""}, ticks
    wait_for_result(page, run_id)
    run = get_json(app, f"/api/v1/benchmarks/{run_id}")
    assert run["status"] == "completed"
    ticks = (page.get_attribute("#bench-live-chart", "data-y-ticks") or "").split(",")
    assert all(ticks), ticks  # numbers once there is data
    # Every writer is on the live chart, at rows / elapsed, the summary's rate.
    live = json.loads(page.get_attribute("#bench-live-chart", "data-series") or "{}")
    for w in run["writers"]:
        points = [v for v in live[w["writer"]] if v is not None]
        assert points, (w["writer"], live)
        assert points[-1] == pytest.approx(w["rows_per_s"], rel=1e-3)
    # The result's chart: a window well under a second is cut into sub-second buckets, each
    # bucket's rows over what it covered, averaging to the summary's rate.
    plotted = json.loads(page.get_attribute("#bench-tput-chart", "data-series") or "{}")
    for w in run["writers"]:
        rates = plotted[w["writer"]]
        assert w["bucket_s"] < 1 and len(rates) == len(w["per_second"]), w["per_second"]
        if w["writer"] == "zerobus":  # null may be done within one millisecond bucket
            assert len(rates) >= 2, w["per_second"]
        spans = [s["span_s"] for s in w["per_second"]]
        assert sum(s["rows"] for s in w["per_second"]) / sum(spans) == (
            pytest.approx(w["rows_per_s"], rel=1e-3)
        )
        assert rates == [s["rows_per_s"] for s in w["per_second"]]
    assert "of a short window" in (page.text_content("#bench-tput-caption") or "")
    warnings = page.text_content("#bench-warnings") or ""
    assert "Zerobus Ingest (gRPC, protobuf): too few batches: 8 measured" in warnings
    null = "Null (discards rows; harness baseline): "
    assert f"{null}too few batches" not in warnings  # the baseline: no sample-size warning
    assert f"{null}measured window too short" not in warnings


def test_repeats_show_medians_with_their_intervals(open_bench: Any, app: RunningApp) -> None:
    page = open_bench()
    assert page.input_value("#bench-repeat") == "1"
    fill_form(page, writers=("null", "zerobus"), duration_s=5, batch_size=100, concurrency=2)
    page.fill("#bench-repeat", "3")
    page.click("#bench-start")
    page.wait_for_selector("#bench-live:not([hidden])")
    run_id = page.get_attribute("#bench-live", "data-run-id")
    wait_for_result(page, run_id)
    run = get_json(app, f"/api/v1/benchmarks/{run_id}")
    assert run["config"]["repeat"] == 3
    zerobus = next(w for w in run["writers"] if w["writer"] == "zerobus")
    assert [r["repeat"] for r in zerobus["repeats"]] == [0, 1, 2]
    page.wait_for_selector("#bench-intervals:not([hidden])")
    assert page.text_content("#bench-intervals h4") == "Medians over 3 repeats [95% interval]"
    cell = page.text_content(
        "#bench-intervals tr[data-metric='rows_per_s'] td[data-writer='zerobus']"
    )
    rows = zerobus["intervals"]["rows_per_s"]
    assert rows["method"] == "repeats" and rows["low"] is not None

    def shown(value: float) -> str:  # as the page's Intl formatting rounds: half away from 0
        return f"{int(Decimal(str(value)).quantize(Decimal(1), ROUND_HALF_UP)):,}"

    assert cell == f"{shown(rows['median'])} [{shown(rows['low'])}, {shown(rows['high'])}]"
    assert "3 repeats" in page.text_content("#bench-result-meta")

    # The percentile curves end where the batches stop supporting the percentile.
    ends = json.loads(page.get_attribute("#bench-pct-chart", "data-ends") or "[]")
    counts = [w["latency_ms"]["count"] for w in run["writers"]]
    assert len(ends) == len(counts) and all(
        e <= c / 10 + 1e-6 for e, c in zip(ends, counts, strict=True)
    )

    # A rolling average over 5 s: rows over the seconds' spans, seconds without acks as 0.
    page.select_option("#bench-tput-window", "5")
    page.wait_for_selector("#bench-tput-chart[data-window='5']")
    assert page.text_content("#bench-tput-caption") == (
        "Throughput, rolling 5 s average (rows/s), per writer"
    )
    plotted = json.loads(page.get_attribute("#bench-tput-chart", "data-plotted") or "[]")
    series = plotted[[w["writer"] for w in run["writers"]].index("zerobus")]
    by_t = {s["t"]: s for s in zerobus["per_second"]}
    expected = []
    for t in range(max(by_t) + 1):
        window = [by_t.get(k) for k in range(max(0, t - 4), t + 1)]
        rows = sum(s["rows"] if s else 0 for s in window)
        span = sum(s["span_s"] if s else 1 for s in window)
        expected.append(rows / span)
    assert [v for v in series if v is not None] == pytest.approx(expected)


def test_streams_and_clients_show_each_client_and_stream(open_bench: Any, app: RunningApp) -> None:
    page = open_bench()
    assert page.input_value("#bench-streams") == "1" and page.input_value("#bench-clients") == "1"
    fill_form(page, writers=("zerobus",), records=2_000, batch_size=50, concurrency=1)
    page.fill("#bench-streams", "2")
    page.fill("#bench-clients", "2")
    page.click("#bench-start")
    page.wait_for_selector("#bench-live:not([hidden])")
    run_id = page.get_attribute("#bench-live", "data-run-id")
    wait_for_result(page, run_id)
    run = get_json(app, f"/api/v1/benchmarks/{run_id}")
    assert run["status"] == "completed", run["warnings"]
    cfg = run["config"]
    assert (cfg["streams"], cfg["clients"], cfg["executor"]) == (2, 2, "processes")
    (zerobus,) = run["writers"]
    assert zerobus["rows"] == 2_000 and len(zerobus["per_stream"]) == 4
    assert "2 streams \u00d7 2 clients (processes)" in page.text_content("#bench-result-meta")
    assert table(page)["zerobus"]["stream_rows_per_s"]["text"] == js_integer(
        zerobus["rows_per_s"] / 4
    )

    page.wait_for_selector("#bench-scale:not([hidden])")
    clients = page.eval_on_selector_all(
        "#bench-scale [data-part='clients'] tbody tr",
        "rows => rows.map(r => [r.dataset.client, r.cells[2].textContent])",
    )
    assert clients == [[w["worker"], f"{w['rows']:,}"] for w in zerobus["workers"]]
    streams = page.eval_on_selector_all(
        "#bench-scale [data-part='streams'] tbody tr",
        """rows => rows.map(r => [r.dataset.client, r.dataset.stream,
            r.querySelector('[data-col=rows_per_s]').textContent,
            r.querySelector('[data-col=quota_share]').textContent])""",
    )
    quota = zerobus["quota_projection"]["rows_per_s"]
    assert [s[:3] for s in streams] == [
        [
            str(p["client"]),
            str(p["stream"]),
            js_integer(p["rows_per_s"]) if p["rows_per_s"] >= 100 else str(p["rows_per_s"]),
        ]
        for p in zerobus["per_stream"]
    ]
    for shown, p in zip(streams, zerobus["per_stream"], strict=True):
        # one decimal of a percentage (toFixed(1)): within its rounding
        assert shown[3].endswith("%")
        assert abs(float(shown[3][:-1]) - p["rows_per_s"] / quota * 100) <= 0.05 + 1e-9
    screenshot(page, "bench-streams-clients")
