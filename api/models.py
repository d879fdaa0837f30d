"""Request and response shapes of the HTTP API."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from workloads.base import Workload
from workloads.inputs import input_model
from workloads.products import ProductItem

SKIP_FIELD: Any = Field(
    default_factory=list,
    description="with writer_type all: writers not to try (the page sends those its last "
    "availability check showed unavailable); each is answered as unavailable, skipped",
)


class ProcessRequest(BaseModel):
    """The products workload's request (other workloads: `process_request_model`)."""

    model_config = ConfigDict(extra="forbid")

    schema_type: Literal["products"] = Field(
        default="products", description="the workload: products, telemetry, or a registered one"
    )
    writer_type: str = Field(
        description="a writer that stores rows (GET /api/v1/writers), or all (every one of "
        "them on the same items)",
        examples=["zerobus"],
    )
    items: list[ProductItem] = Field(min_length=1)  # type: ignore[valid-type]
    skip: list[str] = SKIP_FIELD


@lru_cache(maxsize=128)
def process_request_model(workload: Workload) -> type[BaseModel]:
    """The request body of POST /api/v1/process-structured for one workload."""
    if workload.name == "products" and workload.builtin:
        return ProcessRequest
    item = input_model(workload)
    return create_model(
        f"{item.__name__}ProcessRequest",
        __config__=ConfigDict(extra="forbid"),
        schema_type=(Literal[workload.name], Field()),  # type: ignore[valid-type, arg-type]
        writer_type=(str, Field(examples=["zerobus"])),
        items=(list[item], Field(min_length=1)),  # type: ignore[valid-type]
        skip=(list[str], SKIP_FIELD),
    )


class ErrorInfo(BaseModel):
    kind: Literal["unavailable", "write_failed"]
    message: str


class WriterResult(BaseModel):
    writer: str
    label: str
    status: Literal["success", "failed", "unavailable"]
    rows_written: int
    processing_time_ms: float
    throughput_records_per_sec: float
    details: dict[str, Any] = Field(
        default_factory=dict, description="the target's own identifiers: offsets, statement ids"
    )
    error: ErrorInfo | None = None


class ProcessResponse(BaseModel):
    batch_id: str
    writer_type: str
    status: Literal["success", "partial"]
    processed_count: int = Field(
        description="rows durably written, summed over the writers (with all, each writer wrote "
        "the same items: read results for what each wrote)"
    )
    processing_time_ms: float
    throughput_records_per_sec: float
    results: list[WriterResult]


WriterStatus = Literal["available", "unavailable", "restarting", "down"]


class WriterInfo(BaseModel):
    name: str
    label: str
    family: str = Field(description="zerobus, sql, lakebase or baseline")
    color: str | None = Field(description="the writer's colour in charts")
    stores_rows: bool = Field(description="false for the harness baseline (null)")
    available: bool
    status: WriterStatus = Field(
        default="available",
        description="restarting / down: local mode, the local stack or its Postgres is being "
        "restarted, or failed to restart so far (more attempts follow); reason says why",
    )
    stand_in: bool = Field(
        default=False,
        description="local mode: the target is the local stack's stand-in on this machine",
    )
    reason: str | None
    details: dict[str, Any]


class ModeInfo(BaseModel):
    mode: Literal["local", "databricks"]
    notice: str = Field(description="what the figures measure, for a banner on every page")


class ZerobusAvailability(BaseModel):
    model_config = ConfigDict(extra="allow")

    zerobus_writer_available: bool
    reason: str | None


class ErrorBody(BaseModel):
    error: str
    message: str
    writer: str | None = None
