"""The web form in a real browser: Debian's Chromium driven by Playwright, against the real
app in local mode (its own local stack), checking what the page shows and what landed in the
Delta table and in Postgres. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bench.environment import LOCAL_NOTICE
from tests.browser_support import (
    DESKTOP,
    PHONE,
    RunningApp,
    chromium,
    postgres,
    running_app,
    screenshot,
    watched_pages,
)
from tests.conftest import DATABRICKS_ONLY
from workloads.products import CATEGORIES
from writers import writer_metadata
from writers.sql_connector import LOCAL_REASON

pytestmark = pytest.mark.browser

WRITERS = ("zerobus", "sql", "lakebase")  # one record through each
POSTGRES_WRITERS = frozenset({"lakebase"})  # the others write the Delta table


@pytest.fixture(scope="module")
def app() -> Iterator[RunningApp]:
    with running_app("ui") as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def open_page(browser: Any, app: RunningApp) -> Iterator[Any]:
    """Opens the form at a viewport size; fails the test on any script error or failed request."""
    with watched_pages(browser) as new_page:

        def _open(viewport: dict[str, int] = DESKTOP) -> Any:
            page = new_page(viewport)
            page.goto(app.url + "/")
            page.wait_for_selector("#writer-status li[data-writer]")
            return page

        yield _open


# -- what the server offers and what landed in the targets --------------------------------


def ingest_writers(app: RunningApp) -> list[str]:
    """The writers the page lists (and "all" writes through), as the API gives them."""
    resp = httpx.get(f"{app.url}/api/v1/writers", timeout=30)
    assert resp.status_code == 200, resp.text
    return [w["name"] for w in resp.json()]


def unavailable_card(writer: str, rows: str = "0") -> tuple[str, str, str]:
    return (writer, "unavailable", rows)


def not_written() -> str:
    """What the status line adds for the writers the local stack cannot serve."""
    labels = [writer_metadata(name)["label"] for name in sorted(DATABRICKS_ONLY)]
    return "; not written: " + ", ".join(f"{label} unavailable" for label in labels)


def delta_writers(app: RunningApp) -> list[str]:
    return [w for w in ingest_writers(app) if w not in POSTGRES_WRITERS | DATABRICKS_ONLY]


def delta_rows(app: RunningApp, batch_id: str) -> dict[str, int]:
    """Rows of one batch in the local Delta table, by source (writer)."""
    from deltalake import DeltaTable

    table = DeltaTable(str(app.delta_table)).to_pyarrow_table(
        columns=["batch_id", "source"], filters=[("batch_id", "=", batch_id)]
    )
    counts: dict[str, int] = {}
    for source in table.column("source").to_pylist():
        counts[source] = counts.get(source, 0) + 1
    return counts


def delta_total(app: RunningApp) -> int:
    from deltalake import DeltaTable

    return DeltaTable(str(app.delta_table)).to_pyarrow_table(columns=["record_id"]).num_rows


def postgres_rows(app: RunningApp, batch_id: str | None = None) -> int:
    """Rows of one batch (or all rows) in the Lakebase table on the local Postgres."""
    with postgres(app) as conn:
        if batch_id is None:
            row = conn.execute("SELECT count(*) FROM public.products").fetchone()
        else:
            row = conn.execute(
                "SELECT count(*) FROM public.products WHERE batch_id = %s", (batch_id,)
            ).fetchone()
    assert row is not None
    return int(row[0])


# -- page helpers -------------------------------------------------------------------------


def submit_and_wait(page: Any) -> str:
    """Submits the form, waits for the result cards, returns the batch id the page shows."""
    page.click("#submit-button")
    page.wait_for_selector("#results-summary [data-batch-id]")
    page.wait_for_function("!document.querySelector('#submit-button').disabled")
    batch_id = page.get_attribute("#results-summary [data-batch-id]", "data-batch-id")
    assert batch_id and re.fullmatch(r"[0-9a-f]{32}", batch_id), batch_id
    shown = page.text_content("#results-summary [data-field='batch_id']")
    assert shown == batch_id
    return batch_id


def cards(page: Any) -> list[dict[str, Any]]:
    """Each result card as the page shows it, with its position."""
    result = []
    for card in page.query_selector_all("#result-cards .result-card"):
        box = card.bounding_box()
        result.append(
            {
                "writer": card.get_attribute("data-writer"),
                "status": card.query_selector(".badge").text_content(),
                "rows": card.query_selector("[data-metric='rows_written']").text_content(),
                "details": {
                    dd.get_attribute("data-detail"): dd.text_content()
                    for dd in card.query_selector_all("[data-detail]")
                },
                "x": box["x"],
                "y": box["y"],
            }
        )
    return result


def row_count(page: Any) -> int:
    return len(page.query_selector_all("#rows tr.item-row"))


def field(page: Any, row: int, name: str) -> Any:
    """The input of a field in a row (1-based), found by its label as a user would."""
    return page.locator("#rows tr.item-row").nth(row - 1).locator(f"[name='{name}']")


# -- tests --------------------------------------------------------------------------------


def test_page_loads_with_writers_available_and_an_example_row(
    open_page: Any, app: RunningApp
) -> None:
    page = open_page()
    writers = ingest_writers(app)
    assert set(WRITERS) <= set(writers)
    assert page.get_attribute("html", "lang") == "en"
    assert page.text_content("h1") == "Direct Write Bench"
    assert page.locator("nav[aria-label='Views'] a[aria-current='page']").text_content() == (
        "Write records"
    )

    statuses = page.query_selector_all("#writer-status li[data-writer]")
    assert [li.get_attribute("data-writer") for li in statuses] == writers
    for li in statuses:
        if li.get_attribute("data-writer") in DATABRICKS_ONLY:
            assert li.get_attribute("data-available") == "false", li.text_content()
            assert LOCAL_REASON in (li.text_content() or "")
            continue
        assert li.get_attribute("data-available") == "true", li.text_content()
        availability = li.query_selector("[data-field='availability']")
        assert availability.text_content() == "available (local stand-in)"
    # Local mode says what the figures are, on every view.
    banner = page.locator("#mode-banner")
    banner.wait_for()
    assert banner.get_attribute("data-mode") == "local"
    assert banner.text_content() == f"Local stand-ins. {LOCAL_NOTICE}"
    page.click("nav[aria-label='Views'] a[data-view='benchmark']")
    assert banner.is_visible()
    page.click("nav[aria-label='Views'] a[data-view='write']")
    page.click("#refresh-writers")
    page.wait_for_function(
        "!document.querySelector('#refresh-writers').disabled"
        " && document.querySelectorAll('#writer-status li[data-available=true]').length"
        f" === {len([w for w in writers if w not in DATABRICKS_ONLY])}"
    )
    options = page.eval_on_selector_all("#writer-type option", "os => os.map(o => o.value)")
    assert options == [*writers, "all"]
    assert "available (local stand-in)" in page.text_content("#writer-type option[value='zerobus']")

    # The products workload is the first choice; its example row.
    assert page.input_value("#workload") == "products"
    assert row_count(page) == 1
    assert field(page, 1, "product_id").input_value() == "PROD005"
    assert field(page, 1, "product_name").input_value() == "Smart Watch"
    assert field(page, 1, "product_price").input_value() == "499.99"
    assert field(page, 1, "category").input_value() == "electronics"
    start = field(page, 1, "sale_start_date").input_value()
    stop = field(page, 1, "sale_stop_date").input_value()
    assert start and stop and start <= stop

    # The category choices are the server's known ones plus free text.
    categories = page.eval_on_selector_all(
        "#rows tr.item-row select[name='category'] option", "os => os.map(o => o.value)"
    )
    assert categories[:-1] == list(CATEGORIES)

    # Every visible control has a label naming it (the row's inputs: field and row number).
    unlabeled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, button')]
            .filter(e => e.offsetParent !== null)
            .filter(e => !(e.labels && e.labels.length && e.labels[0].textContent.trim())
                         && !e.getAttribute('aria-label') && !e.textContent.trim())
            .map(e => e.outerHTML)"""
    )
    assert unlabeled == []
    assert page.locator("label[for='row1-product_price']").text_content() == "Price, row 1"
    assert page.get_attribute("#results", "aria-live") == "polite"
    screenshot(page, "ui-desktop-initial")


@pytest.mark.parametrize("writer", WRITERS)
def test_one_record_through_each_writer(open_page: Any, app: RunningApp, writer: str) -> None:
    page = open_page()
    field(page, 1, "product_id").fill(f"UI-{writer}")
    page.select_option("#writer-type", writer)
    batch_id = submit_and_wait(page)

    shown = cards(page)
    assert [c["writer"] for c in shown] == [writer]
    assert shown[0]["status"] == "success"
    assert shown[0]["rows"] == "1"
    assert shown[0]["details"], "the writer's identifiers are shown"
    assert page.text_content("#results-summary [data-metric='processed_count']") == "1"

    if writer == "lakebase":
        assert postgres_rows(app, batch_id) == 1
        assert shown[0]["details"].get("rows_copied") == "1"
    else:
        assert delta_rows(app, batch_id) == {writer: 1}
        if writer == "zerobus":
            assert re.fullmatch(r"\d+", shown[0]["details"]["offset"])
        else:
            assert re.fullmatch(r"[\w-]+", shown[0]["details"]["statement_ids"])


def test_all_writers_side_by_side(open_page: Any, app: RunningApp) -> None:
    page = open_page()
    page.select_option("#writer-type", "all")
    batch_id = submit_and_wait(page)

    shown = cards(page)
    writers = ingest_writers(app)
    assert [c["writer"] for c in shown] == writers
    assert [(c["writer"], c["status"], c["rows"]) for c in shown] == [
        unavailable_card(w) if w in DATABRICKS_ONLY else (w, "success", "1") for w in writers
    ], shown
    # Side by side on a desktop: in reading order, left to right on each line (more
    # writers than fit one line wrap onto the next).
    lines = sorted({round(c["y"]) for c in shown})
    assert len(lines) < len(shown), shown
    assert [round(c["y"]) for c in shown] == sorted(round(c["y"]) for c in shown), shown
    for line in lines:
        xs = [c["x"] for c in shown if round(c["y"]) == line]
        assert xs == sorted(xs) and len(set(xs)) == len(xs), shown
    # Per writer, never a sum over writers (each wrote the same row) nor a summed throughput.
    per_writer = page.eval_on_selector_all(
        "#results-summary [data-metric='rows_per_writer'] li",
        "lis => lis.map(li => [li.dataset.writer, li.dataset.rows])",
    )
    assert per_writer == [[w, "0" if w in DATABRICKS_ONLY else "1"] for w in writers]
    assert page.query_selector("#results-summary [data-metric='processed_count']") is None
    assert page.query_selector("#results-summary [data-metric='throughput']") is None
    wrote = [w for w in writers if w not in DATABRICKS_ONLY]
    assert page.text_content("#submit-status") == (
        f"Wrote 1 row through each of {len(wrote)} writers{not_written()}."
    )
    assert page.text_content("#results-summary .badge") == "partial"
    assert delta_rows(app, batch_id) == dict.fromkeys(delta_writers(app), 1)
    assert postgres_rows(app, batch_id) == 1
    screenshot(page, "ui-desktop-all-writers")


def test_phone_width_layout(open_page: Any, app: RunningApp) -> None:
    page = open_page(PHONE)
    page.click("#add-row")
    field(page, 2, "product_id").fill("PHONE-2")
    field(page, 2, "product_name").fill("Running Shoes")
    field(page, 2, "product_price").fill("89.5")
    page.select_option("#writer-type", "all")
    batch_id = submit_and_wait(page)

    # Nothing wider than the screen; the cards stack in one column.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    shown = cards(page)
    assert [c["rows"] for c in shown] == [
        "0" if w in DATABRICKS_ONLY else "2" for w in ingest_writers(app)
    ]
    assert len({round(c["x"]) for c in shown}) == 1, shown
    ys = [c["y"] for c in shown]
    assert ys == sorted(ys) and len(set(ys)) == len(ys), shown
    # On a phone the labels are shown above each input (the table header is hidden).
    assert page.locator("label[for='row1-product_id']").is_visible()
    assert delta_rows(app, batch_id) == dict.fromkeys(delta_writers(app), 2)
    assert postgres_rows(app, batch_id) == 2
    screenshot(page, "ui-375-all-writers")


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "375"])
def test_invalid_rows_show_errors_at_the_fields_and_write_nothing(
    open_page: Any, app: RunningApp, viewport: dict[str, int]
) -> None:
    page = open_page(viewport)
    page.select_option("#writer-type", "all")
    field(page, 1, "product_price").fill("-5")
    page.click("#add-row")
    field(page, 2, "product_id").fill("PROD006")
    field(page, 2, "product_name").fill("Desk Lamp")
    field(page, 2, "product_price").fill("25")
    field(page, 2, "sale_start_date").fill("2026-05-10")
    field(page, 2, "sale_stop_date").fill("2026-05-01")
    before = (delta_total(app), postgres_rows(app))

    field(page, 2, "product_name").press("Enter")  # Enter submits the form
    page.wait_for_selector("#alert:not([hidden])")

    price = field(page, 1, "product_price")
    assert price.get_attribute("aria-invalid") == "true"
    price_error = page.locator("#row1-product_price-error")
    assert price_error.is_visible()
    assert "greater than or equal to 0" in price_error.text_content()
    assert price.get_attribute("aria-describedby") == "row1-product_price-error"

    stop = field(page, 2, "sale_stop_date")
    assert stop.get_attribute("aria-invalid") == "true"
    stop_error = page.locator("#row2-sale_stop_date-error")
    assert stop_error.is_visible()
    assert "on or after sale_start_date" in stop_error.text_content()
    # Fields without a problem are not marked.
    assert field(page, 2, "product_price").get_attribute("aria-invalid") is None
    assert not page.locator("#row1-sale_stop_date-error").is_visible()

    alert = page.text_content("#alert")
    assert "Nothing was written" in alert
    assert "Row 1, Price" in alert and "Row 2" in alert
    assert page.query_selector_all("#result-cards .result-card") == []
    assert page.evaluate("document.activeElement.id") == "row1-product_price"
    assert not page.is_disabled("#submit-button")
    screenshot(page, f"ui-{'375' if viewport is PHONE else 'desktop'}-invalid")

    assert (delta_total(app), postgres_rows(app)) == before

    # Editing a field clears its message.
    price.fill("5")
    assert not price_error.is_visible()
    assert price.get_attribute("aria-invalid") is None


def test_generate_samples_then_write_all(open_page: Any, app: RunningApp) -> None:
    page = open_page()
    page.fill("#sample-count", "10")
    page.select_option("#sample-mode", "replace")
    page.click("#generate-button")
    page.wait_for_function("document.querySelectorAll('#rows tr.item-row').length === 10")
    assert "10 sample records" in page.text_content("#generate-status")
    assert field(page, 1, "product_id").input_value() != "PROD005"
    assert page.text_content("#submit-button") == "Write 10 records"

    page.select_option("#writer-type", "all")
    batch_id = submit_and_wait(page)
    shown = cards(page)
    writers = ingest_writers(app)
    assert [(c["writer"], c["status"], c["rows"]) for c in shown] == [
        unavailable_card(w) if w in DATABRICKS_ONLY else (w, "success", "10") for w in writers
    ]
    wrote = [w for w in writers if w not in DATABRICKS_ONLY]
    assert page.text_content("#submit-status") == (
        f"Wrote 10 rows through each of {len(wrote)} writers{not_written()}."
    )
    assert delta_rows(app, batch_id) == dict.fromkeys(delta_writers(app), 10)
    assert postgres_rows(app, batch_id) == 10
    screenshot(page, "ui-desktop-samples-all-writers")

    # Append mode adds to the rows; Enter in the count field generates.
    page.select_option("#sample-mode", "append")
    page.fill("#sample-count", "5")
    page.press("#sample-count", "Enter")
    page.wait_for_function("document.querySelectorAll('#rows tr.item-row').length === 15")
    # An out-of-range count is refused at the field.
    page.fill("#sample-count", "1001")
    page.click("#generate-button")
    assert page.get_attribute("#sample-count", "aria-invalid") == "true"
    assert "1 to 1000" in page.text_content("#generate-status")
    assert row_count(page) == 15


def test_add_edit_remove_rows_and_free_text_category(open_page: Any, app: RunningApp) -> None:
    page = open_page()
    page.click("#add-row")
    assert row_count(page) == 2
    # The new row's first input has focus, ready to type.
    assert page.evaluate("document.activeElement.name") == "product_id"
    page.keyboard.type("PROD100")
    field(page, 2, "product_name").fill("Garden Hose")
    field(page, 2, "product_price").fill("19.99")
    field(page, 2, "category").select_option("__custom__")
    custom = field(page, 2, "category_custom")
    assert custom.is_visible()
    custom.fill("Garden & Outdoor")

    # Remove the first row with the keyboard.
    page.focus("#rows tr.item-row >> nth=0 >> .remove-row")
    page.keyboard.press("Enter")
    assert row_count(page) == 1
    assert field(page, 1, "product_id").input_value() == "PROD100"
    assert page.locator("label[for]").filter(has_text="Product ID, row 1").count() == 1
    assert page.text_content("#row-count") == "(1 row)"

    page.select_option("#writer-type", "lakebase")
    batch_id = submit_and_wait(page)
    assert [c["rows"] for c in cards(page)] == ["1"]
    with postgres(app) as conn:
        row = conn.execute(
            "SELECT product_id, category, product_price FROM public.products WHERE batch_id = %s",
            (batch_id,),
        ).fetchone()
    assert row == ("PROD100", "Garden & Outdoor", 19.99)


def test_server_error_is_shown_in_the_alert_region(open_page: Any) -> None:
    page = open_page()
    # A writer the server does not know: its 400 {error, message} is shown as is.
    page.eval_on_selector("#writer-type option", "o => { o.value = 'nosuch'; }")
    page.select_option("#writer-type", "nosuch")
    page.click("#submit-button")
    page.wait_for_selector("#alert:not([hidden])")
    alert = page.text_content("#alert")
    assert "Unknown writer (HTTP 400)" in alert
    assert "nosuch" in alert
    assert page.get_attribute("#alert", "role") == "alert"
    assert page.query_selector_all("#result-cards .result-card") == []
    assert "Nothing was written" in page.text_content("#submit-status")


def test_unavailable_writer_and_partial_result_are_shown_as_text(open_page: Any) -> None:
    """Answers the page cannot get from a healthy local stack, built from the API's own models
    and served to the browser in place of the app's: an unavailable writer, a partial batch,
    and server text that looks like HTML (it must stay text)."""
    import json

    from api.models import ErrorInfo, ProcessResponse, WriterInfo, WriterResult

    page = open_page()
    trap = '<img src=x onerror="window.__xss=1">'

    def info(name: str, label: str, color: str, reason: str | None = None) -> WriterInfo:
        return WriterInfo(
            name=name,
            label=label,
            family="test",
            color=color,
            stores_rows=True,
            available=reason is None,
            reason=reason,
            details={},
        )

    writers = [
        info("zerobus", "Zerobus Ingest", "#e8590c"),
        info("sql", "SQL warehouse", "#6b7280"),
        info(
            "lakebase",
            "Lakebase (Postgres)",
            "#047857",
            reason=f"cannot reach 127.0.0.1:5432: connection refused {trap}",
        ),
    ]

    def ok(writer: str, label: str, details: dict[str, Any]) -> WriterResult:
        return WriterResult(
            writer=writer,
            label=label,
            status="success",
            rows_written=1,
            processing_time_ms=12.5,
            throughput_records_per_sec=80.0,
            details=details,
        )

    response = ProcessResponse(
        batch_id="0" * 32,
        writer_type="all",
        status="partial",
        processed_count=2,
        processing_time_ms=30.0,
        throughput_records_per_sec=66.7,
        results=[
            ok("zerobus", "Zerobus Ingest", {"offset": 7}),
            ok("sql", "SQL warehouse", {"statement_ids": ["a-1", "b-2"], "statements": 2}),
            WriterResult(
                writer="lakebase",
                label="Lakebase (Postgres)",
                status="unavailable",
                rows_written=0,
                processing_time_ms=0.0,
                throughput_records_per_sec=0.0,
                error=ErrorInfo(kind="unavailable", message=f"connection refused {trap}"),
            ),
        ],
    )

    def serve(body: str) -> Any:
        return lambda route: route.fulfill(status=200, content_type="application/json", body=body)

    page.route("**/api/v1/writers", serve(json.dumps([w.model_dump() for w in writers])))
    posted: list[dict[str, Any]] = []

    def write(route: Any) -> None:
        posted.append(json.loads(route.request.post_data or "{}"))
        route.fulfill(status=200, content_type="application/json", body=response.model_dump_json())

    page.route("**/api/v1/process-structured", write)
    page.click("#refresh-writers")
    page.wait_for_selector("#writer-status li[data-writer='lakebase'][data-available='false']")
    status = page.text_content("#writer-status li[data-writer='lakebase']")
    assert "unavailable" in status and "connection refused" in status and trap in status
    assert "unavailable" in page.text_content("#writer-type option[value='lakebase']")
    assert "2/3 available" in page.text_content("#writer-type option[value='all']")

    page.select_option("#writer-type", "all")
    submit_and_wait(page)
    shown = cards(page)
    assert [(c["writer"], c["status"], c["rows"]) for c in shown] == [
        ("zerobus", "success", "1"),
        ("sql", "success", "1"),
        ("lakebase", "unavailable", "0"),
    ]
    assert shown[1]["details"]["statement_ids"] == "a-1, b-2"
    assert page.text_content("#results-summary .badge") == "partial"
    # The writer the page showed unavailable was not tried: the request skips it.
    assert posted[-1]["writer_type"] == "all" and posted[-1]["skip"] == ["lakebase"]
    assert page.text_content("#submit-status") == (
        "Wrote 1 row through each of 2 writers; not written: Lakebase (Postgres) unavailable."
    )
    error = page.text_content("#result-cards [data-writer='lakebase'] .result-error")
    assert "Unavailable" in error and trap in error
    assert page.query_selector("img") is None
    assert page.evaluate("window.__xss") is None
    screenshot(page, "ui-desktop-partial")
