"""The Live map in a real browser (Playwright, Debian's Chromium) against the real app in
local mode: a small fleet started from the form moves on the map over the city's streets,
fed by the real-time path's WebSocket; the freshness panel fills hop by hop (the browser's
own receive times included, which only this page reports); the synced path shows the same
drivers once synced; the page loads nothing from outside the app."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.browser_support import (
    DESKTOP,
    RunningApp,
    chromium,
    running_app,
    screenshot,
    watched_pages,
)

pytestmark = pytest.mark.browser

DRIVERS = 40


@pytest.fixture(scope="module")
def app() -> Iterator[RunningApp]:
    with running_app("ui-map") as running:
        yield running


def marker_paths(page) -> dict[str, str]:
    """Each driver marker's SVG path (its position on screen), by driver id."""
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('path.ops-driver')]
            .map((e) => [e.getAttribute('data-driver-id'), e.getAttribute('d')]))"""
    )


def current(app: RunningApp) -> dict:
    return httpx.get(f"{app.url}/api/v1/pipeline/runs/current").json()


def wait_until(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def test_the_fleet_moves_on_the_map_and_freshness_fills(app: RunningApp) -> None:
    with chromium() as browser, watched_pages(browser) as new_page:
        page = new_page(DESKTOP)
        outside: list[str] = []
        app_host = urlsplit(app.url).netloc
        page.on(
            "request",
            lambda req: (
                outside.append(req.url)
                if urlsplit(req.url).scheme in ("http", "https", "ws", "wss")
                and urlsplit(req.url).netloc != app_host
                else None
            ),
        )
        page.goto(app.url + "/#map")
        page.wait_for_selector("#view-map:not([hidden])")
        # The basemap: one line per street of the synthetic city, drawn without tiles.
        page.wait_for_selector(".leaflet-streets-pane path", state="attached")
        streets = httpx.get(f"{app.url}/api/v1/pipeline/city").json()
        assert page.locator(".leaflet-streets-pane path").count() == len(streets["features"])
        assert page.locator(".leaflet-tile").count() == 0

        page.fill("#ops-drivers", str(DRIVERS))
        page.fill("#ops-rate", "400")
        page.fill("#ops-duration", "600")  # longer than the test: it stops the run itself
        page.click("#ops-start")
        page.wait_for_selector("#ops-stop:not([hidden])")
        page.wait_for_selector("#ops-connection[data-state='live']")

        first = wait_until(
            lambda: (paths := marker_paths(page)) and len(paths) == DRIVERS and paths,
            30,
            f"{DRIVERS} driver markers",
        )
        wait_until(
            lambda: sum(first[d] != p for d, p in marker_paths(page).items()) >= DRIVERS // 4,
            20,
            "a quarter of the drivers to move",
        )
        # The side panel is redrawn on a 250 ms timer, not with each marker.
        page.wait_for_selector(f"#kpi-drivers:text-is('{DRIVERS}')", timeout=10_000)
        # Every hop of the real-time path filled, the browser's own included.
        realtime = ["ack", "postgres", "ws_sent", "browser"]
        wait_until(
            lambda: sorted(current(app)["freshness"].get("realtime", {})) == sorted(realtime),
            30,
            "every real-time hop in the run's figures",
        )
        for hop in realtime:
            page.wait_for_selector(
                f"#ops-fresh-rows tr[data-hop='{hop}'] td:last-child:not(:text-is('0'))",
                timeout=30_000,
            )
        status = httpx.get(f"{app.url}/api/v1/pipeline/runs/current").json()
        assert status["status"] == "running"
        assert status["freshness"]["realtime"]["browser"]["count"] > 0
        screenshot(page, "ui-map-realtime")

        # The synced path: the same drivers, once the sync has carried them.
        page.check("input[name='ops-path'][value='synced']")
        page.wait_for_selector("#ops-connection:text-is('Live · synced table')")
        wait_until(lambda: len(marker_paths(page)) == DRIVERS, 40, "the synced drivers")
        page.wait_for_selector(
            "#ops-fresh-rows tr[data-hop='silver'] td:last-child:not(:text-is('0'))",
            timeout=30_000,
        )
        screenshot(page, "ui-map-synced")

        page.click("#ops-stop")
        page.wait_for_selector("#ops-start:not([hidden])", timeout=60_000)
        assert outside == [], outside
