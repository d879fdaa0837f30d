"""What a web page in the developer's browser can make the local app do: nothing.

A cross-site page can send "simple" requests (text/plain, forms) without a CORS preflight,
and a DNS-rebinding page reaches the app under its own host name; both are refused, while
the app's own page (same origin, JSON) and clients without an Origin keep working.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import websockets
from starlette.types import Receive, Scope, Send

from api.middleware import BrowserGuardMiddleware
from tests.api.test_ingest import WATCH, delta_rows

ITEM_BODY = {"schema_type": "products", "writer_type": "zerobus", "items": [WATCH]}


def _batches_written(endpoints: dict[str, Any], batch_id: str) -> int:
    return len(delta_rows(endpoints, batch_id, "zerobus"))


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", None],
)
def test_a_cross_site_simple_post_writes_nothing(client, local_stack, content_type):
    batch_id = "csrf-" + (content_type or "none").replace("/", "-").replace(";", "-")
    body = json.dumps({**ITEM_BODY, "batch_id": batch_id}).encode()
    headers = {"origin": "https://evil.example"}
    if content_type is not None:
        headers["content-type"] = content_type
    resp = client.post("/api/v1/process-structured", content=body, headers=headers)
    assert resp.status_code == 415, resp.text
    assert resp.json() == {
        "error": "unsupported_media_type",
        "message": "POST /api/v1/process-structured takes Content-Type: application/json, "
        f"got {(content_type or 'none')!r}",
    }
    assert _batches_written(local_stack, batch_id) == 0


def test_a_cross_origin_json_or_bodyless_post_is_refused(client):
    resp = client.post(
        "/api/v1/process-structured", json=ITEM_BODY, headers={"origin": "https://evil.example"}
    )
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"] == "cross_origin_request"
    cancel = client.post("/api/v1/benchmarks/nope/cancel", headers={"origin": "null"})
    assert cancel.status_code == 403, cancel.text


def test_the_apps_own_origin_and_clients_without_one_still_write(client, app_server):
    own = client.post(
        "/api/v1/process-structured", json=ITEM_BODY, headers={"origin": app_server.url}
    )
    assert own.status_code == 200, own.text
    plain = client.post("/api/v1/process-structured", json=ITEM_BODY)
    assert plain.status_code == 200, plain.text
    # A body-less POST without Origin (curl, the CLI) reaches the route: 404 for no such run.
    assert client.post("/api/v1/benchmarks/nope/cancel").status_code == 404


@pytest.mark.parametrize(
    "path", ["/health", "/debug/writers", "/debug/zerobus-availability", "/", "/api/v1/writers"]
)
@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.nip.io"])
def test_a_rebound_host_name_is_not_served(client, path, host):
    resp = client.get(path, headers={"host": host})
    assert resp.status_code == 421, resp.text
    assert resp.json()["error"] == "invalid_host"
    assert "secret" not in resp.text.lower() and "token" not in resp.text.lower()


def test_a_rebound_host_name_cannot_post_either(client, local_stack):
    body = {**ITEM_BODY, "batch_id": "rebound-post"}
    resp = client.post("/api/v1/process-structured", json=body, headers={"host": "evil.example"})
    assert resp.status_code == 421
    assert _batches_written(local_stack, "rebound-post") == 0


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.0.0.1:8000", "[::1]:8000"])
def test_loopback_names_are_served(client, host):
    assert client.get("/health", headers={"host": host}).status_code == 200


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_databricks_mode_leaves_host_and_origin_to_the_apps_proxy() -> None:
    transport = httpx.ASGITransport(app=BrowserGuardMiddleware(_ok, local=False))
    async with httpx.AsyncClient(transport=transport, base_url="https://my-app.example") as http:
        assert (await http.get("/debug/writers")).status_code == 200
        headers = {"origin": "https://elsewhere.example"}
        assert (await http.post("/x", json={}, headers=headers)).status_code == 200
        text = await http.post("/x", content=b"{}", headers={"content-type": "text/plain"})
        assert text.status_code == 415


async def test_a_websocket_from_another_origin_or_host_is_refused(app_server):
    url = app_server.url.replace("http://", "ws://") + "/ws/benchmarks/nope"
    for headers in ({"Origin": "https://evil.example"}, {"Host": "evil.example"}):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url, additional_headers=headers):
                pass
        assert refused.value.response.status_code == 403
    # The app's own page reaches the route (which closes: no such run).
    async with websockets.connect(url, additional_headers={"Origin": app_server.url}) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404
