"""Sweeps: start one, list them, read one (with its progress while it runs), cancel it, and
its HTML report. Thin adapters over `bench.sweep_manager.SweepManager`; a sweep and a
benchmark run share the targets, so starting either while the other goes on is a 409."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from api.deps import RuntimeDep, SettingsDep
from api.models import ErrorBody
from bench.sweep import SweepConfig, SweepResult, SweepStatus
from bench.sweep_report import render_sweep_html

router = APIRouter(tags=["sweeps"])

PREFIX = "/api/v1/sweeps"
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no sweep with that id"}
}


class SweepProgress(BaseModel):
    point: int = Field(description="the point under way, from 1 (0: none started yet)")
    points: int = Field(description="points in the grid")
    batch_size: int | None
    concurrency: int | None
    run: dict[str, Any] | None = Field(
        description="that point's run progress, as the benchmark WebSocket sends it"
    )


class SweepView(SweepResult):
    progress: SweepProgress | None = Field(
        default=None, description="while the sweep runs: which point, of how many"
    )


class SweepLinks(BaseModel):
    result: str = Field(description="GET: the sweep, with its progress while it runs")
    cancel: str = Field(description="POST: stop the sweep, keep the points measured")
    report: str = Field(description="GET: the HTML report")


class StartedSweep(BaseModel):
    id: str
    status: SweepStatus
    points: int
    links: SweepLinks


class SweepSummary(BaseModel):
    """One line of the sweep history."""

    id: str
    mode: str
    status: SweepStatus
    started_at: str
    writers: list[str]
    batch_sizes: list[int]
    concurrencies: list[int]
    points: int
    best: dict[str, dict[str, Any] | None] = Field(
        description="per writer: the best point (batch_size, concurrency, rows_per_s, p99_ms)"
    )


def _not_found(sweep_id: str) -> JSONResponse:
    body = ErrorBody(error="not_found", message=f"no sweep {sweep_id!r}")
    return JSONResponse(body.model_dump(), status_code=404)


@router.post(
    PREFIX,
    status_code=202,
    responses={409: {"model": ErrorBody, "description": "a run or another sweep is going on"}},
)
async def start_sweep(
    config: SweepConfig, runtime: RuntimeDep, settings: SettingsDep, response: Response
) -> StartedSweep:
    """Start a sweep in the background: every grid point a full run of every writer.

    Refused (422, `over_budget`) when a point's in-flight memory passes the budget, as a
    benchmark run would be."""
    budget = settings.benchmark_memory_budget_mib
    run = await runtime.sweeps.start(config, memory_budget_mib=budget)
    response.headers["Location"] = f"{PREFIX}/{run.id}"
    return StartedSweep(
        id=run.id,
        status=run.status,
        points=len(run.points),
        links=SweepLinks(
            result=f"{PREFIX}/{run.id}",
            cancel=f"{PREFIX}/{run.id}/cancel",
            report=f"{PREFIX}/{run.id}/report",
        ),
    )


@router.get(PREFIX)
async def list_sweeps(runtime: RuntimeDep) -> list[SweepSummary]:
    """Every sweep, newest first; the running one, if any, comes first."""
    return [SweepSummary.model_validate(s) for s in runtime.sweeps.history()]


@router.get(f"{PREFIX}/{{sweep_id}}", response_model=SweepView, responses=_NOT_FOUND)
async def get_sweep(sweep_id: str, runtime: RuntimeDep) -> SweepView | JSONResponse:
    """The sweep's points, best settings and knees; while it runs, which point it is at."""
    try:
        sweep = runtime.sweeps.get(sweep_id)
    except KeyError:
        return _not_found(sweep_id)
    progress = runtime.sweeps.progress(sweep_id)
    return SweepView.model_validate(
        {**sweep.model_dump(), "progress": progress and SweepProgress.model_validate(progress)}
    )


@router.post(f"{PREFIX}/{{sweep_id}}/cancel", response_model=SweepResult, responses=_NOT_FOUND)
async def cancel_sweep(sweep_id: str, runtime: RuntimeDep) -> SweepResult | JSONResponse:
    """Stop the sweep: the point under way is cut short, the rest skipped; a no-op if done."""
    try:
        return await runtime.sweeps.cancel(sweep_id)
    except KeyError:
        return _not_found(sweep_id)


@router.get(
    f"{PREFIX}/{{sweep_id}}/report",
    response_class=HTMLResponse,
    response_model=None,
    responses=_NOT_FOUND,
)
async def sweep_report(sweep_id: str, runtime: RuntimeDep) -> HTMLResponse | JSONResponse:
    """The sweep as one self-contained HTML page (heatmaps per writer, best and knee marked)."""
    try:
        sweep = runtime.sweeps.get(sweep_id)
    except KeyError:
        return _not_found(sweep_id)
    return HTMLResponse(render_sweep_html(sweep))
