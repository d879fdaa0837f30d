"""Request and response shapes of the HTTP API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from workloads.products import ProductItem


class ProcessRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_type: Literal["products"] = "products"
    writer_type: str = Field(
        description="zerobus, sql, lakebase, or all (every writer on the same items)",
        examples=["zerobus"],
    )
    items: list[ProductItem] = Field(min_length=1)


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
    processed_count: int = Field(description="rows durably written, summed over the writers")
    processing_time_ms: float
    throughput_records_per_sec: float
    results: list[WriterResult]


class WriterInfo(BaseModel):
    name: str
    label: str
    available: bool
    reason: str | None
    details: dict[str, Any]


class ZerobusAvailability(BaseModel):
    model_config = ConfigDict(extra="allow")

    zerobus_writer_available: bool
    reason: str | None


class ErrorBody(BaseModel):
    error: str
    message: str
    writer: str | None = None
