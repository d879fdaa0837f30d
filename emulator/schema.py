"""Table schemas: the column types the local stack supports and each of their forms.

A column type is a tree of `SqlType`s:

    PrimitiveType    TINYINT SMALLINT INT BIGINT FLOAT DOUBLE STRING BOOLEAN BINARY
                     DATE TIMESTAMP TIMESTAMP_NTZ
    DecimalType      DECIMAL(p,s), 1 <= p <= 38, 0 <= s <= p; DECIMAL alone is (10,0)
    ArrayType        ARRAY<T>
    MapType          MAP<K,V>
    StructType       STRUCT<name: T [NOT NULL] [COMMENT '...'], ...>, nested to any depth

Every type gives its Databricks SQL text, its Unity Catalog forms (`type_text`,
`type_name`, the Spark JSON of `type_json`), its Arrow type and its Delta type, and can be
read back from the Delta form, so the catalog survives a restart. The Arrow forms are
exactly what `deltalake` reads back from the table: list items are named `element`, map
entries `entries` with a non-null `key` and a `value`. VARIANT (and any other type) is
refused with a message saying so.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from deltalake import Field as DeltaField
from deltalake import Schema as DeltaSchema
from deltalake.schema import ArrayType as DeltaArray
from deltalake.schema import MapType as DeltaMap
from deltalake.schema import PrimitiveType as DeltaPrimitive
from deltalake.schema import StructType as DeltaStruct
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from emulator.errors import SchemaMismatchError

# Databricks SQL name -> (Delta / Spark JSON name, Arrow type, Unity Catalog type_name)
_PRIMITIVES: dict[str, tuple[str, pa.DataType, str]] = {
    "STRING": ("string", pa.string(), "STRING"),
    "DOUBLE": ("double", pa.float64(), "DOUBLE"),
    "FLOAT": ("float", pa.float32(), "FLOAT"),
    "BIGINT": ("long", pa.int64(), "LONG"),
    "INT": ("integer", pa.int32(), "INT"),
    "SMALLINT": ("short", pa.int16(), "SHORT"),
    "TINYINT": ("byte", pa.int8(), "BYTE"),
    "BOOLEAN": ("boolean", pa.bool_(), "BOOLEAN"),
    "DATE": ("date", pa.date32(), "DATE"),
    "TIMESTAMP": ("timestamp", pa.timestamp("us", tz="UTC"), "TIMESTAMP"),
    "TIMESTAMP_NTZ": ("timestamp_ntz", pa.timestamp("us"), "TIMESTAMP_NTZ"),
    "BINARY": ("binary", pa.binary(), "BINARY"),
}
_FROM_DELTA = {delta: sql for sql, (delta, _, _) in _PRIMITIVES.items()}

SUPPORTED_TYPES = (
    *_PRIMITIVES,
    "DECIMAL(p,s)",
    "ARRAY<T>",
    "MAP<K,V>",
    "STRUCT<...>",
)

# Integer columns: bit widths, for range checks.
INTEGER_BITS = {"TINYINT": 8, "SMALLINT": 16, "INT": 32, "BIGINT": 64}


class SqlType:
    """A column type. Subclasses are frozen dataclasses, so types compare by value."""

    @property
    def type_name(self) -> str:
        """Unity Catalog's `type_name` (ColumnTypeName): LONG, DECIMAL, ARRAY, ..."""
        raise NotImplementedError

    def sql(self) -> str:
        """Databricks SQL text, as DDL writes it: `STRUCT<a: INT NOT NULL, b: STRING>`."""
        raise NotImplementedError

    def catalog_string(self) -> str:
        """Unity Catalog's `type_text`: lower case, compact, `struct<a:int,b:string>`."""
        raise NotImplementedError

    def spark_json(self) -> Any:
        """The Spark (and Delta log) JSON form of the type."""
        raise NotImplementedError

    def arrow(self) -> pa.DataType:
        raise NotImplementedError

    def delta(self) -> Any:
        raise NotImplementedError

    @property
    def is_nested(self) -> bool:
        return False

    def __str__(self) -> str:
        return self.sql()


@dataclass(frozen=True)
class PrimitiveType(SqlType):
    name: str

    def __post_init__(self) -> None:
        if self.name not in _PRIMITIVES:
            raise SchemaMismatchError(f"unknown primitive type {self.name!r}")

    @property
    def type_name(self) -> str:
        return _PRIMITIVES[self.name][2]

    def sql(self) -> str:
        return self.name

    def catalog_string(self) -> str:
        return self.name.lower()

    def spark_json(self) -> Any:
        return _PRIMITIVES[self.name][0]

    def arrow(self) -> pa.DataType:
        return _PRIMITIVES[self.name][1]

    def delta(self) -> Any:
        return DeltaPrimitive(_PRIMITIVES[self.name][0])


@dataclass(frozen=True)
class DecimalType(SqlType):
    precision: int = 10
    scale: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.precision <= 38 or not 0 <= self.scale <= self.precision:
            raise SchemaMismatchError(
                f"DECIMAL({self.precision},{self.scale}) is out of range: "
                "precision must be 1 to 38 and scale 0 to the precision"
            )

    @property
    def type_name(self) -> str:
        return "DECIMAL"

    def sql(self) -> str:
        return f"DECIMAL({self.precision},{self.scale})"

    def catalog_string(self) -> str:
        return f"decimal({self.precision},{self.scale})"

    def spark_json(self) -> Any:
        return self.catalog_string()

    def arrow(self) -> pa.DataType:
        return pa.decimal128(self.precision, self.scale)

    def delta(self) -> Any:
        return DeltaPrimitive(self.catalog_string())


@dataclass(frozen=True)
class ArrayType(SqlType):
    element: SqlType
    contains_null: bool = True

    @property
    def type_name(self) -> str:
        return "ARRAY"

    @property
    def is_nested(self) -> bool:
        return True

    def sql(self) -> str:
        return f"ARRAY<{self.element.sql()}>"

    def catalog_string(self) -> str:
        return f"array<{self.element.catalog_string()}>"

    def spark_json(self) -> Any:
        return {
            "type": "array",
            "elementType": self.element.spark_json(),
            "containsNull": self.contains_null,
        }

    def arrow(self) -> pa.DataType:
        return pa.list_(pa.field("element", self.element.arrow(), self.contains_null))

    def delta(self) -> Any:
        return DeltaArray(self.element.delta(), contains_null=self.contains_null)


@dataclass(frozen=True)
class MapType(SqlType):
    key: SqlType
    value: SqlType
    value_contains_null: bool = True

    @property
    def type_name(self) -> str:
        return "MAP"

    @property
    def is_nested(self) -> bool:
        return True

    def sql(self) -> str:
        return f"MAP<{self.key.sql()}, {self.value.sql()}>"

    def catalog_string(self) -> str:
        return f"map<{self.key.catalog_string()},{self.value.catalog_string()}>"

    def spark_json(self) -> Any:
        return {
            "type": "map",
            "keyType": self.key.spark_json(),
            "valueType": self.value.spark_json(),
            "valueContainsNull": self.value_contains_null,
        }

    def arrow(self) -> pa.DataType:
        return pa.map_(
            pa.field("key", self.key.arrow(), False),
            pa.field("value", self.value.arrow(), self.value_contains_null),
        )

    def delta(self) -> Any:
        return DeltaMap(
            self.key.delta(), self.value.delta(), value_contains_null=self.value_contains_null
        )


@dataclass(frozen=True)
class Column:
    """A table column, or a field of a STRUCT."""

    name: str
    type: SqlType
    nullable: bool = True
    comment: str | None = None

    @property
    def arrow_type(self) -> pa.DataType:
        return self.type.arrow()

    def arrow_field(self) -> pa.Field:
        return pa.field(self.name, self.type.arrow(), self.nullable)

    def ddl(self, separator: str = " ") -> str:
        text = f"{_quote_name(self.name)}{separator}{self.type.sql()}"
        if not self.nullable:
            text += " NOT NULL"
        if self.comment is not None:
            text += f" COMMENT {sql_string(self.comment)}"
        return text

    def spark_json(self) -> dict[str, Any]:
        """The Spark StructField JSON (Unity Catalog's `type_json`)."""
        return {
            "name": self.name,
            "type": self.type.spark_json(),
            "nullable": self.nullable,
            "metadata": {} if self.comment is None else {"comment": self.comment},
        }

    def delta_field(self) -> DeltaField:
        metadata = None if self.comment is None else {"comment": self.comment}
        return DeltaField(self.name, self.type.delta(), nullable=self.nullable, metadata=metadata)


StructField = Column


@dataclass(frozen=True)
class StructType(SqlType):
    fields: tuple[Column, ...]

    def __post_init__(self) -> None:
        if not self.fields:
            raise SchemaMismatchError("a STRUCT needs at least one field")
        _check_unique(self.fields, "field")

    @property
    def type_name(self) -> str:
        return "STRUCT"

    @property
    def is_nested(self) -> bool:
        return True

    def field(self, name: str) -> Column | None:
        lowered = name.lower()
        return next((f for f in self.fields if f.name.lower() == lowered), None)

    def sql(self) -> str:
        return "STRUCT<" + ", ".join(f.ddl(": ") for f in self.fields) + ">"

    def catalog_string(self) -> str:
        inner = ",".join(f"{_quote_name(f.name)}:{f.type.catalog_string()}" for f in self.fields)
        return f"struct<{inner}>"

    def spark_json(self) -> Any:
        return {"type": "struct", "fields": [f.spark_json() for f in self.fields]}

    def arrow(self) -> pa.DataType:
        return pa.struct([f.arrow_field() for f in self.fields])

    def delta(self) -> Any:
        return DeltaStruct([f.delta_field() for f in self.fields])


def _quote_name(name: str) -> str:
    if name.replace("_", "a").isalnum() and not name[0].isdigit():
        return name
    return "`" + name.replace("`", "``") + "`"


def sql_string(text: str) -> str:
    """A Databricks SQL string literal (backslash escapes, as Spark reads them)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _check_unique(fields: tuple[Column, ...], what: str) -> None:
    seen: set[str] = set()
    for f in fields:
        if not f.name:
            raise SchemaMismatchError(f"a {what} needs a name")
        key = f.name.lower()
        if key in seen:
            raise SchemaMismatchError(f"duplicate {what} {f.name}", f.name)
        seen.add(key)


# -- reading types -------------------------------------------------------------------------------

_T = exp.DataType.Type
_SQLGLOT_PRIMITIVES: dict[Any, str] = {
    _T.TINYINT: "TINYINT",
    _T.SMALLINT: "SMALLINT",
    _T.INT: "INT",
    _T.BIGINT: "BIGINT",
    _T.FLOAT: "FLOAT",
    _T.DOUBLE: "DOUBLE",
    _T.TEXT: "STRING",
    _T.VARCHAR: "STRING",
    _T.CHAR: "STRING",
    _T.NVARCHAR: "STRING",
    _T.NCHAR: "STRING",
    _T.BOOLEAN: "BOOLEAN",
    _T.BINARY: "BINARY",
    _T.VARBINARY: "BINARY",
    _T.DATE: "DATE",
    _T.TIMESTAMP: "TIMESTAMP",
    _T.TIMESTAMPTZ: "TIMESTAMP",
    _T.TIMESTAMPLTZ: "TIMESTAMP",
    _T.TIMESTAMPNTZ: "TIMESTAMP_NTZ",
}


def _unsupported(what: str, column: str | None = None) -> SchemaMismatchError:
    where = f"column {column} has type {what}" if column else f"type {what}"
    return SchemaMismatchError(
        f"{where}, which is not supported by the local stack; supported: "
        f"{', '.join(SUPPORTED_TYPES)}",
        column,
    )


def from_sqlglot(dtype: exp.DataType, column: str | None = None) -> SqlType:
    """The type of a column definition parsed by sqlglot's Databricks dialect."""
    kind = dtype.this
    if kind in _SQLGLOT_PRIMITIVES:
        return PrimitiveType(_SQLGLOT_PRIMITIVES[kind])
    if kind == _T.DECIMAL:
        args = [_int_param(e, dtype) for e in dtype.expressions]
        if len(args) > 2:
            raise SchemaMismatchError(f"DECIMAL takes at most two parameters: {dtype.sql()}")
        return DecimalType(*args) if args else DecimalType()
    if kind == _T.ARRAY:
        if len(dtype.expressions) != 1:
            raise SchemaMismatchError(f"ARRAY needs one element type: {dtype.sql('databricks')}")
        return ArrayType(from_sqlglot(dtype.expressions[0], column))
    if kind == _T.MAP:
        if len(dtype.expressions) != 2:
            raise SchemaMismatchError(
                f"MAP needs a key and a value type: {dtype.sql('databricks')}"
            )
        key, value = (from_sqlglot(e, column) for e in dtype.expressions)
        if key.is_nested:
            raise SchemaMismatchError(f"MAP keys of type {key.sql()} are not supported", column)
        return MapType(key, value)
    if kind == _T.STRUCT:
        return StructType(tuple(_struct_field(e, column) for e in dtype.expressions))
    raise _unsupported(dtype.sql("databricks"), column)


def _int_param(param: exp.Expr, dtype: exp.DataType) -> int:
    try:
        return int(param.name)
    except ValueError:
        raise SchemaMismatchError(f"invalid type parameters: {dtype.sql('databricks')}") from None


def _struct_field(item: exp.Expr, column: str | None) -> Column:
    if not isinstance(item, exp.ColumnDef) or not isinstance(item.args.get("kind"), exp.DataType):
        raise SchemaMismatchError(f"invalid STRUCT field {item.sql('databricks')}", column)
    nullable, comment = column_options(item)
    path = f"{column}.{item.name}" if column else item.name
    return Column(item.name, from_sqlglot(item.args["kind"], path), nullable, comment)


def column_options(item: exp.ColumnDef) -> tuple[bool, str | None]:
    """(nullable, comment) of a column or STRUCT field definition."""
    nullable, comment = True, None
    for constraint in item.args.get("constraints") or []:
        rule = constraint.args.get("kind") if isinstance(constraint, exp.ColumnConstraint) else None
        if isinstance(rule, exp.NotNullColumnConstraint):
            nullable = bool(rule.args.get("allow_null"))
        elif isinstance(rule, exp.PrimaryKeyColumnConstraint):
            nullable = False
        elif isinstance(rule, exp.CommentColumnConstraint):
            comment = rule.this.name if isinstance(rule.this, exp.Literal) else rule.this.sql()
        else:
            raise SchemaMismatchError(
                f"column option {constraint.sql('databricks')} is not supported by the local stack",
                item.name,
            )
    return nullable, comment


@functools.lru_cache(maxsize=256)
def parse_type(text: str) -> SqlType:
    """Read a Databricks type: `BIGINT`, `decimal(10,2)`, `ARRAY<STRUCT<lat: DOUBLE>>`, ..."""
    try:
        dtype = exp.DataType.build(text.strip(), dialect="databricks")
    except (ParseError, TokenError, ValueError):
        raise _unsupported(repr(text)) from None
    return from_sqlglot(dtype)


def normalize_type(name: str) -> str:
    """The canonical SQL text of a type name (any case or alias): `long` -> `BIGINT`."""
    return parse_type(name).sql()


def from_delta_type(delta_type: Any, column: str) -> SqlType:
    if isinstance(delta_type, DeltaPrimitive):
        name = delta_type.type
        if name in _FROM_DELTA:
            return PrimitiveType(_FROM_DELTA[name])
        if name.startswith("decimal("):
            precision, scale = name[len("decimal(") : -1].split(",")
            return DecimalType(int(precision), int(scale))
    elif isinstance(delta_type, DeltaArray):
        return ArrayType(from_delta_type(delta_type.element_type, column), delta_type.contains_null)
    elif isinstance(delta_type, DeltaMap):
        return MapType(
            from_delta_type(delta_type.key_type, column),
            from_delta_type(delta_type.value_type, column),
            delta_type.value_contains_null,
        )
    elif isinstance(delta_type, DeltaStruct):
        return StructType(tuple(_from_delta_field(f, column) for f in delta_type.fields))
    raise _unsupported(str(delta_type), column)


def _from_delta_field(field: DeltaField, parent: str | None = None) -> Column:
    path = f"{parent}.{field.name}" if parent else field.name
    metadata = field.metadata or {}
    comment = metadata.get("comment")
    if comment is not None and not isinstance(comment, str):
        comment = json.dumps(comment)
    return Column(field.name, from_delta_type(field.type, path), field.nullable, comment)


@dataclass(frozen=True)
class TableSchema:
    columns: tuple[Column, ...]

    def __post_init__(self) -> None:
        if not self.columns:
            raise SchemaMismatchError("a table needs at least one column")
        _check_unique(self.columns, "column")

    @classmethod
    def of(cls, *columns: tuple[str, str] | tuple[str, str, bool]) -> TableSchema:
        """Build a schema from (name, type text[, nullable]) tuples."""
        return cls(
            tuple(
                Column(c[0], parse_type(c[1]), c[2] if len(c) > 2 else True)  # type: ignore[misc]
                for c in columns
            )
        )

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def is_flat(self) -> bool:
        return not any(c.type.is_nested for c in self.columns)

    def column(self, name: str) -> Column | None:
        lowered = name.lower()
        return next((c for c in self.columns if c.name.lower() == lowered), None)

    def to_arrow(self) -> pa.Schema:
        return pa.schema([c.arrow_field() for c in self.columns])

    def to_delta(self) -> DeltaSchema:
        return DeltaSchema([c.delta_field() for c in self.columns])

    @classmethod
    def from_delta(cls, schema: DeltaSchema) -> TableSchema:
        return cls(tuple(_from_delta_field(f) for f in schema.fields))

    def ddl(self) -> str:
        return ", ".join(c.ddl() for c in self.columns)
