"""Benchmark runs: start, list, read, cancel, download, compare, and watch progress live.

The routes are thin adapters over `bench.manager.BenchmarkManager` (one run at a time; a
second start is a BenchmarkError, 409). Progress streams over a WebSocket as the manager's
own messages, one JSON text frame each:

    {"type": "progress", "run_id", "status", "writers": [{writer, status, phase, rows, ...}]}
    {"type": "finished", "run": {id, status, partial, started_at, writers, workload}}
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Query, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from api.deps import RuntimeDep, SettingsDep
from api.models import ErrorBody
from bench.config import BenchmarkConfig
from bench.manager import BenchmarkManager
from bench.results import RunResult, RunStatus, WriterStatus
from bench.store import compare_json, summary
from dwbench.errors import BenchmarkError
from dwbench.runtime import Runtime

router = APIRouter(tags=["benchmarks"])
log = structlog.get_logger(__name__)

PREFIX = "/api/v1/benchmarks"
WS_NOT_FOUND = 4404  # the 4xxx range is the application's; 4404 mirrors HTTP 404
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no run with that id"}
}


class WriterSummary(BaseModel):
    writer: str
    status: WriterStatus
    rows_per_s: float
    p99_ms: float | None


class WorkloadSummary(BaseModel):
    records: int | None
    duration_s: float | None
    batch_size: int
    concurrency: int
    rate: int | None
    record_bytes: int
    repeat: int = 1


class RunSummary(BaseModel):
    """One line of the run history."""

    id: str
    label: str | None = Field(default=None, description="the name the user gave the run")
    mode: str = Field(description="local (the local stack's stand-ins) or databricks")
    status: RunStatus
    partial: bool
    started_at: str
    writers: list[WriterSummary]
    workload: WorkloadSummary


class RunLinks(BaseModel):
    result: str = Field(description="GET: the result, partial while the run goes on")
    cancel: str = Field(description="POST: stop the run and keep what was measured")
    progress: str = Field(description="WebSocket: progress once a second, then 'finished'")
    result_json: str = Field(description="GET: the result file, once the run has finished")
    result_csv: str = Field(description="GET: the CSV summary, once the run has finished")


class StartedRun(RunSummary):
    links: RunLinks


class MetricDiff(BaseModel):
    writer: str
    metric: str
    a: float | None
    b: float | None
    change: float | None = Field(description="relative, (b - a) / a")
    better: Literal["a", "b"] | None = Field(description="None unless one run is better")
    within_noise: bool
    noise: float = Field(description="relative change below which a difference is never called")
    decision: Literal["a better", "b better", "within noise", "not enough data", "not comparable"]
    reason: str | None = Field(description="why the decision is what it is")
    a_interval: tuple[float, float] | None = Field(
        description="95 % interval of A's median (bench.intervals); none: not enough data"
    )
    b_interval: tuple[float, float] | None


class WriterOnlyIn(BaseModel):
    writer: str
    label: str
    status: str


class Comparison(BaseModel):
    a: str
    b: str
    notes: list[str] = Field(description="what differs between the runs, to read first")
    only_in_a: list[WriterOnlyIn] = Field(description="writers of A that B does not have")
    only_in_b: list[WriterOnlyIn]
    diffs: list[MetricDiff]


def _not_found(run_id: str) -> JSONResponse:
    body = ErrorBody(error="not_found", message=f"no benchmark run {run_id!r}")
    return JSONResponse(body.model_dump(), status_code=404)


def _links(run_id: str) -> RunLinks:
    return RunLinks(
        result=f"{PREFIX}/{run_id}",
        cancel=f"{PREFIX}/{run_id}/cancel",
        progress=f"/ws/benchmarks/{run_id}",
        result_json=f"{PREFIX}/{run_id}/result.json",
        result_csv=f"{PREFIX}/{run_id}/result.csv",
    )


@router.post(
    PREFIX,
    status_code=202,
    responses={409: {"model": ErrorBody, "description": "another run is going on"}},
)
async def start_benchmark(
    config: BenchmarkConfig, runtime: RuntimeDep, settings: SettingsDep, response: Response
) -> StartedRun:
    """Start a run in the background; watch it over the WebSocket or poll its result.

    Refused (422, `over_budget`) when the batches it would hold at once pass the memory
    budget: concurrency x batch_size x (Arrow + encoded bytes per row), per writer running
    at once (`bench.config.in_flight_memory`)."""
    budget = settings.benchmark_memory_budget_mib
    run = await runtime.benchmarks.start(config, memory_budget_mib=budget)
    response.headers["Location"] = f"{PREFIX}/{run.id}"
    return StartedRun.model_validate({**summary(run.result()), "links": _links(run.id)})


@router.get(PREFIX)
async def list_benchmarks(runtime: RuntimeDep) -> list[RunSummary]:
    """Every run, newest first; the running one, if any, comes first."""
    return [RunSummary.model_validate(r) for r in runtime.benchmarks.history()]


@router.get(f"{PREFIX}/compare", response_model=Comparison, responses=_NOT_FOUND)
async def compare_benchmarks(
    runtime: RuntimeDep,
    a: Annotated[str, Query(description="the baseline run's id")],
    b: Annotated[str, Query(description="the run compared with it")],
) -> Comparison | JSONResponse:
    """Per writer and metric, the change from run a to run b and whether it is within noise."""
    runs = []
    for run_id in (a, b):
        try:
            runs.append(runtime.benchmarks.get(run_id))
        except KeyError:
            return _not_found(run_id)
    return Comparison.model_validate(compare_json(*runs))


@router.get(f"{PREFIX}/{{run_id}}", response_model=RunResult, responses=_NOT_FOUND)
async def get_benchmark(run_id: str, runtime: RuntimeDep) -> RunResult | JSONResponse:
    """The run's full result; while it runs, the result so far (status running, partial)."""
    try:
        return runtime.benchmarks.get(run_id)
    except KeyError:
        return _not_found(run_id)


@router.post(f"{PREFIX}/{{run_id}}/cancel", response_model=RunResult, responses=_NOT_FOUND)
async def cancel_benchmark(run_id: str, runtime: RuntimeDep) -> RunResult | JSONResponse:
    """Stop the run and keep what was measured (status cancelled, partial); a no-op if done."""
    try:
        return await runtime.benchmarks.cancel(run_id)
    except KeyError:
        return _not_found(run_id)


def _download(runtime: Runtime, run_id: str, suffix: str, media_type: str) -> Any:
    manager: BenchmarkManager = runtime.benchmarks
    if manager.is_running(run_id):
        raise BenchmarkError(
            f"benchmark {run_id} is still running; its files are written when it finishes"
        )
    try:
        path = manager.store.path(run_id, suffix)
    except KeyError:
        return _not_found(run_id)
    if not path.is_file():
        return _not_found(run_id)
    return FileResponse(path, media_type=media_type, filename=f"dwbench-{run_id}{suffix}")


_DOWNLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    **_NOT_FOUND,
    409: {"model": ErrorBody, "description": "the run has not finished"},
}


@router.get(
    f"{PREFIX}/{{run_id}}/result.json",
    response_class=FileResponse,
    response_model=None,
    responses={200: {"content": {"application/json": {}}}, **_DOWNLOAD_ERRORS},
)
async def download_json(run_id: str, runtime: RuntimeDep) -> Any:
    """The result file of a finished run, as an attachment."""
    return _download(runtime, run_id, ".json", "application/json")


@router.get(
    f"{PREFIX}/{{run_id}}/result.csv",
    response_class=FileResponse,
    response_model=None,
    responses={200: {"content": {"text/csv": {}}}, **_DOWNLOAD_ERRORS},
)
async def download_csv(run_id: str, runtime: RuntimeDep) -> Any:
    """The CSV summary of a finished run (one row per writer), as an attachment."""
    return _download(runtime, run_id, ".csv", "text/csv")


@router.websocket("/ws/benchmarks/{run_id}")
async def benchmark_progress(websocket: WebSocket, run_id: str) -> None:
    """Progress of a run once a second, then one 'finished' message; 4404 for no such run."""
    manager: BenchmarkManager = websocket.app.state.runtime.benchmarks
    if not manager.is_running(run_id):
        # Accepted before closing: a close before accept reaches the client as HTTP 403,
        # without the code and reason.
        with contextlib.suppress(WebSocketDisconnect):
            await websocket.accept()
            try:
                result = manager.get(run_id)
            except KeyError:
                await websocket.close(WS_NOT_FOUND, _reason(f"no benchmark run {run_id!r}"))
                return
            await websocket.send_json({"type": "finished", "run": summary(result)})
            await websocket.close()
        return
    # Subscribed in the same step as the check above, so no message can fall in between.
    queue = manager.subscribe(run_id)
    gone: asyncio.Task[None] | None = None
    message: asyncio.Task[dict[str, Any]] | None = None
    try:
        await websocket.accept()
        gone = asyncio.create_task(_until_disconnect(websocket))
        while True:
            message = asyncio.create_task(queue.get())
            await asyncio.wait({message, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not message.done():  # the client left first
                return
            await websocket.send_json(message.result())
            if message.result()["type"] == "finished":
                break
        await websocket.close()
    except WebSocketDisconnect:
        pass
    finally:
        manager.unsubscribe(run_id, queue)
        for task in (message, gone):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


async def _until_disconnect(websocket: WebSocket) -> None:
    """Return when the client goes away (whatever it sends meanwhile is ignored)."""
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


def _reason(text: str) -> str:
    # A close frame's reason is at most 123 bytes of UTF-8.
    return text.encode()[:123].decode(errors="ignore")
