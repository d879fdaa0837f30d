"""SQL of the local Statement Execution API: sqlglot parses, DuckDB evaluates.

Statements arrive in the Databricks dialect. `SqlEvaluator.prepare` parses one statement,
binds its named parameters as typed literals inside the syntax tree (values never reach
the SQL text other than through sqlglot's own quoting), and turns it into an `Action`:

    CreateTable / DropTable   applied to the catalog by the caller
    InsertRows                rows already evaluated, cast and checked against the table
    CopyRows                  COPY INTO: rows read from volume files and checked (copy_into)
    Rows                      a query result, rendered the way the JSON_ARRAY format shows it
    NoOp                      statements that succeed without doing anything locally

Everything here is synchronous and meant to run in a worker thread. Failures are
`SqlError`s carrying a Databricks error class (`[TABLE_OR_VIEW_NOT_FOUND] ...`) and SQLSTATE.

The statement text comes from whoever holds the local token, so DuckDB sees only what a
warehouse would show them: the catalog's tables, registered as Arrow datasets that pyarrow
reads. DuckDB itself is shut off from the host (`enable_external_access=false`: no files,
no extensions, no ATTACH) and its configuration is locked, so no statement can turn that
back on. Table functions are refused before DuckDB sees them (`range` excepted, which
Spark has too), as a warehouse refuses the ones it does not know; nesting is bounded, so a
deeply nested statement fails as SQL rather than as a crashed parser.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from emulator.catalog import Catalog, Table, parse_table_name
from emulator.copy_into import CopyRows, parse_copy, plan_copy
from emulator.errors import SchemaMismatchError, TableNotFoundError
from emulator.schema import (
    ArrayType,
    Column,
    DecimalType,
    MapType,
    PrimitiveType,
    SqlType,
    StructType,
    TableSchema,
    column_options,
    from_sqlglot,
)
from emulator.sql_errors import SqlError, check_values
from emulator.sql_literals import NotLiteral, arity_error, java_float, literal_columns
from emulator.volumes import Volumes

DIALECT = "databricks"


class StatementInterrupted(Exception):
    """DuckDB stopped because the statement was canceled."""


def _unsupported(what: str) -> SqlError:
    return SqlError(
        "UNSUPPORTED_FEATURE",
        f"{what} is not supported by the local stack; it runs CREATE TABLE, DROP TABLE, "
        "INSERT INTO ... VALUES / SELECT, COPY INTO (PARQUET) and SELECT.",
        "0A000",
    )


def _quoted(name: str) -> str:
    return ".".join(f"`{part}`" for part in name.split("."))


@dataclass(frozen=True)
class Parameter:
    name: str
    value: str | None = None
    type: str | None = None


@dataclass(frozen=True)
class ResultColumn:
    name: str
    type_name: str
    type_text: str
    precision: int | None = None
    scale: int | None = None

    def to_json(self, position: int) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": self.name,
            "position": position,
            "type_name": self.type_name,
            "type_text": self.type_text,
        }
        if self.precision is not None:
            info["type_precision"] = self.precision
            info["type_scale"] = self.scale
        return info


@dataclass
class ResultSet:
    columns: list[ResultColumn]
    rows: list[list[str | None]] = field(default_factory=list)
    row_bytes: list[int] = field(default_factory=list)
    truncated: bool = False


@dataclass(frozen=True)
class CreateTable:
    name: str
    schema: TableSchema
    if_not_exists: bool


@dataclass(frozen=True)
class DropTable:
    name: str
    if_exists: bool


@dataclass(frozen=True)
class InsertRows:
    name: str
    batch: pa.RecordBatch


@dataclass(frozen=True)
class Rows:
    result: ResultSet


@dataclass(frozen=True)
class NoOp:
    pass


Action = CreateTable | DropTable | InsertRows | CopyRows | Rows | NoOp


def affected_rows(count: int) -> ResultSet:
    """The one-row answer Databricks gives to an INSERT."""
    cols = [
        ResultColumn("num_affected_rows", "LONG", "BIGINT"),
        ResultColumn("num_inserted_rows", "LONG", "BIGINT"),
    ]
    text = str(count)
    return ResultSet(cols, [[text, text]], [2 * len(text)])


class Interrupt:
    """Lets the event loop stop the DuckDB query a worker thread is running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self.requested = False

    def attach(self, con: duckdb.DuckDBPyConnection | None) -> None:
        with self._lock:
            if self.requested and con is not None:
                raise StatementInterrupted
            self._con = con

    def interrupt(self) -> None:
        with self._lock:
            self.requested = True
            if self._con is not None:
                self._con.interrupt()


@dataclass(frozen=True)
class StatementContext:
    catalog: str
    schema: str
    row_limit: int | None = None
    byte_limit: int | None = None
    max_result_bytes: int = 25 * 1024 * 1024


class SqlEvaluator:
    def __init__(self, catalog: Catalog, volumes: Volumes | None = None) -> None:
        self._catalog = catalog
        self._volumes = volumes
        self._duck = locked_duckdb()
        self._duck_lock = threading.Lock()

    def close(self) -> None:
        self._duck.close()

    def prepare(
        self,
        statement: str,
        parameters: Sequence[Parameter],
        ctx: StatementContext,
        interrupt: Interrupt,
    ) -> Action:
        """Parse, bind and evaluate one statement; the caller applies the returned action."""
        tree = parse_statement(statement)
        try:
            return self._plan(bind_parameters(tree, parameters), ctx, interrupt)
        except RecursionError:
            raise _too_deep() from None

    def _plan(self, tree: exp.Expr, ctx: StatementContext, interrupt: Interrupt) -> Action:
        if isinstance(tree, exp.Create):
            return self._plan_create(tree, ctx)
        if isinstance(tree, exp.Drop):
            return self._plan_drop(tree, ctx)
        if isinstance(tree, exp.Insert):
            return self._plan_insert(tree, ctx, interrupt)
        if isinstance(tree, exp.Copy):
            target, source = parse_copy(tree)
            return plan_copy(self._lookup(target, ctx), source, self._volumes)
        if isinstance(tree, exp.Query):
            table = self._run_query(tree, ctx, interrupt, limit=_fetch_limit(ctx.row_limit))
            return Rows(render_result(table, ctx))
        raise _unsupported(f"{_statement_kind(tree)} statement")

    # -- DDL ---------------------------------------------------------------------------

    def _plan_create(self, tree: exp.Create, ctx: StatementContext) -> Action:
        kind = str(tree.args.get("kind") or "").upper()
        if kind in {"SCHEMA", "DATABASE", "CATALOG"}:
            return NoOp()  # schemas and catalogs exist implicitly in the local catalog
        if kind != "TABLE":
            raise _unsupported(f"CREATE {kind}")
        if tree.args.get("replace"):
            raise _unsupported("CREATE OR REPLACE TABLE")
        if tree.expression is not None:
            raise _unsupported("CREATE TABLE ... AS SELECT")
        spec = tree.this
        if not isinstance(spec, exp.Schema) or not isinstance(spec.this, exp.Table):
            raise _unsupported("CREATE TABLE without a column list")
        name = _target_name(spec.this, ctx)
        _check_table_properties(tree.args.get("properties"))
        columns = [_column_def(item) for item in spec.expressions if _is_column(item)]
        try:
            schema = TableSchema(tuple(columns))
        except SchemaMismatchError as exc:
            raise SqlError("COLUMN_ALREADY_EXISTS", str(exc), "42711") from exc
        return CreateTable(name, schema, bool(tree.args.get("exists")))

    def _plan_drop(self, tree: exp.Drop, ctx: StatementContext) -> Action:
        kind = str(tree.args.get("kind") or "").upper()
        if kind != "TABLE":
            raise _unsupported(f"DROP {kind}")
        tables = tree.args.get("tables") or [tree.this]
        if len(tables) != 1 or not isinstance(tables[0], exp.Table):
            raise _unsupported("DROP TABLE of several tables")
        return DropTable(_target_name(tables[0], ctx), bool(tree.args.get("exists")))

    # -- INSERT ------------------------------------------------------------------------

    def _plan_insert(self, tree: exp.Insert, ctx: StatementContext, interrupt: Interrupt) -> Action:
        for flag in ("overwrite", "by_name", "partition", "where", "alternative", "ignore"):
            if tree.args.get(flag):
                raise _unsupported(f"INSERT with {flag.upper().replace('_', ' ')}")
        target = tree.this
        listed: list[str] | None = None
        if isinstance(target, exp.Schema):
            listed = [ident.name for ident in target.expressions]
            target = target.this
        if not isinstance(target, exp.Table):
            raise _unsupported("INSERT into something other than a table")
        table = self._lookup(target, ctx)
        source = tree.expression
        if not isinstance(source, exp.Values | exp.Query):
            raise _unsupported("this INSERT source")
        targets = _insert_targets(table.name, table.schema, listed)
        if isinstance(source, exp.Values):
            try:
                arrays = literal_columns(table.name, targets, source)
            except NotLiteral:
                pass  # not only literals: DuckDB evaluates it
            else:
                batch = _build_batch(table.name, table.schema, targets, arrays)
                return InsertRows(table.name, batch)
        rows = self._run_query(source, ctx, interrupt, limit=None)
        if rows.num_columns != len(targets):
            raise arity_error(table.name, targets, rows.num_columns)
        arrays = [
            _store_assign(table.name, rows.column(i).combine_chunks(), col)
            for i, col in enumerate(targets)
        ]
        return InsertRows(table.name, _build_batch(table.name, table.schema, targets, arrays))

    # -- queries -----------------------------------------------------------------------

    def _lookup(self, node: exp.Table, ctx: StatementContext) -> Table:
        written = ".".join(p.name for p in node.parts)
        try:
            return self._catalog.get(parse_table_name(written, ctx.catalog, ctx.schema))
        except (TableNotFoundError, SchemaMismatchError):
            raise SqlError(
                "TABLE_OR_VIEW_NOT_FOUND",
                f"The table or view {_quoted(written)} cannot be found. "
                "Check the catalog, schema and table name.",
                "42P01",
            ) from None

    def _run_query(
        self, query: exp.Expr, ctx: StatementContext, interrupt: Interrupt, limit: int | None
    ) -> pa.Table:
        """Evaluate a query or VALUES list with DuckDB over the catalog's Delta tables."""
        views: dict[str, Any] = {}
        ctes = {cte.alias_or_name.lower() for cte in query.find_all(exp.CTE)}
        for node in list(query.find_all(exp.Table)):
            if isinstance(node.this, exp.Anonymous) and node.this.name.lower() == "range":
                node.replace(_spark_range(node))
                continue
            if not isinstance(node.this, exp.Identifier):
                raise _unresolvable_function(node.this)
            if len(node.parts) == 1 and node.name.lower() in ctes:
                continue
            table = self._lookup(node, ctx)
            view = f"__dwb_t{len(views)}"
            views[view] = table.delta().to_pyarrow_dataset()
            alias = node.args.get("alias") or exp.TableAlias(this=exp.to_identifier(node.name))
            node.replace(exp.Table(this=exp.to_identifier(view), alias=alias))
        sql = query.sql(dialect="duckdb")
        with self._duck_lock:
            con = self._duck.cursor()
        try:
            for view, dataset in views.items():
                con.register(view, dataset)
            interrupt.attach(con)
            relation = con.sql(sql)
            if relation is None:
                raise _unsupported("a statement without a result")
            if limit is not None:
                relation = relation.limit(limit)
            return relation.to_arrow_table()
        except duckdb.InterruptException as exc:
            raise StatementInterrupted from exc
        except duckdb.Error as exc:
            raise _duckdb_error(exc) from exc
        finally:
            interrupt.attach(None)
            con.close()


# -- parsing and parameters ----------------------------------------------------------------


MAX_NESTING = 200  # parentheses deep; a warehouse's parser gives up somewhere too


def locked_duckdb() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that cannot reach the host and whose settings are frozen.

    Settings are global, so every cursor inherits them; the catalog's tables reach DuckDB
    only as registered Arrow datasets (registration is not a setting and still works).
    """
    con = duckdb.connect(":memory:", config={"enable_external_access": False})
    con.execute("SET GLOBAL TimeZone = 'UTC'")  # a warehouse's session time zone
    con.execute("SET GLOBAL lock_configuration = true")
    return con


def _too_deep() -> SqlError:
    return SqlError(
        "PARSE_SYNTAX_ERROR",
        f"The statement is nested too deeply; the local stack accepts up to {MAX_NESTING} "
        "levels of parentheses and expressions.",
        "42601",
    )


def _unresolvable_function(node: exp.Expr) -> SqlError:
    if isinstance(node, exp.Anonymous):
        name = node.name.lower()
    elif isinstance(node, exp.Func):
        name = node.sql_name().lower()
    else:
        name = node.sql(DIALECT)
    return SqlError(
        "UNRESOLVABLE_TABLE_VALUED_FUNCTION",
        f"Could not resolve `{name}` to a table-valued function. The local stack reads only "
        "the tables of its catalog (and range(...)); file and system table functions are "
        "not available.",
        "42883",
    )


def _check_nesting(statement: str) -> None:
    depth = 0
    try:
        tokens = sqlglot.tokenize(statement, read=DIALECT)
    except TokenError:
        return  # the parser reports it
    for token in tokens:
        if token.token_type in (TokenType.L_PAREN, TokenType.L_BRACKET):
            depth += 1
            if depth > MAX_NESTING:
                raise _too_deep()
        elif token.token_type in (TokenType.R_PAREN, TokenType.R_BRACKET):
            depth -= 1


def parse_statement(statement: str) -> exp.Expr:
    _check_nesting(statement)
    try:
        trees = [t for t in sqlglot.parse(statement, dialect=DIALECT) if t is not None]
    except RecursionError:
        raise _too_deep() from None
    except ParseError as exc:
        err = exc.errors[0] if exc.errors else {}
        near = str(err.get("highlight") or "")
        line, col = err.get("line", 1), err.get("col", 1)
        first = _first_token(statement)
        if first is not None and first.token_type == TokenType.VAR:  # not a statement keyword
            near, line, col = first.text, first.line, first.col
        where = f"'{near}'" if near else "end of input"
        raise SqlError(
            "PARSE_SYNTAX_ERROR",
            f"Syntax error at or near {where}.",
            "42601",
            position=f"line {line}, pos {max(col - len(near), 0)}",
        ) from None
    except TokenError as exc:
        raise SqlError(
            "PARSE_SYNTAX_ERROR", f"Syntax error at or near end of input: {exc}.", "42601"
        ) from None
    if not trees:
        raise SqlError(
            "PARSE_EMPTY_STATEMENT", "Syntax error, unexpected empty statement.", "42617"
        )
    if len(trees) > 1:
        raise _unsupported("More than one statement in a request")
    tree = trees[0]
    if isinstance(tree, exp.Command):
        raise _unsupported(f"{tree.name.upper()} statement")
    return tree


def _first_token(statement: str) -> Token | None:
    try:
        tokens = sqlglot.tokenize(statement, read=DIALECT)
    except TokenError:
        return None
    return tokens[0] if tokens else None


def bind_parameters(tree: exp.Expr, parameters: Sequence[Parameter]) -> exp.Expr:
    """Replace every `:name` marker by a typed literal built from the supplied parameter."""
    by_name = {p.name: p for p in parameters}
    for marker in list(tree.find_all(exp.Placeholder)):
        name = marker.name
        if not name or name == "?":
            raise _unsupported("Positional parameter markers (?)")
        param = by_name.get(name)
        if param is None:
            raise SqlError(
                "UNBOUND_SQL_PARAMETER",
                f"Found the unbound parameter: {name}. Supply a value for it in `parameters`.",
                "42P02",
            )
        replacement = typed_literal(param)
        if marker is tree:
            return replacement
        marker.replace(replacement)
    return tree


_INT_RANGES = {
    exp.DataType.Type.TINYINT: 8,
    exp.DataType.Type.SMALLINT: 16,
    exp.DataType.Type.INT: 32,
    exp.DataType.Type.BIGINT: 64,
}
_TRUE = {"t", "true", "y", "yes", "1"}
_FALSE = {"f", "false", "n", "no", "0"}


def typed_literal(param: Parameter) -> exp.Expr:
    """`CAST('<canonical value>' AS <type>)`; the value is checked here, in Python, first."""
    type_text = param.type or "STRING"
    try:
        dtype = _parameter_type(type_text.strip().upper()).copy()
    except (ParseError, ValueError):
        raise SqlError(
            "UNSUPPORTED_DATATYPE",
            f"Unsupported data type {type_text!r} for parameter `{param.name}`.",
            "0A000",
        ) from None
    kind = dtype.this
    if param.value is None:
        return exp.Cast(this=exp.null(), to=dtype)
    if kind in exp.DataType.TEXT_TYPES:
        return exp.Literal.string(param.value)
    text = param.value.strip()
    try:
        canonical = _canonical(kind, dtype, text)
    except (ValueError, InvalidOperation, ArithmeticError):
        raise SqlError(
            "CAST_INVALID_INPUT",
            f"The value of parameter `{param.name}` cannot be cast to "
            f'"{dtype.sql(DIALECT)}" because it is malformed or out of range.',
            "22018",
        ) from None
    return exp.Cast(this=exp.Literal.string(canonical), to=dtype)


@functools.lru_cache(maxsize=64)
def _parameter_type(type_text: str) -> exp.DataType:
    return exp.DataType.build(type_text, dialect=DIALECT)


def _canonical(kind: exp.DType, dtype: exp.DataType, text: str) -> str:
    t = exp.DataType.Type
    if kind in _INT_RANGES:
        value = int(text)
        bits = _INT_RANGES[kind]
        if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
            raise ValueError(text)
        return str(value)
    if kind in (t.DOUBLE, t.FLOAT):
        number = float(text)
        if math.isnan(number):
            return "NaN"
        if math.isinf(number):
            return "Infinity" if number > 0 else "-Infinity"
        return repr(number)
    if kind == t.DECIMAL:
        args = [int(e.name) for e in dtype.expressions] or [10, 0]
        precision, scale = args[0], args[1] if len(args) > 1 else 0
        exact = Decimal(text)
        if not exact.is_finite():
            raise ValueError(text)
        exact = exact.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_UP)
        if len(exact.as_tuple().digits) > precision and exact != 0:
            raise ValueError(text)
        return format(exact, "f")
    if kind == t.BOOLEAN:
        lowered = text.lower()
        if lowered in _TRUE:
            return "true"
        if lowered in _FALSE:
            return "false"
        raise ValueError(text)
    if kind == t.DATE:
        day = text[:10] if len(text) > 10 and text[10] in "T " else text
        return dt.date.fromisoformat(day).isoformat()
    if kind in (t.TIMESTAMPTZ, t.TIMESTAMP, t.TIMESTAMPLTZ, t.TIMESTAMPNTZ):
        stamp = dt.datetime.fromisoformat(text)
        if kind == t.TIMESTAMPNTZ:
            return stamp.replace(tzinfo=None).isoformat(sep=" ")
        if stamp.tzinfo is None:  # the session time zone of a warehouse is UTC
            stamp = stamp.replace(tzinfo=dt.UTC)
        return stamp.astimezone(dt.UTC).isoformat(sep=" ")
    raise SqlError(
        "UNSUPPORTED_DATATYPE",
        f"Parameters of type {dtype.sql(DIALECT)} are not supported by the local stack.",
        "0A000",
    )


# -- DDL helpers -------------------------------------------------------------------------------


def _target_name(node: exp.Table, ctx: StatementContext) -> str:
    written = ".".join(p.name for p in node.parts)
    try:
        return parse_table_name(written, ctx.catalog, ctx.schema)
    except SchemaMismatchError as exc:
        raise SqlError("INVALID_IDENTIFIER", str(exc), "42602") from None


def _is_column(item: exp.Expr) -> bool:
    if isinstance(item, exp.ColumnDef):
        return True
    if isinstance(item, exp.PrimaryKey):
        return False  # informational in Databricks
    raise _unsupported(f"Table constraint {item.sql(DIALECT)}")


def _column_def(item: exp.Expr) -> Column:
    assert isinstance(item, exp.ColumnDef)
    kind = item.args.get("kind")
    if not isinstance(kind, exp.DataType):
        raise SqlError("PARSE_SYNTAX_ERROR", f"Column {item.name} needs a type.", "42601")
    try:
        column_type = from_sqlglot(kind, item.name)
    except SchemaMismatchError as exc:
        raise SqlError("UNSUPPORTED_DATATYPE", f"{exc} (column `{item.name}`).", "0A000") from None
    try:
        nullable, comment = column_options(item)
    except SchemaMismatchError:
        options = " ".join(c.sql(DIALECT) for c in item.args.get("constraints") or [])
        raise _unsupported(f"Column option {options}") from None
    return Column(item.name, column_type, nullable, comment)


def _check_table_properties(properties: exp.Properties | None) -> None:
    for prop in properties.expressions if properties else []:
        if isinstance(prop, exp.FileFormatProperty):
            if prop.name.upper() != "DELTA":
                raise _unsupported(f"USING {prop.name.upper()}")
        elif not isinstance(prop, exp.SchemaCommentProperty | exp.Property):
            raise _unsupported(f"Table clause {prop.sql(DIALECT)}")


def _statement_kind(tree: exp.Expr) -> str:
    names: dict[type[exp.Expr], str] = {
        exp.Update: "UPDATE",
        exp.Delete: "DELETE",
        exp.Merge: "MERGE",
    }
    return names.get(type(tree), type(tree).__name__.upper())


def _spark_range(node: exp.Table) -> exp.Expr:
    """Spark's `range(n)` names its column `id`; DuckDB's names it `range`."""
    assert isinstance(node.this, exp.Anonymous)
    inner = exp.Table(this=exp.Anonymous(this="range", expressions=node.this.expressions))
    query = exp.select(exp.alias_(exp.column("range"), "id")).from_(inner)
    return query.subquery(node.args.get("alias") or "range")


def _fetch_limit(row_limit: int | None) -> int | None:
    return None if row_limit is None else row_limit + 1  # one more tells us it was truncated


def _duckdb_error(exc: duckdb.Error) -> SqlError:
    text = str(exc).split("\n", 1)[0]
    if "Max expression depth" in text:  # its hint (SET max_expression_depth) cannot apply
        return _too_deep()
    column = re.search(r'Referenced column "([^"]+)" not found', text)
    if column:
        return SqlError(
            "UNRESOLVED_COLUMN.WITHOUT_SUGGESTION",
            f"A column, variable, or function parameter with name `{column.group(1)}` "
            "cannot be resolved.",
            "42703",
        )
    if isinstance(exc, duckdb.ConversionException):
        return SqlError("CAST_INVALID_INPUT", text, "22018")
    if isinstance(exc, duckdb.OutOfRangeException):
        return SqlError("ARITHMETIC_OVERFLOW", text, "22003")
    return SqlError(
        "LOCAL_STACK_EVALUATION_ERROR", f"DuckDB could not run the query: {text}", "42000"
    )


# -- INSERT helpers ------------------------------------------------------------------------------


def _insert_targets(table: str, schema: TableSchema, listed: list[str] | None) -> list[Column]:
    if listed is None:
        return list(schema.columns)
    targets: list[Column] = []
    for name in listed:
        col = schema.column(name)
        if col is None:
            raise SqlError(
                "UNRESOLVED_COLUMN.WITH_SUGGESTION",
                f"A column, variable, or function parameter with name `{name}` cannot be "
                f"resolved. Columns of {_quoted(table)}: "
                f"{', '.join(f'`{c.name}`' for c in schema.columns)}.",
                "42703",
            )
        if col in targets:
            raise SqlError(
                "COLUMN_ALREADY_EXISTS", f"The column `{name}` is listed twice.", "42711"
            )
        targets.append(col)
    return targets


def _build_batch(
    table: str, schema: TableSchema, targets: list[Column], values: list[pa.Array]
) -> pa.RecordBatch:
    """The table's batch from the arrays of the target columns (the others are NULL)."""
    position = {col.name: i for i, col in enumerate(targets)}
    count = len(values[0]) if values else 0
    arrays: list[pa.Array] = []
    for col in schema.columns:
        index = position.get(col.name)
        array = pa.nulls(count, col.arrow_type) if index is None else values[index]
        if not col.nullable and array.null_count:
            raise SqlError(
                "DELTA_NOT_NULL_CONSTRAINT_VIOLATED",
                f"NOT NULL constraint violated for column: {col.name}.",
                "23502",
            )
        arrays.append(array)
    batch = pa.RecordBatch.from_arrays(arrays, schema=schema.to_arrow())
    check_values(batch, schema, _quoted(table), "of the rows")
    return batch


def _kind(arrow_type: pa.DataType) -> str:
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    if (
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_decimal(arrow_type)
    ):
        return "numeric"
    if pa.types.is_boolean(arrow_type):
        return "boolean"
    if pa.types.is_date(arrow_type):
        return "date"
    if pa.types.is_timestamp(arrow_type):
        return "timestamp"
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return "binary"
    if pa.types.is_null(arrow_type):
        return "null"
    if pa.types.is_map(arrow_type):
        return "map"
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return "array"
    if pa.types.is_struct(arrow_type):
        return "struct"
    return str(arrow_type)


def _store_assign(table: str, array: pa.Array, col: Column) -> pa.Array:
    """Cast a source column to its table column the way ANSI store assignment allows."""
    target = col.arrow_type
    if array.type == target:
        return array
    src, dst = _kind(array.type), _kind(target)
    allowed = (
        src in (dst, "null")
        or dst == "string"
        or (src in ("date", "timestamp") and dst in ("date", "timestamp"))
        or (src == "string" and dst in ("date", "timestamp"))
    )
    src_sql = _sql_type(array.type)
    if not allowed:
        raise SqlError(
            "INCOMPATIBLE_DATA_FOR_TABLE.CANNOT_SAFELY_CAST",
            f"Cannot write incompatible data for the table {_quoted(table)}: cannot safely "
            f'cast `{col.name}` "{src_sql}" to "{col.type}".',
            "KD000",
        )
    try:
        if src == "string" and dst == "timestamp":
            return _parse_timestamps(array, target)
        if pa.types.is_floating(array.type) and pa.types.is_integer(target):
            _check_int_range(array, target)
        if pa.types.is_float64(array.type) and pa.types.is_float32(target):
            _check_float32_range(array)
        options = pc.CastOptions(
            target_type=target, allow_float_truncate=True, allow_decimal_truncate=True
        )
        return pc.cast(array, options=options)
    except (pa.ArrowInvalid, ValueError, OverflowError):
        if dst == "numeric":
            raise SqlError(
                "CAST_OVERFLOW_IN_TABLE_INSERT",
                f'Cannot assign a value of "{src_sql}" type to the "{col.type}" type column '
                f"`{col.name}` because it overflows.",
                "22003",
            ) from None
        raise SqlError(
            "CAST_INVALID_INPUT",
            f'A value of the type "{src_sql}" cannot be cast to "{col.type}" for column '
            f"`{col.name}` because it is malformed.",
            "22018",
        ) from None


def _check_int_range(array: pa.Array, target: pa.DataType) -> None:
    bounds = pc.min_max(array).as_py()
    limit = 2 ** (target.bit_width - 1)
    for value in bounds.values():
        if value is not None and (math.isnan(value) or not -limit <= math.trunc(value) < limit):
            raise OverflowError(value)


_FLOAT32_MAX = 3.4028234663852886e38


def _check_float32_range(array: pa.Array) -> None:
    # Arrow's cast turns a finite DOUBLE past FLOAT's range into infinity, silently.
    bounds = pc.min_max(pc.abs(array)).as_py()
    largest = bounds["max"]
    if largest is not None and math.isfinite(largest) and largest > _FLOAT32_MAX:
        raise OverflowError(largest)


def _parse_timestamps(array: pa.Array, target: pa.DataType) -> pa.Array:
    values: list[dt.datetime | None] = []
    for text in array.to_pylist():
        if text is None:
            values.append(None)
            continue
        stamp = dt.datetime.fromisoformat(text.strip())
        if target.tz is None:
            stamp = stamp.replace(tzinfo=None)
        elif stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.UTC)
        values.append(stamp)
    return pa.array(values, target)


# -- results -----------------------------------------------------------------------------------

_ARROW_PRIMITIVES: list[tuple[Any, SqlType]] = [
    (pa.types.is_string, PrimitiveType("STRING")),
    (pa.types.is_large_string, PrimitiveType("STRING")),
    (pa.types.is_boolean, PrimitiveType("BOOLEAN")),
    (pa.types.is_int8, PrimitiveType("TINYINT")),
    (pa.types.is_int16, PrimitiveType("SMALLINT")),
    (pa.types.is_int32, PrimitiveType("INT")),
    (pa.types.is_int64, PrimitiveType("BIGINT")),
    (pa.types.is_uint8, PrimitiveType("SMALLINT")),
    (pa.types.is_uint16, PrimitiveType("INT")),
    (pa.types.is_uint32, PrimitiveType("BIGINT")),
    (pa.types.is_uint64, DecimalType(20, 0)),
    (pa.types.is_float32, PrimitiveType("FLOAT")),
    (pa.types.is_float64, PrimitiveType("DOUBLE")),
    (pa.types.is_date, PrimitiveType("DATE")),
    (pa.types.is_binary, PrimitiveType("BINARY")),
    (pa.types.is_large_binary, PrimitiveType("BINARY")),
]


def _type_of(arrow_type: pa.DataType) -> SqlType | None:
    """The Databricks type of a result column (None: VOID, the type of an untyped NULL)."""
    if pa.types.is_null(arrow_type):
        return None
    for test, sql_type in _ARROW_PRIMITIVES:
        if test(arrow_type):
            return sql_type
    if pa.types.is_timestamp(arrow_type):
        return PrimitiveType("TIMESTAMP" if arrow_type.tz else "TIMESTAMP_NTZ")
    if pa.types.is_decimal(arrow_type) and arrow_type.precision <= 38:
        return DecimalType(arrow_type.precision, arrow_type.scale)
    if pa.types.is_map(arrow_type):
        key = _type_of(arrow_type.key_type) or PrimitiveType("STRING")
        return MapType(key, _type_of(arrow_type.item_type) or PrimitiveType("STRING"))
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return ArrayType(_type_of(arrow_type.value_type) or PrimitiveType("STRING"))
    if pa.types.is_struct(arrow_type) and arrow_type.num_fields:
        fields = [arrow_type.field(i) for i in range(arrow_type.num_fields)]
        return StructType(
            tuple(
                Column(f.name, _type_of(f.type) or PrimitiveType("STRING"), f.nullable)
                for f in fields
            )
        )
    return PrimitiveType("STRING")


def _sql_type(arrow_type: pa.DataType) -> str:
    return _result_column("", arrow_type).type_text


def _result_column(name: str, arrow_type: pa.DataType) -> ResultColumn:
    sql_type = _type_of(arrow_type)
    if sql_type is None:
        return ResultColumn(name, "NULL", "VOID")
    if isinstance(sql_type, DecimalType):
        p, s = sql_type.precision, sql_type.scale
        return ResultColumn(name, "DECIMAL", sql_type.sql(), p, s)
    if sql_type == PrimitiveType("TIMESTAMP_NTZ"):
        # The Statement API's type names (ColumnInfoTypeName) have no TIMESTAMP_NTZ; the
        # type text tells the two apart.
        return ResultColumn(name, "TIMESTAMP", sql_type.sql())
    return ResultColumn(name, sql_type.type_name, sql_type.sql())


def render_result(table: pa.Table, ctx: StatementContext) -> ResultSet:
    """Render every value as the JSON_ARRAY format does: a string, or null."""
    columns = [_result_column(f.name, f.type) for f in table.schema]
    result = ResultSet(columns)
    rendered = [_render_column(table.column(i), f.type) for i, f in enumerate(table.schema)]
    total = 0
    for index, row in enumerate(zip(*rendered, strict=True) if rendered else ()):
        if ctx.row_limit is not None and index >= ctx.row_limit:
            result.truncated = True
            break
        size = sum(len(v) for v in row if v is not None) + 4 * len(row)
        if ctx.byte_limit is not None and total + size > ctx.byte_limit:
            result.truncated = True
            break
        total += size
        if total > ctx.max_result_bytes:
            raise SqlError(
                None,
                f"The result exceeds the {ctx.max_result_bytes // (1024 * 1024)} MiB limit of "
                "INLINE disposition. Add a LIMIT or set row_limit or byte_limit "
                "(EXTERNAL_LINKS is not available on the local stack).",
            )
        result.rows.append(list(row))
        result.row_bytes.append(size)
    return result


def _render_column(column: pa.ChunkedArray, arrow_type: pa.DataType) -> list[str | None]:
    values = column.to_pylist()
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return values
    if _is_nested(arrow_type):
        return [None if v is None else _json_text(v, arrow_type) for v in values]
    return [None if v is None else _render(v, arrow_type) for v in values]


def _is_nested(arrow_type: pa.DataType) -> bool:
    return (
        pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
        or pa.types.is_map(arrow_type)
        or pa.types.is_struct(arrow_type)
    )


def _render(value: Any, arrow_type: pa.DataType) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return java_float(value, single=pa.types.is_float32(arrow_type))
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dt.datetime):
        zoned = value.tzinfo is not None
        if zoned:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        text = value.isoformat(
            timespec="microseconds" if value.microsecond % 1000 else "milliseconds"
        )
        return text + "Z" if zoned else text
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)


def _json_text(value: Any, arrow_type: pa.DataType) -> str:
    """A complex value as JSON text, the way the JSON_ARRAY format shows ARRAY, MAP, STRUCT."""
    if value is None:
        return "null"
    if pa.types.is_map(arrow_type):
        key_type, item_type = arrow_type.key_type, arrow_type.item_type
        items = (
            f"{json.dumps(_json_key(k, key_type), ensure_ascii=False)}:{_json_text(v, item_type)}"
            for k, v in value
        )
        return "{" + ",".join(items) + "}"
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        item_type = arrow_type.value_type
        return "[" + ",".join(_json_text(v, item_type) for v in value) + "]"
    if pa.types.is_struct(arrow_type):
        fields = [arrow_type.field(i) for i in range(arrow_type.num_fields)]
        items = (
            f"{json.dumps(f.name, ensure_ascii=False)}:{_json_text(value.get(f.name), f.type)}"
            for f in fields
        )
        return "{" + ",".join(items) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = java_float(value, single=pa.types.is_float32(arrow_type))
        return text if math.isfinite(value) else json.dumps(text)
    if isinstance(value, Decimal):
        return format(value, "f")
    text = value if isinstance(value, str) else _render(value, arrow_type)
    return json.dumps(text, ensure_ascii=False)


def _json_key(key: Any, arrow_type: pa.DataType) -> str:
    return key if isinstance(key, str) else _render(key, arrow_type)
