from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.deps import RuntimeDep, SettingsDep
from api.models import ErrorBody, ErrorInfo, ProcessResponse, WriterResult, process_request_model
from bench.measure import WriteOutcome, measured_write
from dwbench.errors import (
    RequestTooLargeError,
    UnknownWriterError,
    WriteFailedError,
    WriterUnavailableError,
)
from dwbench.runtime import Runtime
from workloads.base import Workload
from workloads.inputs import build_rows, new_batch_id
from writers import WRITERS, ingest_writers, writer_class

router = APIRouter(tags=["ingest"])
log = structlog.get_logger(__name__)


def _writer_names(writer_type: str) -> tuple[str, ...]:
    ingest = tuple(ingest_writers())
    if writer_type == "all":
        return ingest
    if writer_type in ingest:
        return (writer_type,)
    valid = f"{', '.join(ingest)} or 'all'"
    if writer_type in WRITERS:
        raise UnknownWriterError(
            f"writer {writer_type!r} is a benchmark baseline that stores nothing; "
            f"writer_type must be {valid}"
        )
    raise UnknownWriterError(f"unknown writer {writer_type!r}; writer_type must be {valid}")


def _result(outcome: WriteOutcome, label: str) -> WriterResult:
    error = None
    if outcome.error is not None:
        error = ErrorInfo(
            kind="unavailable" if outcome.status == "unavailable" else "write_failed",
            message=outcome.error.message,
        )
    return WriterResult(
        writer=outcome.writer,
        label=label,
        status=outcome.status,
        rows_written=outcome.rows_written,
        processing_time_ms=round(outcome.elapsed_s * 1000, 3),
        throughput_records_per_sec=round(outcome.rows_per_s, 1),
        details=outcome.details,
        error=error,
    )


_SCHEMA_TYPE = re.compile(rb'"schema_type"\s*:\s*"([A-Za-z0-9_-]{1,64})"')


async def _process_request(request: Request, runtime: Runtime) -> tuple[Workload, Any]:
    # One pass of pydantic over the raw JSON: about a third cheaper per request than
    # FastAPI's json.loads followed by validation of the Python objects. The workload's
    # name is looked up first, so that its own model validates the items; that model
    # checks schema_type again, so a body that names two is refused.
    body = await request.body()
    named = _SCHEMA_TYPE.findall(body)
    workload = runtime.workloads.get(named[0].decode() if len(named) == 1 else "products")
    model = process_request_model(workload)
    try:
        return workload, model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


@router.post(
    "/api/v1/process-structured",
    # The body is read by _process_request; its schema is declared here for the OpenAPI.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ProcessRequest"}}
            },
        }
    },
    responses={
        400: {"model": ErrorBody, "description": "unknown writer"},
        413: {"model": ErrorBody, "description": "too many items or too large a body"},
        502: {"model": ErrorBody, "description": "the target failed the write"},
        503: {"model": ErrorBody, "description": "the writer cannot reach its target"},
    },
)
async def process_structured(
    request: Request, runtime: RuntimeDep, settings: SettingsDep
) -> ProcessResponse:
    """Write the items durably through one writer, or through every writer side by side."""
    workload, body = await _process_request(request, runtime)
    if len(body.items) > settings.max_items_per_request:
        raise RequestTooLargeError(
            f"{len(body.items)} items in one request; the limit is "
            f"{settings.max_items_per_request}: split the batch"
        )
    names = _writer_names(body.writer_type)
    skip = set(body.skip) if body.writer_type == "all" else set()
    batch_id = new_batch_id()
    processed_at = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    results: list[WriterResult] = []
    outcomes: list[WriteOutcome] = []
    await runtime.ensure_tables(workload)
    for name in names:
        label = name
        try:
            label = writer_class(name).label
            if name in skip:
                raise WriterUnavailableError(
                    "skipped: the last availability check showed it unavailable (refresh the "
                    "writers to try it again)",
                    writer=name,
                )
            writer = await runtime.writers.get(name)
            await writer.prepare(workload.table)
        except WriterUnavailableError as exc:
            outcome = WriteOutcome(name, "unavailable", 0, 0.0, error=exc)
        else:
            rows = build_rows(
                workload, body.items, batch_id=batch_id, source=name, processed_at=processed_at
            )
            outcome = await measured_write(writer, rows)
        if outcome.status != "success":
            log.warning(
                "write_failed",
                batch_id=batch_id,
                writer=name,
                status=outcome.status,
                error=outcome.error.message if outcome.error else None,
            )
        outcomes.append(outcome)
        results.append(_result(outcome, label))
    elapsed = time.perf_counter() - started

    succeeded = [o for o in outcomes if o.status == "success"]
    if not succeeded:
        if len(outcomes) == 1 and outcomes[0].error is not None:
            raise outcomes[0].error
        reasons = "; ".join(
            f"{o.writer}: {o.error.message if o.error else o.status}" for o in outcomes
        )
        if all(o.status == "unavailable" for o in outcomes):
            raise WriterUnavailableError(f"no writer could write: {reasons}")
        raise WriteFailedError(f"no writer wrote the batch: {reasons}")
    written = sum(o.rows_written for o in succeeded)
    # Carried on the request's one log line (api.middleware.RequestLogMiddleware).
    structlog.contextvars.bind_contextvars(batch_id=batch_id, writer=body.writer_type, rows=written)
    return ProcessResponse(
        batch_id=batch_id,
        writer_type=body.writer_type,
        status="success" if len(succeeded) == len(outcomes) else "partial",
        processed_count=written,
        processing_time_ms=round(elapsed * 1000, 3),
        throughput_records_per_sec=round(written / elapsed, 1) if elapsed > 0 else 0.0,
        results=results,
    )
