"""/docs works without internet: Swagger UI comes from static/vendor, not a CDN."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest

from dwbench.assets import STATIC_DIR
from tests.browser_support import DESKTOP, chromium, watched_pages


def test_docs_page_loads_only_local_assets(client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "SwaggerUIBundle" in page.text
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert len(urls) >= 3, page.text  # the script, the stylesheet, the icon
    assert not re.search(r"https?://", page.text), "the page names another host"
    for url in urls:
        assert url.startswith("/static/vendor/swagger-ui/"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        local = STATIC_DIR / urlsplit(url).path.removeprefix("/static/")
        assert asset.content == local.read_bytes(), url
    assert "url: '/openapi.json'" in page.text
    assert client.get("/openapi.json").json()["paths"]


def test_redoc_and_the_cdn_default_are_gone(client) -> None:
    assert client.get("/redoc").status_code == 404


def test_vendored_swagger_ui_names_its_version_and_licence() -> None:
    vendor = STATIC_DIR / "vendor" / "swagger-ui"
    notes = (vendor / "README.md").read_text()
    assert "swagger-ui-dist@5.35.0" in notes
    assert "Apache" in (vendor / "LICENSE").read_text()
    assert (vendor / "NOTICE").is_file()


@pytest.mark.browser
def test_swagger_ui_renders_the_operations_with_no_network(app_server) -> None:
    """Chromium with every request to another host refused: the page still shows the API."""
    with chromium() as browser, watched_pages(browser) as new_page:
        page = new_page(DESKTOP)
        refused: list[str] = []

        def only_the_app(route: Any) -> None:
            if route.request.url.startswith(f"{app_server.url}/"):
                route.continue_()
            else:
                refused.append(route.request.url)
                route.abort()

        page.route("**/*", only_the_app)
        page.goto(f"{app_server.url}/docs")
        page.wait_for_selector(".opblock", timeout=30_000)
        assert page.locator(".opblock").count() >= 5
        assert "Direct Write Bench" in page.locator(".info .title").inner_text()
        assert refused == []
