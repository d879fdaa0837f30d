"""The serving path: start and watch a pipeline run, the city's streets, and the live feed.

GET  /api/v1/pipeline/city                the synthetic city's streets (GeoJSON) + bbox
POST /api/v1/pipeline/runs                start a run (409 while one runs)
GET  /api/v1/pipeline/runs/current        the run's status (404 when none ran)
POST /api/v1/pipeline/runs/current/stop   stop it
POST /api/v1/pipeline/events              events from outside (bad ones counted)
WS   /ws/fleet?path=realtime|synced       snapshot, then changes; status; ping/pong
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request, WebSocket
from pydantic import BaseModel, Field

from pipeline.run import PipelineConfig, PipelineService
from workloads.telemetry import City

PREFIX = "/api/v1/pipeline"
MAX_EVENTS = 10_000


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Inside the app's own lifespan: the runtime has started, and stops after this.
    app.state.pipeline = PipelineService(app.state.runtime)
    try:
        yield
    finally:
        await app.state.pipeline.close()


router = APIRouter(tags=["pipeline"], lifespan=lifespan)


def _service(request: Request | WebSocket) -> PipelineService:
    service: PipelineService = request.app.state.pipeline
    return service


class EventsBody(BaseModel):
    events: list[Any] = Field(max_length=MAX_EVENTS, description="telemetry events")


@router.get(f"{PREFIX}/city")
async def city() -> dict[str, Any]:
    """The synthetic city's streets as GeoJSON, with its bounding box."""
    c = City()
    return {**c.streets(), "bbox": [c.west, c.south, c.east, c.north], "name": c.name}


@router.post(f"{PREFIX}/runs", status_code=201)
async def start_run(config: PipelineConfig, request: Request) -> dict[str, Any]:
    """Start a pipeline run: the fleet, the copy, the synced table and the real-time writer."""
    run = await _service(request).start(config)
    return run.status()


@router.get(f"{PREFIX}/runs/current")
async def current_run(request: Request) -> dict[str, Any]:
    """The current (or last) run's status, freshness per path and hop included."""
    run = _service(request).run
    if run is None:
        raise HTTPException(404, "no pipeline run has started")
    return run.status()


@router.post(f"{PREFIX}/runs/current/stop")
async def stop_run(request: Request) -> dict[str, Any]:
    """Stop the running pipeline (the fleet stops; what it wrote is flushed)."""
    run = await _service(request).stop()
    if run is None:
        raise HTTPException(404, "no pipeline run has started")
    return run.status()


@router.post(f"{PREFIX}/events")
async def post_events(body: EventsBody, request: Request) -> dict[str, Any]:
    """Events from phones: the good ones go into bronze, the bad ones are counted by kind."""
    run = _service(request).run
    if run is None:
        raise HTTPException(409, "no pipeline run is writing events now")
    return run.submit_events(body.events)


@router.websocket("/ws/fleet")
async def fleet_feed(
    websocket: WebSocket, path: Literal["realtime", "synced"] = Query("realtime")
) -> None:
    """Drivers as they change: a snapshot first, then changes, status and pings."""
    hub = await _service(websocket).hub()
    await hub.serve(websocket, path)


@router.get(f"{PREFIX}/runs/current/result")
async def current_result(request: Request) -> dict[str, Any]:
    """The run's result document: status, environment, mode and encoded histograms."""
    run = _service(request).run
    if run is None:
        raise HTTPException(404, "no pipeline run has started")
    return await asyncio.to_thread(run.result)  # the environment capture reads files
