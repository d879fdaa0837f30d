"""Generated rows for any schema: deterministic from a seed, cheap per batch.

Values come from a pool of rows built once per run (numpy, from the seed, shaped by each
column's `GeneratorSpec`); a batch is a zero-copy slice of the pool with the per-batch
columns put in: a fresh unique id, the batch id, the source (the writer's name) and the
time the batch was made. Padding to `record_bytes` goes on one string column (the one
named, else the widest) as random letters, so columnar storage cannot compress it away.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dwbench.errors import InvalidSchemaError
from workloads.base import BatchMaker, TableRef
from workloads.schema import Column, GeneratorSpec, TableSchema
from workloads.types import (
    INTEGER_RANGES,
    ArrayType,
    DataType,
    DecimalType,
    MapType,
    Primitive,
    StructType,
)

POOL_ROWS = 4096
_LETTERS = np.frombuffer((string.ascii_letters + string.digits).encode(), dtype=np.uint8)
_EPOCH_DAY_2020 = (dt.date(2020, 1, 1) - dt.date(1970, 1, 1)).days
_US_2020 = _EPOCH_DAY_2020 * 86_400 * 1_000_000


def random_text(rng: np.random.Generator, count: int, low: int, high: int) -> pa.Array:
    """`count` random alphanumeric strings with lengths in [low, high]."""
    lengths = rng.integers(low, high + 1, size=count)
    offsets = np.zeros(count + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    data = _LETTERS[rng.integers(0, len(_LETTERS), size=int(offsets[-1]))]
    return pa.StringArray.from_buffers(count, pa.py_buffer(offsets), pa.py_buffer(data.tobytes()))


def _with_nulls(rng: np.random.Generator, array: pa.Array, fraction: float) -> pa.Array:
    if fraction <= 0:
        return array
    mask = rng.random(len(array)) < fraction
    return pc.if_else(pa.array(mask), pa.nulls(len(array), array.type), array)


def generate_array(
    dtype: DataType, count: int, rng: np.random.Generator, spec: GeneratorSpec | None, path: str
) -> pa.Array:
    """`count` values of `dtype`; nested values get default specs."""
    spec = spec or GeneratorSpec()
    if spec.values is not None:
        try:
            choices = pa.array(spec.values, type=dtype.arrow())
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise InvalidSchemaError(
                f"column {path}: generator values do not fit {dtype.sql()}: {exc}"
            ) from None
        return choices.take(pa.array(rng.integers(0, len(choices), size=count)))
    if spec.cardinality is not None and not dtype.is_complex:
        distinct = generate_array(
            dtype,
            min(spec.cardinality, count * 4 or 1),
            rng,
            spec.model_copy(update={"cardinality": None}),
            path,
        )
        return distinct.take(pa.array(rng.integers(0, len(distinct), size=count)))
    if isinstance(dtype, Primitive):
        return _primitive(dtype.name, count, rng, spec)
    if isinstance(dtype, DecimalType):
        scale = 10**dtype.scale
        top = min(10 ** (dtype.precision - dtype.scale) - 1, 10_000)
        low: float = spec.min if spec.min is not None else 0
        high: float = spec.max if spec.max is not None else top
        units = rng.integers(int(low * scale), int(high * scale), size=count, endpoint=True)
        return _scaled_decimal(units, dtype)
    if isinstance(dtype, ArrayType):
        lengths = rng.integers(spec.min_length or 0, (spec.max_length or 3) + 1, size=count)
        offsets = np.zeros(count + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        values = generate_array(dtype.element, int(offsets[-1]), rng, None, f"{path}[]")
        return pa.ListArray.from_arrays(pa.array(offsets), values, type=dtype.arrow())
    if isinstance(dtype, MapType):
        lengths = rng.integers(spec.min_length or 0, (spec.max_length or 3) + 1, size=count)
        keys_needed = int(lengths.sum())
        offsets = np.zeros(count + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        # Keys unique within a map: numbered per position.
        position = np.arange(keys_needed) - np.repeat(offsets[:-1], lengths)
        keys = _map_keys(dtype.key, position)
        values = generate_array(dtype.value, keys_needed, rng, None, f"{path}.value")
        return pa.MapArray.from_arrays(pa.array(offsets), keys, values, type=dtype.arrow())
    if isinstance(dtype, StructType):
        children = [
            _with_nulls(
                rng,
                generate_array(f.type, count, rng, None, f"{path}.{f.name}"),
                0.1 if f.nullable else 0,
            )
            for f in dtype.fields
        ]
        return pa.StructArray.from_arrays(children, fields=list(dtype.arrow()))
    raise InvalidSchemaError(f"column {path}: cannot generate {dtype.sql()}")  # pragma: no cover


def _scaled_decimal(units: np.ndarray, dtype: DecimalType) -> pa.Array:
    import decimal

    exp = decimal.Decimal(1).scaleb(-dtype.scale)
    return pa.array(
        [decimal.Decimal(int(u)).scaleb(-dtype.scale).quantize(exp) for u in units],
        type=pa.decimal128(dtype.precision, dtype.scale),
    )


def _map_keys(key: DataType, position: np.ndarray) -> pa.Array:
    name = getattr(key, "name", "STRING")
    if name == "STRING":
        return pc.binary_join_element_wise("k", pc.cast(pa.array(position), pa.string()), "")
    if name == "BOOLEAN":
        return pa.array(position % 2 == 1)
    return pa.array(position).cast(key.arrow())


def _primitive(name: str, count: int, rng: np.random.Generator, spec: GeneratorSpec) -> pa.Array:
    if name in INTEGER_RANGES:
        low, high = INTEGER_RANGES[name]
        low = int(spec.min) if spec.min is not None else max(low, 0)
        high = int(spec.max) if spec.max is not None else min(high, 1_000_000)
        return pa.array(rng.integers(low, high, size=count, endpoint=True)).cast(
            Primitive(name).arrow()
        )
    if name in ("FLOAT", "DOUBLE"):
        bottom = spec.min if spec.min is not None else 0.0
        top = spec.max if spec.max is not None else 1000.0
        values = rng.uniform(bottom, top, size=count)
        return pa.array(values.astype(np.float32 if name == "FLOAT" else np.float64))
    if name in ("STRING", "VARIANT"):
        low = spec.min_length if spec.min_length is not None else 8
        high = spec.max_length if spec.max_length is not None else max(low, 16)
        if name == "VARIANT":
            return pc.binary_join_element_wise(
                '{"v":"', random_text(rng, count, low, high), '"}', ""
            )
        return random_text(rng, count, low, high)
    if name == "BOOLEAN":
        return pa.array(rng.random(count) < 0.5)
    if name == "BINARY":
        return random_text(rng, count, spec.min_length or 8, spec.max_length or 16).cast(
            pa.binary()
        )
    if name == "DATE":
        days = rng.integers(0, 3653, size=count) + _EPOCH_DAY_2020
        return pa.array(days.astype(np.int32)).cast(pa.date32())
    if name in ("TIMESTAMP", "TIMESTAMP_NTZ"):
        micros = rng.integers(0, 10 * 365 * 86_400 * 1_000_000, size=count) + _US_2020
        return pa.array(micros).cast(Primitive(name).arrow())
    raise InvalidSchemaError(f"cannot generate {name}")  # pragma: no cover


@functools.lru_cache(maxsize=16)
def row_suffixes(rows: int) -> pa.Array:
    """ "-000000", "-000001", ... for `rows` rows: a batch id plus these is a row's id."""
    numbers = pc.utf8_lpad(pc.cast(pa.array(np.arange(rows)), pa.string()), 6, "0")
    return pc.binary_join_element_wise("-", numbers, "")


def row_ids(batch_id: str, rows: int) -> pa.Array:
    """`<batch_id>-<index>` for each row, the same ids build_rows gives submitted items."""
    return pc.binary_join_element_wise(batch_id, row_suffixes(rows), "")


def padding_column(
    schema: TableSchema, requested: str | None, exclude: Sequence[str | None] = ()
) -> Column | None:
    """The string column that carries padding: the one named, else the widest free-text
    string (not an id or batch column, nor one drawn from fixed values)."""
    if requested:
        col = schema.require(requested, "--pad-column")
        if col.type != Primitive("STRING"):
            raise InvalidSchemaError(f"--pad-column {col.name} is {col.type.sql()}, not STRING")
        return col
    skip = {name.lower() for name in exclude if name}
    strings = [
        c
        for c in schema.columns
        if c.type == Primitive("STRING")
        and c.name.lower() not in skip
        and not (c.generator and (c.generator.values or c.generator.cardinality))
    ]
    if not strings:
        return None

    def width(c: Column) -> int:
        spec = c.generator or GeneratorSpec()
        return spec.max_length if spec.max_length is not None else 16

    return max(strings, key=width)


def estimate_row_bytes(table: pa.Table) -> float:
    """Bytes per row of the Arrow data (a stand-in for the wire size before padding)."""
    return table.nbytes / max(table.num_rows, 1)


class PooledRows:
    """A BatchMaker over a pool of rows, with the per-batch columns filled in."""

    def __init__(
        self,
        table: TableRef,
        pool: pa.Table,
        *,
        seed: int,
        record_bytes: int = 0,
        pad_column: str | None = None,
        time_column: str | None = None,
        fixed: Sequence[str] = (),
    ) -> None:
        self.table = table
        self.schema = table.schema
        self.time_column = time_column
        pool = pool.combine_chunks()
        self.record_bytes = math.ceil(estimate_row_bytes(pool))
        rng = np.random.default_rng(seed + 7919)
        filled = (table.id_column, table.batch_column, table.source_column)
        pad = padding_column(self.schema, pad_column, filled) if record_bytes else None
        if pad is not None and record_bytes > self.record_bytes and pad.name not in fixed:
            extra = record_bytes - self.record_bytes
            current = pool.column(pad.name).combine_chunks()
            noise = random_text(rng, len(pool), extra, extra)
            filled = pc.binary_join_element_wise(pc.fill_null(current, ""), noise, "")
            pool = pool.set_column(pool.schema.get_field_index(pad.name), pad.arrow_field, filled)
            self.record_bytes = record_bytes
        self.pool = pool.combine_chunks()  # one chunk per column: batches slice it as is
        self._arrow = self.schema.arrow()
        self._time_type = (
            self.schema.require(time_column, "time column").type if time_column else None
        )
        self._id_type = (
            self.schema.require(table.id_column, "id column").type if table.id_column else None
        )
        self._slots = {
            name: pool.schema.get_field_index(name)
            for name in (table.id_column, table.batch_column, table.source_column, time_column)
            if name
        }

    def __call__(self, k: int, rows: int, batch_id: str, source: str) -> pa.RecordBatch:
        pool = self.pool
        start = (k * rows) % len(pool)
        if start + rows <= len(pool):
            part = pool.slice(start, rows)
        else:
            index = (np.arange(rows) + start) % len(pool)
            part = pool.take(pa.array(index))
        arrays = list(part.columns)
        table = self.table
        if table.id_column:
            arrays[self._slots[table.id_column]] = self._ids(table.id_column, k, rows, batch_id)
        if table.batch_column:
            arrays[self._slots[table.batch_column]] = pa.repeat(pa.scalar(batch_id), rows)
        if table.source_column:
            arrays[self._slots[table.source_column]] = pa.repeat(pa.scalar(source), rows)
        if self.time_column and self._time_type is not None:
            now = dt.datetime.now(dt.UTC)
            if self._time_type == Primitive("TIMESTAMP_NTZ"):
                now = now.replace(tzinfo=None)
            arrays[self._slots[self.time_column]] = pa.repeat(
                pa.scalar(now, self._time_type.arrow()), rows
            )
        return pa.RecordBatch.from_arrays(
            [a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for a in arrays],
            schema=self._arrow,
        )

    def _ids(self, name: str, k: int, rows: int, batch_id: str) -> pa.Array:
        id_type = self._id_type
        assert id_type is not None
        if id_type == Primitive("STRING"):
            return row_ids(batch_id, rows)
        if id_type in (Primitive("BIGINT"), Primitive("INT")):
            # Unique across batches of one run: batch number times a stride of rows.
            return pa.array(np.arange(rows, dtype=np.int64) + k * 1_000_000).cast(id_type.arrow())
        raise InvalidSchemaError(f"id column {name} must be STRING or BIGINT, not {id_type.sql()}")


def generated_source(
    table: TableRef, *, time_column: str | None = None
) -> Callable[..., BatchMaker]:
    """A source that generates the pool from the schema's generator specs."""
    return _GeneratedSource(table, time_column)


@dataclass(frozen=True)
class _GeneratedSource:
    # A class, not a closure: a workload travels by pickle to the app's benchmark worker
    # process (bench.worker_process).
    table: TableRef
    time_column: str | None

    def __call__(
        self, *, seed: int = 0, record_bytes: int = 0, pad_column: str | None = None, **_: Any
    ) -> BatchMaker:
        table = self.table
        rng = np.random.default_rng(seed)
        arrays = [
            _with_nulls(
                rng,
                generate_array(c.type, POOL_ROWS, rng, c.generator, c.name),
                (c.generator.null_fraction if c.generator else 0.0) if c.nullable else 0.0,
            )
            for c in table.schema.columns
        ]
        pool = pa.Table.from_arrays(arrays, schema=table.schema.arrow())
        return PooledRows(
            table,
            pool,
            seed=seed,
            record_bytes=record_bytes,
            pad_column=pad_column,
            time_column=self.time_column,
        )
