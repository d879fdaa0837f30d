"""/docs works without internet: Swagger UI comes from static/vendor, not a CDN."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from dwbench.assets import STATIC_DIR


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
