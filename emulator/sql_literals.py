"""INSERT ... VALUES of Databricks SQL literals, evaluated exactly against the table's types.

The rows of a VALUES list that holds only literals are evaluated here, in Python, straight
into the column types, as a warehouse does (Spark's ANSI store assignment), rather than by
DuckDB, whose reading of `0.1` (a DECIMAL, then a DOUBLE) or of nested values could lose
exactness. Accepted, each alone or inside `CAST(... AS <type>)`:

    NULL                          any type
    'text' / "text"               STRING (sqlglot has undone the backslash escapes already);
                                  DATE, TIMESTAMP, TIMESTAMP_NTZ from their ISO text
    12, -12, 12.34, -1e10         numbers: INT / BIGINT / DECIMAL(p,s) / DOUBLE literals, into
                                  any numeric column (range-checked, DOUBLEs correctly rounded)
    TRUE, FALSE                   BOOLEAN
    DATE'...', TIMESTAMP'...',    the CASTs sqlglot reads them as
    TIMESTAMP_NTZ'...'
    X'0aff'                       BINARY
    ARRAY(v, ...)                 ARRAY<T>
    MAP(k, v, ...)                MAP<K,V> (no NULL or repeated keys)
    NAMED_STRUCT('a', v, ...)     STRUCT<...> (fields by position, as Spark assigns them)

Anything else (a function call, arithmetic) raises `NotLiteral`, and the caller evaluates the
statement with DuckDB instead. A value that does not fit fails the statement with the
error class a warehouse uses, naming the column (`route.stops[2].lat` inside nested values).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from typing import Any

import numpy as np
import pyarrow as pa
from sqlglot import exp

from emulator.errors import SchemaMismatchError
from emulator.schema import (
    INTEGER_BITS,
    ArrayType,
    Column,
    DecimalType,
    MapType,
    PrimitiveType,
    SqlType,
    StructType,
    from_sqlglot,
)
from emulator.sql_errors import SqlError


class NotLiteral(Exception):
    """The VALUES list holds something other than literals."""


class _NullType(SqlType):
    """The type of an untyped NULL."""

    def sql(self) -> str:
        return "VOID"


NULL_TYPE = _NullType()
STRING = PrimitiveType("STRING")
DOUBLE = PrimitiveType("DOUBLE")
BOOLEAN = PrimitiveType("BOOLEAN")
BINARY = PrimitiveType("BINARY")
INT = PrimitiveType("INT")
BIGINT = PrimitiveType("BIGINT")

_MICROS_PER_DAY = 86_400_000_000
_EPOCH = dt.date(1970, 1, 1)
_EPOCH_UTC = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_TRUE = {"t", "true", "y", "yes", "1"}
_FALSE = {"f", "false", "n", "no", "0"}


def _quoted(name: str) -> str:
    return ".".join(f"`{part}`" for part in name.split("."))


def _column(path: str) -> str:
    """A column, or a path inside one: `route.stops[2].lat`."""
    return f"`{path}`"


def literal_columns(table: str, targets: Sequence[Column], values: exp.Values) -> list[pa.Array]:
    """One Arrow array per target column, from a VALUES list of literals."""
    rows = values.expressions
    if not rows or not all(isinstance(row, exp.Tuple) for row in rows):
        raise NotLiteral
    width = len(rows[0].expressions)
    if any(len(row.expressions) != width for row in rows):
        raise NotLiteral  # DuckDB reports it
    if width != len(targets):
        raise arity_error(table, targets, width)
    evaluator = _Evaluator(table)
    columns: list[list[Any]] = [[] for _ in targets]
    for row in rows:
        for cells, cell, col in zip(columns, row.expressions, targets, strict=True):
            cells.append(evaluator.value(cell, col.type, col.name, cast=False))
    return [
        pa.array(cells, type=col.arrow_type) for cells, col in zip(columns, targets, strict=True)
    ]


def arity_error(table: str, targets: Sequence[Column], width: int) -> SqlError:
    reason = "not enough" if width < len(targets) else "too many"
    detail = "NOT_ENOUGH_DATA_COLUMNS" if width < len(targets) else "TOO_MANY_DATA_COLUMNS"
    return SqlError(
        f"INSERT_COLUMN_ARITY_MISMATCH.{detail}",
        f"Cannot write to {_quoted(table)}: {reason} data columns. "
        f"Table columns: {', '.join(f'`{c.name}`' for c in targets)}. "
        f"Data columns: {width}.",
        "21S01",
    )


class _Evaluator:
    def __init__(self, table: str) -> None:
        self.table = table

    # -- expressions -----------------------------------------------------------------------

    def value(self, node: exp.Expr, dst: SqlType, path: str, *, cast: bool) -> Any:
        """The value of `node` as type `dst` (a Python value Arrow takes for that type)."""
        if isinstance(node, exp.Paren):
            return self.value(node.this, dst, path, cast=cast)
        if isinstance(node, exp.Null):
            return None
        if isinstance(node, exp.Cast) and not isinstance(node, exp.TryCast):
            try:
                to = from_sqlglot(node.to)
            except SchemaMismatchError:
                raise NotLiteral from None
            inner = self.value(node.this, to, path, cast=True)
            return self.convert(inner, to, dst, path, cast=cast)
        if isinstance(node, exp.Array):
            if not isinstance(dst, ArrayType):
                raise NotLiteral
            return [
                self._element(item, dst.element, dst.contains_null, f"{path}[{i}]", cast)
                for i, item in enumerate(node.expressions)
            ]
        if isinstance(node, exp.VarMap):
            if not isinstance(dst, MapType):
                raise NotLiteral
            return self._map(node, dst, path, cast)
        if isinstance(node, exp.Struct):
            if not isinstance(dst, StructType):
                raise NotLiteral
            return self._struct(node, dst, path, cast)
        value, src = _scalar(node)
        return self.convert(value, src, dst, path, cast=cast)

    def _element(self, node: exp.Expr, dst: SqlType, nullable: bool, path: str, cast: bool) -> Any:
        value = self.value(node, dst, path, cast=cast)
        if value is None and not nullable:
            raise _not_null(path)
        return value

    def _map(self, node: exp.VarMap, dst: MapType, path: str, cast: bool) -> list[Any]:
        keys, values = node.args["keys"], node.args["values"]
        if not isinstance(keys, exp.Array) or not isinstance(values, exp.Array):
            raise NotLiteral
        entries: list[tuple[Any, Any]] = []
        seen: set[Any] = set()
        for key_node, value_node in zip(keys.expressions, values.expressions, strict=True):
            key = self.value(key_node, dst.key, f"{path} (a key)", cast=cast)
            if key is None:
                raise SqlError(
                    "NULL_MAP_KEY", f"Cannot use null as map key (column {_column(path)}).", "2200E"
                )
            if key in seen:
                raise SqlError(
                    "DUPLICATED_MAP_KEY",
                    f"Duplicate map key {key!r} was found in column {_column(path)}.",
                    "23505",
                )
            seen.add(key)
            value = self._element(
                value_node, dst.value, dst.value_contains_null, f"{path}[{key!r}]", cast
            )
            entries.append((key, value))
        return entries

    def _struct(self, node: exp.Struct, dst: StructType, path: str, cast: bool) -> dict[str, Any]:
        items = node.expressions
        if len(items) != len(dst.fields):
            raise SqlError(
                "INCOMPATIBLE_DATA_FOR_TABLE.STRUCT_MISSING_FIELDS"
                if len(items) < len(dst.fields)
                else "INCOMPATIBLE_DATA_FOR_TABLE.EXTRA_STRUCT_FIELDS",
                f"Cannot write incompatible data for the table {_quoted(self.table)}: "
                f"the struct for `{path}` has {len(items)} fields, the column has "
                f"{len(dst.fields)}: {dst.sql()}.",
                "KD000",
            )
        out: dict[str, Any] = {}
        for item, field in zip(items, dst.fields, strict=True):
            if isinstance(item, exp.PropertyEQ | exp.Alias):
                item = item.args.get("expression") or item.this
            sub = f"{path}.{field.name}"
            value = self.value(item, field.type, sub, cast=cast)
            if value is None and not field.nullable:
                raise _not_null(sub)
            out[field.name] = value
        return out

    # -- conversions -----------------------------------------------------------------------

    def convert(self, value: Any, src: SqlType, dst: SqlType, path: str, *, cast: bool) -> Any:
        """`value` of type `src` as type `dst`: a CAST (`cast`) or a store assignment."""
        if value is None or src == dst:
            return value
        if isinstance(dst, ArrayType) and isinstance(src, ArrayType):
            return [
                self.convert(v, src.element, dst.element, f"{path}[{i}]", cast=cast)
                for i, v in enumerate(value)
            ]
        if isinstance(dst, MapType) and isinstance(src, MapType):
            return [
                (
                    self.convert(k, src.key, dst.key, path, cast=cast),
                    self.convert(v, src.value, dst.value, f"{path}[{k!r}]", cast=cast),
                )
                for k, v in value
            ]
        if isinstance(dst, StructType) and isinstance(src, StructType):
            if len(src.fields) != len(dst.fields):
                raise self._incompatible(src, dst, path, cast)
            return {
                d.name: self.convert(value[s.name], s.type, d.type, f"{path}.{d.name}", cast=cast)
                for s, d in zip(src.fields, dst.fields, strict=True)
            }
        if src.is_nested or dst.is_nested:
            if dst == STRING:
                raise NotLiteral  # DuckDB renders it
            raise self._incompatible(src, dst, path, cast)
        try:
            return self._primitive(value, src, dst, path, cast)
        except _Overflow:
            raise self._overflow(value, src, dst, path, cast) from None
        except (ValueError, InvalidOperation):
            raise SqlError(
                "CAST_INVALID_INPUT",
                f'The value {_show(value, src)} of the type "{src}" cannot be cast to '
                f'"{dst}" because it is malformed (column {_column(path)}). Correct the value '
                "as per the syntax, or change its target type.",
                "22018",
            ) from None

    def _primitive(self, value: Any, src: SqlType, dst: SqlType, path: str, cast: bool) -> Any:
        s, d = _family(src), _family(dst)
        if d == "string":
            return _to_string(value, src)
        if s == "string":
            if d in ("date", "timestamp"):
                return _parse_datetime(value.strip(), dst)
            if not cast:
                raise self._incompatible(src, dst, path, cast)
            return _parse(value.strip(), dst)
        if s == "numeric" and d == "numeric":
            return _to_number(value, dst)
        if s in ("date", "timestamp") and d in ("date", "timestamp"):
            micros = value * _MICROS_PER_DAY if s == "date" else value
            return micros // _MICROS_PER_DAY if d == "date" else micros
        if cast and s == "boolean" and d == "numeric":
            return _to_number(int(value), dst)
        if cast and s == "numeric" and d == "boolean":
            return value != 0
        raise self._incompatible(src, dst, path, cast)

    def _incompatible(self, src: SqlType, dst: SqlType, path: str, cast: bool) -> SqlError:
        if cast:
            return SqlError(
                "DATATYPE_MISMATCH.CAST_WITHOUT_SUGGESTION",
                f"Cannot resolve the cast for column {_column(path)} due to data type mismatch: "
                f'cannot cast "{src}" to "{dst}".',
                "42K09",
            )
        return SqlError(
            "INCOMPATIBLE_DATA_FOR_TABLE.CANNOT_SAFELY_CAST",
            f"Cannot write incompatible data for the table {_quoted(self.table)}: cannot safely "
            f'cast {_column(path)} "{src}" to "{dst}".',
            "KD000",
        )

    @staticmethod
    def _overflow(value: Any, src: SqlType, dst: SqlType, path: str, cast: bool) -> SqlError:
        if cast:
            return SqlError(
                "CAST_OVERFLOW",
                f'The value {_show(value, src)} of the type "{src}" cannot be cast to "{dst}" '
                f"due to an overflow (column {_column(path)}). Use `try_cast` to tolerate "
                "overflow and return NULL instead.",
                "22003",
            )
        return SqlError(
            "CAST_OVERFLOW_IN_TABLE_INSERT",
            f'Cannot assign a value of "{src}" type to the "{dst}" type column '
            f"{_column(path)} because it overflows: {_show(value, src)}. Use `try_cast` on the "
            "input value to tolerate overflow and return NULL instead.",
            "22003",
        )


class _Overflow(Exception):
    pass


def _not_null(path: str) -> SqlError:
    return SqlError(
        "DELTA_NOT_NULL_CONSTRAINT_VIOLATED",
        f"NOT NULL constraint violated for column: {path}.",
        "23502",
    )


def _show(value: Any, src: SqlType) -> str:
    if isinstance(value, str):
        return repr(value)[:60]
    return _to_string(value, src)[:60]


def _family(t: SqlType) -> str:
    if isinstance(t, DecimalType):
        return "numeric"
    if isinstance(t, PrimitiveType):
        name = t.name
        if name in INTEGER_BITS or name in ("FLOAT", "DOUBLE"):
            return "numeric"
        if name in ("TIMESTAMP", "TIMESTAMP_NTZ"):
            return "timestamp"
        return name.lower()
    return "nested"


def _scalar(node: exp.Expr) -> tuple[Any, SqlType]:
    """The value and type of a literal that is not NULL, CAST or a nested constructor."""
    if isinstance(node, exp.Literal):
        if node.is_string:
            return node.this, STRING
        return _number(node.this)
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal) and not node.this.is_string:
        return _number("-" + node.this.this)
    if isinstance(node, exp.Boolean):
        return bool(node.this), BOOLEAN
    if isinstance(node, exp.HexString):
        digits = str(node.this)
        return bytes.fromhex(digits if len(digits) % 2 == 0 else "0" + digits), BINARY
    if isinstance(node, exp.Concat) and all(
        isinstance(part, exp.Literal) and part.is_string for part in node.expressions
    ):  # adjacent string literals: 'a' 'b'
        return "".join(part.this for part in node.expressions), STRING
    raise NotLiteral


def _number(text: str) -> tuple[Any, SqlType]:
    """A numeric literal typed as Spark types it: INT, BIGINT, DECIMAL(p,s), or DOUBLE (1e10)."""
    if "e" in text or "E" in text:
        return float(text), DOUBLE
    if "." in text:
        exact = Decimal(text)
        digits = exact.as_tuple()
        scale = max(0, -int(digits.exponent))
        precision = max(len(digits.digits), scale, 1)
        return exact, DecimalType(min(precision, 38), min(scale, min(precision, 38)))
    number = int(text)
    if -(2**31) <= number < 2**31:
        return number, INT
    if -(2**63) <= number < 2**63:
        return number, BIGINT
    return Decimal(number), DecimalType(min(len(text.lstrip("-")), 38), 0)


def _to_number(value: Any, dst: SqlType) -> Any:
    if isinstance(dst, DecimalType):
        if isinstance(value, float):
            if not math.isfinite(value):
                raise _Overflow
            value = Decimal(repr(value))
        exact = Decimal(value)
        if exact != 0 and exact.adjusted() >= dst.precision - dst.scale:
            raise _Overflow
        with localcontext() as context:
            context.prec = 80
            scaled = exact.quantize(Decimal(1).scaleb(-dst.scale), rounding=ROUND_HALF_UP)
        if scaled != 0 and scaled.adjusted() >= dst.precision - dst.scale:
            raise _Overflow
        return scaled
    assert isinstance(dst, PrimitiveType)
    if dst.name in INTEGER_BITS:
        if isinstance(value, float) and not math.isfinite(value):
            raise _Overflow
        whole = int(value)  # truncates toward zero, as a cast does
        bits = INTEGER_BITS[dst.name]
        if not -(2 ** (bits - 1)) <= whole < 2 ** (bits - 1):
            raise _Overflow
        return whole
    try:
        number = float(value)
    except OverflowError:
        raise _Overflow from None
    if math.isinf(number) and not (isinstance(value, float) and math.isinf(value)):
        raise _Overflow
    if dst.name == "FLOAT":
        with np.errstate(over="ignore"):
            single = float(np.float32(number))
        if math.isinf(single) and math.isfinite(number):
            raise _Overflow
        return single
    return number


def _parse(text: str, dst: SqlType) -> Any:
    """CAST of a string to a non-string type."""
    if isinstance(dst, DecimalType):
        return _to_number(Decimal(text), dst)
    assert isinstance(dst, PrimitiveType)
    name = dst.name
    if name in INTEGER_BITS:
        return _to_number(int(text), dst)
    if name in ("FLOAT", "DOUBLE"):
        lowered = text.lower()
        if lowered in ("infinity", "+infinity", "inf", "+inf"):
            return math.inf
        if lowered in ("-infinity", "-inf"):
            return -math.inf
        if lowered == "nan":
            return math.nan
        return _to_number(float(text), dst)
    if name == "BOOLEAN":
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(text)
    if name == "BINARY":
        return text.encode("utf-8")
    return _parse_datetime(text, dst)


def _parse_datetime(text: str, dst: SqlType) -> int:
    """Days since the epoch (DATE) or microseconds (TIMESTAMP in UTC, TIMESTAMP_NTZ)."""
    assert isinstance(dst, PrimitiveType)
    if dst.name == "DATE":
        day = text[:10] if len(text) > 10 and text[10] in "T " else text
        return (dt.date.fromisoformat(day) - _EPOCH).days
    if dst.name not in ("TIMESTAMP", "TIMESTAMP_NTZ"):
        raise ValueError(text)
    if text.endswith(" UTC"):
        text = text[:-4] + "+00:00"
    stamp = dt.datetime.fromisoformat(text)
    if dst.name == "TIMESTAMP_NTZ" or stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)  # the session time zone of a warehouse is UTC
    delta = stamp - _EPOCH_UTC
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _to_string(value: Any, src: SqlType) -> str:
    """CAST to STRING, as Spark renders each type."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        return java_float(value, single=src == PrimitiveType("FLOAT"))
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    family = _family(src)
    if family == "date":
        return (_EPOCH + dt.timedelta(days=value)).isoformat()
    if family == "timestamp":
        stamp = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=value)
        text = stamp.isoformat(sep=" ")
        return text.rstrip("0").rstrip(".") if "." in text else text
    return str(value)


def java_float(value: float, *, single: bool) -> str:
    """Spark shows doubles the way Java's Double.toString does: 1.5, 1.0E7, 1.0E-4."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    number = np.float32(value) if single else np.float64(value)
    if value == 0 or 1e-3 <= abs(value) < 1e7:
        text = np.format_float_positional(number, unique=True, trim="0")
        return text
    mantissa, exponent = np.format_float_scientific(number, unique=True, trim="0").split("e")
    return f"{mantissa}E{int(exponent)}"
