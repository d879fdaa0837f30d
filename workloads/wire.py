"""Arrow columns as the Python values each wire takes, converted column by column.

    proto     DATE -> days since 1970-01-01, TIMESTAMP[_NTZ] -> µs since the epoch,
              MAP -> dict; STRUCT -> dict without unset fields
    json      as proto, BINARY -> base64 text, MAP keys as text; no NaN or infinity
    postgres  native values (date, datetime, Decimal, bytes) for COPY; complex types as
              JSON-ready objects (dates and times as ISO text, decimals as text, binary as
              base64) for a jsonb column

Flat columns are converted by one Arrow cast and `to_pylist()`; only nested columns go
value by value.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
from collections.abc import Callable
from typing import Any, Literal

import pyarrow as pa

from workloads.schema import TableSchema
from workloads.types import ArrayType, DataType, DecimalType, MapType, Primitive, StructType

Form = Literal["proto", "json", "postgres"]
Convert = Callable[[Any], Any]
_EPOCH_DATE = dt.date(1970, 1, 1).toordinal()
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_NAIVE = dt.datetime(1970, 1, 1)


class WireValueError(ValueError):
    """A value the wire cannot carry (the message names the column)."""


def epoch_micros(value: dt.datetime) -> int:
    delta = value - (_EPOCH if value.tzinfo is not None else _EPOCH_NAIVE)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _days(value: dt.date) -> int:
    return value.toordinal() - _EPOCH_DATE


def json_safe(value: Any) -> Any:
    """A nested value as JSON for a Postgres jsonb column."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        if value and isinstance(value[0], tuple):  # a map, as Arrow gives it
            return {str(k): json_safe(v) for k, v in value}
        return [json_safe(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def json_value(dtype: DataType) -> Convert:
    """A value of `dtype` as a JSON-ready object for a jsonb column, following the type:
    maps become objects (empty ones too), dates and times ISO text, decimals text, binary
    base64."""
    if isinstance(dtype, MapType):
        value = json_value(dtype.value)
        return lambda pairs: {str(k): None if v is None else value(v) for k, v in pairs}
    if isinstance(dtype, ArrayType):
        element = json_value(dtype.element)
        return lambda values: [None if v is None else element(v) for v in values]
    if isinstance(dtype, StructType):
        fields = [(f.name, json_value(f.type)) for f in dtype.fields]
        return lambda obj: {
            name: None if obj.get(name) is None else convert(obj[name]) for name, convert in fields
        }
    return json_safe


def _converter(dtype: DataType, form: Form, path: str) -> Convert | None:
    """How to turn Arrow's Python value of `dtype` into the wire's; None = as is."""
    if isinstance(dtype, Primitive):
        name = dtype.name
        if name == "DATE":
            return _days
        if name in ("TIMESTAMP", "TIMESTAMP_NTZ"):
            return epoch_micros
        if name == "BINARY" and form == "json":
            return lambda v: base64.b64encode(v).decode()
        if name in ("FLOAT", "DOUBLE") and form == "json":

            def finite(v: float) -> float:
                if v != v or v in (float("inf"), float("-inf")):
                    raise WireValueError(f"column {path}: JSON has no form for {v}")
                return v

            return finite
        return None
    if isinstance(dtype, DecimalType):
        return str
    if isinstance(dtype, ArrayType):
        inner = _converter(dtype.element, form, f"{path}[]")

        def convert_list(values: list[Any]) -> list[Any]:
            if form == "proto" and None in values:
                raise WireValueError(f"column {path}: protobuf repeated fields cannot hold null")
            if inner is None:
                return values
            return [None if v is None else inner(v) for v in values]

        return convert_list
    if isinstance(dtype, MapType):
        key = _converter(dtype.key, form, f"{path}.key")
        value = _converter(dtype.value, form, f"{path}.value")
        text_keys = form == "json"

        def convert_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
            out: dict[Any, Any] = {}
            for k, v in pairs:
                k = key(k) if key else k
                if v is None and form == "proto":
                    raise WireValueError(f"column {path}: protobuf map values cannot be null")
                out[str(k) if text_keys else k] = v if v is None or value is None else value(v)
            return out

        return convert_map
    if isinstance(dtype, StructType):
        fields = [(f.name, _converter(f.type, form, f"{path}.{f.name}")) for f in dtype.fields]
        drop_unset = form == "proto"

        def convert_struct(obj: dict[str, Any]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for name, convert in fields:
                v = obj.get(name)
                if v is None:
                    if not drop_unset:
                        out[name] = None
                    continue
                out[name] = convert(v) if convert else v
            return out

        return convert_struct
    raise WireValueError(f"column {path}: no wire form for {dtype.sql()}")  # pragma: no cover


# Arrow casts that do a flat column's conversion in C.
_CASTS: dict[str, pa.DataType] = {
    "DATE": pa.int32(),
    "TIMESTAMP": pa.int64(),
    "TIMESTAMP_NTZ": pa.int64(),
}


def python_columns(batch: pa.RecordBatch, schema: TableSchema, form: Form) -> list[list[Any]]:
    """Each column of the batch as a list of the wire's Python values, in schema order."""
    out = []
    for col in schema.columns:
        array = batch.column(col.name)
        dtype = col.type
        if form == "postgres":
            if dtype.is_complex:
                to_json = json_value(dtype)
                out.append([None if v is None else to_json(v) for v in array.to_pylist()])
            else:
                out.append(array.to_pylist())
            continue
        if isinstance(dtype, Primitive) and dtype.name in _CASTS:
            out.append(array.cast(_CASTS[dtype.name]).to_pylist())
            continue
        convert = _converter(dtype, form, col.name)
        values = array.to_pylist()
        if convert is not None:
            values = [None if v is None else convert(v) for v in values]
        out.append(values)
    return out


def json_rows(batch: pa.RecordBatch, schema: TableSchema) -> list[str]:
    """Each row as one JSON object (Zerobus JSON records, REST, Kafka, MQTT values)."""
    columns = python_columns(batch, schema, "json")
    names = schema.names
    dumps = _ENCODER.encode
    return [dumps(dict(zip(names, row, strict=True))) for row in zip(*columns, strict=True)]


_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
