"""Workloads: the built-ins and those registered from a schema (DDL, columns or a table)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.deps import RuntimeDep
from api.models import ErrorBody
from dwbench.errors import InvalidSchemaError
from workloads.inputs import input_columns, input_model
from workloads.registry import workload_from_ddl, workload_from_schema
from workloads.schema import TableSchema
from workloads.types import MapType

router = APIRouter(tags=["workloads"])
SAMPLE_TIME_US = 1_798_761_600_000_000  # 2027-01-01T00:00:00Z, for generated sample items


class WorkloadRequest(BaseModel):
    """A workload from a schema: DDL text, a JSON column list, or an existing table."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        default=None, description="defaults to the table's name", examples=["orders"]
    )
    ddl: str | None = Field(
        default=None,
        max_length=1_000_000,
        description="CREATE TABLE ... or a column list `id BIGINT NOT NULL, ...`",
        examples=["CREATE TABLE main.default.orders (id BIGINT NOT NULL, total DECIMAL(10,2))"],
    )
    columns: list[dict[str, Any]] | None = Field(
        default=None, max_length=10_000, description="[{name, type, nullable, generator}]"
    )
    table: str | None = Field(
        default=None,
        description="catalog.schema.table to write into; without ddl or columns its schema "
        "is read from Unity Catalog (the local stack's catalog in local mode)",
    )
    id_column: str | None = Field(default=None, description="a column given a fresh id per row")

    @model_validator(mode="after")
    def _one_source(self) -> WorkloadRequest:
        given = [x for x in (self.ddl, self.columns) if x is not None]
        if len(given) > 1:
            raise ValueError("give ddl or columns, not both")
        if not given and not self.table:
            raise ValueError("give ddl, columns or table")
        return self


@router.get("/api/v1/workloads")
async def list_workloads(runtime: RuntimeDep) -> list[dict[str, Any]]:
    """Every workload with its columns, target tables and the JSON Schema of its items."""
    return [w.describe() for w in runtime.workloads.all()]


@router.get("/api/v1/workloads/{name}", responses={404: {"model": ErrorBody}})
async def get_workload(name: str, runtime: RuntimeDep) -> dict[str, Any]:
    """One workload."""
    return runtime.workloads.get(name).describe()


@router.post(
    "/api/v1/workloads",
    status_code=201,
    responses={400: {"model": ErrorBody, "description": "a bad schema: what to fix"}},
)
async def register_workload(body: WorkloadRequest, runtime: RuntimeDep) -> dict[str, Any]:
    """Register a workload from DDL, a column list or a table; its data is generated."""
    if body.ddl is not None:
        workload = workload_from_ddl(
            body.name, body.ddl, table=body.table, id_column=body.id_column
        )
    else:
        if body.columns is not None:
            schema = TableSchema.from_columns(body.columns)
        else:
            assert body.table is not None
            schema = await runtime.table_schema(body.table)
        workload = workload_from_schema(
            body.name, schema, table=body.table, id_column=body.id_column
        )
    if workload.name in runtime.workloads.names() and runtime.workloads.get(workload.name).builtin:
        raise InvalidSchemaError(f"{workload.name!r} is a built-in workload; choose another name")
    runtime.workloads.add(workload, replace=True)
    return workload.describe()


@router.get("/api/v1/workloads/{name}/sample-items", responses={404: {"model": ErrorBody}})
async def workload_sample_items(
    name: str,
    runtime: RuntimeDep,
    count: Annotated[int, Query(ge=1, le=1000)] = 5,
    seed: Annotated[int, Query(ge=0)] = 0,
) -> list[dict[str, Any]]:
    """Deterministic generated items for the workload's form (its input columns only)."""
    workload = runtime.workloads.get(name)
    # A fixed clock: the same seed gives the same items (event times included).
    make = workload.batches(seed=seed, clock=lambda: SAMPLE_TIME_US)
    batch = make(0, count, "sample", "sample")
    model = input_model(workload)
    keep = input_columns(workload)
    items = []
    for row in batch.to_pylist():
        values = {k: row[k] for k in keep}
        for col in workload.schema.columns:
            if col.name in values and isinstance(col.type, MapType) and values[col.name]:
                values[col.name] = dict(values[col.name])
        items.append(model.model_validate(values).model_dump(mode="json", by_alias=True))
    return items
