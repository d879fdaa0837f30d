"""Table schemas: the column types the local stack supports and their Arrow and Delta forms."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from deltalake import Field as DeltaField
from deltalake import Schema as DeltaSchema
from deltalake.schema import PrimitiveType

from emulator.errors import SchemaMismatchError

# Databricks SQL type name -> (Delta primitive type, Arrow type)
_TYPES: dict[str, tuple[str, pa.DataType]] = {
    "STRING": ("string", pa.string()),
    "DOUBLE": ("double", pa.float64()),
    "FLOAT": ("float", pa.float32()),
    "BIGINT": ("long", pa.int64()),
    "INT": ("integer", pa.int32()),
    "SMALLINT": ("short", pa.int16()),
    "TINYINT": ("byte", pa.int8()),
    "BOOLEAN": ("boolean", pa.bool_()),
    "DATE": ("date", pa.date32()),
    "TIMESTAMP": ("timestamp", pa.timestamp("us", tz="UTC")),
    "BINARY": ("binary", pa.binary()),
}
_ALIASES = {
    "LONG": "BIGINT",
    "INTEGER": "INT",
    "SHORT": "SMALLINT",
    "BYTE": "TINYINT",
    "REAL": "FLOAT",
    "BOOL": "BOOLEAN",
    "VARCHAR": "STRING",
    "CHAR": "STRING",
    "TEXT": "STRING",
    "TIMESTAMP_LTZ": "TIMESTAMP",
}
_FROM_DELTA = {delta: sql for sql, (delta, _) in _TYPES.items()}

SUPPORTED_TYPES = tuple(_TYPES)


def normalize_type(name: str) -> str:
    """Map a SQL type name (any case, alias, or with a length) to its canonical name."""
    base = name.strip().upper().split("(", 1)[0].strip()
    base = _ALIASES.get(base, base)
    if base not in _TYPES:
        raise SchemaMismatchError(
            f"unsupported column type {name!r}; supported: {', '.join(SUPPORTED_TYPES)}"
        )
    return base


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool = True

    @property
    def arrow_type(self) -> pa.DataType:
        return _TYPES[self.type][1]

    def ddl(self) -> str:
        return f"{self.name} {self.type}" + ("" if self.nullable else " NOT NULL")


@dataclass(frozen=True)
class TableSchema:
    columns: tuple[Column, ...]

    def __post_init__(self) -> None:
        if not self.columns:
            raise SchemaMismatchError("a table needs at least one column")
        seen: set[str] = set()
        for col in self.columns:
            if col.type not in _TYPES:
                raise SchemaMismatchError(f"unsupported column type {col.type!r}", col.name)
            key = col.name.lower()
            if key in seen:
                raise SchemaMismatchError(f"duplicate column {col.name}", col.name)
            seen.add(key)

    @classmethod
    def of(cls, *columns: tuple[str, str] | tuple[str, str, bool]) -> TableSchema:
        """Build a schema from (name, type[, nullable]) tuples."""
        return cls(
            tuple(Column(c[0], normalize_type(c[1]), c[2] if len(c) > 2 else True) for c in columns)  # type: ignore[misc]
        )

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column | None:
        for col in self.columns:
            if col.name.lower() == name.lower():
                return col
        return None

    def to_arrow(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.arrow_type, c.nullable) for c in self.columns])

    def to_delta(self) -> DeltaSchema:
        return DeltaSchema(
            [
                DeltaField(c.name, PrimitiveType(_TYPES[c.type][0]), nullable=c.nullable)
                for c in self.columns
            ]
        )

    @classmethod
    def from_delta(cls, schema: DeltaSchema) -> TableSchema:
        columns = []
        for field in schema.fields:
            delta_type = getattr(field.type, "type", None)
            if delta_type not in _FROM_DELTA:
                raise SchemaMismatchError(
                    f"column {field.name} has type {field.type}, which the local stack "
                    "does not support",
                    field.name,
                )
            columns.append(Column(field.name, _FROM_DELTA[delta_type], field.nullable))
        return cls(tuple(columns))

    def ddl(self) -> str:
        return ", ".join(c.ddl() for c in self.columns)
