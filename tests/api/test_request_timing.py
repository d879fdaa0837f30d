"""The timing headers the benchmarks rely on: Server-Timing, X-Request-Id, X-App-Clock."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from api.middleware import RequestLogMiddleware

ITEM = {"product_id": "T1", "product_name": "Timer", "product_price": 1.5, "category": "home"}


def test_server_timing_spans_the_writers_time_and_fits_in_the_latency(client: Any) -> None:
    started = time.perf_counter()
    response = client.post(
        "/api/v1/process-structured", json={"writer_type": "zerobus", "items": [ITEM] * 3}
    )
    latency_ms = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, response.text
    match = re.fullmatch(r"app;dur=(\d+\.\d{3})", response.headers["server-timing"])
    assert match, response.headers["server-timing"]
    app_ms = float(match.group(1))
    writer_ms = response.json()["results"][0]["processing_time_ms"]
    assert writer_ms > 0
    assert writer_ms <= app_ms <= latency_ms
    assert re.fullmatch(r"[0-9a-f]{12}", response.headers["x-request-id"])
    assert "x-app-clock" not in response.headers  # only when a benchmark asks for it


async def _hello(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


@pytest.mark.parametrize("expose", [False, True])
async def test_app_clock_is_the_monotonic_time_the_request_started(expose: bool) -> None:
    app = RequestLogMiddleware(_hello, expose_clock=expose)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        before = time.perf_counter()
        response = await http.get("/")
        after = time.perf_counter()
    assert response.text == "hello"
    if not expose:
        assert "x-app-clock" not in response.headers
        return
    clock = float(response.headers["x-app-clock"])
    assert before <= clock <= after
    dur_ms = float(response.headers["server-timing"].removeprefix("app;dur="))
    assert clock + dur_ms / 1000 <= after
