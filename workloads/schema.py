"""A table schema: ordered columns, the one source every other schema form is derived from.

Read from a `CREATE TABLE` DDL (or a bare column list), a JSON column list, or a Unity
Catalog `TableInfo`; derived from it: the Arrow schema batches carry, Delta DDL, Postgres
DDL, the JSON Schema the web form renders and the pydantic model that validates input.
The proto2 descriptor is derived in `workloads.proto`.

A column may carry a generator spec (`GeneratorSpec`) that shapes its generated data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dwbench.errors import InvalidSchemaError
from workloads.types import (
    DataType,
    Primitive,
    StructField,
    StructType,
    TokenStream,
    check_names,
    parse_type,
    quote_identifier,
    read_type,
    sql_string,
)

_TABLE_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class GeneratorSpec(BaseModel):
    """How generated values of one column look (all optional; defaults by type)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    null_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    cardinality: int | None = Field(default=None, ge=1, le=10_000_000)
    min_length: int | None = Field(default=None, ge=0, le=1_000_000)
    max_length: int | None = Field(default=None, ge=0, le=1_000_000)
    min: float | None = None
    max: float | None = None
    values: list[Any] | None = Field(default=None, min_length=1, max_length=100_000)


@dataclass(frozen=True)
class Column:
    name: str
    type: DataType
    nullable: bool = True
    comment: str | None = None
    generator: GeneratorSpec | None = field(default=None, compare=False)

    def ddl(self) -> str:
        text = f"{quote_identifier(self.name)} {self.type.sql()}"
        if not self.nullable:
            text += " NOT NULL"
        if self.comment:
            text += f" COMMENT {sql_string(self.comment)}"
        return text

    @property
    def arrow_field(self) -> pa.Field:
        return pa.field(self.name, self.type.arrow(), self.nullable)


@dataclass(frozen=True)
class TableSchema:
    columns: tuple[Column, ...]

    def __post_init__(self) -> None:
        if not self.columns:
            raise InvalidSchemaError("a table needs at least one column")
        check_names([c.name for c in self.columns], "column")

    # -- sources --------------------------------------------------------------------------

    @classmethod
    def from_ddl(cls, text: str) -> TableSchema:
        """`CREATE TABLE [IF NOT EXISTS] name (col TYPE [NOT NULL] [COMMENT '...'], ...)
        [USING DELTA] ...`, or just the column list `col TYPE, ...`."""
        return parse_ddl(text)[1]

    @classmethod
    def from_columns(cls, raw: Any) -> TableSchema:
        """A JSON column list: `[{"name", "type", "nullable"?, "comment"?, "generator"?}]`,
        or an object with such a list under "columns"."""
        if isinstance(raw, Mapping):
            raw = raw.get("columns")
        if not isinstance(raw, list):
            raise InvalidSchemaError('a JSON schema is a list of columns (or {"columns": [...]})')
        columns = []
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
                raise InvalidSchemaError(f'column {i + 1}: needs a "name" and a "type"')
            name = item["name"]
            unknown = set(item) - {"name", "type", "nullable", "comment", "generator"}
            if unknown:
                raise InvalidSchemaError(
                    f"column {name}: unknown keys {', '.join(sorted(unknown))}", column=name
                )
            if not isinstance(item.get("type"), str):
                raise InvalidSchemaError(f'column {name}: "type" must be a string', column=name)
            nullable = item.get("nullable", True)
            if not isinstance(nullable, bool):
                raise InvalidSchemaError(f'column {name}: "nullable" must be true or false')
            columns.append(
                Column(
                    name,
                    _column_type(name, item["type"]),
                    nullable,
                    item.get("comment"),
                    _generator(name, item.get("generator")),
                )
            )
        return cls(tuple(columns))

    @classmethod
    def from_text(cls, text: str) -> TableSchema:
        """A schema file's text: a JSON column list when it parses as JSON, else DDL."""
        stripped = text.strip()
        if stripped.startswith(("[", "{")):
            try:
                raw = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise InvalidSchemaError(f"the schema is not valid JSON: {exc}") from None
            return cls.from_columns(raw)
        return cls.from_ddl(text)

    @classmethod
    def from_table_info(cls, info: Any) -> TableSchema:
        """A Unity Catalog TableInfo (`w.tables.get`): its columns' type_text."""
        raw = getattr(info, "columns", None) or []
        columns = []
        for col in sorted(raw, key=lambda c: c.position if c.position is not None else 0):
            columns.append(
                Column(
                    col.name,
                    _column_type(col.name, col.type_text or ""),
                    col.nullable if col.nullable is not None else True,
                    col.comment,
                )
            )
        return cls(tuple(columns))

    # -- lookups --------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column | None:
        for col in self.columns:
            if col.name.lower() == name.lower():
                return col
        return None

    def require(self, name: str, what: str) -> Column:
        col = self.column(name)
        if col is None:
            raise InvalidSchemaError(
                f"{what} {name!r} is not a column (columns: {', '.join(self.names)})", column=name
            )
        return col

    def with_generators(self, specs: Mapping[str, GeneratorSpec]) -> TableSchema:
        return TableSchema(
            tuple(replace(c, generator=specs.get(c.name, c.generator)) for c in self.columns)
        )

    def types(self) -> Iterable[tuple[Column, DataType]]:
        """Every (column, type) pair, nested types included."""
        for col in self.columns:
            for t in col.type.walk():
                yield col, t

    # -- derived forms --------------------------------------------------------------------

    def arrow(self) -> pa.Schema:
        return pa.schema([c.arrow_field for c in self.columns])

    def as_struct(self) -> StructType:
        return StructType(tuple(StructField(c.name, c.type, c.nullable) for c in self.columns))

    def delta_ddl(self, table: str, *, if_not_exists: bool = True) -> str:
        """`CREATE TABLE` for Unity Catalog / Delta."""
        quoted = ".".join(f"`{p}`" for p in split_table_name(table))
        columns = ",\n  ".join(c.ddl() for c in self.columns)
        exists = "IF NOT EXISTS " if if_not_exists else ""
        return f"CREATE TABLE {exists}{quoted} (\n  {columns}\n) USING DELTA"

    def postgres_ddl(self, table: str, *, primary_key: str | None = None) -> str:
        """`CREATE TABLE` for Postgres (Lakebase): the type mapping in README's table."""
        schema, name = table.split(".", 1) if "." in table else ("public", table)
        parts = []
        for c in self.columns:
            parts.append(f'"{c.name}" {c.type.postgres()}' + ("" if c.nullable else " NOT NULL"))
        if primary_key:
            parts.append(f'PRIMARY KEY ("{self.require(primary_key, "primary key").name}")')
        body = ",\n  ".join(parts)
        return f'CREATE TABLE IF NOT EXISTS "{schema}"."{name}" (\n  {body}\n)'

    def json_schema(self, *, title: str = "Row", exclude: Iterable[str] = ()) -> dict[str, Any]:
        skip = {n.lower() for n in exclude}
        cols = [c for c in self.columns if c.name.lower() not in skip]
        properties = {}
        for c in cols:
            prop = c.type.json_schema()
            if c.comment:
                prop = {**prop, "description": c.comment}
            properties[c.name] = {"anyOf": [prop, {"type": "null"}]} if c.nullable else prop
        return {
            "title": title,
            "type": "object",
            "properties": properties,
            "required": [c.name for c in cols if not c.nullable],
            "additionalProperties": False,
        }

    def describe(self) -> list[dict[str, Any]]:
        """The columns as JSON: name, type text, nullability, comment."""
        return [
            {"name": c.name, "type": c.type.sql(), "nullable": c.nullable, "comment": c.comment}
            for c in self.columns
        ]


def split_table_name(name: str) -> list[str]:
    parts = [p.strip().strip("`") for p in name.split(".")]
    if len(parts) != 3 or not all(_TABLE_PART.fullmatch(p) for p in parts):
        raise InvalidSchemaError(
            f"table name {name!r} must be catalog.schema.table of ASCII letters, digits and _"
        )
    return parts


def parse_ddl(text: str) -> tuple[str | None, TableSchema]:
    """(table name or None, schema) from a CREATE TABLE statement or a bare column list."""
    stream = TokenStream(text)
    table: str | None = None
    if stream.accept("CREATE"):
        stream.accept("OR", "REPLACE")
        if not stream.accept("TABLE"):
            raise stream.error("expected TABLE after CREATE")
        stream.accept("IF", "NOT", "EXISTS")
        parts = [stream.identifier("a table name")]
        while stream.accept("."):
            parts.append(stream.identifier("a table name part"))
        table = ".".join(parts)
        stream.expect("(", "to open the column list")
        columns = _read_columns(stream, closing=")")
        # What follows the column list (USING, TBLPROPERTIES, COMMENT ...) does not shape rows.
    else:
        columns = _read_columns(stream, closing=None)
    return table, TableSchema(tuple(columns))


_CONSTRAINTS = ("CONSTRAINT", "PRIMARY", "FOREIGN", "UNIQUE", "CHECK")


def _read_columns(stream: TokenStream, closing: str | None) -> list[Column]:
    columns: list[Column] = []
    if closing and stream.accept(closing):
        raise InvalidSchemaError("a table needs at least one column")
    while True:
        if stream.peek.upper in _CONSTRAINTS and stream.peek.kind == "word":
            raise stream.error("table constraints are not supported; declare columns only")
        name = stream.identifier("a column name")
        try:
            col_type = read_type(stream, 0)
        except InvalidSchemaError as exc:
            raise InvalidSchemaError(f"column {name}: {exc.message}", column=name) from None
        nullable = True
        comment = None
        while True:
            if stream.accept("NOT", "NULL"):
                nullable = False
            elif stream.accept("COMMENT"):
                comment = stream.string("after COMMENT")
            elif stream.accept("GENERATED") or stream.accept("DEFAULT"):
                raise stream.error(f"column {name}: generated and default values are not supported")
            else:
                break
        columns.append(Column(name, col_type, nullable, comment))
        if closing and stream.accept(closing):
            return columns
        if stream.peek.kind == "end" and closing is None:
            return columns
        if stream.accept(";") and closing is None and stream.peek.kind == "end":
            return columns
        if not stream.accept(","):
            raise stream.error(f"expected ',' or the end of the column list after column {name}")


def _column_type(name: str, text: str) -> DataType:
    try:
        return parse_type(text)
    except InvalidSchemaError as exc:
        raise InvalidSchemaError(f"column {name}: {exc.message}", column=name) from None


def _generator(name: str, raw: Any) -> GeneratorSpec | None:
    if raw is None:
        return None
    try:
        return GeneratorSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise InvalidSchemaError(f"column {name}: generator: {problems}", column=name) from None


STRING = Primitive("STRING")
