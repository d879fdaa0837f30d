"""One check of a decoded Arrow batch against what a Databricks table can store.

Arrow holds more than Databricks does: a `date32` reaches ±5.8 million years, a
`timestamp[us]` ±292,000 years, a `decimal128(5,2)` read from IPC or Parquet bytes may
hold 10^30, and an IPC batch may carry nulls in a field its schema calls non-nullable.
Databricks DATE and TIMESTAMP cover 0001-01-01 to 9999-12-31; a value beyond that
breaks the table for everyone later (delta-rs panics in the commit, or every reader
fails converting it), so every interface runs `check_batch` right after decoding and
before the batch joins a group commit: only the client that sent the value is refused.

The check is vectorised (one min/max per column or nested leaf) and walks into ARRAY,
MAP and STRUCT; only once something is out of range is the record and the path to the
value worked out, for a message like the decoders' (`record 1: field 'x.y[2]': ...`).
Integer, FLOAT and DOUBLE widths are the Arrow types themselves, so they need nothing.
"""

from __future__ import annotations

import datetime as dt
import decimal
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from emulator.errors import SchemaMismatchError
from emulator.schema import (
    ArrayType,
    DecimalType,
    MapType,
    PrimitiveType,
    SqlType,
    StructType,
    TableSchema,
)

_EPOCH = dt.date(1970, 1, 1)
MIN_DATE = dt.date(1, 1, 1)
MAX_DATE = dt.date(9999, 12, 31)
# Days since 1970-01-01 of the first and last DATE.
MIN_DAYS = (MIN_DATE - _EPOCH).days  # -719162
MAX_DAYS = (MAX_DATE - _EPOCH).days  # 2932896
# Microseconds since 1970-01-01 00:00 (UTC for TIMESTAMP) of the first and last TIMESTAMP.
MIN_MICROS = MIN_DAYS * 86_400_000_000
MAX_MICROS = (MAX_DAYS + 1) * 86_400_000_000 - 1

DATE_RANGE = "0001-01-01 to 9999-12-31"
TIMESTAMP_RANGE = "0001-01-01 00:00:00 to 9999-12-31 23:59:59.999999"


class ValueOutOfRangeError(SchemaMismatchError):
    """A value the table's type cannot hold. `kind` tells front ends which error class
    fits: "datetime", "decimal" or "null" (a NOT NULL field without a value)."""

    def __init__(self, record: int, path: str, problem: str, kind: str) -> None:
        super().__init__(f"record {record}: field '{path}': {problem}", path)
        self.record = record
        self.path = path
        self.problem = problem
        self.kind = kind


def date_problem(days: int) -> str | None:
    """Why a DATE of `days` since 1970-01-01 cannot be stored, or None."""
    if MIN_DAYS <= days <= MAX_DAYS:
        return None
    return f"{days} days since 1970-01-01 is outside the range of DATE ({DATE_RANGE})"


def timestamp_problem(micros: int, type_name: str) -> str | None:
    """Why a TIMESTAMP[_NTZ] of `micros` since the epoch cannot be stored, or None."""
    if MIN_MICROS <= micros <= MAX_MICROS:
        return None
    return f"{micros} µs since 1970-01-01 is outside the range of {type_name} ({TIMESTAMP_RANGE})"


@dataclass
class _Bad:
    index: int  # position in the array the check was given
    suffix: str  # the path below that array: "", ".lat", "[3]", "['k']"
    problem: str
    kind: str


def check_batch(batch: pa.RecordBatch | pa.Table, schema: TableSchema) -> None:
    """Raise ValueOutOfRangeError for the first value `schema` cannot store.

    `batch` is in the table's Arrow schema (what the decoders and casts produce); its
    columns are matched by position.
    """
    for col, column in zip(schema.columns, batch.columns, strict=True):
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        bad = _check(array, col.type, col.nullable)
        if bad is not None:
            path = col.name + bad.suffix
            raise ValueOutOfRangeError(bad.index, path, bad.problem, bad.kind)


def _first(mask: pa.Array) -> int:
    return int(pc.index(mask, True).as_py())


def _check(array: pa.Array, t: SqlType, nullable: bool) -> _Bad | None:
    if not nullable and array.null_count:
        return _Bad(_first(array.is_null()), "", "the field is NOT NULL but has no value", "null")
    if isinstance(t, PrimitiveType):
        return _check_primitive(array, t)
    if isinstance(t, DecimalType):
        return _check_decimal(array, t)
    if isinstance(t, ArrayType):
        return _check_list(array, t.element, t.contains_null)
    if isinstance(t, MapType):
        return _check_map(array, t)
    assert isinstance(t, StructType)
    return _check_struct(array, t)


def _out_of(values: pa.Array, low: int, high: int) -> int | None:
    """The first position of a value outside [low, high], or None."""
    if len(values) == values.null_count:
        return None
    bounds = pc.min_max(values)
    if bounds["min"].as_py() >= low and bounds["max"].as_py() <= high:
        return None
    return _first(pc.or_(pc.less(values, low), pc.greater(values, high)))


def _check_primitive(array: pa.Array, t: PrimitiveType) -> _Bad | None:
    if t.name == "DATE":
        days = array.cast(pa.int32())
        at = _out_of(days, MIN_DAYS, MAX_DAYS)
        if at is None:
            return None
        problem = date_problem(days[at].as_py())
    elif t.name in ("TIMESTAMP", "TIMESTAMP_NTZ"):
        micros = array.cast(pa.int64())
        at = _out_of(micros, MIN_MICROS, MAX_MICROS)
        if at is None:
            return None
        problem = timestamp_problem(micros[at].as_py(), t.name)
    else:
        return None
    assert problem is not None
    return _Bad(at, "", problem, "datetime")


def _check_decimal(array: pa.Array, t: DecimalType) -> _Bad | None:
    if len(array) == array.null_count:
        return None
    # The same 128-bit values under the widest precision: a comparison that cannot
    # overflow, whatever the bytes hold.
    wide_type = pa.decimal128(38, t.scale)
    wide = array.view(wide_type)
    limit = decimal.Decimal(f"{'9' * (t.precision - t.scale)}.{'9' * t.scale}")
    high = pa.scalar(limit, wide_type)
    low = pa.scalar(limit.copy_negate(), wide_type)
    mask = pc.or_(pc.less(wide, low), pc.greater(wide, high))
    if not pc.any(mask).as_py():
        return None
    at = _first(mask)
    return _Bad(at, "", f"{wide[at].as_py()} does not fit {t}", "decimal")


def _parent(array: pa.Array, child_index: int) -> tuple[int, int]:
    """(list position, position inside that list) of a value of `array.flatten()`."""
    lengths = pc.list_value_length(array).fill_null(0).to_numpy(zero_copy_only=False)
    ends = np.cumsum(lengths)
    parent = int(np.searchsorted(ends, child_index, side="right"))
    return parent, child_index - int(ends[parent] - lengths[parent])


def _check_list(array: pa.Array, element: SqlType, contains_null: bool) -> _Bad | None:
    values = array.flatten()
    bad = _check(values, element, contains_null)
    if bad is None:
        return None
    parent, position = _parent(array, bad.index)
    return _Bad(parent, f"[{position}]{bad.suffix}", bad.problem, bad.kind)


def _check_map(array: pa.Array, t: MapType) -> _Bad | None:
    entry = pa.struct(
        [pa.field("key", t.key.arrow(), False), pa.field("value", t.value.arrow(), True)]
    )
    as_list = array.cast(pa.list_(pa.field("entries", entry, False)))
    entries = as_list.flatten()
    keys, items = entries.field("key"), entries.field("value")
    parts = ((keys, t.key, False), (items, t.value, t.value_contains_null))
    for part, part_type, nullable in parts:
        bad = _check(part, part_type, nullable)
        if bad is not None:
            parent, _ = _parent(as_list, bad.index)
            return _Bad(parent, f"[{keys[bad.index].as_py()!r}]{bad.suffix}", bad.problem, bad.kind)
    return None


def _check_struct(array: pa.Array, t: StructType) -> _Bad | None:
    # flatten() gives each field with the struct's nulls merged in: what is under a null
    # struct is no value, and is neither checked nor required.
    children = array.flatten()
    present = array.is_valid()
    for field, child in zip(t.fields, children, strict=True):
        if not field.nullable and child.null_count:
            missing = pc.and_(present, child.is_null())
            if pc.any(missing).as_py():
                return _Bad(
                    _first(missing),
                    f".{field.name}",
                    "the field is NOT NULL but has no value",
                    "null",
                )
        bad = _check(child, field.type, True)
        if bad is not None:
            return _Bad(bad.index, f".{field.name}{bad.suffix}", bad.problem, bad.kind)
    return None
