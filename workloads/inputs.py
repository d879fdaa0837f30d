"""What a user submits for a workload: a pydantic model derived from the table schema.

The model covers the workload's input columns (the ones the harness does not fill: ids,
batch id, source, processing time); its JSON Schema is what the web form renders from, and
`rows_from_items` turns validated items into the Arrow batch every writer takes.

Type by type: integers are range-checked to their Delta type, FLOAT/DOUBLE refuse NaN and
infinity, DECIMAL takes text or a number and must fit (p, s), BINARY is base64 text,
DATE/TIMESTAMP ISO text (a TIMESTAMP without a zone is UTC; TIMESTAMP_NTZ takes none),
ARRAY a list, MAP an object, STRUCT a nested object; strings may not hold NUL characters
(Postgres cannot store them).
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import operator
import uuid
from functools import lru_cache
from typing import Annotated, Any

import pyarrow as pa
from pydantic import (
    AfterValidator,
    Base64Bytes,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    create_model,
)

from workloads.base import Rows, TableRef, Workload
from workloads.types import (
    INTEGER_RANGES,
    ArrayType,
    DataType,
    DecimalType,
    MapType,
    Primitive,
    StructType,
)

NUL_RULE = "text may not contain NUL characters (U+0000): Postgres (lakebase) cannot store them"


def _no_nul(value: str) -> str:
    # Refused for every writer alike, not only where Postgres would fail the write.
    if "\0" in value:
        raise ValueError(NUL_RULE)
    return value


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _naive(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is not None:
        raise ValueError("TIMESTAMP_NTZ takes a time without a time zone")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]


class InputModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


def python_type(dtype: DataType, name: str) -> Any:
    """The pydantic field type of a Delta type."""
    if isinstance(dtype, Primitive):
        kind = dtype.name
        if kind in INTEGER_RANGES:
            low, high = INTEGER_RANGES[kind]
            return Annotated[StrictInt, Field(ge=low, le=high)]
        if kind in ("FLOAT", "DOUBLE"):
            # strict: text ("12.5") and booleans are not numbers; integers are.
            return Annotated[float, Field(strict=True, allow_inf_nan=False)]
        if kind == "BOOLEAN":
            return StrictBool
        if kind == "BINARY":
            return Base64Bytes
        if kind == "DATE":
            return dt.date
        if kind == "TIMESTAMP":
            return Annotated[dt.datetime, AfterValidator(_utc)]
        if kind == "TIMESTAMP_NTZ":
            return Annotated[dt.datetime, AfterValidator(_naive)]
        return Text
    if isinstance(dtype, DecimalType):
        return Annotated[
            decimal.Decimal,
            Field(
                max_digits=dtype.precision,
                decimal_places=dtype.scale,
                allow_inf_nan=False,
            ),
        ]
    if isinstance(dtype, ArrayType):
        return list[python_type(dtype.element, name)]  # type: ignore[misc]
    if isinstance(dtype, MapType):
        return dict[python_type(dtype.key, name), python_type(dtype.value, name)]  # type: ignore[misc]
    if isinstance(dtype, StructType):
        fields: dict[str, Any] = {}
        for f in dtype.fields:
            ftype = python_type(f.type, f"{name}.{f.name}")
            fields[_attr(f.name)] = (
                (ftype, Field(alias=f.name))
                if f.nullable is False
                else (ftype | None, Field(default=None, alias=f.name))
            )
        return create_model(f"{name.title().replace('.', '')}Struct", __base__=InputModel, **fields)
    raise TypeError(f"no input type for {dtype.sql()}")  # pragma: no cover


def _attr(name: str) -> str:
    """A Python attribute for a column name (the alias keeps the column's own name)."""
    safe = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return safe if safe.isidentifier() and not safe.startswith("model_") else f"f_{safe}"


def input_columns(workload: Workload) -> list[str]:
    table = workload.table
    filled = {c.lower() for c in (table.id_column, table.batch_column, table.source_column) if c}
    if workload.input_columns is not None:
        return workload.input_columns
    return [c.name for c in workload.schema.columns if c.name.lower() not in filled]


@lru_cache(maxsize=64)
def _cached_model(workload: Workload) -> type[BaseModel]:
    base = workload.options.get("input_base", InputModel)
    constraints: dict[str, dict[str, Any]] = workload.options.get("input_constraints", {})
    fields: dict[str, Any] = {}
    for name in input_columns(workload):
        col = workload.schema.require(name, "input column")
        ftype = python_type(col.type, col.name)
        extra = dict(constraints.get(col.name, {}))
        if col.comment and "description" not in extra:
            extra["description"] = col.comment
        if col.nullable:
            fields[_attr(col.name)] = (ftype | None, Field(default=None, alias=col.name, **extra))
        else:
            fields[_attr(col.name)] = (ftype, Field(alias=col.name, **extra))
    model_name = workload.options.get("input_model_name") or f"{workload.name.title()}Item"
    return create_model(model_name.replace("-", ""), __base__=base, **fields)


def input_model(workload: Workload) -> type[BaseModel]:
    return _cached_model(workload)


def input_json_schema(workload: Workload) -> dict[str, Any]:
    return input_model(workload).model_json_schema(by_alias=True)


def _ids(dtype: DataType, batch_id: str, n: int) -> list[Any]:
    if dtype == Primitive("STRING"):
        return [f"{batch_id}-{i:06d}" for i in range(n)]
    # An integer id: 40 bits from the batch id, 20 for the row (1,048,576 rows a batch).
    base = int(hashlib.blake2b(batch_id.encode(), digest_size=5).hexdigest(), 16) << 20
    return [base + i for i in range(n)]


def rows_from_items(
    workload: Workload,
    items: list[BaseModel],
    *,
    batch_id: str,
    source: str,
    processed_at: dt.datetime,
) -> pa.RecordBatch:
    """The items as the table's full rows: ids, batch id, source and time filled in."""
    table = workload.table
    schema = workload.schema
    n = len(items)
    time_column = workload.options.get("time_column")
    inputs = set(input_columns(workload))
    arrays = []
    for col in schema.columns:
        name = col.name
        if name == table.id_column:
            values: list[Any] = _ids(col.type, batch_id, n)
        elif name == table.batch_column:
            values = [batch_id] * n
        elif name == table.source_column:
            values = [source] * n
        elif name == time_column:
            values = [processed_at] * n
        elif name not in inputs:
            values = [None] * n
        else:
            # Column by column, by attribute: no dict per item (this runs per request).
            get = operator.attrgetter(_attr(name))
            values = list(map(get, items))
            if col.type.is_complex:
                values = [_plain(v) for v in values]
            if isinstance(col.type, MapType):
                values = [None if v is None else list(v.items()) for v in values]
        arrays.append(pa.array(values, type=col.type.arrow()))
    return pa.RecordBatch.from_arrays(arrays, schema=schema.arrow())


def _plain(value: Any) -> Any:
    """Nested models as the dicts Arrow takes (struct fields by their column names)."""
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def new_batch_id() -> str:
    return uuid.uuid4().hex


def build_rows(
    workload: Workload,
    items: list[BaseModel],
    *,
    batch_id: str,
    source: str,
    processed_at: dt.datetime | None = None,
    table: TableRef | None = None,
) -> Rows:
    """Validated items as the Rows one writer takes (record ids `<batch_id>-<index>`)."""
    data = rows_from_items(
        workload,
        items,
        batch_id=batch_id,
        source=source,
        processed_at=processed_at or dt.datetime.now(dt.UTC),
    )
    return Rows(table or workload.table, data, batch_id)
