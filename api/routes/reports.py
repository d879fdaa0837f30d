"""A stored run as a report to share, its label, and its removal.

Beside the benchmark routes (same prefix, same errors): the report of a finished run as one
self-contained HTML page or a Markdown summary (`bench.report`), a label given to a run
(PATCH), and DELETE, which removes the run's result file and CSV. While a run is going on,
none of these apply to it (409): its files are written when it finishes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api.deps import RuntimeDep
from api.models import ErrorBody
from api.routes.benchmarks import PREFIX, RunSummary
from bench.report import render_html, render_markdown, report_filename
from bench.store import LABEL_MAX, summary
from dwbench.errors import BenchmarkError

router = APIRouter(tags=["benchmarks"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no run with that id"},
    409: {"model": ErrorBody, "description": "the run has not finished"},
}
# The report names no other resource: nothing loads, even opened from the app's origin.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
_FORMATS = {
    "html": ("text/html; charset=utf-8", ".html", render_html),
    "md": ("text/markdown; charset=utf-8", ".md", render_markdown),
}


class RunLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(
        max_length=LABEL_MAX,
        description="a name for the run, shown in the history and the reports; null or blank "
        "removes it",
        examples=["baseline before the batching change"],
    )


def _not_found(run_id: str) -> JSONResponse:
    body = ErrorBody(error="not_found", message=f"no benchmark run {run_id!r}")
    return JSONResponse(body.model_dump(), status_code=404)


@router.get(
    f"{PREFIX}/{{run_id}}/report",
    response_class=Response,
    responses={
        200: {"content": {"text/html": {}, "text/markdown": {}}},
        **_ERRORS,
    },
)
async def download_report(
    run_id: str,
    runtime: RuntimeDep,
    format: Annotated[
        Literal["html", "md"],
        Query(description="html: one self-contained page; md: a summary for a pull request"),
    ] = "html",
) -> Response:
    """A finished run's report as an attachment: an HTML page that loads nothing, or Markdown."""
    manager = runtime.benchmarks
    if manager.is_running(run_id):
        raise BenchmarkError(
            f"benchmark {run_id} is still running; its report is ready when it finishes"
        )
    try:
        run = manager.store.load(run_id)
    except KeyError:
        return _not_found(run_id)
    media_type, suffix, render = _FORMATS[format]
    headers = {
        "Content-Disposition": f'attachment; filename="{report_filename(run.id, suffix)}"',
        "X-Content-Type-Options": "nosniff",
    }
    if format == "html":
        headers["Content-Security-Policy"] = REPORT_CSP
    return Response(render(run), media_type=media_type, headers=headers)


@router.patch(f"{PREFIX}/{{run_id}}", response_model=RunSummary, responses=_ERRORS)
async def label_benchmark(
    run_id: str, body: RunLabel, runtime: RuntimeDep
) -> RunSummary | JSONResponse:
    """Give a finished run a label (stored in its result file), or remove it."""
    try:
        run = runtime.benchmarks.set_label(run_id, body.label)
    except KeyError:
        return _not_found(run_id)
    return RunSummary.model_validate(summary(run))


@router.delete(f"{PREFIX}/{{run_id}}", status_code=204, responses=_ERRORS)
async def delete_benchmark(run_id: str, runtime: RuntimeDep) -> Response:
    """Remove a finished run: its result file and its CSV."""
    try:
        runtime.benchmarks.delete(run_id)
    except KeyError:
        return _not_found(run_id)
    return Response(status_code=204)
