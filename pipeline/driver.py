"""Driving a pipeline run through the app's own API, as the live map does.

The app is served on a loopback port (in this process, or already running elsewhere); a
run is started with POST /api/v1/pipeline/runs, one WebSocket client per path watches
(`pipeline.watch`, reporting receipts: the "browser" hop), and the result comes from
GET /api/v1/pipeline/runs/current/result. The CLI and the benchmark share this.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn

from dwbench.errors import DirectWriteError
from pipeline.watch import WatchStats, watch

RUNS = "/api/v1/pipeline/runs"


class PipelineRunFailed(DirectWriteError):
    status_code = 500
    error = "pipeline_failed"


@asynccontextmanager
async def served(app: Any) -> AsyncIterator[str]:
    """Serve an ASGI app (lifespan included) on a free loopback port; yield its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # start-up failed: its error
            raise PipelineRunFailed("the app stopped while starting")
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def drive(
    url: str,
    config: dict[str, Any],
    *,
    on_status: Callable[[dict[str, Any]], None] | None = None,
    stop: asyncio.Event | None = None,
    paths: tuple[str, ...] = ("realtime", "synced"),
) -> dict[str, Any]:
    """Start a run on the app at `url`, watch it on every path, return its result."""
    stop = stop or asyncio.Event()
    done = asyncio.Event()
    stats = {path: WatchStats() for path in paths}
    ws = url.replace("http://", "ws://", 1)
    watchers = [
        asyncio.create_task(watch(f"{ws}/ws/fleet?path={path}", done, stats[path]))
        for path in paths
    ]
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            started = await http.post(RUNS, json=config)
            if started.status_code != 201:
                raise PipelineRunFailed(
                    f"the app refused the run ({started.status_code}): {started.text[:500]}"
                )
            stopping = False
            while True:
                await asyncio.sleep(1.0)
                status = (await http.get(f"{RUNS}/current")).json()
                if on_status is not None:
                    on_status(status)
                if status["status"] in ("completed", "failed"):
                    break
                if stop.is_set() and not stopping:
                    stopping = True
                    await http.post(f"{RUNS}/current/stop")
            result: dict[str, Any] = (await http.get(f"{RUNS}/current/result")).json()
    finally:
        done.set()
        await asyncio.gather(*watchers, return_exceptions=True)
    result["watchers"] = {path: vars(s) for path, s in stats.items()}
    return result
