"""Arrow columns as Databricks SQL literals: the one place a value becomes SQL text.

    NULL            NULL; inside a nested value CAST(NULL AS <type>), so its type is known
    STRING          'text' with backslash escapes (workloads.types.sql_string), and `${` as
                    `$\\{`: Spark substitutes `${var}` anywhere in a statement's text, string
                    literals included (spark.sql.variable.substitute), and reads `\\{` as `{`
    TINYINT..BIGINT 12, -12
    DOUBLE          the shortest text that reads back as the same double (repr): 0.1, 1e+300;
                    NaN, ±Infinity and -0.0 as CAST('NaN' AS DOUBLE) (a bare -0.0 is a
                    DECIMAL, which has no negative zero)
    FLOAT           the float32's exact value as a double's repr (CAST('NaN' AS FLOAT) ...):
                    however the engine rounds it, the stored float32 is the same bits
    DECIMAL(p,s)    CAST('12.34' AS DECIMAL(p,s))
    BOOLEAN         TRUE, FALSE
    DATE            DATE'2026-01-02'
    TIMESTAMP       TIMESTAMP'2026-01-02 03:04:05.123456+00:00'
    TIMESTAMP_NTZ   TIMESTAMP_NTZ'2026-01-02 03:04:05.123456'
    BINARY          X'0aff'
    ARRAY<T>        ARRAY(v, ...); empty: CAST(ARRAY() AS ARRAY<T>)
    MAP<K,V>        MAP(k, v, ...); empty: CAST(MAP() AS MAP<K,V>)
    STRUCT<...>     NAMED_STRUCT('a', v, ...)
    VARIANT         PARSE_JSON('json text') (Databricks only: no local stand-in stores it)

A column is rendered at once: flat columns through one Arrow cast or one list
comprehension, nested columns by rendering their child arrays and joining the pieces along
the offsets, so no Python object is built per nested value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from workloads.types import (
    INTEGER_RANGES,
    ArrayType,
    DataType,
    DecimalType,
    MapType,
    Primitive,
    StructType,
    quote_identifier,
    sql_string,
)


def column_literals(array: pa.Array | pa.ChunkedArray, dtype: DataType) -> list[str]:
    """Each value of the column as a SQL literal of `dtype` (NULL for a null)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return _filled(_render(array, dtype), "NULL")


def literal(value: Any, dtype: DataType) -> str:
    """One Python value (as Arrow's to_pylist gives it) as a SQL literal of `dtype`."""
    return column_literals(pa.array([value], type=dtype.arrow()), dtype)[0]


def cast_type(dtype: DataType) -> str:
    """The type as a CAST target: without comments and NOT NULL (the table enforces those)."""
    if isinstance(dtype, ArrayType):
        return f"ARRAY<{cast_type(dtype.element)}>"
    if isinstance(dtype, MapType):
        return f"MAP<{cast_type(dtype.key)}, {cast_type(dtype.value)}>"
    if isinstance(dtype, StructType):
        fields = ", ".join(f"{quote_identifier(f.name)}: {cast_type(f.type)}" for f in dtype.fields)
        return f"STRUCT<{fields}>"
    return dtype.sql()


def string_literal(text: str) -> str:
    """A STRING literal that reads back as `text`, whatever it holds."""
    return sql_string(text).replace("${", "$\\{")


def _filled(texts: list[str | None], null: str) -> list[str]:
    return [null if t is None else t for t in texts]


def _typed_null(dtype: DataType) -> str:
    return f"CAST(NULL AS {cast_type(dtype)})"


def _each(array: pa.Array, render: Callable[[Any], str]) -> list[str | None]:
    return [None if v is None else render(v) for v in array.to_pylist()]


def _render(array: pa.Array, dtype: DataType) -> list[str | None]:
    """The literals of a column, None where a value is null."""
    if isinstance(dtype, Primitive):
        return _primitive(array, dtype.name)
    if isinstance(dtype, DecimalType):
        target = dtype.sql()
        return _each(array, lambda v: f"CAST('{v:f}' AS {target})")
    if isinstance(dtype, ArrayType | MapType):
        return _container(array, dtype)
    if isinstance(dtype, StructType):
        return _struct(array, dtype)
    raise TypeError(f"no SQL literal for {dtype.sql()}")  # pragma: no cover


def _primitive(array: pa.Array, name: str) -> list[str | None]:
    if name in INTEGER_RANGES:
        texts: list[str | None] = pc.cast(array, pa.string()).to_pylist()
        return texts
    if name == "STRING":
        return _each(array, string_literal)
    if name in ("DOUBLE", "FLOAT"):
        return _each(array, _FLOATS[name])
    if name == "BOOLEAN":
        booleans: list[str | None] = pc.if_else(array, "TRUE", "FALSE").to_pylist()
        return booleans
    if name == "DATE":
        return _each(pc.cast(array, pa.string()), lambda s: f"DATE'{s}'")
    if name == "TIMESTAMP":
        utc = array.cast(pa.timestamp("us", tz="UTC"))
        text = pc.strftime(utc, format="%Y-%m-%d %H:%M:%S")
        return _each(text, lambda s: f"TIMESTAMP'{s}+00:00'")
    if name == "TIMESTAMP_NTZ":
        text = pc.strftime(array.cast(pa.timestamp("us")), format="%Y-%m-%d %H:%M:%S")
        return _each(text, lambda s: f"TIMESTAMP_NTZ'{s}'")
    if name == "BINARY":
        return _each(array, lambda v: f"X'{v.hex()}'")
    if name == "VARIANT":
        return _each(array, lambda v: f"PARSE_JSON({string_literal(v)})")
    raise TypeError(f"no SQL literal for {name}")  # pragma: no cover


def _float_literal(type_name: str) -> Callable[[float], str]:
    def render(value: float) -> str:
        if math.isnan(value):
            return f"CAST('NaN' AS {type_name})"
        if math.isinf(value):
            return f"CAST('{'Infinity' if value > 0 else '-Infinity'}' AS {type_name})"
        if value == 0 and math.copysign(1.0, value) < 0:
            return f"CAST('-0.0' AS {type_name})"
        # repr: the shortest text that reads back as this double. A float32 arrives here as
        # its exact double value, so rounding that text to float32 gives the same bits,
        # whether the engine reads it straight into a FLOAT or through a DOUBLE.
        return repr(value)

    return render


_FLOATS = {"DOUBLE": _float_literal("DOUBLE"), "FLOAT": _float_literal("FLOAT")}


def _container(array: pa.Array, dtype: ArrayType | MapType) -> list[str | None]:
    """ARRAY(v, ...) or MAP(k, v, ...) per row, from the rendered child values."""
    offsets = array.offsets.to_pylist()  # this slice's rows, into the unsliced children
    first, count = offsets[0], offsets[-1] - offsets[0]
    if isinstance(dtype, ArrayType):
        name = "ARRAY"
        flat = _filled(
            _render(array.values.slice(first, count), dtype.element), _typed_null(dtype.element)
        )
        width = 1
    else:
        name = "MAP"
        keys = _filled(_render(array.keys.slice(first, count), dtype.key), _typed_null(dtype.key))
        values = _filled(
            _render(array.items.slice(first, count), dtype.value), _typed_null(dtype.value)
        )
        flat = [text for pair in zip(keys, values, strict=True) for text in pair]
        width = 2
    empty = f"CAST({name}() AS {cast_type(dtype)})"
    valid = array.is_valid().to_pylist() if array.null_count else None
    out: list[str | None] = []
    for i in range(len(array)):
        if valid is not None and not valid[i]:
            out.append(None)
            continue
        start, end = (offsets[i] - first) * width, (offsets[i + 1] - first) * width
        out.append(f"{name}({', '.join(flat[start:end])})" if end > start else empty)
    return out


def _struct(array: pa.Array, dtype: StructType) -> list[str | None]:
    children = array.flatten()  # the struct's own slice, one array per field
    columns = [
        _filled(_render(child, f.type), _typed_null(f.type))
        for child, f in zip(children, dtype.fields, strict=True)
    ]
    names = [string_literal(f.name) for f in dtype.fields]
    valid = array.is_valid().to_pylist() if array.null_count else None
    out: list[str | None] = []
    for i in range(len(array)):
        if valid is not None and not valid[i]:
            out.append(None)
            continue
        pairs = ", ".join(
            f"{name}, {column[i]}" for name, column in zip(names, columns, strict=True)
        )
        out.append(f"NAMED_STRUCT({pairs})")
    return out
