"""Workloads in a real browser: Debian's Chromium driven by Playwright against the real app in
local mode (its own local stack). The Write view's form is drawn from a workload's input
schema (telemetry, and one registered from pasted DDL), and every writer list comes from the
registry: a writer added only through DWBENCH_EXTRA_WRITERS shows up in both views.
Screenshots go to test-artifacts/workloads-*.png.

The tests share one app and run in order: the DDL test registers the workload the next uses.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

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
from tests.registry_writer import ENV as REGISTRY_ENV
from tests.registry_writer import RegistryCheckWriter

pytestmark = pytest.mark.browser

REGISTRY = RegistryCheckWriter.name
ORDERS = "ui_orders"
ORDERS_DDL = (
    f"CREATE TABLE main.default.{ORDERS} (\n"
    "  order_id BIGINT NOT NULL,\n"
    "  total DECIMAL(10,2) NOT NULL,\n"
    "  placed_at TIMESTAMP,\n"
    "  paid BOOLEAN NOT NULL,\n"
    "  note STRING,\n"
    "  tags ARRAY<STRING>\n"
    ")"
)
RUN_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def app() -> Iterator[RunningApp]:
    with running_app("ui-workloads", {"DWBENCH_EXTRA_WRITERS": REGISTRY_ENV}) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def open_page(browser: Any, app: RunningApp) -> Iterator[Any]:
    """Opens the Write view (or another) at a viewport size, watched for script errors."""
    with watched_pages(browser) as new_page:

        def _open(viewport: dict[str, int] = DESKTOP, view: str = "") -> Any:
            page = new_page(viewport)
            page.goto(f"{app.url}/{'#' + view if view else ''}")
            if view == "benchmark":
                page.wait_for_selector("#bench-history-rows tr")  # the form is ready
            else:
                page.wait_for_selector("#writer-status li[data-writer]")
            return page

        yield _open


# -- helpers ------------------------------------------------------------------------------


def get_json(app: RunningApp, path: str) -> Any:
    resp = httpx.get(app.url + path, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def workload(app: RunningApp, name: str) -> dict[str, Any]:
    return next(w for w in get_json(app, "/api/v1/workloads") if w["name"] == name)


def pick_workload(page: Any, name: str) -> None:
    page.select_option("#workload", name)
    page.wait_for_selector(f"#write-form[data-workload='{name}'] #rows tr.item-row")


def head_fields(page: Any) -> list[str]:
    return page.eval_on_selector_all(
        "#rows-head th[data-field]", "ths => ths.map(th => th.dataset.field)"
    )


def rows(page: Any) -> Any:
    return page.locator("#rows tr.item-row")


def field(page: Any, row: int, name: str) -> Any:
    return rows(page).nth(row - 1).locator(f"td[data-field='{name}'] [name='{name}']")


def generate(page: Any, count: int) -> int:
    """Generates `count` sample rows in place of the form's; returns the seed the page used."""
    page.fill("#sample-count", str(count))
    page.select_option("#sample-mode", "replace")
    page.click("#generate-button")
    page.wait_for_function(
        f"document.querySelectorAll('#rows tr.item-row').length === {count}"
        " && /seed \\d+/.test(document.querySelector('#generate-status').textContent)"
    )
    seed = re.search(r"seed (\d+)", page.text_content("#generate-status"))
    assert seed, page.text_content("#generate-status")
    return int(seed.group(1))


def submit_and_wait(page: Any) -> str:
    page.click("#submit-button")
    page.wait_for_selector("#results-summary [data-batch-id]")
    page.wait_for_function("!document.querySelector('#submit-button').disabled")
    return page.get_attribute("#results-summary [data-batch-id]", "data-batch-id")


def cards(page: Any) -> dict[str, dict[str, str]]:
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#result-cards .result-card')]
            .map(card => [card.dataset.writer, {
                status: card.dataset.status,
                rows: card.querySelector("[data-metric='rows_written']").textContent,
                error: card.querySelector('.result-error')?.textContent ?? '',
            }]))"""
    )


def delta_table(app: RunningApp, table: str) -> list[dict[str, Any]]:
    from deltalake import DeltaTable

    return DeltaTable(str(app.delta_path(table))).to_pyarrow_table().to_pylist()


# -- tests --------------------------------------------------------------------------------


def test_telemetry_form_generates_and_writes_through_zerobus(
    open_page: Any, app: RunningApp
) -> None:
    page = open_page()
    telemetry = workload(app, "telemetry")
    options = page.eval_on_selector_all("#workload option", "os => os.map(o => o.value)")
    assert options[:2] == ["products", "telemetry"]
    pick_workload(page, "telemetry")

    # A field per property of the workload's input schema, in its order.
    fields = head_fields(page)
    assert fields == list(telemetry["input_schema"]["properties"])
    for name in ("driver_id", "latitude", "event_time"):
        assert name in fields
    assert field(page, 1, "latitude").get_attribute("type") == "number"
    assert field(page, 1, "battery_pct").get_attribute("step") == "1"
    assert field(page, 1, "event_time").get_attribute("type") == "datetime-local"
    assert field(page, 1, "driver_id").get_attribute("type") == "text"
    # Required fields are marked; nullable ones are not, and may stay empty.
    required = set(telemetry["input_schema"]["required"])
    for name in fields:
        mark = page.locator(f"#rows-head th[data-field='{name}'] .required-mark")
        assert mark.count() == (1 if name in required else 0), name
        control = field(page, 1, name)
        assert control.get_attribute("aria-required") == ("true" if name in required else None)
    assert "TIMESTAMP, UTC" in page.text_content("#rows-head th[data-field='event_time']")
    label = rows(page).nth(0).locator("td[data-field='latitude'] label")
    assert label.text_content() == "latitude, row 1"

    # Generate fills every row from the workload's own generator.
    seed = generate(page, 4)
    samples = get_json(app, f"/api/v1/workloads/telemetry/sample-items?count=4&seed={seed}")
    shown = [{name: field(page, i + 1, name).input_value() for name in fields} for i in range(4)]
    for item, row in zip(samples, shown, strict=True):
        assert row["driver_id"] == item["driver_id"]
        assert float(row["latitude"]) == item["latitude"]
        assert row["status"] == item["status"]
        assert row["event_time"], row
        assert row["order_id"] == (item["order_id"] or "")
    # An edited time is sent as UTC.
    field(page, 1, "event_time").fill("2026-05-01T12:30:15")
    field(page, 2, "battery_pct").fill("")  # a nullable field left empty is null

    page.select_option("#writer-type", "zerobus")
    batch_id = submit_and_wait(page)
    assert cards(page) == {"zerobus": {"status": "success", "rows": "4", "error": ""}}
    assert page.get_attribute("#results-summary [data-batch-id]", "data-workload") == "telemetry"
    screenshot(page, "workloads-desktop-telemetry")

    written = [r for r in delta_table(app, "main.default.telemetry") if r["batch_id"] == batch_id]
    assert len(written) == 4
    assert {r["source"] for r in written} == {"zerobus"}
    by_driver = {r["driver_id"]: r for r in written}
    assert set(by_driver) == {row["driver_id"] for row in shown}
    first = by_driver[shown[0]["driver_id"]]
    assert first["event_time"] == dt.datetime(2026, 5, 1, 12, 30, 15, tzinfo=dt.UTC)
    assert by_driver[shown[1]["driver_id"]]["battery_pct"] is None
    for item, row in zip(samples[1:], shown[1:], strict=True):
        stored = by_driver[row["driver_id"]]
        assert stored["latitude"] == item["latitude"]
        assert stored["longitude"] == item["longitude"]
        # The form shows the generator's UTC time to the millisecond.
        at = stored["event_time"]
        assert at.replace(microsecond=at.microsecond // 1000 * 1000) == (
            dt.datetime.fromisoformat(row["event_time"]).replace(tzinfo=dt.UTC)
        )


def test_telemetry_form_at_phone_width(open_page: Any) -> None:
    page = open_page(PHONE)
    pick_workload(page, "telemetry")
    generate(page, 2)
    # Nothing wider than the screen; each row a card with its labels shown.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert rows(page).nth(0).locator("td[data-field='event_time'] label").is_visible()
    screenshot(page, "workloads-375-telemetry")


def test_bad_ddl_shows_the_column_and_registers_nothing(open_page: Any, app: RunningApp) -> None:
    page = open_page()
    page.click("#ddl-box summary")
    page.fill("#ddl-name", "ui_bad")
    page.fill("#ddl-text", "CREATE TABLE main.default.ui_bad (id BIGINT NOT NULL, price FOO)")
    page.click("#ddl-register")
    page.wait_for_selector("#ddl-error:not([hidden])")

    message = page.text_content("#ddl-error")
    assert "column price" in message and "FOO" in message, message
    assert page.get_attribute("#ddl-text", "aria-invalid") == "true"
    assert page.get_attribute("#ddl-text", "aria-describedby") == "ddl-error"
    assert "Nothing was registered" in page.text_content("#ddl-status")
    assert "ui_bad" not in [w["name"] for w in get_json(app, "/api/v1/workloads")]
    options = page.eval_on_selector_all("#workload option", "os => os.map(o => o.value)")
    assert "ui_bad" not in options
    assert page.input_value("#workload") == "products"  # the form is as it was
    assert head_fields(page)[0] == "product_id"
    screenshot(page, "workloads-desktop-bad-ddl")

    # Editing the DDL clears the message.
    page.fill("#ddl-text", "CREATE TABLE main.default.ui_bad (id BIGINT NOT NULL)")
    assert not page.locator("#ddl-error").is_visible()
    assert page.get_attribute("#ddl-text", "aria-invalid") is None


def test_ddl_with_a_decimal_registers_and_writes_where_it_can(
    open_page: Any, app: RunningApp
) -> None:
    page = open_page()
    page.click("#ddl-box summary")
    page.fill("#ddl-name", ORDERS)
    page.fill("#ddl-text", ORDERS_DDL)
    page.click("#ddl-register")
    page.wait_for_selector(f"#write-form[data-workload='{ORDERS}']")

    # Registered, chosen in the picker, and the form drawn from its schema.
    orders = workload(app, ORDERS)
    assert page.input_value("#workload") == ORDERS
    assert "Registered ui_orders (6 columns)" in page.text_content("#ddl-status")
    assert not page.locator("#ddl-error").is_visible()
    assert head_fields(page) == list(orders["input_schema"]["properties"])
    assert head_fields(page) == ["order_id", "total", "placed_at", "paid", "note", "tags"]
    assert "DECIMAL(10,2)" in page.text_content("#rows-head th[data-field='total']")
    assert field(page, 1, "total").get_attribute("inputmode") == "decimal"
    assert field(page, 1, "paid").get_attribute("type") == "checkbox"
    assert field(page, 1, "placed_at").get_attribute("type") == "datetime-local"
    assert rows(page).nth(0).locator("textarea[name='tags']").count() == 1

    generate(page, 3)
    field(page, 1, "order_id").fill("9007199254740993")  # past 2**53: sent as its digits
    field(page, 1, "total").fill("12.34")
    field(page, 1, "paid").check()
    field(page, 1, "note").fill("")
    # JSON that does not parse is refused at the field; nothing is sent.
    field(page, 1, "tags").fill('["a", "b"')
    page.select_option("#writer-type", "all")
    page.click("#submit-button")
    page.wait_for_selector("#alert:not([hidden])")
    tags_error = rows(page).nth(0).locator("td[data-field='tags'] .field-error")
    assert "not valid JSON" in tags_error.text_content()
    assert field(page, 1, "tags").get_attribute("aria-invalid") == "true"
    assert "Row 1, tags" in page.text_content("#alert")
    assert page.locator("#result-cards .result-card").count() == 0
    field(page, 1, "tags").fill('["a", "b"]')

    submit_and_wait(page)
    shown = cards(page)
    writers = [w["name"] for w in get_json(app, "/api/v1/writers")]
    assert list(shown) == writers
    # Zerobus (protobuf) cannot carry a DECIMAL column: unavailable, with the reason.
    assert shown["zerobus"]["status"] == "unavailable"
    assert shown["zerobus"]["rows"] == "0"
    assert "DECIMAL" in shown["zerobus"]["error"] and "total" in shown["zerobus"]["error"]
    assert "Unavailable" in shown["zerobus"]["error"]
    for writer in ("sql", "sql-copy", "lakebase", REGISTRY):
        assert shown[writer]["status"] == "success", shown[writer]
        assert shown[writer]["rows"] == "3"
    assert page.text_content("#results-summary .badge") == "partial"
    status = page.text_content("#submit-status")
    assert status.startswith("Wrote 3 rows through each of ")
    assert "; not written: Zerobus Ingest (gRPC, protobuf) unavailable" in status
    screenshot(page, "workloads-desktop-decimal-all")

    # What landed: the SQL warehouse's rows in Delta (INSERT and COPY INTO: the table has
    # no source column to tell them apart), Lakebase's in Postgres; none from Zerobus.
    stored = delta_table(app, orders["delta_table"])
    assert len(stored) == 6
    first = next(r for r in stored if r["order_id"] == 9007199254740993)
    assert first["total"] == decimal.Decimal("12.34")
    assert first["paid"] is True
    assert first["note"] is None
    assert first["tags"] == ["a", "b"]
    with postgres(app) as conn:
        row = conn.execute(
            f"SELECT total FROM {orders['postgres_table']} WHERE order_id = %s",
            (9007199254740993,),
        ).fetchone()
        count = conn.execute(f"SELECT count(*) FROM {orders['postgres_table']}").fetchone()
    assert row is not None and row[0] == decimal.Decimal("12.34")
    assert count == (3,)

    # Zerobus alone: refused as a whole (HTTP 422), with the reason, and nothing written.
    page.select_option("#writer-type", "zerobus")
    page.click("#submit-button")
    page.wait_for_selector("#alert:not([hidden])")
    alert = page.text_content("#alert")
    assert "cannot write this workload (HTTP 422)" in alert
    assert "DECIMAL(10,2)" in alert and "column total" in alert
    assert page.locator("#result-cards .result-card").count() == 0
    assert "Nothing was written" in page.text_content("#submit-status")
    assert len(delta_table(app, orders["delta_table"])) == 6


def test_registry_writer_is_listed_in_both_views(open_page: Any, app: RunningApp) -> None:
    label = RegistryCheckWriter.label
    page = open_page()
    # The Write view: its writer choice and the availability list.
    option = page.locator(f"#writer-type option[value='{REGISTRY}']")
    assert label in option.text_content()
    assert "available" in page.text_content(f"#writer-status li[data-writer='{REGISTRY}']")
    pick_workload(page, "products")
    page.select_option("#writer-type", REGISTRY)
    submit_and_wait(page)
    assert cards(page) == {REGISTRY: {"status": "success", "rows": "1", "error": ""}}
    assert label in page.text_content("#result-cards")

    # The Benchmark form: a checkbox of its own, with its label and the registry's colour.
    bench = open_page(view="benchmark")
    choice = bench.locator(f"#bench-writer-choices label[data-writer='{REGISTRY}']")
    assert label in choice.text_content()
    assert choice.locator(f"input[name='writers'][value='{REGISTRY}']").count() == 1
    swatch = choice.locator(".writer-swatch").evaluate("e => getComputedStyle(e).backgroundColor")
    assert swatch == "rgb(18, 184, 134)"  # RegistryCheckWriter.color

    # The workload picker: telemetry takes a fleet size; products does not.
    bench.select_option("#bench-workload", "products")
    assert bench.locator("#bench-drivers").is_hidden()
    bench.select_option("#bench-workload", "telemetry")
    assert bench.locator("#bench-drivers").is_visible()
    bench.fill("#bench-drivers", "7")
    for box in bench.query_selector_all("#bench-form input[name='writers']"):
        if box.is_checked() != (box.get_attribute("value") in (REGISTRY, "null")):
            box.click()
    bench.check("#bench-form input[name='length_kind'][value='records']")
    bench.fill("#bench-records", "500")
    bench.fill("#bench-batch_size", "50")
    bench.fill("#bench-record_bytes", "0")
    bench.fill("#bench-rate", "")
    bench.click("#bench-start")
    bench.wait_for_selector("#bench-live:not([hidden])")
    run_id = bench.get_attribute("#bench-live", "data-run-id")
    bench.wait_for_selector(
        f"#bench-result:not([hidden])[data-run-id='{run_id}']", timeout=RUN_TIMEOUT_MS
    )

    run = get_json(app, f"/api/v1/benchmarks/{run_id}")
    chosen = [
        w["name"]
        for w in get_json(app, "/api/v1/writers?baseline=true")
        if w["name"] in (REGISTRY, "null")
    ]
    assert run["config"]["workload"] == "telemetry"
    assert run["config"]["drivers"] == 7
    assert run["config"]["writers"] == chosen  # in the form's order, the registry's
    assert run["workload"]["name"] == "telemetry"
    meta = bench.locator("#bench-result-meta [data-field='workload']")
    assert meta.get_attribute("data-workload") == "telemetry"
    assert "telemetry" in meta.text_content()
    assert "7 drivers" in bench.text_content("#bench-result-meta")
    row = bench.locator(f"#bench-table tbody tr[data-writer='{REGISTRY}']")
    assert label in row.text_content()
    assert bench.get_attribute("#bench-pct-chart", "data-writers") == " ".join(chosen)
    # The history names the workload of each run.
    bench.wait_for_selector(
        f"#bench-history-rows tr[data-run-id='{run_id}'] .workload-name[data-workload='telemetry']"
    )
    screenshot(bench, "workloads-desktop-bench-registry")
